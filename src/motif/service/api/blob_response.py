"""A stored blob as an HTTP response: a local file (FileResponse), a redirect to a presigned URL, or a stream.

Remote blobs (S3) are streamed chunk by chunk with single-range support, so a player can seek and the
API never holds a whole result in memory.
"""

from __future__ import annotations

import re

from fastapi import HTTPException
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from motif.config import Settings
from motif.service.blobs import BlobStore

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def blob_response(
    blobs: BlobStore, settings: Settings, key: str, media_type: str, filename: str, range_header: str | None
) -> Response:
    """200/206 with the blob's bytes, or 302 to a presigned URL when DOWNLOAD_REDIRECT is on.

    Raises HTTPException 404 when the blob is missing, 416 for a range outside it.
    """
    path = blobs.local_path(key)
    if path is not None:
        if not path.is_file():
            raise HTTPException(404, "the audio is missing from storage")
        return FileResponse(path, media_type=media_type, filename=filename)
    if settings.download_redirect:
        url = blobs.presigned_url(key, settings.download_url_seconds, filename)
        if url is not None:
            return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})
    try:
        size = blobs.size(key)
    except FileNotFoundError as error:
        raise HTTPException(404, "the audio is missing from storage") from error
    headers = {"Accept-Ranges": "bytes", "Content-Disposition": f'attachment; filename="{filename}"'}
    span = parse_range(range_header, size)
    if span is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(blobs.iter_range(key, 0, size - 1), media_type=media_type, headers=headers)
    start, end = span
    headers.update({"Content-Range": f"bytes {start}-{end}/{size}", "Content-Length": str(end - start + 1)})
    return StreamingResponse(blobs.iter_range(key, start, end), status_code=206, media_type=media_type,
                             headers=headers)  # fmt: skip


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end) inclusive of one `bytes=` range, or None for the whole body (absent, several ranges,
    or a form we do not serve, which RFC 9110 lets a server ignore). Raises HTTPException 416 when unsatisfiable.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None or match.group(0) == "bytes=-":
        return None
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    else:
        start, end = max(0, size - int(last)), size - 1
    if start >= size or start > end:
        detail = f"range {header} is outside the {size} bytes"
        raise HTTPException(416, detail, headers={"Content-Range": f"bytes */{size}"})
    return start, end
