"""`gto show` and `gto history` read the registry `softprompt registry register` / `promote` write
(docs/registry.md: "Which version is in production: `softprompt registry list --task rte` (or `gto show
rte-prompt`)")."""

from __future__ import annotations

import json

import pytest

from clients.conftest import TASK, Project

ARTIFACT = f"{TASK}-prompt"


@pytest.fixture(scope="module")
def registry_repo(project, tmp_path_factory) -> Project:
    """A registry repo with two versions (the repro'd prompt, then one of another seed), neither promoted at
    registration, then v2 promoted."""
    tmp = tmp_path_factory.mktemp("gto")
    reg = Project(tmp / "registry", {**project.env, "SOFTPROMPT_REGISTRY_REMOTE": str(tmp / "remote")})
    reg.root.mkdir()
    (reg.root / "README.md").write_text("registry\n")
    for args in (["init", "-q", "-b", "main"], ["add", "README.md"], ["commit", "-qm", "init"]):
        reg.run("git", *args)
    # Two different prompts: registering the same content twice is refused as nothing new.
    second = tmp / "seed11"
    project.run("softprompt", "train", "--task", TASK, "--data", f"data/validated/{TASK}", "--profile", "smoke",
                "--seed", "11", "--output", str(second / "prompt"))
    project.run("softprompt", "evaluate", "--task", TASK, "--prompt", str(second / "prompt"), "--data",
                f"data/validated/{TASK}", "--profile", "smoke", "--output", str(second / "metrics.json"))
    for prompt, metrics in ((project.root / f"prompts/{TASK}", project.root / f"metrics/{TASK}.json"),
                            (second / "prompt", second / "metrics.json")):
        reg.run("softprompt", "registry", "register", "--task", TASK, "--prompt", str(prompt), "--metrics",
                str(metrics), "--promote", "never", "--repo", str(reg.root))
    reg.run("softprompt", "registry", "promote", "--task", TASK, "--version", "2", "--force", "--repo", str(reg.root))
    return reg


def test_gto_show_lists_the_versions_and_the_production_stage(registry_repo):
    overview = json.loads(registry_repo.run("gto", "show", "--json"))
    assert overview[ARTIFACT]["version"] == "v2.0.0"  # the latest
    assert overview[ARTIFACT]["stage"] == {"prod": "v2.0.0"}

    versions = json.loads(registry_repo.run("gto", "show", ARTIFACT, "--json"))
    stages = {v["version"]: [s["stage"] for s in v["stages"]] for v in versions}
    assert stages == {"v1.0.0": [], "v2.0.0": ["prod"]}


def test_gto_history_journals_two_registrations_and_one_promotion(registry_repo):
    events = json.loads(registry_repo.run("gto", "history", ARTIFACT, "--json"))
    kinds = sorted((e["event"], e["version"]) for e in events if e["event"] != "commit")
    assert kinds == [("assignment", "v2.0.0"), ("registration", "v1.0.0"), ("registration", "v2.0.0")]
    assert next(e for e in events if e["event"] == "assignment")["stage"] == "prod"
    table = registry_repo.run("gto", "history", ARTIFACT)  # the human-readable journal names the same events
    assert "registration" in table and "assignment" in table and "prod" in table
