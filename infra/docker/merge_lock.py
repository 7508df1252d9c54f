"""merge_lock.py LOCK OVERRIDES: print LOCK with the pin of every package OVERRIDES names replaced by OVERRIDES'
own line. The TPU image (`make image VARIANT=tpu`) and `make test-xla` both install requirements.lock merged
with requirements-xla.txt this way, so the two hold the same pins. Standard library only: the image's build
stage runs it before anything is installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==")


def name(line: str) -> str | None:
    """The normalised (PEP 503) name a requirement line pins, or None for comments and blank lines."""
    match = PIN.match(line.strip())
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else None


def merge(lock: str, overrides: str) -> str:
    replaced = {n for n in map(name, overrides.splitlines()) if n}
    if not replaced:
        raise SystemExit("merge_lock.py: the overrides pin nothing (expected NAME==VERSION lines)")
    kept = [line for line in lock.splitlines() if name(line) not in replaced]
    return "\n".join(kept + overrides.splitlines()) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: merge_lock.py LOCK OVERRIDES")
    sys.stdout.write(merge(Path(sys.argv[1]).read_text(), Path(sys.argv[2]).read_text()))
