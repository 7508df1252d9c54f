"""The production pointer of a `gs://` registry: one small JSON object per task, changed by compare-and-swap.

With a GCS remote, registrations may run in many pipeline pods, each in its own clone; a file lock cannot
order them. The object `<remote>/softprompt-production/<task>.json` (version, content hash, metric) is the
arbiter: a promotion reads it with its generation, applies the gate against it, and writes it with
`if_generation_match`, so of two racing promotions exactly one wins and the loser re-checks the gate
against the winner. Credentials come from the environment (ADC / Workload Identity), never from the repo.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from softprompt.errors import SoftpromptError
from softprompt.gcs import client, split_uri
from softprompt.registry.versions import Version, gate

POINTER_DIR = "softprompt-production"
MAX_TRIES = 8


def pointer_name(remote: str, task: str) -> tuple[str, str]:
    bucket, prefix = split_uri(remote)
    return bucket, "/".join(p for p in (prefix, POINTER_DIR, f"{task}.json") if p)


def read_pointer(remote: str, task: str) -> tuple[dict[str, Any] | None, int]:
    """The task's production pointer and its generation (0 when there is none yet)."""
    from google.api_core import exceptions

    bucket, name = pointer_name(remote, task)
    blob = client().bucket(bucket).blob(name)
    try:
        blob.reload()
        data = json.loads(blob.download_as_bytes(if_generation_match=blob.generation))
    except exceptions.NotFound:
        return None, 0
    except exceptions.PreconditionFailed:
        return read_pointer(remote, task)  # changed between reload and download: read again
    except json.JSONDecodeError as e:
        raise SoftpromptError(f"gs://{bucket}/{name}: not valid JSON ({e.msg}); delete it and promote again") from e
    return data, int(blob.generation)


def write_pointer(remote: str, task: str, data: dict[str, Any], generation: int) -> bool:
    """Write the pointer only if it is still at `generation` (0: only if absent); False if someone else won."""
    from google.api_core import exceptions

    bucket, name = pointer_name(remote, task)
    blob = client().bucket(bucket).blob(name)
    try:
        blob.upload_from_string(json.dumps(data, indent=2), content_type="application/json",
                                if_generation_match=generation)
    except exceptions.PreconditionFailed:
        return False
    return True


def swap_production(remote: str, candidate: Version, margin: float, force: bool) -> tuple[bool, str]:
    """Gate `candidate` against the pointer and swap it in; retried on a lost race. A pointer that already
    names `candidate` (same version, same content) is left as it is: moving it again is a no-op, so a
    registration retried after its pointer write can safely move it again."""
    for _ in range(MAX_TRIES):
        current, generation = read_pointer(remote, candidate.task)
        if current and int(current.get("number", 0)) == candidate.number and current.get("md5") == candidate.md5:
            return True, f"{candidate.name} is already the production pointer"
        ok, reason = gate(candidate, pointed_version(candidate.task, current), margin, force)
        if not ok:
            return False, reason + " (gs production pointer)"
        if write_pointer(remote, candidate.task, pointer_data(candidate), generation):
            return True, reason
    raise SoftpromptError(f"{remote}: production pointer of {candidate.task} kept changing during {MAX_TRIES} "
                          "tries; retry the promotion")


def pointed_version(task: str, pointer: dict[str, Any] | None) -> Version | None:
    """The production version a pointer names (None: no pointer yet)."""
    if not pointer:
        return None
    return Version(task=task, number=int(pointer["number"]), commit="", md5=pointer.get("md5", ""),
                   main_metric=pointer.get("main_metric", ""), value=pointer.get("value"))


def pointer_data(version: Version) -> dict[str, Any]:
    return {"task": version.task, "version": version.name, "number": version.number, "md5": version.md5,
            "main_metric": version.main_metric, "value": version.value, "run_id": version.run_id,
            "promoted_at": datetime.now(UTC).isoformat(timespec="seconds")}
