"""GET /generations/{id}/events: a generation's progress pushed as Server-Sent Events until it ends.

Each event's data is the GenerationStatus JSON; its name is `queued`, `progress`, `completed`, `failed` or
`cancelled`, and its id orders it (`q<position>`, `p<percent>`, the final name), so a client that
reconnects with Last-Event-ID gets only what is newer, and nothing (204) once it has seen the end.
The handler wakes when the worker publishes (progress, a claim, a final state), not on a timer; a comment
every KEEPALIVE_SECONDS keeps proxies from closing the connection and re-reads the row (a job another
process finished).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from motif.service import library
from motif.service.api.deps import GenerationId, ServicesDep
from motif.service.api.errors import responses
from motif.service.api.schemas import GenerationStatus
from motif.service.api.security import ScopeDep
from motif.service.events import QUEUE_TOPIC, wait_any
from motif.service.jobs import JobStatus
from motif.service.runtime import Services
from motif.service.store import Scope

router = APIRouter(tags=["generation"])

KEEPALIVE_SECONDS = 15.0
RETRY_MS = 2000  # what EventSource waits before reconnecting
FINAL = ("completed", "failed", "cancelled")


def event_id(status: GenerationStatus) -> str:
    if status.status is JobStatus.QUEUED:
        return f"q{status.queue_position or 0}"
    if status.status is JobStatus.PROCESSING:
        return f"p{int(status.progress)}"
    return status.status.value


def event_rank(event: str | None) -> tuple[int, int]:
    """Order of event ids: queued (fewer ahead is later) < progress (more is later) < final."""
    if not event:
        return (-1, 0)
    if event in FINAL:
        return (3, 0)
    try:
        number = int(event[1:])
    except ValueError:
        return (-1, 0)
    return (1, -number) if event[0] == "q" else (2, number) if event[0] == "p" else (-1, 0)


def _current(services: Services, scope: Scope, generation_id: str) -> GenerationStatus | None:
    row = library.get_generation(services, scope, generation_id)
    return None if row is None else GenerationStatus.from_row(row, services.queue.queue_position(row))


def format_event(status: GenerationStatus) -> str:
    name = status.status.value if status.status.is_final else "queued" if status.queue_position else "progress"
    data = json.dumps(status.model_dump(mode="json"), separators=(",", ":"))
    return f"id: {event_id(status)}\nevent: {name}\ndata: {data}\n\n"


async def _events(services: Services, scope: Scope, generation_id: str, last: str | None) -> AsyncIterator[str]:
    yield f"retry: {RETRY_MS}\n\n"
    seen = event_rank(last)
    while True:
        waits = [services.events.subscribe(generation_id), services.events.subscribe(QUEUE_TOPIC)]
        try:
            status = await run_in_threadpool(_current, services, scope, generation_id)
            if status is None:  # deleted with its upload
                yield "event: failed\ndata: {\"status\":\"failed\",\"error\":\"the generation was deleted\"}\n\n"
                return
            if event_rank(event_id(status)) > seen:
                seen = event_rank(event_id(status))
                yield format_event(status)
            if status.status.is_final:
                return
            if not await wait_any(waits, KEEPALIVE_SECONDS):
                yield ": keep-alive\n\n"
        finally:
            services.events.unsubscribe(generation_id, waits[0])
            services.events.unsubscribe(QUEUE_TOPIC, waits[1])


@router.get(
    "/generations/{generation_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "the events until the job ends"},
               204: {"description": "Last-Event-ID was the final event: nothing more will come"},
               **responses(404)},
)  # fmt: skip
async def generation_events(
    generation_id: GenerationId,
    services: ServicesDep,
    scope: ScopeDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
) -> Response:
    """Server-Sent Events: queued (with queue_position), progress, then completed, failed or cancelled."""
    if await run_in_threadpool(library.get_generation, services, scope, generation_id) is None:
        raise HTTPException(404, f"no generation {generation_id}")
    if last_event_id in FINAL:
        return Response(status_code=204)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_events(services, scope, generation_id, last_event_id), media_type="text/event-stream",
                             headers=headers)  # fmt: skip
