"""softprompt.registry.versions: tag names and the promotion gate, force rule included (pure: no git, no DVC)."""

from __future__ import annotations

import pytest

from softprompt.errors import SoftpromptError
from softprompt.registry.versions import Version, gate, parse_version, stage_numbers, version_tag, version_tags


def v(number: int, value: float | None, md5: str = "", metric: str = "score") -> Version:
    return Version(task="rte", number=number, commit=f"c{number}", md5=md5 or f"m{number}", main_metric=metric,
                   value=value)


def test_gate_needs_the_margin():
    assert gate(v(1, 60.0), None, 0.5) == (True, "rte has no production prompt yet")
    ok, reason = gate(v(2, 60.4), v(1, 60.0), 0.5)
    assert not ok and reason == "score 60.4 does not beat production v1 (60) by more than 0.5"
    assert gate(v(2, 60.6), v(1, 60.0), 0.5) == (True, "score 60.6 beats production v1 (60) by more than 0.5")
    ok, reason = gate(v(2, 70.0, metric="accuracy"), v(1, 60.0), 0.5)
    assert not ok and "cannot compare" in reason and "--force" in reason


def test_force_skips_the_metric_but_not_the_identity_check():
    assert gate(v(2, 10.0), v(1, 60.0), 0.5, force=True) == (True, "forced")
    assert gate(v(2, 10.0), None, 0.5, force=True) == (True, "forced")
    same = gate(v(2, 90.0, md5="x"), v(1, 60.0, md5="x"), 0.5, force=True)
    assert same == (False, "v2 is already in production (v1)")


def test_tags_name_versions_and_the_highest_stage_counter_wins():
    tags = [("rte-prompt@v1.0.0", "c1", ""), ("rte-prompt@v2.0.0", "c2", ""), ("cb-prompt@v1.0.0", "d1", ""),
            ("rte-prompt#prod#1", "c1", ""), ("rte-prompt#prod#3", "c1", ""), ("rte-prompt#prod#2", "c2", ""),
            ("cb-prompt#staging#1", "d1", ""), ("unrelated", "c2", "")]
    assert [(t, n) for t, n, _, _ in version_tags(tags)] == [("rte", 1), ("rte", 2), ("cb", 1)]
    assert stage_numbers(tags, "prod") == {"rte": 1}
    assert stage_numbers(tags, "staging") == {"cb": 1}
    assert version_tag("rte", 3) == "rte-prompt@v3.0.0" == v(3, None).tag
    assert [parse_version(x) for x in ("3", "v3", "v3.0.0")] == [3, 3, 3]
    with pytest.raises(SoftpromptError, match="expected a version number"):
        parse_version("v0")
