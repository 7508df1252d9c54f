"""What a registered version records about itself: its metrics, the data and code it came from, and the
copy of the prompt that carries that record in its softprompt.json."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from softprompt.errors import SoftpromptError
from softprompt.io import atomic_dir, write_json
from softprompt.registry.versions import artifact, semver

META_FILE = "softprompt.json"  # as softprompt.prompt.META_FILE; not imported to keep torch out of `registry list`
# The lineage fields repeated in a version's .dvc `meta:` block, so listing versions reads no prompt files.
DVC_META_KEYS = ("task", "version", "main_metric", "value", "run_id", "code_version", "registered_at", "base_model",
                 "prompt_md5")


def read_metrics(path: Path, task: str) -> tuple[str, float, dict[str, Any]]:
    """(main metric name, its value, all numeric metrics) from `softprompt evaluate`'s JSON."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise SoftpromptError(f"--metrics {path}: no such file; pass the --output of `softprompt evaluate`") from e
    except json.JSONDecodeError as e:
        raise SoftpromptError(f"--metrics {path}: invalid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(data, dict) or not isinstance(data.get("main_metric"), str):
        raise SoftpromptError(f"--metrics {path}: no 'main_metric' field; pass the --output of `softprompt evaluate`")
    name = data["main_metric"]
    value = data.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise SoftpromptError(f"--metrics {path}: main metric {name!r} has no numeric value")
    if data.get("task") not in (None, task):
        raise SoftpromptError(f"--metrics {path}: metrics are for task {data['task']!r}, not {task!r}")
    numeric = {k: v for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return name, float(value), {**numeric, "main_metric": name, "split": data.get("split")}


def data_version(repo: Path, task: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The data the prompt was trained on: training's record, plus DVC's hash from dvc.lock when present."""
    out = dict(meta.get("data") or {})
    content = meta.get("data_content") or {}  # the pipeline's validated data: content fingerprint and location
    if content.get("fingerprint"):
        out["fingerprint"] = content["fingerprint"]
        out["location"] = content.get("location")
    lock = repo / "dvc.lock"
    if lock.is_file():
        with contextlib.suppress(yaml.YAMLError, AttributeError, TypeError):
            for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
                for item in stage.get("outs", []):
                    if item.get("path", "").rstrip("/") == f"data/validated/{task}":
                        out["dvc"] = {"path": item["path"], "md5": item.get("md5")}
    return out


def lineage(repo: Path, task: str, number: int, meta: dict[str, Any], metrics: tuple[str, float, dict[str, Any]],
            content_md5: str, run_id: str | None, code: str) -> dict[str, Any]:
    """The record of version `number`: base model, data, code, training settings, metrics and run."""
    main_metric, value, all_metrics = metrics
    return {
        "task": task, "version": semver(number), "artifact": artifact(task),
        "base_model": meta["base_model"], "base_fingerprint": meta["base_fingerprint"],
        "data": data_version(repo, task, meta), "code_version": code,
        "params": {"model": meta["base_model"], "prompt_length": meta.get("prompt_length"),
                   "init": meta.get("init"), "train": meta.get("train")},
        "metrics": all_metrics, "main_metric": main_metric, "value": value, "prompt_md5": content_md5,
        "run_id": run_id or os.environ.get("SOFTPROMPT_RUN_ID") or "manual",
        "registered_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def dvc_meta(record: dict[str, Any]) -> dict[str, Any]:
    """The summary of a lineage record that goes into the version's .dvc file."""
    return {**{k: record[k] for k in DVC_META_KEYS}, "data_fingerprint": record["data"].get("fingerprint"),
            "data_files": record["data"].get("files"),  # `registry show`: the data version
            "metrics": {k: v for k, v in record["metrics"].items()  # `registry show`: the scores
                        if isinstance(v, float)}}  # (counts and settings are ints)


def copy_prompt(src: Path, dest: Path, record: dict[str, Any]) -> None:
    """Copy the prompt's files (not checkpoints or hidden files) to `dest`, with the lineage in softprompt.json."""
    with atomic_dir(dest) as tmp:
        for path in sorted(src.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, tmp / path.name)
        meta = json.loads((tmp / META_FILE).read_text(encoding="utf-8"))
        meta["registry"] = record
        write_json(tmp / META_FILE, meta)
