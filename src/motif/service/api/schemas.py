"""Request and response models, named by role. The seed's field names never change; others are additions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from motif.engine import GenerationMode, OutputFormat
from motif.service.jobs import ErrorCode, JobStatus
from motif.service.store import AudioRow, JobRow


class ErrorMessage(BaseModel):
    detail: str = Field(description="what went wrong, for a person")


class AudioAnalysisPublic(BaseModel):
    """What `motif.analysis` measured on the upload; None where a value is undefined."""

    duration: float
    tempo_bpm: float | None = None
    tempo_confidence: float | None = None
    key: str | None = None
    mode: str | None = None
    key_confidence: float | None = None
    loudness_lufs: float | None = None
    rms_dbfs: float | None = None
    peak_dbfs: float | None = None
    spectral_centroid_hz: float | None = None
    spectral_rolloff_hz: float | None = None
    spectral_flatness: float | None = None
    zero_crossings_per_s: float | None = None


class AudioPublic(BaseModel):
    audio_id: str
    filename: str = Field(description="the client's file name, metadata only")
    duration: float = Field(description="seconds")
    sample_rate: int = Field(description="Hz of the uploaded stream")
    channels: int
    codec: str
    container: str
    size_bytes: int
    analysis: AudioAnalysisPublic
    embedding_status: JobStatus | None = Field(default=None, description="the CLAP embedding job's state")
    created_at: datetime

    @classmethod
    def from_row(cls, row: AudioRow, embedding_status: str | None = None) -> AudioPublic:
        return cls(audio_id=row.id, filename=row.filename, duration=row.duration, sample_rate=row.sample_rate,
                   channels=row.channels, codec=row.codec, container=row.container, size_bytes=row.size_bytes,
                   analysis=AudioAnalysisPublic(**row.analysis),
                   embedding_status=None if embedding_status is None else JobStatus(embedding_status),
                   created_at=row.created_at)  # fmt: skip


class AudioList(BaseModel):
    items: list[AudioPublic]
    total: int
    limit: int
    offset: int


class EmbeddingPublic(BaseModel):
    audio_id: str
    embedding: list[float] = Field(description="the CLAP vector, L2 norm 1")
    model: str
    dim: int
    pipeline_version: str
    created_at: datetime


class JobPending(BaseModel):
    """202: the job is still running; ask again after Retry-After seconds."""

    job_id: str
    status: JobStatus
    progress: float
    detail: str


class GenerationRequest(BaseModel):
    """The seed's ranges; out of range is a 422 naming the field."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"duration": 10, "temperature": 1.0, "seed": 7}]})

    duration: float = Field(default=10.0, ge=5.0, le=120.0, description="seconds of new audio")
    temperature: float = Field(default=1.0, ge=0.1, le=2.0)
    top_k: int = Field(default=250, ge=0, le=500, description="0 = off")
    top_p: float = Field(default=0.0, ge=0.0, le=1.0, description="0 = off")
    cfg_coef: float = Field(default=3.0, ge=1.0, le=10.0, description="classifier-free guidance; 1 = off")
    mode: GenerationMode | None = Field(default=None, description="default: melody on melody models, else continuation")
    prompt: str | None = Field(default=None, max_length=1000, description="optional text to steer the music")
    seed: int | None = Field(default=None, ge=0, lt=2**31, description="same seed and parameters: same audio")
    format: OutputFormat = OutputFormat.WAV
    continuation_start: float | None = Field(default=None, ge=0, le=3600, description="continuation: section start, s")
    continuation_end: float | None = Field(default=None, gt=0, le=3600, description="continuation: section end, s")
    include_prompt: bool = Field(default=False, description="continuation: the section, then its continuation")
    loop: bool = Field(default=False, description="a seamless loop of whole bars near `duration`")
    bpm: float | None = Field(default=None, ge=30, le=300, description="tempo hint (and the loop's tempo)")
    key: str | None = Field(default=None, pattern=r"^[A-G][#b]?( (major|minor))?$", description='e.g. "A minor"')

    @model_validator(mode="after")
    def _section_in_order(self) -> GenerationRequest:
        start, end = self.continuation_start, self.continuation_end
        if start is not None and end is not None and end <= start:
            raise ValueError("continuation_end must be after continuation_start")
        return self


class GenerationStatus(BaseModel):
    generation_id: str
    audio_id: str
    status: JobStatus
    progress: float = Field(description="0..100")
    error: str | None = None
    error_code: ErrorCode | None = None
    similarity: float | None = Field(default=None, description="CLAP cosine between the upload and the result")
    description: str | None = Field(default=None, description="the text condition used (style mode, prompt)")
    seed: int | None = None
    mode: GenerationMode | None = None
    params: GenerationRequest
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue_position: int | None = Field(default=None, description="1 = next to start, 0 = running, null = finished")
    attempts: int = Field(description="times a worker started it (a restart mid-job counts)")
    cancel_requested: bool = False
    download_url: str | None = None

    @classmethod
    def from_row(cls, row: JobRow, queue_position: int | None) -> GenerationStatus:
        result: dict[str, Any] = row.result or {}
        completed = row.status == JobStatus.COMPLETED.value
        return cls(generation_id=row.id, audio_id=row.audio_id, status=JobStatus(row.status), progress=row.progress,
                   error=row.error if row.status == JobStatus.FAILED.value else None,
                   error_code=None if row.error_code is None else ErrorCode(row.error_code),
                   similarity=result.get("similarity"), description=result.get("description"),
                   seed=result.get("seed", row.params.get("seed")), mode=result.get("mode", row.params.get("mode")),
                   params=GenerationRequest(**row.params), created_at=row.created_at, started_at=row.started_at,
                   finished_at=row.finished_at, queue_position=queue_position, attempts=row.attempts,
                   cancel_requested=row.cancel_requested,
                   download_url=f"/api/download/{row.id}" if completed else None)  # fmt: skip


class GenerationList(BaseModel):
    items: list[GenerationStatus]
    total: int
    limit: int
    offset: int


class SimilarAudio(BaseModel):
    audio_id: str
    filename: str
    duration: float
    score: float = Field(description="cosine similarity of the CLAP vectors, -1..1")


class SearchResults(BaseModel):
    query: str | None = Field(default=None, description="the text searched for")
    audio_id: str | None = Field(default=None, description="the upload searched around")
    model: str
    results: list[SimilarAudio]


class ModelHealth(BaseModel):
    role: str
    model_id: str
    state: str = Field(description="loading | loaded | available | missing | error")
    detail: str


class QueueDepth(BaseModel):
    queued: int
    processing: int


class Health(BaseModel):
    """The details (version, models, queue, workers) go to admins only when keys are required."""

    status: str = Field(description="ok: ready; starting: models loading; degraded: a model cannot be loaded")
    ready: bool
    version: str | None = None
    models: list[ModelHealth] | None = None
    queue: dict[str, QueueDepth] | None = None
    workers: dict[str, bool] | None = Field(default=None, description="worker thread alive, per job kind")
