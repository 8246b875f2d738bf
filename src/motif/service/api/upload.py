"""Receive a multipart upload's `file` part straight into a staging file, counting bytes as they arrive.

Starlette's form parser would spool the whole body before a route sees it; this parser refuses an
oversized file (413) the moment it passes MAX_FILE_SIZE, holding only one chunk in memory at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from fastapi import HTTPException, Request
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
MULTIPART_SLACK = 64 * 1024  # bytes of boundaries and part headers allowed around the file
MAX_OTHER_PART = 64 * 1024  # bytes: other form fields are ignored, but not without limit

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
    """python-multipart callbacks: the first part named `file` goes to `out`; the others are dropped."""

    def __init__(self, out: BinaryIO, max_bytes: int) -> None:
        self.out, self.max_bytes = out, max_bytes
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
        self.out.write(data[start:end])

    def on_part_end(self) -> None:
        self.in_file = False


async def receive_upload(request: Request, staged: Path, max_bytes: int) -> tuple[str | None, int]:
    """Stream the request's `file` part into `staged`; returns (client file name, bytes).

    Raises HTTPException: 413 over max_bytes (also from Content-Length, before reading), 422 when the
    body is not multipart/form-data with a `file` part.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise HTTPException(422, "Send the audio as multipart/form-data with a `file` field.")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_SLACK:
        raise HTTPException(413, f"The file is larger than the limit of {max_bytes} bytes (MAX_FILE_SIZE).")
    with open(staged, "wb") as out:
        receiver = _Receiver(out, max_bytes)
        parser = MultipartParser(boundary, _callbacks(receiver))
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except HTTPException:
            raise
        except Exception as error:  # python-multipart's MultipartParseError and friends
            raise HTTPException(422, f"The multipart body is malformed: {error}") from error
    if not receiver.found:
        raise HTTPException(422, "The form has no `file` field: send the audio as multipart field `file`.")
    return receiver.filename, receiver.size


def _callbacks(receiver: _Receiver) -> MultipartCallbacks:
    names = ("on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
             "on_part_data", "on_part_end")  # fmt: skip
    return cast("MultipartCallbacks", {name: getattr(receiver, name) for name in names})
