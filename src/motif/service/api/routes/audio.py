"""Uploads: POST /upload, the library (list, get, delete) and GET /embedding/{audio_id}."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from motif.service import library
from motif.service.api.deps import AudioId, Limit, Offset, ServicesDep
from motif.service.api.errors import responses
from motif.service.api.schemas import AudioList, AudioPublic, EmbeddingPublic, ErrorMessage, JobPending
from motif.service.api.security import PrincipalDep, ScopeDep, quota_error
from motif.service.api.upload import OPENAPI_BODY, UPLOAD_RESPONSES, receive_upload, upload_slot
from motif.service.api.waits import ready_embedding
from motif.service.ingest import ingest_upload
from motif.service.logs import bind
from motif.service.quotas import QuotaExceeded

router = APIRouter(tags=["audio"])


@router.post(
    "/upload", status_code=201, response_model=AudioPublic, openapi_extra=OPENAPI_BODY,
    responses={**responses(413, 415, 422, 429, 503), **UPLOAD_RESPONSES},
)  # fmt: skip
async def upload_audio(request: Request, services: ServicesDep, principal: PrincipalDep) -> AudioPublic:
    """Upload a track (any common audio or video format, by content). Its CLAP embedding starts at once."""
    try:
        with upload_slot(services.upload_limiter):
            await anyio.to_thread.run_sync(services.quotas.check_upload, principal)
            with services.blobs.staging("uploads") as staged:
                filename, size = await receive_upload(request, staged, services.settings)
                await anyio.to_thread.run_sync(services.quotas.check_storage, principal, size)
                row = await anyio.to_thread.run_sync(ingest_upload, services, staged, filename or "", size,
                                                     principal.key_id, limiter=services.decode_limiter)  # fmt: skip
    except QuotaExceeded as error:
        raise quota_error(error) from error
    bind(audio_id=row.id)  # the request's log line names the new upload
    return AudioPublic.from_row(row, "queued")


@router.get("/audio", response_model=AudioList)
def list_audio(services: ServicesDep, scope: ScopeDep, limit: Limit = 50, offset: Offset = 0) -> AudioList:
    """Uploads, newest first."""
    rows, total = library.audio_page(services, scope, limit, offset)
    statuses = library.embedding_statuses(services, [row.id for row in rows])
    items = [AudioPublic.from_row(row, statuses.get(row.id)) for row in rows]
    return AudioList(items=items, total=total, limit=limit, offset=offset)


@router.get("/audio/{audio_id}", response_model=AudioPublic, responses=responses(404))
def get_audio(audio_id: AudioId, services: ServicesDep, scope: ScopeDep) -> AudioPublic:
    row = library.get_audio(services, scope, audio_id)
    if row is None:
        raise HTTPException(404, f"no upload {audio_id}")
    return AudioPublic.from_row(row, library.embedding_statuses(services, [audio_id]).get(audio_id))


@router.delete("/audio/{audio_id}", status_code=204, response_class=Response, responses=responses(404))
def delete_audio(audio_id: AudioId, services: ServicesDep, scope: ScopeDep) -> Response:
    """Remove the upload, its files, its embedding and all its generations (running ones are cancelled)."""
    if not library.delete_audio(services, scope, audio_id):
        raise HTTPException(404, f"no upload {audio_id}")
    return Response(status_code=204)


@router.get(
    "/embedding/{audio_id}", response_model=EmbeddingPublic,
    responses={202: {"model": JobPending, "description": "still computing; see Retry-After"},
               **responses(404), 503: {"model": ErrorMessage, "description": "the embedding failed (reason)"}},
)  # fmt: skip
async def get_embedding(audio_id: AudioId, services: ServicesDep, scope: ScopeDep) -> EmbeddingPublic | JSONResponse:
    """The upload's CLAP vector; waits up to EMBEDDING_WAIT_SECONDS for it, then answers 202."""
    found = await ready_embedding(services, scope, audio_id)
    if isinstance(found, JSONResponse):
        return found
    row = found.embedding
    assert row is not None
    return EmbeddingPublic(audio_id=audio_id, embedding=row.array().tolist(), model=row.model, dim=row.dim,
                           pipeline_version=row.pipeline_version, created_at=row.created_at)  # fmt: skip
