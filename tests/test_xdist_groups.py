"""`make test`'s scheduling (tests/conftest.py): under `-n 2 --dist loadgroup`, the tests that share a module
fixture run on one worker, which builds the fixture once."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]
CONFTEST = Path(__file__).with_name("conftest.py")

SUITE = '''
import os
from pathlib import Path

import pytest

BUILDS = Path(os.environ["BUILDS"])


@pytest.fixture(scope="module")
def costly():
    with BUILDS.open("a") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
    return 1


@pytest.mark.parametrize("i", range(6))
def test_uses_it(costly, i):
    assert costly == 1


@pytest.mark.parametrize("i", range(6))
def test_alone(i):
    pass
'''


def test_tests_sharing_a_module_fixture_run_on_one_worker(pytester, monkeypatch):
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(test_suite=SUITE)
    builds = pytester.path / "builds.txt"
    monkeypatch.setenv("BUILDS", str(builds))
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup", "-p", "xdist", "-v")
    result.assert_outcomes(passed=12)
    assert len(builds.read_text().splitlines()) == 1  # the module fixture was built once
    grouped = {line.split()[0] for line in result.outlines if "PASSED" in line and "test_uses_it" in line}
    assert len(grouped) == 1  # all six on the worker that built the fixture
    # Where the ungrouped tests land is timing (a worker that starts late may get none), so it is not asserted.
