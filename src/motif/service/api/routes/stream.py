"""GET /generations/{id}/stream: the audio of a generation while it is generated, as a WAV that grows.

16-bit PCM at 32 kHz behind a header whose sizes say "unknown" (0xFFFFFFFF): an <audio> element plays it
as it arrives. It starts with the first chunk the decode loop renders and ends when the job ends. The
samples are the result before loudness normalisation, which the final file alone gets. A finished
generation's stream is its final file (as /api/download); a failed or cancelled one is 409. In a cluster
the audio is decoded in a worker, not in the API process: the request waits for the job to end and then
answers as for a finished one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from motif.service import library
from motif.service.api.deps import GenerationId, ServicesDep
from motif.service.api.errors import responses
from motif.service.api.routes.generations import download
from motif.service.api.security import ScopeDep
from motif.service.events import audio_topic, wait_any
from motif.service.jobs import JobStatus
from motif.service.runtime import Services
from motif.service.store import Scope
from motif.service.streams import AudioBuffer, wav_header

router = APIRouter(tags=["generation"])

RECHECK_SECONDS = 5.0  # with no audio for this long, re-read the job (cancelled in the queue, another process)


def _ended(services: Services, scope: Scope, generation_id: str) -> bool:
    row = library.get_generation(services, scope, generation_id)
    return row is None or JobStatus(row.status).is_final


async def _until_ended(services: Services, scope: Scope, generation_id: str) -> None:
    """Wait for the job's final state: woken by its events (NOTIFY from the worker), re-read every few seconds."""
    while True:
        event = services.events.subscribe(generation_id)
        try:
            if await run_in_threadpool(_ended, services, scope, generation_id):
                return
            await wait_any([event], RECHECK_SECONDS)
        finally:
            services.events.unsubscribe(generation_id, event)


async def _pcm(services: Services, scope: Scope, generation_id: str, buffer: AudioBuffer) -> AsyncIterator[bytes]:
    cursor, started = 0, False
    try:
        while True:
            waits = [services.events.subscribe(audio_topic(generation_id)), services.events.subscribe(generation_id)]
            try:
                pcm, cursor, done = buffer.read(cursor)
                if pcm:
                    if not started:
                        yield wav_header(buffer.channels)
                        started = True
                    yield pcm
                if done:
                    return
                woken = await wait_any(waits, RECHECK_SECONDS)
                quiet = (not woken or waits[1].is_set()) and not buffer.chunks
                if quiet and await run_in_threadpool(_ended, services, scope, generation_id):
                    return
            finally:
                services.events.unsubscribe(audio_topic(generation_id), waits[0])
                services.events.unsubscribe(generation_id, waits[1])
    finally:
        services.streams.release(generation_id, buffer)


@router.get(
    "/generations/{generation_id}/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"audio/wav": {}}, "description": "WAV growing while the music is generated"},
               **responses(404, 409)},
)  # fmt: skip
async def stream_generation(generation_id: GenerationId, services: ServicesDep, scope: ScopeDep) -> Response:
    """Audio that starts playing while it is generated; closes when the job ends."""
    row = await run_in_threadpool(library.get_generation, services, scope, generation_id)
    if row is None:
        raise HTTPException(404, f"no generation {generation_id}")
    if row.status == JobStatus.COMPLETED.value:
        return await run_in_threadpool(download, generation_id, services, scope)
    if JobStatus(row.status).is_final:
        raise HTTPException(409, f"generation {generation_id} is {row.status}: there is no audio to stream")
    if not services.decodes_here:  # a cluster's API process: the audio is decoded in a worker, far from here
        await _until_ended(services, scope, generation_id)
        return await stream_generation(generation_id, services, scope)  # now the final file, or 409
    buffer = services.streams.listen(generation_id)
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(_pcm(services, scope, generation_id, buffer), media_type="audio/wav", headers=headers)
