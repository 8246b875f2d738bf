"""Bounded waits for a job, on the event loop: woken by the worker's publish, re-checked at least every second."""

from __future__ import annotations

import asyncio
import time

from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from motif.service import library
from motif.service.api.schemas import JobPending
from motif.service.jobs import JobStatus
from motif.service.runtime import Services
from motif.service.store import Scope

RECHECK_INTERVAL = 1.0  # seconds; also covers jobs finished by another process
RETRY_AFTER = 2  # seconds suggested to a client that got a 202


class EmbeddingFailed(Exception):
    def __init__(self, reason: str, code: str | None) -> None:
        super().__init__(reason)
        self.code = code


async def wait_for_embedding(services: Services, scope: Scope, audio_id: str) -> library.EmbeddingLookup | None:
    """The upload's embedding within EMBEDDING_WAIT_SECONDS, or its unfinished job. None: no such upload.

    A job that failed a while ago is re-queued once (the model may be back); raises EmbeddingFailed with
    the job's reason when it has failed.
    """
    deadline = time.monotonic() + services.settings.embedding_wait_seconds
    retry = True
    while True:
        found = await run_in_threadpool(library.lookup_embedding, services, scope, audio_id, retry)
        retry = False
        if found is None or found.embedding is not None or found.job is None:
            return found
        job = found.job
        if job.status == JobStatus.FAILED.value:
            raise EmbeddingFailed(job.error or "the embedding job failed", job.error_code)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return found
        event = services.events.subscribe(job.id)
        try:
            await asyncio.wait_for(event.wait(), min(remaining, RECHECK_INTERVAL))
        except TimeoutError:
            pass
        finally:
            services.events.unsubscribe(job.id, event)


async def ready_embedding(services: Services, scope: Scope, audio_id: str) -> library.EmbeddingLookup | JSONResponse:
    """For routes that need an upload's vector: the lookup with its embedding, or the 202 to return.

    Raises HTTPException 404 for an unknown upload and 503 with the reason when its embedding failed.
    """
    try:
        found = await wait_for_embedding(services, scope, audio_id)
    except EmbeddingFailed as error:
        raise HTTPException(503, str(error)) from error
    if found is None:
        raise HTTPException(404, f"no upload {audio_id}")
    if found.embedding is None:
        return pending_response(found)
    return found


def pending_response(found: library.EmbeddingLookup) -> JSONResponse:
    """202 with Retry-After for an embedding still being made."""
    assert found.job is not None
    body = JobPending(job_id=found.job.id, status=JobStatus(found.job.status), progress=found.job.progress,
                      detail="the embedding is still being computed; retry shortly")  # fmt: skip
    headers = {"Retry-After": str(RETRY_AFTER)}
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers=headers)
