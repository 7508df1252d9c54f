"""Secure defaults: loopback unless told otherwise; the registry token never in a URL, .git/config or a log."""

from __future__ import annotations

import logging
import subprocess

import pytest

from softprompt.config import load_params
from softprompt.errors import SoftpromptError
from softprompt.registry import git as gitrepo

TOKEN = "ghp_s3cretTOKENvalue"


def test_the_server_listens_on_loopback_unless_the_manifest_says_otherwise():
    from softprompt.serving.manifest import inference_service

    assert load_params()["serve"]["host"] == "127.0.0.1"
    args = inference_service()["spec"]["predictor"]["containers"][0]["args"]
    assert args[args.index("--host") + 1] == "0.0.0.0"  # in the pod, the kubelet's probes and the Service reach it


def test_git_gets_the_token_from_the_credential_helper(monkeypatch):
    """git asks its credential helpers when a server challenges; ours answers with $GIT_TOKEN, read then."""
    monkeypatch.setenv("GIT_TOKEN", TOKEN)
    env = gitrepo.git_env()
    assert env is not None and TOKEN not in "".join(v for k, v in env.items() if k != "GIT_TOKEN")
    proc = subprocess.run(["git", "credential", "fill"], input="protocol=https\nhost=git.example.com\n\n",
                          capture_output=True, text=True, env=env, check=True)
    assert "username=x-access-token" in proc.stdout and f"password={TOKEN}" in proc.stdout


def test_a_clone_never_puts_the_token_in_a_url_argument_or_git_config(monkeypatch, tmp_path):
    monkeypatch.setenv("GIT_TOKEN", TOKEN)
    calls = []
    real_run = subprocess.run

    def recording_run(args, **kwargs):
        calls.append(list(args))
        return real_run(args, **kwargs)

    monkeypatch.setattr(gitrepo.subprocess, "run", recording_run)
    origin = tmp_path / "origin"
    real_run(["git", "init", "-q", str(origin)], check=True)
    real_run(["git", "-C", str(origin), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
              "--allow-empty", "-m", "init"], check=True)
    dest = gitrepo.clone(f"file://{origin}", tmp_path / "clone")
    assert TOKEN not in (dest / ".git" / "config").read_text()
    with pytest.raises(SoftpromptError) as e:  # an https URL: the token would have gone into it
        gitrepo.clone("https://127.0.0.1:9/registry.git", tmp_path / "clone2")
    assert TOKEN not in str(e.value)
    assert calls and all(TOKEN not in " ".join(c) for c in calls)


def test_the_token_is_redacted_from_messages_and_logs(monkeypatch, caplog):
    monkeypatch.setenv("GIT_TOKEN", TOKEN)
    assert gitrepo.redact(f"fatal: https://x-access-token:{TOKEN}@github.com/o/r.git not found") == \
        "fatal: https://x-access-token:***@github.com/o/r.git not found"
    assert gitrepo.redact("https://user:other@host/r.git") == "https://user:***@host/r.git"
    logger = logging.getLogger("softprompt.test-redaction")
    logger.addFilter(gitrepo.redact_token_filter())
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.warning("registry check failed: %s", f"could not read {TOKEN}")
    assert TOKEN not in caplog.text and "could not read ***" in caplog.text


def test_serve_redacts_the_token_from_every_handler(monkeypatch):
    """Child loggers' records (softprompt.serve) pass the root's handlers, which carry the filter."""
    import io

    from softprompt.serving import redact_logs

    monkeypatch.setenv("GIT_TOKEN", TOKEN)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        redact_logs()
        logging.getLogger("softprompt.serve").warning("registry check failed: https://x:%s@host/r.git", TOKEN)
    finally:
        root.removeHandler(handler)
    assert TOKEN not in stream.getvalue() and "https://x:***@host/r.git" in stream.getvalue()


def test_without_a_token_git_runs_with_our_environment(monkeypatch):
    monkeypatch.delenv("GIT_TOKEN", raising=False)
    assert gitrepo.git_env() is None  # git inherits the caller's environment unchanged
