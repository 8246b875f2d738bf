"""Every error is JSON {"detail": ...}: typed Motif errors map to one status each; nothing leaks a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from motif.errors import (
    AudioError,
    InvalidRequestError,
    ModelUnavailableError,
    MotifError,
    NoAudioStreamError,
    NotAudioError,
    TooLongError,
)
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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MotifError)
    async def _motif_error(_request: Request, error: MotifError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status_of(error))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
        return JSONResponse({"detail": "internal server error (logged on the server)"}, status_code=500)
