"""Data validation: the Great Expectations gate; its Data Docs show in the Kubeflow UI as HTML.

Never cached (the pipeline turns caching off for it): `data` names a location whose content can change
between runs. It outputs whether the data passed, the content's fingerprint and the content-addressed
location it stored the validated files at. The step succeeds on bad data too, so the launcher uploads its
report (KFP uploads a step's outputs only when it succeeds); the pipeline gates the GPU steps on `passed`
and ends the run failed through `validation_failed` (see pipelines/prompt_tuning.py).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate_data(task: str, data: str, data_root: str, reuse: bool, validation: Output[Artifact],
                  report: Output[HTML],
                  checks: Output[Metrics]) -> NamedTuple("Outputs", passed=bool, fingerprint=str, location=str):
    """Validate the task's data (a directory, gs:// prefix, or '' for the Hub) and, when it passes, store it
    under DATA_ROOT/<task>/<fingerprint>. Bad data is an output (`passed` false, empty fingerprint and
    location), not a failure of this step. With `reuse`, content that the same suite validated before (a
    local DATA_ROOT) gets that stored report instead of a second Great Expectations run.
    `report` (HTML) is one self-contained page with every expectation, its result and sample offending rows;
    `validation` holds validation.json and the full Great Expectations Data Docs site (data_docs/)."""
    import tempfile
    from collections import namedtuple

    from softprompt.pipeline_steps import log_metrics, validate_step, validation_reports

    result = validate_step(task, data, data_root, validation.path, tempfile.mkdtemp(), reuse=reuse, check=False)
    validation_reports(validation.path, report.path)
    stats = result["statistics"]
    log_metrics(checks, {"evaluated_expectations": stats["evaluated_expectations"],
                         "unsuccessful_expectations": stats["unsuccessful_expectations"],
                         **{f"{split}_rows": info["rows"] for split, info in result["splits"].items()}})
    validation.metadata.update({"task": task, "source": data, "passed": result["success"],
                                "reused": result.get("reused", False), "fingerprint": result.get("fingerprint", ""),
                                "location": result.get("location", ""), "files": result.get("files", {})})
    outputs = namedtuple("Outputs", ["passed", "fingerprint", "location"])
    return outputs(bool(result["success"]), result.get("fingerprint", ""), result.get("location", ""))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validation_failed(task: str, validation: Input[Artifact]):
    """Fail the run because the data did not pass: validate-data's report is already uploaded (its step
    succeeded), and this step's error names what failed."""
    from softprompt.pipeline_steps import validation_failure

    raise SystemExit(validation_failure(task, validation.path))
