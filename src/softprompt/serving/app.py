"""The HTTP API (FastAPI): KServe's routes and payloads, so the same process runs as a KServe InferenceService.

Open Inference Protocol v2: `/v2/health/live`, `/v2/health/ready`, `/v2/models`, `/v2/models/{task}`,
`/v2/models/{task}/ready`, `POST /v2/models/{task}/infer`; KServe v1: `/v1/models`, `/v1/models/{task}`,
`POST /v1/models/{task}:predict` with `{"instances": [...]}`; Prometheus `/metrics`. Every error is a JSON
`{"error": "..."}` with a 4xx status that says what to fix; bad input never reaches the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from softprompt.serving.engine import Row
from softprompt.serving.metrics import UNSERVED
from softprompt.serving.requests import (
    V2_DATATYPES,
    RequestError,
    check_instances,
    check_mode,
    input_fields,
    v2_instances,
)
from softprompt.serving.server import PromptServer

log = logging.getLogger("softprompt.serve")
LINGER_FACTOR = 8  # bodies up to 8x the limit are read and dropped before a 413, so the client sees it
JSON_DEPTH = 64  # nesting deeper than any task's fields is refused before the parser recurses into it


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_json(request: Request, max_bytes: int) -> Any:
    """The body as JSON, read no further than `max_bytes` (a Content-Length or a stream beyond it is 413).

    A body over the limit is still read and dropped, up to `LINGER_FACTOR` times the limit, before the 413 goes
    out: clients that send the whole body before reading the reply (urllib, requests, curl) otherwise get a
    connection reset instead of the 413, because closing a socket with unread input makes the kernel send RST.
    nginx calls this a lingering close; uvicorn does not do it, so it is done here.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        await _drain(request, LINGER_FACTOR * max_bytes)
        raise RequestError(413, f"body: {declared} bytes, more than the limit of {max_bytes} "
                                "(params.yaml serve.max_body_bytes); send fewer instances per request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= max_bytes:
            chunks.append(chunk)
        elif size > LINGER_FACTOR * max_bytes:
            break
    if size > max_bytes:
        raise RequestError(413, f"body: more than the limit of {max_bytes} bytes "
                                "(params.yaml serve.max_body_bytes); send fewer instances per request")
    raw = b"".join(chunks)
    if not raw.strip():
        raise RequestError(400, "body: empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"body: not UTF-8 (byte {e.start}); send UTF-8 JSON") from e
    if text.count("[") + text.count("{") > JSON_DEPTH and _depth(text) > JSON_DEPTH:  # counts first: C speed
        raise RequestError(400, f"body: JSON nested deeper than {JSON_DEPTH} levels; send flat instances")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"body: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e


async def _drain(request: Request, budget: int) -> None:
    """Read and drop up to `budget` more bytes of the body (the rest, if any, is left to the connection close)."""
    with contextlib.suppress(Exception):  # the client may hang up first; the 413 is the answer either way
        async for chunk in request.stream():
            budget -= len(chunk)
            if budget <= 0:
                return


def _depth(text: str) -> int:
    """An upper bound of the JSON nesting depth (brackets inside strings count too: it only needs to bound)."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def create_app(server: PromptServer, close_on_shutdown: bool = False) -> FastAPI:
    """The FastAPI application serving `server`'s tasks (closing it when the app shuts down, if asked: uvicorn
    re-raises SIGTERM once it has stopped, so code after `uvicorn.run` never runs)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if close_on_shutdown:
            server.close()

    app = FastAPI(title="softprompt", description="Soft prompts of many tasks over one frozen T5.",
                  docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    settings, metrics = server.settings, server.metrics

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = {404: "no such route; see the routes in docs/serving.md",
                  405: "method not allowed on this route"}.get(exc.status_code, str(exc.detail))
        return error(exc.status_code, detail)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return error(500, f"internal error: {type(exc).__name__}")

    def served(task: str) -> Any:
        prompt = server.snapshot.prompts.get(task)
        if prompt is None:
            raise RequestError(404, f"model {task!r} is not served here; served: "
                                    f"{', '.join(server.snapshot.tasks) or 'none'} (GET /v2/models)")
        return prompt

    async def answer(task: str, protocol: str, request: Request,
                     parse: Callable[[Any, Any], list[Row]],
                     respond: Callable[[list[dict[str, Any]], Any], dict[str, Any]]) -> JSONResponse:
        """Read, check, batch and answer one inference request; count it in /metrics whatever happens."""
        started, status = time.perf_counter(), 200
        label = task if task in server.snapshot.prompts else UNSERVED
        try:
            prompt = served(task)
            body = await read_json(request, settings.max_body_bytes)
            if not isinstance(body, dict):
                raise RequestError(400, "body: expected a JSON object")
            rows = parse(prompt, body)
            check_tokens(rows)
            answers = await asyncio.wrap_future(server.batcher.submit(rows))
            return JSONResponse(respond(answers, body))
        except RequestError as e:
            status = e.status
            return error(e.status, e.message)
        except Exception:
            status = 500
            raise
        finally:
            metrics.observe_request(label, protocol, status, time.perf_counter() - started)

    def check_tokens(rows: list[Row]) -> None:
        snapshot = server.snapshot
        for i, row in enumerate(rows):
            try:
                count = snapshot.count_tokens(row)
            except Exception as e:  # noqa: BLE001 - a value the task's formatter cannot take
                raise RequestError(400, f"instances[{i}]: {row.task} cannot format this instance "
                                        f"({type(e).__name__}: {e}); check the field values") from e
            if count > settings.max_input_tokens:
                raise RequestError(413, f"instances[{i}]: {count} input tokens, more than the limit of "
                                        f"{settings.max_input_tokens} (params.yaml serve.max_input_tokens); "
                                        "shorten the text")

    def v1_rows(prompt: Any, body: dict[str, Any]) -> list[Row]:
        if "instances" not in body:
            raise RequestError(400, 'body: missing "instances"; send {"instances": [{...fields...}]}')
        unknown = sorted(set(body) - {"instances", "mode"})
        if unknown:
            raise RequestError(400, f"body: unknown key {unknown[0]!r}; send instances and optionally mode")
        mode = check_mode(prompt.task, body.get("mode", settings.mode), "mode")
        return [Row(prompt.task.name, r, mode)
                for r in check_instances(prompt.task, body["instances"], settings.limits)]

    def v2_rows(prompt: Any, body: dict[str, Any]) -> list[Row]:
        parameters = body.get("parameters")
        parameters = {} if parameters is None else parameters
        if not isinstance(parameters, dict):
            raise RequestError(400, "parameters: expected a JSON object")
        mode = check_mode(prompt.task, parameters.get("mode", settings.mode), "parameters.mode")
        return [Row(prompt.task.name, r, mode) for r in v2_instances(prompt.task, body, settings.limits)]

    def v2_response(task: str) -> Callable[[list[dict[str, Any]], Any], dict[str, Any]]:
        def respond(answers: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
            n = len(answers)
            outputs = [{"name": "label", "shape": [n], "datatype": "BYTES", "data": [a["label"] for a in answers]},
                       {"name": "class", "shape": [n], "datatype": "INT64",
                        "data": [-1 if a["class"] is None else a["class"] for a in answers]},
                       {"name": "version", "shape": [n], "datatype": "BYTES",
                        "data": [a["version"] for a in answers]}]
            if answers[0].get("scores") is not None:
                names = list(answers[0]["scores"])
                outputs.append({"name": "scores", "shape": [n, len(names)], "datatype": "FP32",
                                "data": [a["scores"][k] for a in answers for k in names],
                                "parameters": {"labels": names}})
            out = {"model_name": task, "model_version": answers[0]["version"], "outputs": outputs,
                   "parameters": {"base_fingerprint": answers[0]["base_fingerprint"]}}
            if isinstance(body.get("id"), str):
                out["id"] = body["id"]
            return out
        return respond

    @app.post("/v1/models/{task}:predict")
    async def v1_predict(task: str, request: Request) -> Response:
        return await answer(task, "v1", request, v1_rows, lambda answers, _: {"predictions": answers})

    @app.post("/v2/models/{task}/infer")
    async def v2_infer(task: str, request: Request) -> Response:
        return await answer(task, "v2", request, v2_rows, v2_response(task))

    @app.get("/v2/health/live")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        ok = bool(server.snapshot.tasks)
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        from softprompt import __version__

        return {"name": "softprompt", "version": __version__, "extensions": []}

    @app.get("/v2/models")
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"models": server.snapshot.tasks}

    @app.get("/v2/models/{task}")
    async def model_metadata(task: str) -> Response:
        return _guard(lambda: metadata(served(task)))

    @app.get("/v2/models/{task}/ready")
    @app.get("/v1/models/{task}")
    async def model_ready(task: str) -> Response:
        return _guard(lambda: {"name": task, "ready": True, "version": served(task).version})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def metadata(prompt: Any) -> dict[str, Any]:
        task = prompt.task
        inputs = [{"name": name, "datatype": V2_DATATYPES.get(task.fields[name], (task.fields[name].upper(),))[0],
                   "shape": [-1]} for name in input_fields(task)]  # a list or dict field: only v1 carries it
        outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                   {"name": "class", "datatype": "INT64", "shape": [-1]},
                   {"name": "version", "datatype": "BYTES", "shape": [-1]}]
        if task.is_classification:
            outputs.append({"name": "scores", "datatype": "FP32", "shape": [-1, len(task.label_names)]})
        return {"name": task.name, "versions": [prompt.version], "platform": "softprompt", "inputs": inputs,
                "outputs": outputs, "parameters": {"labels": list(task.label_names or ()),
                                                   "base_fingerprint": server.base.fingerprint,
                                                   "prompt_length": int(prompt.vectors.shape[0])}}

    return app


def _guard(build: Callable[[], dict[str, Any]]) -> Response:
    try:
        return JSONResponse(build())
    except RequestError as e:
        return error(e.status, e.message)
