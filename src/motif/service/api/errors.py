"""Every error is JSON {"detail": ...}: typed Motif errors map to one status each; nothing leaks a traceback.

An unexpected error answers only `{"detail": "internal error", "error_id": ...}`; the same id is in the log
line that holds the exception. Details meant for users (MotifError messages, HTTPException details) keep
their reason but lose absolute paths.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from motif.errors import (
    AudioError,
    InvalidRequestError,
    ModelUnavailableError,
    MotifError,
    NoAudioStreamError,
    NotAudioError,
    TooLongError,
)
from motif.service.logs import log_internal_error
from motif.service.redact import scrub_paths
from motif.service.runtime import DataDirBusyError

log = logging.getLogger(__name__)

# The most specific class wins (checked in order).
STATUS_OF: list[tuple[type[Exception], int]] = [
    (NotAudioError, 415),
    (NoAudioStreamError, 415),
    (TooLongError, 413),
    (AudioError, 422),
    (InvalidRequestError, 422),
    (ModelUnavailableError, 503),
    (DataDirBusyError, 503),
    (MotifError, 422),
]

ERROR_RESPONSES = {
    404: "not found",
    409: "not in a state that allows this",
    413: "too large or too long",
    415: "not audio",
    422: "invalid input (the detail names the field or the reason)",
    429: "over this key's quota or request rate (see Retry-After)",
    503: "a model needed for this cannot be loaded, or the queue is full (the detail says why)",
}


def status_of(error: Exception) -> int:
    for cls, status in STATUS_OF:
        if isinstance(error, cls):
            return status
    return 500


def responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI `responses=` for the error codes a route can answer, all modelled as ErrorMessage."""
    from motif.service.api.schemas import ErrorMessage

    return {code: {"model": ErrorMessage, "description": ERROR_RESPONSES[code]} for code in codes}


def internal_error_response(error_id: str) -> JSONResponse:
    return JSONResponse({"detail": "internal error", "error_id": error_id}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MotifError)
    async def _motif_error(_request: Request, error: MotifError) -> JSONResponse:
        return JSONResponse({"detail": scrub_paths(str(error))}, status_code=status_of(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
        if isinstance(error.detail, str):
            error.detail = scrub_paths(error.detail)
        return await http_exception_handler(request, error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # Reached only for errors outside the request middleware, which answers the same way itself.
        return internal_error_response(log_internal_error(log, error, f"{request.method} {request.url.path}"))
