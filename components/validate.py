"""Data validation: the Great Expectations gate; its Data Docs show in the Kubeflow UI as HTML."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate_data(task: str, data: str, validated: Output[Dataset], report: Output[HTML],
                  checks: Output[Metrics]) -> bool:
    """Validate the task's data (a directory, gs:// prefix, or '' for the Hub); fail the run on bad data."""
    import os
    import tempfile

    from softprompt.pipeline_steps import validate_step

    report_dir = validated.path + ".report"
    try:
        result = validate_step(task, data, validated.path, report_dir, tempfile.mkdtemp())
    finally:
        index = os.path.join(report_dir, "data_docs", "index.html")
        if os.path.isfile(index):  # the UI's HTML viewer takes one file: the Data Docs index page
            os.makedirs(os.path.dirname(report.path), exist_ok=True)
            with open(index, encoding="utf-8") as src, open(report.path, "w", encoding="utf-8") as dst:
                dst.write(src.read())
    stats = result["statistics"]
    checks.log_metric("evaluated_expectations", stats["evaluated_expectations"])
    checks.log_metric("unsuccessful_expectations", stats["unsuccessful_expectations"])
    for split, info in result["splits"].items():
        checks.log_metric(f"{split}_rows", info["rows"])
    validated.metadata["task"] = task
    return bool(result["success"])
