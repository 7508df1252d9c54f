"""The gs:// registry paths against a local fake-gcs-server the tests start (skipped if it cannot start)."""

from __future__ import annotations

import subprocess
import threading

import pytest
from support.registry import git, make_prompt, metrics

from softprompt import registry
from softprompt.registry import gcs_pointer

BUCKET = "softprompt-registry"


@pytest.fixture(scope="module")
def emulator(gcs_emulator):
    from softprompt.gcs import client

    client().create_bucket(BUCKET)
    return gcs_emulator


def test_pointer_compare_and_swap(emulator):
    remote = f"gs://{BUCKET}/cas"
    assert gcs_pointer.read_pointer(remote, "rte") == (None, 0)
    assert gcs_pointer.write_pointer(remote, "rte", {"number": 1}, 0)
    assert not gcs_pointer.write_pointer(remote, "rte", {"number": 2}, 0)  # someone created it first
    data, generation = gcs_pointer.read_pointer(remote, "rte")
    assert data == {"number": 1} and generation > 0
    assert gcs_pointer.write_pointer(remote, "rte", {"number": 3}, generation)
    assert not gcs_pointer.write_pointer(remote, "rte", {"number": 4}, generation)  # stale generation
    assert gcs_pointer.read_pointer(remote, "rte")[0] == {"number": 3}
    assert gcs_pointer.read_pointer(remote, "cb") == (None, 0)


def candidate(number: int, value: float, md5: str) -> registry.Version:
    return registry.Version(task="rte", number=number, commit="", md5=md5, main_metric="accuracy", value=value)


def test_racing_promotions_leave_the_best_in_production(emulator):
    """Many promoters (as in separate pipeline pods) race on one pointer: the gate holds against the winner."""
    remote = f"gs://{BUCKET}/race"
    values = [61.0, 75.0, 70.0, 64.0, 72.0, 68.0]
    results: dict[int, bool] = {}

    def run(i: int) -> None:
        results[i] = gcs_pointer.swap_production(remote, candidate(i + 1, values[i], f"md5-{i}"), 0.5, False)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(values))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pointer, _ = gcs_pointer.read_pointer(remote, "rte")
    assert pointer["value"] == 75.0 and pointer["version"] == "v2" and results[1]
    assert not gcs_pointer.swap_production(remote, candidate(9, 75.2, "md5-9"), 0.5, False)[0]
    assert gcs_pointer.swap_production(remote, candidate(9, 75.2, "md5-9"), 0.5, True) == (True, "forced")


def test_register_with_gs_remote_pushes_and_clone_pulls(emulator, tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    for args in (["init", "-q"], ["config", "user.name", "t"], ["config", "user.email", "t@t"],
                 ["commit", "-q", "--allow-empty", "-m", "init"]):
        subprocess.run(["git", "-C", str(root), *args], check=True)
    settings = registry.Settings(remote=f"gs://{BUCKET}/dvc", promotion_margin=0.5, lock_timeout=60)
    prompt = make_prompt(tmp_path / "p1", "rte", 1)
    r1 = registry.register(root, "rte", prompt, metrics(tmp_path, "rte", 60.0), settings=settings)
    assert r1.promoted
    r2 = registry.register(root, "rte", make_prompt(tmp_path / "p2", "rte", 2), metrics(tmp_path, "rte", 60.2),
                           settings=settings)
    assert not r2.promoted and "gs production pointer" not in r2.reason  # the git record already refuses it
    pointer, _ = gcs_pointer.read_pointer(settings.remote, "rte")
    assert (pointer["version"], pointer["md5"]) == ("v1", r1.md5)
    assert "url = gs://softprompt-registry/dvc" in (root / ".dvc/config").read_text()

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True)
    path, version = registry.pull(clone, "rte")
    assert version.number == 1 and registry.dir_md5(path) == r1.md5
    assert git(clone, "status", "--porcelain") == ""
