"""Search in CLAP space: uploads like an upload, and uploads matching a text."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from motif.service import library
from motif.service.api.deps import AudioId, ServicesDep, TopK
from motif.service.api.errors import responses
from motif.service.api.schemas import JobPending, SearchResults, SimilarAudio
from motif.service.api.security import ScopeDep
from motif.service.api.waits import ready_embedding

router = APIRouter(tags=["search"])


def _results(matches: list[library.Match]) -> list[SimilarAudio]:
    return [SimilarAudio(audio_id=m.audio.id, filename=m.audio.filename, duration=m.audio.duration, score=m.score)
            for m in matches]  # fmt: skip


@router.get(
    "/search/similar/{audio_id}", response_model=SearchResults,
    responses={202: {"model": JobPending, "description": "its embedding is still computing"}, **responses(404, 503)},
)  # fmt: skip
async def similar(
    audio_id: AudioId, services: ServicesDep, scope: ScopeDep, k: TopK = 10
) -> SearchResults | JSONResponse:
    """The k uploads nearest to this one by CLAP cosine (itself excluded), best first."""
    found = await ready_embedding(services, scope, audio_id)
    if isinstance(found, JSONResponse):
        return found
    assert found.embedding is not None
    matches = await run_in_threadpool(library.nearest, services, scope, found.embedding.array(), k, audio_id)
    return SearchResults(audio_id=audio_id, model=services.settings.embedding_model, results=_results(matches))


@router.get("/search", response_model=SearchResults, responses=responses(503))
async def search(
    services: ServicesDep,
    scope: ScopeDep,
    q: Annotated[str, Query(min_length=1, max_length=500, description="text")],
    k: TopK = 10,
) -> SearchResults:
    """Uploads that match a text ("calm piano", "fast drums") in CLAP's joint audio-text space."""
    matches = await run_in_threadpool(library.search_text, services, scope, q, k)
    return SearchResults(query=q, model=services.settings.embedding_model, results=_results(matches))
