"""The prompt-tuning pipeline: preflight -> validate -> (data passed) import the data, LM-adapt or take the base
as is -> train N prompts in parallel -> evaluate -> register.

Every step is its own pod on a cluster: it sees only the artifacts it declares as inputs (KFP's launcher
downloads those and nothing else). So the base model reaches train *and* evaluate as lm-adapt's output
artifact, the validated data reaches them as a Dataset artifact, and nothing hands on a pod-local path.

Caching follows the data's content, not its location. KFP looks a cached execution up by a cache key
(kubeflow/pipelines api/v2alpha1/cache_key.proto, filled in by backend/src/v2/cacheutils/cache.go): the
input parameter *values*, the *names* of the input artifacts, the output specs and the container's image and
command (the lookup is also scoped to the pipeline name and namespace). This shapes the DAG:

1. validate-data's only inputs are strings naming a location (`data`), so a cached validation would replay
   last week's result for this week's files. Its caching is off: it always reads the data. It stores the
   passed data at DATA_ROOT/<task>/<fingerprint> and hands on that location and the fingerprint.
2. The data enters train and evaluate through `dsl.importer` of that location with reimport=False: the same
   URI is the same ML Metadata artifact, so unchanged data keeps the cache keys of the steps after it (an
   artifact *output* by the always-run validation would be new every run and never hit the cache).
3. The cached steps take preflight's cache epoch as a parameter, so a cache hit is never older than
   params.yaml cluster.cache_max_age_days, below the age at which the pipeline root's lifecycle rule deletes
   run artifacts (infra/terraform/storage.tf): a cached result never points at an expired object.
4. The compiled spec names the image by digest when `make image` recorded one (softprompt.cluster
   .pinned_image): the image string is in the cache key, so a new build is a cache miss.

Bad data does not fail validate-data (KFP uploads a step's outputs only when it succeeds, and the report must
reach the UI); its `passed` output gates every later step (dsl.If), and `validation-failed` ends the run failed.
With lm_adapt_steps 0 the base goes through `base-as-is`, a CPU step, so no GPU node is requested.

Registration is never cached (it writes the registry); it registers nothing when the prompt's content is
already registered, which is what an unchanged week produces.

Every parameter's default comes from params.yaml (optionally a profile of it), the one place defaults are
written; the cluster spec's storage defaults come from `cluster.pipeline_defaults`. Scheduling (accelerators,
node selectors, tolerations, retries, secrets, resources, timeouts) comes from its `cluster:` section, which
infra/ reads too.
"""


from typing import Any

from kfp import dsl, kubernetes
from kfp.dsl import Dataset

from components.evaluate import evaluate_prompts
from components.lm_adapt import base_as_is, lm_adapt
from components.preflight import preflight
from components.register import register_prompt
from components.train import train_prompt
from components.validate import validate_data, validation_failed
from softprompt.cluster import BASE_VARIANT, accelerator_request, pinned_image
from softprompt.config import load_params
from softprompt.trainjob import placement

PIPELINE_NAME = "softprompt-prompt-tuning"
CHECKPOINT_ROOT = dsl.PIPELINE_ROOT_PLACEHOLDER + "/checkpoints"  # durable, shared by a step's retries
# The parameters whose params.yaml default is a local path or empty: a cluster spec takes
# cluster.pipeline_defaults instead (storage every pod reaches).
CLUSTER_DEFAULTS = ("data_root", "registry_repo", "registry_remote", "lm_cache_root")


def seeds_for(num_prompts: int, seed: int) -> list[int]:
    """One seed per prompt: seed, seed+1, ... (the ensemble's members differ only by seed)."""
    return [seed + i for i in range(num_prompts)]


def parameter_defaults(params: dict[str, Any], on_cluster: bool) -> dict[str, Any]:
    """The storage parameters' defaults: params.yaml pipeline:/registry: for kfp.local runs, and for a cluster
    spec `cluster.pipeline_defaults` (gs:// data root and DVC remote, the registry repo's URL)."""
    pipe = params["pipeline"]
    local = {"data_root": pipe["data_root"], "registry_repo": pipe["registry_repo"], "registry_remote": "",
             "lm_cache_root": pipe["lm_cache_root"]}
    if not on_cluster:
        return local
    cluster = params["cluster"]["pipeline_defaults"]
    return {name: cluster.get(name, local[name]) for name in CLUSTER_DEFAULTS}


def use_accelerator(task: dsl.PipelineTask, cluster: dict[str, Any], params: dict[str, Any]) -> None:
    """Land a step on the configured accelerator pool: its image (the TPU image on TPU pools, by digest when
    known), resource request, node selector, toleration, retries."""
    name = cluster.get("accelerator") or "none"
    if name == "none":
        return
    pool = accelerator_request(name, params)
    task.set_container_image(pinned_image(cluster["accelerators"][name].get("image", BASE_VARIANT), params))
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


def request(task: dsl.PipelineTask, cluster: dict[str, Any], kind: str, step: str) -> None:
    """A step's resources from params.yaml `cluster:`: CPU and memory requests, a memory limit, a scratch emptyDir
    with a size limit (TMPDIR and HOME; KFP's spec has no ephemeral-storage request, so the emptyDir's
    sizeLimit is what bounds the step's disk) and a timeout (the pod's activeDeadlineSeconds)."""
    res = cluster["resources"][kind]
    task.set_cpu_request(res["cpu"]).set_memory_request(res["memory"]).set_memory_limit(res["memory_limit"])
    scratch = cluster["scratch_path"]
    kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path=scratch, size_limit=res["scratch"])
    task.set_env_variable("TMPDIR", scratch).set_env_variable("HOME", scratch)
    kubernetes.set_timeout(task, int(cluster["timeouts"][step]))


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


def schedule(steps: dict[str, dsl.PipelineTask], cluster: dict[str, Any], params: dict[str, Any]) -> None:
    """Where each step runs on a cluster: GPU steps on the accelerator pool, the rest on the CPU pool; every
    step with its resources, scratch and timeout, in the image named by digest when one is known."""
    base_image = pinned_image(BASE_VARIANT, params)
    # with several nodes or GPUs (softprompt.trainjob) the train step only submits a TrainJob and waits: CPU pool
    gpu_steps = [s for s in GPU_STEPS if s != "train-prompt"] if placement(params) else GPU_STEPS
    for name, step in steps.items():
        step.set_container_image(base_image)
        gpu = name in gpu_steps
        if gpu:
            use_accelerator(step, cluster, params)
        else:
            use_cpu_pool(step, cluster)
        request(step, cluster, "heavy" if gpu else "light", name)
    for name in ("lm-adapt", "train-prompt"):
        mount_secret(steps[name], cluster, "hf_token", optional=True)
    mount_secret(steps["register-prompt"], cluster, "registry_git", optional=True)
    mount_secret(steps["register-prompt"], cluster, "registry_gcs", optional=False)  # the only registry-bucket writer


GPU_STEPS = ("lm-adapt", "train-prompt", "evaluate-prompts")


def build_pipeline(profile: str | None = None, on_cluster: bool = True):
    """The pipeline function, its defaults from params.yaml (+ `profile`).

    `on_cluster=False` leaves out the Kubernetes scheduling settings for kfp.local runs (the local runner
    has no node pools), keeps the local storage defaults and lets preflight accept local paths; the DAG and
    every parameter are the same.
    """
    params = load_params(profile)
    pipe, train, cluster = params["pipeline"], params["train"], params["cluster"]
    registry = params["registry"]
    storage = parameter_defaults(params, on_cluster)

    @dsl.pipeline(name=PIPELINE_NAME, description="Prompt tuning (Lester et al., 2021): validate, LM-adapt, "
                                                  "train soft prompts, evaluate, register.")
    def prompt_tuning(
        task: str = pipe["task"],
        model: str = params["model"],
        data: str = pipe["data"],
        data_root: str = storage["data_root"],
        reuse_validation: bool = pipe["reuse_validation"],
        lm_adapt_steps: int = pipe["lm_adapt_steps"],
        lm_objective: str = params["lm_adapt"]["objective"],
        lm_corpus: str = pipe["lm_corpus"],
        lm_cache_root: str = storage["lm_cache_root"],
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
        registry_repo: str = storage["registry_repo"],
        registry_remote: str = storage["registry_remote"],
        profile: str = profile or "",
    ):
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
            registry_repo: Registry git URL (a cluster) or checkout; empty means the current checkout.
            registry_remote: DVC remote (gs:// on a cluster, never committed into the registry repo); empty uses
                params.yaml registry.remote.
            profile: params.yaml profile the steps read their remaining settings from.
        """
        pre = preflight(data_root=data_root, registry_repo=registry_repo, registry_remote=registry_remote,
                        lm_adapt_steps=lm_adapt_steps, lm_cache_root=lm_cache_root, shared_storage=on_cluster,
                        cache_max_age_days=cluster["cache_max_age_days"])
        pre.set_caching_options(False)  # it reads the clock (the cache epoch) and the run's settings
        check = validate_data(task=task, data=data, data_root=data_root, reuse=reuse_validation)
        check.set_caching_options(False)  # `data` is a location whose content changes: always read it
        check.after(pre)
        epoch, fingerprint = pre.output, check.outputs["fingerprint"]
        with dsl.If(check.outputs["passed"] == True, name="data-passed"):  # noqa: E712 (a KFP condition)
            dataset = dsl.importer(artifact_uri=check.outputs["location"], artifact_class=Dataset, reimport=False)
            with dsl.If(lm_adapt_steps > 0, name="lm-adapt-on"):
                adapted = lm_adapt(base_model=model, steps=lm_adapt_steps, objective=lm_objective, corpus=lm_corpus,
                                   cache_root=lm_cache_root, profile=profile, cache_epoch=epoch)
            with dsl.Else(name="lm-adapt-off"):
                as_is = base_as_is(base_model=model)
            base = dsl.OneOf(adapted.outputs["model"], as_is.outputs["model"])
            with dsl.ParallelFor(seeds, parallelism=0) as seed:
                trained = train_prompt(task=task, data=dataset.output, data_fingerprint=fingerprint, base=base,
                                       profile=profile, prompt_length=prompt_length, init=init, steps=steps,
                                       batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                                       checkpoint_root=CHECKPOINT_ROOT, cache_epoch=epoch)
            scored = evaluate_prompts(task=task, data=dataset.output, data_fingerprint=fingerprint,
                                      prompts=dsl.Collected(trained.outputs["prompt"]), base=base, mode=eval_mode,
                                      split=eval_split, profile=profile, cache_epoch=epoch)
            with dsl.If(scored.outputs["Output"] >= register_threshold, name="passes-threshold"):
                registered = register_prompt(task=task, prompt=scored.outputs["best_prompt"],
                                             evaluation=scored.outputs["evaluation"], registry_repo=registry_repo,
                                             registry_remote=registry_remote, promote=promote,
                                             promotion_margin=promotion_margin,
                                             run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
            registered.set_caching_options(False)  # it changes the registry: never replay it from cache
        with dsl.Else(name="data-failed"):
            failed = validation_failed(task=task, validation=check.outputs["validation"])
            failed.set_caching_options(False)
        if on_cluster:
            schedule({"preflight": pre, "validate-data": check, "lm-adapt": adapted, "base-as-is": as_is,
                      "train-prompt": trained, "evaluate-prompts": scored, "register-prompt": registered,
                      "validation-failed": failed}, cluster, params)

    return prompt_tuning
