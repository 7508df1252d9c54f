"""The HTTP API (FastAPI): KServe's routes and payloads, so the same process runs as a KServe InferenceService.

Open Inference Protocol v2: `/v2/health/live`, `/v2/health/ready`, `/v2/models`, `/v2/models/{task}`,
`/v2/models/{task}/ready`, `POST /v2/models/{task}/infer`, each model route also under
`/v2/models/{task}/versions/{version}`; KServe v1: `/v1/models`, `/v1/models/{task}`,
`POST /v1/models/{task}:predict` with `{"instances": [...]}`; Prometheus `/metrics`. Every error is a JSON
`{"error": "..."}` with a 4xx status that says what to fix; bad input never reaches the model. Overload and
startup answer 503 with Retry-After; every response carries `x-request-id` and `traceparent` (tracing.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from softprompt.serving.batcher import DeadlineExceeded, QueueFull
from softprompt.serving.engine import Row
from softprompt.serving.metrics import UNSERVED
from softprompt.serving.requests import (
    BINARY_UNSUPPORTED,
    JSON_ENCODED,
    V2_DATATYPES,
    RequestError,
    check_instances,
    check_mode,
    input_fields,
    v2_instances,
)
from softprompt.serving.server import PromptServer, Service
from softprompt.serving.tracing import RequestIds

log = logging.getLogger("softprompt.serve")
LINGER_FACTOR = 8  # bodies up to 8x the limit are read and dropped before a 413, so the client sees it
JSON_DEPTH = 64  # nesting deeper than any task's fields is refused before the parser recurses into it


LOADING_RETRY_S = 5  # Retry-After while the base and prompts load
CLIENT_GONE = 499  # nginx's status for a client that closed the connection first (counted; nobody reads it)


def error(status: int, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def until_disconnected(request: Request) -> None:
    """Return when the client closes its connection (the body must have been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


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


def create_app(target: PromptServer | Service, close_on_shutdown: bool = False) -> FastAPI:
    """The FastAPI application serving a loaded server's tasks, or a `Service` that is still loading (closing it
    when the app shuts down, if asked: uvicorn re-raises SIGTERM once it has stopped, so code after
    `uvicorn.run` never runs)."""
    service = target if isinstance(target, Service) else Service.of(target)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if close_on_shutdown:
            service.close()

    app = FastAPI(title="softprompt", description="Soft prompts of many tasks over one frozen T5.",
                  docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(RequestIds)
    settings, metrics = service.settings, service.metrics

    def current() -> PromptServer:
        """The loaded server, or a 503 while the base and prompts load."""
        if service.server is None:
            raise RequestError(503, f"the server is {service.state} (base and prompts); retry shortly",
                               LOADING_RETRY_S)
        return service.server

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = {404: "no such route; see the routes in docs/serving.md",
                  405: "method not allowed on this route"}.get(exc.status_code, str(exc.detail))
        return error(exc.status_code, detail)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return error(500, f"internal error: {type(exc).__name__}")

    def served(task: str, version: str | None = None) -> Any:
        server = current()
        prompt = server.snapshot.prompts.get(task)
        if prompt is None:
            raise RequestError(404, f"model {task!r} is not served here; served: "
                                    f"{', '.join(server.snapshot.tasks) or 'none'} (GET /v2/models)")
        if version is not None and version != prompt.version:
            raise RequestError(404, f"model {task!r} version {version!r} is not served; {task} serves "
                                    f"{prompt.version} (GET /v2/models/{task})")
        return prompt

    async def answer(task: str, protocol: str, request: Request,
                     parse: Callable[[Any, Any], list[Row]],
                     respond: Callable[[list[dict[str, Any]], Any], dict[str, Any]],
                     version: str | None = None) -> JSONResponse:
        """Read, check, batch and answer one inference request; count it in /metrics whatever happens."""
        started, status = time.perf_counter(), 200
        deadline = time.monotonic() + settings.request_timeout_s
        label = task if service.server and task in service.server.snapshot.prompts else UNSERVED
        try:
            if request.headers.get("inference-header-content-length") is not None:
                raise RequestError(400, f"body: {BINARY_UNSUPPORTED}")
            prompt = served(task, version)
            body = await read_json(request, settings.max_body_bytes)
            if not isinstance(body, dict):
                raise RequestError(400, "body: expected a JSON object")
            rows = parse(prompt, body)
            # Off the event loop: tokenizing a batch of long inputs (and waiting for the tokenizer's lock while
            # the batcher holds it) would stall every other connection.
            await asyncio.to_thread(check_tokens, prompt, rows)
            answers = await batched(rows, deadline, request)
            if version is not None and answers[0]["version"] != version:  # swapped while the request waited
                raise RequestError(404, f"model {task!r} version {version!r} was replaced by {answers[0]['version']} "
                                        f"while the request waited; send it again to /v2/models/{task}/versions/"
                                        f"{answers[0]['version']}/infer or /v2/models/{task}/infer")
            return JSONResponse(respond(answers, body))
        except RequestError as e:
            status = e.status
            return error(e.status, e.message, e.retry_after)
        except Exception:
            status = 500
            raise
        finally:
            metrics.observe_request(label, protocol, status, time.perf_counter() - started)

    async def batched(rows: list[Row], deadline: float, request: Request) -> list[dict[str, Any]]:
        """The rows' answers from the batcher; 503 when its queue is full or the deadline passes first, and
        the rows dropped (not computed) when the client goes away before their pass."""
        server = current()
        try:
            future = asyncio.wrap_future(server.batcher.submit(rows, deadline=deadline))
        except QueueFull as e:
            raise RequestError(503, f"overloaded: {e}; retry later", retry_after(server)) from e
        gone = asyncio.ensure_future(until_disconnected(request))
        try:
            done, _ = await asyncio.wait({future, gone}, return_when=asyncio.FIRST_COMPLETED)
            if future not in done:
                future.cancel()  # passed on to the batcher's future: dropped unless its pass already started
                raise RequestError(CLIENT_GONE, "the client closed the connection")
            return future.result()
        except DeadlineExceeded as e:
            raise RequestError(503, f"overloaded: no model pass within serve.request_timeout_s = "
                                    f"{settings.request_timeout_s} s; retry later", retry_after(server)) from e
        finally:
            gone.cancel()
            if not future.done():  # this handler was cancelled (a drain past its grace): drop the rows too
                future.cancel()

    def retry_after(server: PromptServer) -> int:
        """Seconds until the queue has room again, as the last passes went (at least 1)."""
        seconds = metrics.batch_seconds.collect()[0].samples
        total = next((s.value for s in seconds if s.name.endswith("_sum")), 0.0)
        count = next((s.value for s in seconds if s.name.endswith("_count")), 0.0)
        per_pass = total / count if count else 1.0
        return max(1, math.ceil(server.batcher.queued_rows / settings.max_batch_size * per_pass))

    def check_tokens(prompt: Any, rows: list[Row]) -> None:
        snapshot, limit = current().snapshot, input_limit(prompt)
        for i, row in enumerate(rows):
            try:
                count = snapshot.count_tokens(row)
            except Exception as e:  # noqa: BLE001 - a value the task's formatter cannot take
                raise RequestError(400, f"instances[{i}]: {row.task} cannot format this instance "
                                        f"({type(e).__name__}: {e}); check the field values") from e
            if count > limit:
                raise RequestError(413, f"instances[{i}]: {count} input tokens, more than {row.task}'s limit of "
                                        f"{limit} ({limit_source(prompt)}); shorten the text")

    def input_limit(prompt: Any) -> int:
        """A task's input limit: the server's, or the prompt's training max_source_length if shorter (longer
        inputs would otherwise be truncated without a word)."""
        return min(settings.max_input_tokens, prompt.encoding.max_source_length)

    def limit_source(prompt: Any) -> str:
        if prompt.encoding.max_source_length < settings.max_input_tokens:
            return f"the max_source_length its prompt {prompt.version} was trained with"
        return "params.yaml serve.max_input_tokens"

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

    def v2_rows_checked(prompt: Any, body: dict[str, Any]) -> list[Row]:
        requested_outputs(prompt, body)  # a bad outputs list is refused before any work
        return v2_rows(prompt, body)

    def requested_outputs(prompt: Any, body: dict[str, Any]) -> list[str] | None:
        """The output names the request asks for (`outputs: [{"name": ...}]`), or None for all of them."""
        wanted = body.get("outputs")
        if wanted is None:
            return None
        offered = [o["name"] for o in output_metadata(prompt.task)]
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                   for o in wanted):
            raise RequestError(400, 'outputs: expected a list of {"name": OUTPUT}; outputs are '
                                    f"{', '.join(offered)}")
        for i, o in enumerate(wanted):
            if o["name"] not in offered:
                raise RequestError(400, f"outputs[{i}]: unknown output {o['name']!r}; {prompt.task.name} has "
                                        f"{', '.join(offered)}")
        return [o["name"] for o in wanted]

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
            wanted = requested_outputs(current().snapshot.prompts[task], body)
            if wanted is not None:
                outputs = [o for o in outputs if o["name"] in wanted]
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
        return await answer(task, "v2", request, v2_rows_checked, v2_response(task))

    @app.post("/v2/models/{task}/versions/{version}/infer")
    async def v2_infer_version(task: str, version: str, request: Request) -> Response:
        return await answer(task, "v2", request, v2_rows_checked, v2_response(task), version)

    @app.get("/v2/health/live")
    async def live() -> Response:
        """The process can serve: loading, or its batcher turned within serve.liveness_stall_s."""
        ok = service.live
        return JSONResponse({"live": ok}, status_code=200 if ok else 503)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        ok = service.ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        from softprompt import __version__

        return {"name": "softprompt", "version": __version__, "extensions": []}

    @app.get("/v2/models")
    @app.get("/v1/models")
    async def models() -> Response:
        return _guard(lambda: {"models": current().snapshot.tasks})

    @app.get("/v2/models/{task}")
    @app.get("/v2/models/{task}/versions/{version}")
    async def model_metadata(task: str, version: str | None = None) -> Response:
        return _guard(lambda: metadata(served(task, version)))

    @app.get("/v2/models/{task}/ready")
    @app.get("/v2/models/{task}/versions/{version}/ready")
    @app.get("/v1/models/{task}")
    async def model_ready(task: str, version: str | None = None) -> Response:
        return _guard(lambda: {"name": task, "ready": True, "version": served(task, version).version})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def metadata(prompt: Any) -> dict[str, Any]:
        task = prompt.task
        return {"name": task.name, "versions": [prompt.version], "platform": "softprompt",
                "inputs": [input_metadata(task, name) for name in input_fields(task)],
                "outputs": output_metadata(task),
                "parameters": {"labels": list(task.label_names or ()),
                               "base_fingerprint": current().base.fingerprint,
                               **current().base.placement.to_json(),  # device, dtype
                               "prompt_length": int(prompt.vectors.shape[0]),
                               "max_input_tokens": input_limit(prompt)}}

    return app


def input_metadata(task: Any, name: str) -> dict[str, Any]:
    """A v2 input's metadata; every field kind a task reads has a protocol datatype (V2_DATATYPES)."""
    kind = task.fields[name]
    out: dict[str, Any] = {"name": name, "datatype": V2_DATATYPES[kind][0], "shape": [-1]}
    if kind in JSON_ENCODED:
        out["parameters"] = {"content_type": "json"}
    return out


def output_metadata(task: Any) -> list[dict[str, Any]]:
    outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
               {"name": "class", "datatype": "INT64", "shape": [-1]},
               {"name": "version", "datatype": "BYTES", "shape": [-1]}]
    if task.is_classification:
        outputs.append({"name": "scores", "datatype": "FP32", "shape": [-1, len(task.label_names)]})
    return outputs

def _guard(build: Callable[[], dict[str, Any]]) -> Response:
    try:
        return JSONResponse(build())
    except RequestError as e:
        return error(e.status, e.message, e.retry_after)
