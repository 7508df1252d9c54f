"""The prompt registry against a real temporary git repo, real DVC and a local directory remote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.registry import ENV, git, init_repo, make_prompt, metrics
from typer.testing import CliRunner

from softprompt import registry
from softprompt.errors import SoftpromptError

pytestmark = pytest.mark.pipeline  # real git + DVC on built registries (not in make test-fast)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prompts")
    specs = {"rte1": ("rte", 1), "rte2": ("rte", 2), "rte3": ("rte", 3), "cb1": ("cb", 4)}
    return {name: make_prompt(root / name, task, seed) for name, (task, seed) in specs.items()}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path / "registry-repo")


@pytest.fixture
def settings(tmp_path: Path) -> registry.Settings:
    return registry.Settings(remote=str(tmp_path / "remote"), promotion_margin=0.5, lock_timeout=120)


def test_register_promote_by_metric_and_gate(repo, settings, prompts, tmp_path):
    r1 = registry.register(repo, "rte", prompts["rte1"], metrics(tmp_path, "rte", 60.0), run_id="run-1",
                           settings=settings)
    assert (r1.version, r1.promoted, r1.tag) == (1, True, "rte-prompt@v1.0.0")
    r2 = registry.register(repo, "rte", prompts["rte2"], metrics(tmp_path, "rte", 70.0), settings=settings)
    assert (r2.version, r2.promoted) == (2, True)
    c1 = registry.register(repo, "cb", prompts["cb1"], metrics(tmp_path, "cb", 50.0, "f1_macro"), settings=settings)
    assert (c1.version, c1.promoted) == (1, True)
    # Worse, and better by less than the margin: both stay out of production.
    r3 = registry.register(repo, "rte", prompts["rte3"], metrics(tmp_path, "rte", 65.0), settings=settings)
    assert (r3.version, r3.promoted) == (3, False) and "does not beat production v2" in r3.reason
    assert registry.production_numbers(repo) == {"rte": 2, "cb": 1}
    ok, reason = registry.promote(repo, "rte", "v3", settings=settings)
    assert not ok and "70" in reason and registry.production_numbers(repo) == {"rte": 2, "cb": 1}

    # Forced promotion (a rollback to v1) touches rte only.
    assert registry.promote(repo, "rte", "1", force=True, settings=settings) == (True, "forced")
    assert registry.production_numbers(repo) == {"rte": 1, "cb": 1}
    assert {v.name for v in registry.versions(repo, "rte")} == {"v1", "v2", "v3"}
    tags = git(repo, "tag").split()
    assert {"rte-prompt@v1.0.0", "rte-prompt@v3.0.0", "cb-prompt@v1.0.0", "cb-prompt#prod#1"} <= set(tags)

    # Lineage inside the registered prompt; the version's files are in the remote, the tree is clean.
    lineage = json.loads((repo / "registry/rte/v2/softprompt.json").read_text())["registry"]
    assert lineage["value"] == 70.0 and lineage["main_metric"] == "accuracy"
    assert git(repo, "cat-file", "-t", lineage["code_version"].removesuffix("-dirty")).strip() == "commit"
    assert lineage["base_fingerprint"].startswith("sha256:") and lineage["data"]["files"]
    assert lineage["params"]["prompt_length"] == 4 and lineage["run_id"] == "manual"
    assert r1.md5 == registry.dir_md5(repo / "registry/rte/v1")
    assert (tmp_path / "remote/files/md5" / r1.md5[:2] / r1.md5[2:]).is_file()
    assert git(repo, "status", "--porcelain") == ""
    prod = (repo / "registry/rte/production.dvc").read_text()
    assert r1.md5 in prod


def test_same_prompt_content_registers_nothing_new(repo, settings, prompts, tmp_path):
    """A retrain that produced the very same prompt (an unchanged week) adds no version; new content does, and
    its lineage names the data fingerprint it was trained on."""
    import shutil

    from softprompt.prompt import META_FILE

    def with_data(name: str, fingerprint: str) -> Path:
        copy = tmp_path / f"{name}-{fingerprint}"
        shutil.copytree(prompts[name], copy)
        meta = json.loads((copy / META_FILE).read_text())
        meta.update(data_content={"fingerprint": fingerprint, "location": f"/data/rte/{fingerprint}"},
                    train_seconds=len(fingerprint))  # softprompt.json differs run to run; the prompt does not
        (copy / META_FILE).write_text(json.dumps(meta))
        return copy

    r1 = registry.register(repo, "rte", with_data("rte1", "aaa"), metrics(tmp_path, "rte", 60.0), settings=settings)
    head = git(repo, "rev-parse", "HEAD")
    again = registry.register(repo, "rte", with_data("rte1", "aaaa"), metrics(tmp_path, "rte", 61.0),
                              settings=settings)
    assert (again.new, again.version, again.tag, again.promoted) == (False, 1, "rte-prompt@v1.0.0", False)
    assert "nothing new registered" in again.reason and "already registered as rte-prompt@v1.0.0" in again.reason
    assert git(repo, "rev-parse", "HEAD") == head and [v.number for v in registry.versions(repo, "rte")] == [1]

    r2 = registry.register(repo, "rte", with_data("rte2", "bbb"), metrics(tmp_path, "rte", 70.0), settings=settings)
    assert (r1.new, r2.new, r2.version) == (True, True, 2)
    v1, v2 = registry.versions(repo, "rte")
    assert (v1.meta["data_fingerprint"], v2.meta["data_fingerprint"]) == ("aaa", "bbb")
    assert v1.meta["prompt_md5"] == registry.prompt_md5(prompts["rte1"]) != v2.meta["prompt_md5"]
    lineage = json.loads((repo / "registry/rte/v2/softprompt.json").read_text())["registry"]
    assert lineage["data"]["fingerprint"] == "bbb" and lineage["data"]["location"] == "/data/rte/bbb"


def test_registry_list_cli_marks_production(repo, settings, prompts, tmp_path):
    from softprompt.cli import app

    registry.register(repo, "rte", prompts["rte1"], metrics(tmp_path, "rte", 60.0), settings=settings)
    registry.register(repo, "rte", prompts["rte2"], metrics(tmp_path, "rte", 58.0), settings=settings)
    result = CliRunner().invoke(app, ["registry", "list", "--repo", str(repo), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["version"], r["value"], r["stage"]) for r in rows] == [("v1", 60.0, "prod"), ("v2", 58.0, "")]
    table = CliRunner().invoke(app, ["registry", "list", "--repo", str(repo), "--task", "rte"]).output
    assert "accuracy=60" in table and "prod" in table


def test_fresh_clone_dvc_pull_gets_production_prompt_and_it_loads(repo, settings, prompts, tmp_path):
    from softprompt.models import load_base
    from softprompt.prompt import load_prompt

    registry.register(repo, "rte", prompts["rte1"], metrics(tmp_path, "rte", 60.0), settings=settings)
    r2 = registry.register(repo, "rte", prompts["rte2"], metrics(tmp_path, "rte", 75.0), settings=settings)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    assert not (clone / "registry/rte/production").exists()
    # The documented command (docs/registry.md, "Fetch a prompt").
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "pull", "-q", "registry/rte/production"],
                   cwd=clone, check=True, env=ENV)
    assert registry.dir_md5(clone / "registry/rte/production") == r2.md5
    model, meta = load_prompt(load_base("tiny"), clone / "registry/rte/production")
    assert meta["registry"]["version"] == "v2.0.0" and model is not None

    path, version = registry.pull(clone, "rte", version="v1", output=tmp_path / "out")
    assert version.number == 1 and registry.dir_md5(path) == version.md5
    assert json.loads((path / "softprompt.json").read_text())["registry"]["value"] == 60.0


def test_pull_refuses_files_that_do_not_match_their_hash(repo, settings, prompts, tmp_path):
    r1 = registry.register(repo, "rte", prompts["rte1"], metrics(tmp_path, "rte", 60.0), settings=settings)
    entries = json.loads((tmp_path / "remote/files/md5" / r1.md5[:2] / r1.md5[2:]).read_text())
    adapter = next(e["md5"] for e in entries if e["relpath"] == "adapter_model.safetensors")
    blob = tmp_path / "remote/files/md5" / adapter[:2] / adapter[2:]
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-8] + b"tampered")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    with pytest.raises(SoftpromptError, match="do not match the registered hash|dvc failed"):
        registry.pull(clone, "rte")
    with pytest.raises(SoftpromptError, match="do not match the registered hash"):
        registry.verify(prompts["rte2"], r1.md5)


def test_concurrent_registrations_lose_nothing(repo, settings, prompts, tmp_path):
    env = {**ENV, "SOFTPROMPT_REGISTRY_REMOTE": settings.remote}
    jobs = [("rte", "rte1", 60.0), ("rte", "rte2", 70.0), ("cb", "cb1", 50.0)]
    procs = [subprocess.Popen([sys.executable, "-m", "softprompt.cli", "registry", "register", "--task", task,
                               "--prompt", str(prompts[name]), "--metrics", str(metrics(tmp_path, task, value)),
                               "--repo", str(repo), "--run-id", name], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for task, name, value in jobs]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    found = {(v.task, v.run_id): v for v in registry.versions(repo)}
    assert set(found) == {("rte", "rte1"), ("rte", "rte2"), ("cb", "cb1")}
    assert sorted(v.number for v in found.values() if v.task == "rte") == [1, 2]
    # Whatever the order, the better rte run ends in production, and each task has exactly one.
    assert registry.production_numbers(repo) == {"rte": found[("rte", "rte2")].number, "cb": 1}
    assert sum(v.production for v in found.values()) == 2
    assert git(repo, "status", "--porcelain") == ""


def test_registration_killed_halfway_leaves_no_version(repo, settings, prompts, tmp_path, monkeypatch):
    registry.register(repo, "rte", prompts["rte1"], metrics(tmp_path, "rte", 60.0), settings=settings)

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed between pushing the files and committing them

    with monkeypatch.context() as m:
        m.setattr(registry.dvc, "write_meta", die)
        with pytest.raises(KeyboardInterrupt):
            registry.register(repo, "rte", prompts["rte2"], metrics(tmp_path, "rte", 90.0), settings=settings)
    assert [v.name for v in registry.versions(repo, "rte")] == ["v1"]
    assert registry.production_numbers(repo) == {"rte": 1}

    with monkeypatch.context() as m:  # killed after the commit, before the tag: still invisible
        m.setattr(registry.git, "gto_register", die)
        with pytest.raises(KeyboardInterrupt):
            registry.register(repo, "rte", prompts["rte2"], metrics(tmp_path, "rte", 90.0), settings=settings)
    assert [v.name for v in registry.versions(repo, "rte")] == ["v1"]

    r = registry.register(repo, "rte", prompts["rte3"], metrics(tmp_path, "rte", 80.0), settings=settings)
    assert r.version == 3 and r.promoted  # v2's number is never reused once committed
    assert [v.name for v in registry.versions(repo, "rte")] == ["v1", "v3"]
    assert git(repo, "status", "--porcelain") == ""


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "invalid JSON"),
    ('{"accuracy": 1}', "no 'main_metric' field"),
    ('{"main_metric": "accuracy"}', "no numeric value"),
    ('{"task": "cb", "accuracy": 1, "main_metric": "accuracy"}', "for task 'cb', not 'rte'"),
])
def test_bad_metrics_file_is_refused_and_nothing_is_written(repo, settings, prompts, tmp_path, content, message):
    bad = tmp_path / "m.json"
    bad.write_text(content)
    with pytest.raises(SoftpromptError, match=message):
        registry.register(repo, "rte", prompts["rte1"], bad, settings=settings)
    assert not (repo / "registry").exists() and git(repo, "tag") == ""


def test_bad_inputs_name_the_problem(repo, settings, prompts, tmp_path):
    with pytest.raises(SoftpromptError, match="trained on 'rte', not 'cb'"):
        registry.register(repo, "cb", prompts["rte1"], metrics(tmp_path, "cb", 1.0), settings=settings)
    with pytest.raises(SoftpromptError, match="not a git repository"):
        registry.register(tmp_path, "rte", prompts["rte1"], metrics(tmp_path, "rte", 1.0), settings=settings)
    with pytest.raises(SoftpromptError, match="no production prompt"):
        registry.pull(repo, "rte")
    with pytest.raises(SoftpromptError, match="expected a version number"):
        registry.promote(repo, "rte", "latest", settings=settings)
    with pytest.raises(SoftpromptError, match="has no version v4"):
        registry.promote(repo, "rte", "4", settings=settings)
    proc = subprocess.run([sys.executable, "-m", "softprompt.cli", "registry", "list", "--repo", str(tmp_path)],
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --repo") and proc.stderr.count("\n") == 1


def test_settings_come_from_params_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SOFTPROMPT_REGISTRY_REMOTE", raising=False)
    from softprompt.config import load_params

    s = registry.Settings.load()
    assert s.stage == "prod" and s.promote == "auto" and s.promotion_margin >= 0
    # params.yaml's margin everywhere: loaded, and as the dataclass default (the library's own callers).
    assert s.promotion_margin == registry.Settings(remote="/r").promotion_margin == (
        load_params()["registry"]["promotion_margin"])
    with pytest.raises(SoftpromptError, match="registry.promote: must be one of auto, never, force"):
        registry.Settings(remote="/r", promote="sometimes")
    monkeypatch.setenv("SOFTPROMPT_REGISTRY_REMOTE", "gs://bucket/prompts")
    assert registry.Settings.load().remote_url() == "gs://bucket/prompts"
    assert registry.Settings(remote=str(tmp_path / "x" / ".." / "r")).remote_url() == str(tmp_path / "r")
    assert [registry.parse_version(v) for v in ("3", "v3", "v3.0.0")] == [3, 3, 3]


def test_pods_register_into_a_remote_repo_concurrently(repo, settings, prompts, tmp_path):
    """Pipeline pods each clone the registry repo by URL, register and push; racing pushes are retried."""
    import threading

    origin = tmp_path / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(origin)], check=True)
    url = f"file://{origin}"
    results: dict[str, registry.Registration] = {}

    def pod(name: str, value: float) -> None:
        results[name] = registry.register_to_origin(url, "rte", prompts[name], metrics(tmp_path, "rte", value),
                                                    settings=settings, run_id=name)

    threads = [threading.Thread(target=pod, args=(n, v)) for n, v in (("rte1", 60.0), ("rte2", 70.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.version for r in results.values()) == [1, 2]  # both landed, distinct numbers
    tags = git(origin, "tag").split()
    assert {"rte-prompt@v1.0.0", "rte-prompt@v2.0.0"} <= set(tags)
    clone = tmp_path / "check"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    rows = registry.versions(clone, "rte")
    assert [v.number for v in rows if v.production] == [registry.production(clone, "rte").number]
    assert registry.production(clone, "rte").value == 70.0  # whichever landed first, the gate keeps the better


def test_git_urls_are_recognised():  # the token's own tests: tests/serving/test_secure_defaults.py
    assert registry.is_git_url("git@github.com:o/r.git") and not registry.is_git_url("/tmp/repo")
