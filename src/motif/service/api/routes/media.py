"""Media for the page: waveform peaks, the uploaded audio itself, and signed URLs for players.

`<audio src>` cannot send an API key, so a client that has one asks POST /media-tokens for a short-lived
URL signed for that one path (see motif.service.api.media_tokens); the auth dependency accepts it there.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from motif.service import library
from motif.service.api import media_tokens
from motif.service.api.deps import AudioId, GenerationId, ServicesDep
from motif.service.api.errors import responses
from motif.service.api.security import PrincipalDep, ScopeDep
from motif.service.jobs import JobStatus
from motif.service.peaks import DEFAULT_BUCKETS, PROCESSED_RATE, load_processed

router = APIRouter(tags=["media"])

Buckets = Annotated[int, Query(ge=10, le=2000, description="how many (min, max) pairs")]
# Uploads a browser plays as they are (FFmpeg demuxer name -> media type); others are served as WAV.
PLAYABLE = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg",
            "mov,mp4,m4a,3gp,3g2,mj2": "audio/mp4", "matroska,webm": "audio/webm", "aac": "audio/aac"}  # fmt: skip


class Peaks(BaseModel):
    duration: float = Field(description="seconds")
    peaks: list[tuple[float, float]] = Field(description="(min, max) of each consecutive span, -1..1")


class MediaTokenRequest(BaseModel):
    path: str = Field(max_length=300, description="a media path: /api/audio/{id}/file, /api/download/{id}, ...")


class MediaToken(BaseModel):
    url: str = Field(description="the path with ?token=..., valid until expires_at (Unix seconds)")
    expires_at: int


@router.get("/audio/{audio_id}/peaks", response_model=Peaks, responses=responses(404))
def audio_peaks(audio_id: AudioId, services: ServicesDep, scope: ScopeDep, n: Buckets = DEFAULT_BUCKETS) -> Peaks:
    """The upload's waveform as n (min, max) pairs (of the decoded 32 kHz mono audio)."""
    row = library.get_audio(services, scope, audio_id)
    if row is None:
        raise HTTPException(404, f"no upload {audio_id}")
    duration, peaks = services.peaks.get(row.processed_key, n)
    return Peaks(duration=duration, peaks=peaks)


@router.get("/generations/{generation_id}/peaks", response_model=Peaks, responses=responses(404, 409))
def generation_peaks(
    generation_id: GenerationId, services: ServicesDep, scope: ScopeDep, n: Buckets = DEFAULT_BUCKETS
) -> Peaks:
    """The result's waveform as n (min, max) pairs; 409 until it is completed."""
    row = library.get_generation(services, scope, generation_id)
    if row is None:
        raise HTTPException(404, f"no generation {generation_id}")
    if row.status != JobStatus.COMPLETED.value or row.output_key is None:
        raise HTTPException(409, f"generation {generation_id} is {row.status}")
    duration, peaks = services.peaks.get(row.output_key, n)
    return Peaks(duration=duration, peaks=peaks)


@router.get(
    "/audio/{audio_id}/file", response_class=FileResponse,
    responses={200: {"content": {t: {} for t in {*PLAYABLE.values(), "audio/wav"}}}, **responses(404)},
)  # fmt: skip
def audio_file(audio_id: AudioId, services: ServicesDep, scope: ScopeDep) -> Response:
    """The uploaded audio for a player: the original file when browsers play its format, else 16-bit WAV."""
    row = library.get_audio(services, scope, audio_id)
    if row is None:
        raise HTTPException(404, f"no upload {audio_id}")
    path = services.blobs.local_path(row.upload_key)
    if row.container in PLAYABLE and path is not None and path.is_file():
        return FileResponse(path, media_type=PLAYABLE[row.container])
    from motif.audio import encode_audio  # PyAV and soundfile: imported when first needed

    samples = load_processed(services.blobs, row.processed_key)
    return Response(encode_audio(samples, PROCESSED_RATE, "wav"), media_type="audio/wav")


@router.post("/media-tokens", response_model=MediaToken, responses=responses(422))
def media_token(body: MediaTokenRequest, services: ServicesDep, principal: PrincipalDep) -> MediaToken:
    """A short-lived URL for one media path, for players that cannot send the API key."""
    if not media_tokens.is_media_path(body.path):
        raise HTTPException(422, "path must be a media path: /api/audio/{id}/file, /api/download/{id} or "
                                 "/api/generations/{id}/stream")  # fmt: skip
    token, expires = media_tokens.issue(services.media_secret, body.path, services.settings.media_token_seconds,
                                        principal.key_id)  # fmt: skip
    return MediaToken(url=f"{body.path}?token={token}", expires_at=expires)
