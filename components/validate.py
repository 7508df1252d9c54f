"""Data validation: the Great Expectations gate; its Data Docs show in the Kubeflow UI as HTML.

Never cached (the pipeline turns caching off for it): `data` names a location whose content can change
between runs. It outputs the content's fingerprint and the content-addressed location it stored the
validated files at; training and evaluation take those two strings as parameters, so their cache keys
follow the content (see pipelines/prompt_tuning.py).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate_data(task: str, data: str, data_root: str, validation: Output[Artifact], report: Output[HTML],
                  checks: Output[Metrics]) -> NamedTuple("Outputs", fingerprint=str, location=str):
    """Validate the task's data (a directory, gs:// prefix, or '' for the Hub) and store it under
    DATA_ROOT/<task>/<fingerprint>; fail the run on bad data."""
    import os
    import tempfile
    from collections import namedtuple

    from softprompt.pipeline_steps import validate_step

    try:
        result = validate_step(task, data, data_root, validation.path, tempfile.mkdtemp())
    finally:
        index = os.path.join(validation.path, "data_docs", "index.html")
        if os.path.isfile(index):  # the UI's HTML viewer takes one file: the Data Docs index page
            os.makedirs(os.path.dirname(report.path), exist_ok=True)
            with open(index, encoding="utf-8") as src, open(report.path, "w", encoding="utf-8") as dst:
                dst.write(src.read())
    stats = result["statistics"]
    checks.log_metric("evaluated_expectations", stats["evaluated_expectations"])
    checks.log_metric("unsuccessful_expectations", stats["unsuccessful_expectations"])
    for split, info in result["splits"].items():
        checks.log_metric(f"{split}_rows", info["rows"])
    validation.metadata.update({"task": task, "source": data, "fingerprint": result["fingerprint"],
                                "location": result["location"], "files": result["files"]})
    outputs = namedtuple("Outputs", ["fingerprint", "location"])
    return outputs(result["fingerprint"], result["location"])
