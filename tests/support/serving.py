"""Helpers of the serving tests: a registry with production prompts, a live server on loopback, HTTP calls."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.registry import init_repo, make_prompt, metrics

RTE = {"premise": "The cat sat on the mat.", "hypothesis": "A cat sat."}
CB = {"premise": "It rained all day, she said.", "hypothesis": "It rained."}


def make_registry(tmp: Path, **prompts: int) -> dict:
    """A registry checkout with a production prompt (of the given length) for each task named."""
    from softprompt import registry

    reg = {"tmp": tmp, "repo": init_repo(tmp / "repo"),
           "settings": registry.Settings(remote=str(tmp / "remote"), promotion_margin=0.5, lock_timeout=120)}
    for seed, (task, length) in enumerate(prompts.items(), 1):
        add_version(reg, task, seed, 50.0, length=length)
    return reg


def add_version(reg: dict, task: str, seed: int, value: float, length: int = 4,
                edit: Callable[[Path], None] | None = None) -> int:
    """Register and promote (forced) a new prompt version of `task`; returns its number."""
    from softprompt import registry

    prompt = make_prompt(reg["tmp"] / f"{task}-{seed}", task, seed, length=length)
    if edit:
        edit(prompt)
    return registry.register(reg["repo"], task, prompt, metrics(reg["tmp"], task, value), settings=reg["settings"],
                             policy="force").version


def edit_meta(prompt: Path, **train: Any) -> None:
    """Set `train` settings in a saved prompt's softprompt.json (e.g. max_source_length)."""
    meta = json.loads((prompt / "softprompt.json").read_text())
    meta["train"] = {**meta.get("train", {}), **train}
    (prompt / "softprompt.json").write_text(json.dumps(meta))


class Live:
    """`softprompt serve`'s app behind uvicorn on a free loopback port, in this process.

    With `server` a loaded PromptServer (or a loading Service); `http` is the uvicorn server (a DrainingServer).
    """

    def __init__(self, target: Any) -> None:
        import uvicorn

        from softprompt.serving.app import create_app
        from softprompt.serving.lifecycle import DrainingServer
        from softprompt.serving.server import Service

        self.service = target if isinstance(target, Service) else Service.of(target)
        config = uvicorn.Config(create_app(self.service, close_on_shutdown=True), host="127.0.0.1", port=0,
                                log_level="warning", timeout_graceful_shutdown=self.service.settings.drain_grace_s)
        self.http = DrainingServer(config, self.service)
        self.thread = threading.Thread(target=self.http.run, daemon=True)
        self.thread.start()
        while not self.http.started:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.http.servers[0].sockets[0].getsockname()[1]}"

    @property
    def server(self) -> Any:
        return self.service.server

    def close(self) -> None:
        self.http.should_exit = True
        self.thread.join(timeout=30)
        self.service.close()


def start(repo: Path, tasks: list[str] | None = None, **overrides: Any) -> Live:
    """A loaded server of `tasks` from the registry `repo`, with params.yaml `serve:` overridden."""
    from softprompt.models import load_base
    from softprompt.serving.server import PromptServer, ServeSettings
    from softprompt.serving.source import RegistrySource

    settings = ServeSettings.load(**{"port": 0, "poll_interval_s": 0.2, **overrides})
    return Live(PromptServer(load_base("tiny"), RegistrySource(str(repo)), settings, tasks))


def call(url: str, path: str, body: Any = None, method: str | None = None, raw: bytes | None = None,
         headers: dict | None = None, timeout: float = 60) -> tuple[int, Any, dict]:
    """(status, JSON body, response headers) of one request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"),
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, text, got = resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        status, text, got = e.code, e.read().decode(), dict(e.headers)
    try:
        return status, json.loads(text), {k.lower(): v for k, v in got.items()}
    except json.JSONDecodeError:
        return status, text, {k.lower(): v for k, v in got.items()}


class Gate:
    """Wraps a batcher's runner so a test can hold passes: `hold()`, then `release()`; records rows run."""

    def __init__(self, batcher: Any) -> None:
        self.batcher, self.runner = batcher, batcher.runner
        self.open, self.entered, self.rows = threading.Event(), threading.Event(), []
        self.open.set()
        batcher.runner = self

    def __call__(self, rows: list) -> list:
        self.rows.extend(rows)
        self.entered.set()
        self.open.wait(30)
        return self.runner(rows)

    def hold(self) -> None:
        self.open.clear()
        self.entered.clear()

    def release(self) -> None:
        self.open.set()

    def restore(self) -> None:
        self.open.set()
        self.batcher.runner = self.runner
