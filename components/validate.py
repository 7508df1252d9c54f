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
def validate_data(task: str, data: str, data_root: str, reuse: bool, validation: Output[Artifact],
                  report: Output[HTML],
                  checks: Output[Metrics]) -> NamedTuple("Outputs", fingerprint=str, location=str):
    """Validate the task's data (a directory, gs:// prefix, or '' for the Hub) and store it under
    DATA_ROOT/<task>/<fingerprint>; fail the run on bad data. With `reuse`, content that the same suite
    validated before (a local DATA_ROOT) gets that stored report instead of a second Great Expectations run.
    `report` (HTML) is one self-contained page with every expectation, its result and sample offending rows;
    `validation` holds validation.json and the full Great Expectations Data Docs site (data_docs/)."""
    import tempfile
    from collections import namedtuple

    from softprompt.pipeline_steps import log_metrics, validate_step, validation_reports

    try:
        result = validate_step(task, data, data_root, validation.path, tempfile.mkdtemp(), reuse=reuse)
    finally:  # failed data too: the page shows what failed
        validation_reports(validation.path, report.path)
    stats = result["statistics"]
    log_metrics(checks, {"evaluated_expectations": stats["evaluated_expectations"],
                         "unsuccessful_expectations": stats["unsuccessful_expectations"],
                         **{f"{split}_rows": info["rows"] for split, info in result["splits"].items()}})
    validation.metadata.update({"task": task, "source": data, "reused": result["reused"],
                                "fingerprint": result["fingerprint"],
                                "location": result["location"], "files": result["files"]})
    outputs = namedtuple("Outputs", ["fingerprint", "location"])
    return outputs(result["fingerprint"], result["location"])
