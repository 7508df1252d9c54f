"""The prompt-tuning pipeline: validate -> LM-adapt -> train N prompts in parallel -> evaluate -> register.

Caching follows the data's content, not its location. KFP looks a cached execution up by a cache key
(kubeflow/pipelines api/v2alpha1/cache_key.proto, filled in by backend/src/v2/cacheutils/cache.go): the
input parameter *values*, the *names* of the input artifacts, the output specs and the container's image and
command (the lookup is also scoped to the pipeline name and namespace). Two consequences shape this DAG:

1. validate-data's only inputs are strings naming a location (`data`), so a cached validation would replay
   last week's result for this week's files. Its caching is off: it always reads the data.
2. An artifact produced by a step that always runs is a new artifact (a new name) every run, so a step that
   takes it as an input artifact never hits the cache. validate-data therefore hands on two *parameters*:
   the content fingerprint (md5 of each split file, combined) and the content-addressed location
   (DATA_ROOT/<task>/<fingerprint>) it stored the validated files at. Train and evaluate take those, so
   their cache key changes exactly when the content, the base model (lm-adapt's parameters, and its output
   artifact, which is the same artifact while lm-adapt hits the cache), or a setting changes.

Registration is never cached (it writes the registry); it registers nothing when the prompt's content is
already registered, which is what an unchanged week produces.

Every parameter's default comes from params.yaml (optionally a profile of it), the one place defaults are
written. Scheduling (accelerators, node selectors, tolerations, retries, secrets) comes from its
`cluster:` section, which infra/ reads too.
"""


from typing import Any

from kfp import dsl, kubernetes

from components.evaluate import evaluate_prompts
from components.lm_adapt import lm_adapt
from components.register import register_prompt
from components.train import train_prompt
from components.validate import validate_data
from softprompt.cluster import accelerator_request
from softprompt.config import load_params
from softprompt.trainjob import placement

PIPELINE_NAME = "softprompt-prompt-tuning"


def seeds_for(num_prompts: int, seed: int) -> list[int]:
    """One seed per prompt: seed, seed+1, ... (the ensemble's members differ only by seed)."""
    return [seed + i for i in range(num_prompts)]


def use_accelerator(task: dsl.PipelineTask, cluster: dict[str, Any], params: dict[str, Any]) -> None:
    """Land a step on the configured accelerator pool: its image (the TPU image on TPU pools), resource request,
    node selector, toleration, retries."""
    name = cluster.get("accelerator") or "none"
    if name == "none":
        return
    pool = accelerator_request(name, params)
    task.set_container_image(pool["image"])
    task.set_accelerator_type(pool["resource"])
    task.set_accelerator_limit(pool["count"])
    for key, value in pool["node_selector"].items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    taint = pool["taint"]
    kubernetes.add_toleration(task, key=taint["key"], operator="Equal", value=taint["value"], effect=taint["effect"])
    task.set_retry(num_retries=3, backoff_duration="120s", backoff_factor=2.0)  # preemptible (spot) nodes


def use_cpu_pool(task: dsl.PipelineTask, cluster: dict[str, Any]) -> None:
    for key, value in cluster["cpu_pool"]["node_selector"].items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)


def request(task: dsl.PipelineTask, cluster: dict[str, Any], kind: str) -> None:
    res = cluster["resources"][kind]
    task.set_cpu_request(res["cpu"]).set_memory_request(res["memory"])


def mount_secret(task: dsl.PipelineTask, cluster: dict[str, Any], name: str, optional: bool) -> None:
    """A Kubernetes secret as an env var, or (with `mount_path`) as a file whose path the env var names."""
    secret = cluster["secrets"][name]
    if "mount_path" in secret:
        kubernetes.use_secret_as_volume(task, secret_name=secret["name"], mount_path=secret["mount_path"],
                                        optional=optional)
        task.set_env_variable(secret["env"], f"{secret['mount_path']}/{secret['key']}")
    else:
        kubernetes.use_secret_as_env(task, secret_name=secret["name"],
                                     secret_key_to_env={secret["key"]: secret["env"]}, optional=optional)


def build_pipeline(profile: str | None = None, on_cluster: bool = True):
    """The pipeline function, its defaults from params.yaml (+ `profile`).

    `on_cluster=False` leaves out the Kubernetes scheduling settings for kfp.local runs (the local runner
    has no node pools); the DAG and every parameter are the same.
    """
    params = load_params(profile)
    pipe, train, cluster = params["pipeline"], params["train"], params["cluster"]
    registry = params["registry"]

    @dsl.pipeline(name=PIPELINE_NAME, description="Prompt tuning (Lester et al., 2021): validate, LM-adapt, "
                                                  "train soft prompts, evaluate, register.")
    def prompt_tuning(
        task: str = pipe["task"],
        model: str = params["model"],
        data: str = pipe["data"],
        data_root: str = pipe["data_root"],
        reuse_validation: bool = pipe["reuse_validation"],
        lm_adapt_steps: int = pipe["lm_adapt_steps"],
        lm_objective: str = params["lm_adapt"]["objective"],
        lm_corpus: str = pipe["lm_corpus"],
        lm_cache_root: str = pipe["lm_cache_root"],
        prompt_length: int = params["prompt"]["length"],
        init: str = params["prompt"]["init"],
        steps: int = train["steps"],
        batch_size: int = train["batch_size"],
        learning_rate: float = train["optimizer"]["prompt"]["lr"],
        seeds: list = seeds_for(pipe["num_prompts"], train["seed"]),  # noqa: B006 (KFP reads the default)
        eval_mode: str = params["eval"]["mode"],
        eval_split: str = params["eval"]["split"],
        register_threshold: float = pipe["register_threshold"],
        promote: str = registry["promote"],
        promotion_margin: float = registry["promotion_margin"],
        registry_repo: str = pipe["registry_repo"],
        registry_remote: str = "",
        profile: str = profile or "",
    ) -> float:
        """Train and ship a soft prompt for one task.

        Args:
            task: Task to tune for (rte, cb, boolq, ...; see `softprompt tasks`).
            model: Base model: Hub id, gs:// URI, local directory, or `tiny`.
            data: Task data: a directory or gs:// prefix with the official files; empty loads the Hub dataset.
            data_root: Where validated data is stored by content, DATA_ROOT/<task>/<fingerprint> (gs:// on a cluster).
            reuse_validation: Reuse the stored report of the same data content, suite and thresholds (local data_root).
            lm_adapt_steps: LM-adaptation steps before prompt tuning; 0 uses the base model as is.
            lm_objective: prefix-lm (LM adaptation) or span-corruption.
            lm_corpus: Corpus for LM adaptation (c4, hf:DATASET[:CONFIG], or a path).
            lm_cache_root: Where adapted checkpoints are reused from (same base/objective/steps).
            prompt_length: Soft-prompt length P.
            init: Prompt initialisation: random, sampled-vocab or class-label.
            steps: Prompt-training steps.
            batch_size: Training batch size.
            learning_rate: Adafactor learning rate (constant).
            seeds: One prompt is trained per seed, in parallel; several make an ensemble.
            eval_mode: generate (exact label match, as the paper reports) or rank.
            eval_split: Split to evaluate and gate on.
            register_threshold: Register only if the best prompt's main metric reaches this.
            promote: After registration: auto (promote past the metric gate), never, or force.
            promotion_margin: auto promotion needs the main metric to beat production by this much.
            registry_repo: Registry git checkout or URL; empty means the current checkout.
            registry_remote: DVC remote override (a directory or gs://); empty uses params.yaml.
            profile: params.yaml profile the steps read their remaining settings from.
        """
        check = validate_data(task=task, data=data, data_root=data_root, reuse=reuse_validation)
        check.set_caching_options(False)  # `data` is a location whose content changes: always read it
        fingerprint, location = check.outputs["fingerprint"], check.outputs["location"]
        base = lm_adapt(base_model=model, steps=lm_adapt_steps, objective=lm_objective, corpus=lm_corpus,
                        cache_root=lm_cache_root, profile=profile)
        with dsl.ParallelFor(seeds, parallelism=0) as seed:
            trained = train_prompt(task=task, data=location, data_fingerprint=fingerprint, base=base.outputs["model"],
                                   profile=profile, prompt_length=prompt_length, init=init, steps=steps,
                                   batch_size=batch_size, learning_rate=learning_rate, seed=seed)
        scored = evaluate_prompts(task=task, data=location, data_fingerprint=fingerprint,
                                  prompts=dsl.Collected(trained.outputs["prompt"]), mode=eval_mode, split=eval_split)
        with dsl.If(scored.outputs["Output"] >= register_threshold, name="passes-threshold"):
            registered = register_prompt(task=task, prompt=scored.outputs["best_prompt"],
                                         evaluation=scored.outputs["evaluation"], registry_repo=registry_repo,
                                         registry_remote=registry_remote, promote=promote,
                                         promotion_margin=promotion_margin, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        registered.set_caching_options(False)  # it changes the registry: never replay it from cache
        if on_cluster:
            # with several nodes or GPUs (softprompt.trainjob) the train step only submits a TrainJob and waits
            job = placement(params) is not None
            for step in (base, scored) if job else (base, trained, scored):
                use_accelerator(step, cluster, params)
                request(step, cluster, "heavy")
            for step in (check, registered, trained) if job else (check, registered):
                use_cpu_pool(step, cluster)
                request(step, cluster, "light")
            for step in (base, trained):
                mount_secret(step, cluster, "hf_token", optional=True)
            mount_secret(registered, cluster, "registry_git", optional=True)
            mount_secret(registered, cluster, "registry_gcs", optional=False)  # the only registry-bucket writer
        return scored.outputs["Output"]

    return prompt_tuning
