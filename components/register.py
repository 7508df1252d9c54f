"""Prompt registration: an immutable registry version, promoted to production only past the gate."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_prompt(task: str, prompt: Input[Model], evaluation: Input[Dataset], registry_repo: str,
                    registry_remote: str, promote: str, promotion_margin: float, run_id: str,
                    summary: Output[Markdown], registered: Output[Model]) -> str:
    """Register the best prompt with its lineage; returns the version name (e.g. rte-prompt@v3.0.0). A prompt
    whose content is already registered adds nothing: it returns that version and the summary says why.

    `registered` is the registry version as an artifact (ML Metadata links the data, the prompt and it): its
    URI is where the registry's DVC remote holds the version's files, its metadata the tag, md5 and stage.
    The summary artifact's metadata carries the result (`version`, `promoted`, `reason`, `new`, the metric) for
    whatever runs next; its Markdown renders the same for people in the Kubeflow UI."""
    import os

    from softprompt.pipeline_steps import register_step

    reg = register_step(task, prompt.path, os.path.join(evaluation.path, "metrics.json"), repo=registry_repo or None,
                        run_id=run_id, policy=promote, margin=promotion_margin, remote=registry_remote or None)
    summary.metadata.update({"task": task, "version": reg["tag"], "promoted": reg["promoted"], "reason": reg["reason"],
                             "new": reg["new"], "main_metric": reg["main_metric"], "value": reg["value"],
                             "md5": reg["md5"]})
    lines = [f"# {task}: {reg['tag']}", "", "| | |", "|---|---|",
             f"| {reg['main_metric']} | {reg['value']:.2f} |", f"| new version | {reg['new']} |",
             f"| promoted | {reg['promoted']} |", f"| why | {reg['reason']} |", f"| content md5 | `{reg['md5']}` |"]
    with open(summary.path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    registered.uri = reg["uri"]  # the registry version itself (the launcher records it; nothing is uploaded)
    registered.metadata.update({"task": task, "tag": reg["tag"], "md5": reg["md5"], "stage": reg["stage"],
                                "main_metric": reg["main_metric"], "value": reg["value"], "new": reg["new"]})
    return reg["tag"]
