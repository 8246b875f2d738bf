"""Generations: POST /generate/{audio_id}, GET /status/{id}, GET /download/{id}, listing and cancel."""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query
from fastapi.responses import FileResponse, JSONResponse, Response

from motif.engine import OutputFormat
from motif.errors import InvalidRequestError
from motif.service import library
from motif.service.api.deps import AudioId, GenerationId, Limit, Offset, ServicesDep
from motif.service.api.errors import responses
from motif.service.api.schemas import GenerationList, GenerationRequest, GenerationStatus
from motif.service.api.security import PrincipalDep, ScopeDep, quota_error
from motif.service.jobs import JobStatus
from motif.service.logs import bind
from motif.service.quotas import QuotaExceeded
from motif.service.runtime import Services
from motif.service.store import JobRow, Scope
from motif.service.worker import MEDIA_TYPES

router = APIRouter(tags=["generation"])


def _status(services: Services, row: JobRow) -> GenerationStatus:
    return GenerationStatus.from_row(row, services.queue.queue_position(row))


def _require(services: Services, scope: Scope, generation_id: str) -> JobRow:
    row = library.get_generation(services, scope, generation_id)
    if row is None:
        raise HTTPException(404, f"no generation {generation_id}")
    return row


@router.post(
    "/generate/{audio_id}", status_code=202, response_model=GenerationStatus,
    responses=responses(404, 422, 429, 503),
)  # fmt: skip
def generate(
    audio_id: AudioId, services: ServicesDep, principal: PrincipalDep,
    request: Annotated[GenerationRequest | None, Body()] = None,
) -> JSONResponse:  # fmt: skip
    """Queue a generation "like" the upload; poll GET /api/status/{generation_id}, then download it."""
    request = request or GenerationRequest()
    try:
        services.engine.check_mode(request.mode)
    except InvalidRequestError as error:
        raise HTTPException(422, str(error)) from error
    if library.get_audio(services, principal.scope, audio_id) is None:
        raise HTTPException(404, f"no upload {audio_id}")
    try:
        services.quotas.check_generation(principal, request.duration)
    except QuotaExceeded as error:
        raise quota_error(error) from error
    params = request.model_dump(mode="json")
    row = library.create_generation(services, principal.scope, audio_id, params)
    if row is None:
        raise HTTPException(404, f"no upload {audio_id}")
    bind(job_id=row.id)  # the request's log line names the new generation
    body = _status(services, row).model_dump(mode="json")
    body["status"] = JobStatus.QUEUED.value  # as created, even if a worker took it already
    return JSONResponse(body, status_code=202, headers={"Location": f"/api/status/{row.id}"})


@router.get("/status/{generation_id}", response_model=GenerationStatus, responses=responses(404))
def get_status(generation_id: GenerationId, services: ServicesDep, scope: ScopeDep) -> GenerationStatus:
    return _status(services, _require(services, scope, generation_id))


@router.get("/generations", response_model=GenerationList)
def list_generations(
    services: ServicesDep,
    scope: ScopeDep,
    audio_id: Annotated[str | None, Query(max_length=64)] = None,
    status: JobStatus | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> GenerationList:
    """Generations, newest first; filter by upload and status."""
    rows, total = library.generation_page(services, scope, audio_id, status, limit, offset)
    positions = services.queue.queue_positions(rows)
    items = [GenerationStatus.from_row(row, positions[row.id]) for row in rows]
    return GenerationList(items=items, total=total, limit=limit, offset=offset)


@router.post(
    "/generations/{generation_id}/cancel", response_model=GenerationStatus,
    responses={202: {"model": GenerationStatus, "description": "running: it stops at its next step"},
               **responses(404, 409)},
)  # fmt: skip
def cancel_generation(generation_id: GenerationId, services: ServicesDep, scope: ScopeDep) -> JSONResponse:
    """Queued: cancelled now (200). Running: stops within a decode step (202). Finished: 409."""
    row = _require(services, scope, generation_id)
    if JobStatus(row.status).is_final and row.status != JobStatus.CANCELLED.value:
        raise HTTPException(409, f"generation {generation_id} already {row.status}")
    status = services.queue.request_cancel(generation_id)
    if status is JobStatus.PROCESSING:
        services.workers.cancel(generation_id)
    row = _require(services, scope, generation_id)
    code = 202 if status is JobStatus.PROCESSING else 200
    return JSONResponse(_status(services, row).model_dump(mode="json"), status_code=code)


@router.get(
    "/download/{generation_id}", response_class=FileResponse,
    responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}, "description": "the audio"},
               206: {"description": "the requested byte range"}, **responses(404, 409)},
)  # fmt: skip
def download(generation_id: GenerationId, services: ServicesDep, scope: ScopeDep) -> Response:
    """The generated audio (WAV 32 kHz by default). Supports HTTP Range so players can seek."""
    row = _require(services, scope, generation_id)
    if row.status != JobStatus.COMPLETED.value or row.output_key is None:
        detail = f"generation {generation_id} is {row.status}"
        if row.status == JobStatus.FAILED.value:
            detail += f": {row.error}"
        elif not JobStatus(row.status).is_final:
            detail += f" ({row.progress:.0f}%); poll /api/status/{generation_id}"
        raise HTTPException(409, detail)
    path = services.blobs.local_path(row.output_key)
    if path is None or not path.is_file():
        raise HTTPException(404, f"the audio of generation {generation_id} is missing from storage")
    fmt = OutputFormat(row.params.get("format", OutputFormat.WAV.value))
    return FileResponse(path, media_type=MEDIA_TYPES[fmt], filename=_download_name(services, scope, row, fmt))


def _download_name(services: Services, scope: Scope, row: JobRow, fmt: OutputFormat) -> str:
    """`<upload stem>-motif-<id8>.<ext>`, ASCII-safe for Content-Disposition."""
    audio = library.get_audio(services, scope, row.audio_id)
    stem = PurePath(audio.filename).stem if audio is not None else "motif"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:80] or "motif"
    return f"{stem}-motif-{row.id[:8]}.{fmt.value}"
