"""Request ids and the access log: `X-Request-ID` and W3C `traceparent` taken from the client or made, echoed
on the response, and logged with the method, path, status and duration of every request.

Hand-written as one small ASGI middleware because the libraries split it (asgi-correlation-id does
X-Request-ID only, OpenTelemetry's ASGI instrumentation brings an SDK and exporters this server does not use),
and Starlette's BaseHTTPMiddleware would wrap `receive`, which the handlers read to notice a client leaving.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

access_log = logging.getLogger("softprompt.access")
# version-traceid-parentid-flags (https://www.w3.org/TR/trace-context/#traceparent-header); all-zero ids invalid
TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces: safe to echo and to log


def valid_traceparent(value: str | None) -> bool:
    match = TRACEPARENT.match(value or "")
    return bool(match) and match.group(1) != "ff" and set(match.group(2)) != {"0"} and set(match.group(3)) != {"0"}


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


class RequestIds:
    """ASGI middleware: every HTTP response carries `x-request-id` and `traceparent`; one access-log line each.

    A client's `X-Request-ID` is kept when it is printable ASCII of at most 128 characters, and a valid
    `traceparent` is kept as it is; otherwise new ones are made (the trace-context rule for an invalid header).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = headers.get("x-request-id", "")
        request_id = request_id if REQUEST_ID.match(request_id) else secrets.token_hex(16)
        traceparent = headers.get("traceparent", "")
        traceparent = traceparent if valid_traceparent(traceparent) else new_traceparent()
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.perf_counter(), 500

        async def send_with_ids(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode()),
                                      (b"traceparent", traceparent.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_ids)
        finally:
            access_log.info('%s "%s %s" %d %.1fms request_id=%s trace_id=%s', _client(scope), scope["method"],
                            scope["path"], status, (time.perf_counter() - started) * 1000, request_id,
                            traceparent.split("-")[1])


def _client(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"
