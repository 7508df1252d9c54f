"""Preflight: the pipeline's first step, CPU only and never cached, that refuses settings a cluster run cannot
finish with and hands the cached steps their cache epoch."""

from kfp import dsl

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preflight(data_root: str, registry_repo: str, registry_remote: str, lm_adapt_steps: int, lm_cache_root: str,
              shared_storage: bool, cache_max_age_days: int) -> str:
    """Fail at once, with one line naming every setting to change, when a pod-local path or an empty registry
    setting would make a later step fail (after the GPU steps have run) or lose what it writes. With
    `shared_storage` false (kfp.local runs, one filesystem) there is nothing to refuse.

    Returns the cache epoch (see softprompt.pipeline_steps.cache_epoch): the cached steps take it as a
    parameter, so KFP's cache never returns a result older than `cache_max_age_days`, whose artifacts the
    pipeline root's lifecycle rule may have deleted."""
    from softprompt.errors import SoftpromptError
    from softprompt.pipeline_steps import cache_epoch, check_cluster_settings

    if shared_storage:
        try:
            check_cluster_settings({"data_root": data_root, "registry_repo": registry_repo,
                                    "registry_remote": registry_remote, "lm_adapt_steps": lm_adapt_steps,
                                    "lm_cache_root": lm_cache_root})
        except SoftpromptError as e:
            raise SystemExit(f"preflight: {e}") from None  # the message alone, no traceback
    return cache_epoch(cache_max_age_days)
