"""Receive a multipart upload's `file` part straight into a staging file, counting bytes as they arrive.

Starlette's form parser would spool the whole body before a route sees it; this parser refuses an
oversized file (413) the moment it passes MAX_FILE_SIZE, holds at most WRITE_BYTES in memory, and writes
them from a worker thread so a slow disk never stalls the event loop. A client that sends too slowly gets
408; more uploads at once than MAX_CONCURRENT_UPLOADS get 503 with Retry-After.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, cast

import anyio
from fastapi import HTTPException, Request
from python_multipart.multipart import MultipartParser, parse_options_header

from motif.config import Settings
from motif.service.api.schemas import ErrorMessage

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
MULTIPART_SLACK = 64 * 1024  # bytes of boundaries and part headers allowed around the file
MAX_OTHER_PART = 64 * 1024  # bytes: other form fields are ignored, but not without limit
WRITE_BYTES = 1024 * 1024  # received bytes are written to disk in pieces of about this size
BUSY_RETRY_AFTER = 5  # seconds suggested to a client refused because too many uploads are in flight

UPLOAD_RESPONSES: dict[int | str, dict[str, object]] = {
    408: {"model": ErrorMessage, "description": "the body came too slowly (UPLOAD_TIMEOUT, UPLOAD_IDLE_TIMEOUT)"},
    503: {"model": ErrorMessage, "description": "too many uploads at once (MAX_CONCURRENT_UPLOADS); see Retry-After"},
}
OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {FILE_FIELD: {"type": "string", "format": "binary", "description": "an audio file"}},
                }
            }
        },
    }
}


class _Receiver:
    """python-multipart callbacks: the first part named `file` goes to `pending`; the others are dropped."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.pending = bytearray()  # file bytes received and not yet written
        self.size, self.other_size = 0, 0
        self.filename: str | None = None
        self.found = self.in_file = False
        self._field, self._value = b"", b""
        self._headers: dict[bytes, bytes] = {}

    def on_part_begin(self) -> None:
        self._headers, self.in_file = {}, False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if params.get(b"name") == FILE_FIELD.encode() and not self.found:
            self.found = self.in_file = True
            raw = params.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw is not None else None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.in_file:
            self.other_size += end - start
            if self.other_size > MAX_OTHER_PART:
                raise HTTPException(413, "form fields other than `file` are too large")
            return
        self.size += end - start
        if self.size > self.max_bytes:
            raise HTTPException(413, f"The file is larger than the limit of {self.max_bytes} bytes (MAX_FILE_SIZE).")
        self.pending += data[start:end]

    def on_part_end(self) -> None:
        self.in_file = False


@contextmanager
def upload_slot(limiter: anyio.CapacityLimiter) -> Iterator[None]:
    """Hold one of MAX_CONCURRENT_UPLOADS for this request. Raises HTTPException 503 (Retry-After) when none is free."""
    try:
        limiter.acquire_nowait()
    except anyio.WouldBlock:
        raise HTTPException(503, f"The server is receiving {limiter.total_tokens:g} uploads already "
                            "(MAX_CONCURRENT_UPLOADS); retry shortly.",
                            headers={"Retry-After": str(BUSY_RETRY_AFTER)}) from None  # fmt: skip
    try:
        yield
    finally:
        limiter.release()


async def receive_upload(request: Request, staged: Path, settings: Settings) -> tuple[str | None, int]:
    """Stream the request's `file` part into `staged`; returns (client file name, bytes).

    Raises HTTPException: 413 over MAX_FILE_SIZE (also from Content-Length, before reading), 408 when the
    body takes longer than UPLOAD_TIMEOUT or pauses longer than UPLOAD_IDLE_TIMEOUT, 422 when the body is
    not multipart/form-data with a `file` part.
    """
    max_bytes = settings.max_file_size
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise HTTPException(422, "Send the audio as multipart/form-data with a `file` field.")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_SLACK:
        raise HTTPException(413, f"The file is larger than the limit of {max_bytes} bytes (MAX_FILE_SIZE).")
    receiver = _Receiver(max_bytes)
    parser = MultipartParser(boundary, _callbacks(receiver))
    async with await anyio.open_file(staged, "wb") as out:  # each write runs in a worker thread
        try:
            async for chunk in _timed_chunks(request, settings.upload_timeout, settings.upload_idle_timeout):
                parser.write(chunk)
                if len(receiver.pending) >= WRITE_BYTES:
                    await out.write(receiver.pending)
                    receiver.pending.clear()
            parser.finalize()
        except HTTPException:
            raise
        except Exception as error:  # python-multipart's MultipartParseError and friends
            raise HTTPException(422, f"The multipart body is malformed: {error}") from error
        await out.write(receiver.pending)
    if not receiver.found:
        raise HTTPException(422, "The form has no `file` field: send the audio as multipart field `file`.")
    return receiver.filename, receiver.size


async def _timed_chunks(request: Request, total: float, idle: float) -> AsyncIterator[bytes]:
    """The body's chunks. Raises HTTPException 408 past `total` seconds, or after `idle` s without a chunk."""
    deadline = time.monotonic() + total
    chunks = request.stream().__aiter__()
    while True:
        wait = min(idle, deadline - time.monotonic())
        try:
            with anyio.fail_after(max(wait, 0.0)):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            reason = (f"sent nothing for {idle:g} s (UPLOAD_IDLE_TIMEOUT)" if wait == idle
                      else f"was not received within {total:g} s (UPLOAD_TIMEOUT)")  # fmt: skip
            raise HTTPException(408, f"The upload {reason}; send it again on a faster connection.") from None
        yield chunk


def _callbacks(receiver: _Receiver) -> MultipartCallbacks:
    names = ("on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
             "on_part_data", "on_part_end")  # fmt: skip
    return cast("MultipartCallbacks", {name: getattr(receiver, name) for name in names})
