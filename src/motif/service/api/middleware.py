"""The request middleware: a request id, one log line and the HTTP metrics per request, and error ids.

Pure ASGI (not BaseHTTPMiddleware) so streamed downloads pass through untouched. It sits inside
Starlette's ServerErrorMiddleware, so it sees an unexpected exception first: it logs it with an error id
and answers `{"detail": "internal error", "error_id": ...}` itself, in the request's log context and
with its X-Request-ID, instead of letting the exception reach uvicorn's plain traceback printer.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from motif.service.api.errors import internal_error_response
from motif.service.logs import log_context, log_internal_error
from motif.service.metrics import Metrics

log = logging.getLogger("motif.request")

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # anything else is replaced, not logged
UNMATCHED = "<unmatched>"  # route label of 404s on unknown paths: scanners must not grow the label set
UPLOAD_ROUTE = "/api/upload"
_PATH_PARAM_FIELDS = {"audio_id": "audio_id", "generation_id": "job_id"}


def request_id_from(scope: Scope) -> str:
    """The client's X-Request-ID when it is a plain token, else a new one."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/api/status/{generation_id}`), never the raw path.

    FastAPI puts the route itself in the scope, whose path lacks the prefixes of the routers it was
    included through (`/status/{generation_id}`); those prefixes are the raw path's leading segments.
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return UNMATCHED
    if isinstance(route, Mount):
        return template + "/{path}"
    raw = scope.get("path", "")
    n_prefix = raw.count("/") - template.count("/")
    prefix = "/".join(raw.split("/")[: n_prefix + 1]) if n_prefix > 0 else ""
    return prefix + template


class RequestObserver:
    """Wraps the app: request id in and out, the request's log line, its metrics, and error ids."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        state: dict[str, Any] = {"status": 500, "started": False, "body_bytes": 0}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["body_bytes"] += len(message.get("body", b""))
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        began = time.perf_counter()
        with log_context(request_id=request_id) as context:
            try:
                await self.app(scope, counting_receive, send_with_id)
            except Exception as error:
                error_id = log_internal_error(log, error, f"{scope['method']} {route_template(scope)}")
                context["error_id"] = error_id
                if state["started"]:
                    raise  # too late for a 500: the client sees the connection drop
                await internal_error_response(error_id)(scope, counting_receive, send_with_id)
            finally:
                self._record(scope, context, state, time.perf_counter() - began)

    def _record(self, scope: Scope, context: dict[str, Any], state: dict[str, Any], seconds: float) -> None:
        route, method, status = route_template(scope), scope["method"], state["status"]
        for param, field in _PATH_PARAM_FIELDS.items():
            value = scope.get("path_params", {}).get(param)
            if isinstance(value, str) and field not in context:
                context[field] = value[:64]
        level = logging.ERROR if status >= 500 else logging.INFO
        log.log(level, "%s %s %d %.1f ms", method, route, status, seconds * 1000,
                extra={"method": method, "route": route, "status": status,
                       "duration_ms": round(seconds * 1000, 2)})  # fmt: skip
        if self.metrics is None:
            return
        self.metrics.http_requests.labels(method, route, str(status)).inc()
        self.metrics.http_seconds.labels(method, route).observe(seconds)
        if route == UPLOAD_ROUTE:
            self.metrics.upload_bytes.labels(str(status)).observe(state["body_bytes"])
