"""One typed Settings object: read from the environment and `.env`, validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Every knob Motif has. Names match the environment variables (case-insensitive)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Models
    device: Literal["cpu", "cuda", "auto"] = "auto"
    generation_model: str = "facebook/musicgen-small"
    embedding_model: str = "laion/clap-htsat-unfused"
    generation_precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = Field(
        "auto", description="auto: fp16 on CUDA; int8 on CPUs with AVX512-VNNI and gcc, else bf16 if native, else fp32"
    )
    embedding_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    model_cache_dir: Path = Field(Path(".cache/motif"), description="where `tiny` models are built")
    allow_model_download: bool = Field(
        True, description="fetch missing models from the Hugging Face hub; false = local cache only"
    )
    num_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 = all cores")

    # CPU performance (issue 13): which kernel library runs, and how the workers share the cores
    cpu_path: Literal["auto", "avx512", "avx2", "torch"] = Field(
        "auto", description="int8 kernels: auto = avx512 with AVX512-VNNI, else avx2 with AVX2+FMA, else torch"
    )
    embedding_threads: int = Field(
        0, ge=0, description="threads an embedding uses; 0 = half the cores while a generation runs, else all"
    )
    generation_threads: int = Field(
        0, ge=0, description="threads a decode step uses; 0 = all cores, less EMBEDDING_THREADS while one runs"
    )

    # Input limits
    max_file_size: int = Field(100 * MiB, gt=0, description="bytes")
    max_duration: float = Field(300.0, gt=0, description="seconds of decoded audio")

    # Bounded work for any upload (decoding limits, concurrency, slow clients)
    max_sample_rate: int = Field(192_000, ge=8_000, description="Hz of an upload's audio stream")
    max_channels: int = Field(8, ge=1, description="channels of an upload's audio stream")
    max_samples: int = Field(120_000_000, gt=0, description="decoded values per upload: seconds x rate x channels")
    max_concurrent_decodes: int = Field(2, ge=1, description="uploads decoded at once; more wait their turn")
    max_concurrent_uploads: int = Field(8, ge=1, description="upload requests served at once; more get 503")
    upload_timeout: float = Field(600.0, gt=0, description="seconds to receive a whole upload body")
    upload_idle_timeout: float = Field(30.0, gt=0, description="seconds an upload may send nothing")

    # Generation defaults
    prompt_seconds: float = Field(10.0, gt=0, le=20, description="continuation: seconds of source as prompt")
    window_seconds: float = Field(30.0, gt=5, le=30, description="MusicGen's context per window")
    extend_overlap_seconds: float = Field(10.0, gt=0, le=20, description="long-form: context kept")
    max_batch_size: int = Field(4, ge=1, le=64, description="generation jobs decoded together")

    # Service
    host: str | None = Field(None, description="default: 127.0.0.1, or 0.0.0.0 when REQUIRE_API_KEY is on")
    port: int = 8000
    data_dir: Path = Path("data")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite in DATA_DIR")
    max_job_attempts: int = Field(3, ge=1)
    embedding_wait_seconds: float = Field(
        10.0, ge=0, description="GET /embedding (and text search, with a broker) waits this long"
    )
    log_level: str = "INFO"
    auto_migrate: bool = Field(True, description="upgrade the schema at start; false: refuse an old one")

    # API keys, quotas and retention (quotas bind keys that are not admin, when keys are required)
    require_api_key: bool = False
    quota_requests_per_minute: int = Field(600, ge=0, description="per key; 0 = unlimited")
    quota_active_generations: int = Field(8, ge=0, description="queued + running per key; 0 = unlimited")
    quota_daily_audio_seconds: float = Field(3600.0, ge=0, description="generated per key per 24 h; 0 = unlimited")
    quota_stored_bytes: int = Field(5 * 1024 * MiB, ge=0, description="uploads + results per key; 0 = unlimited")
    max_queued_jobs: int = Field(1000, ge=1, description="generations queued server-wide before 503")
    rate_limit_storage_url: str = Field("memory://", description="`limits` storage: memory:// or redis://...")
    result_retention_days: float = Field(30.0, ge=0, description="generated results expire; 0 = kept")
    upload_retention_days: float = Field(0.0, ge=0, description="uploads (and their results) expire; 0 = kept")
    retention_sweep_seconds: float = Field(300.0, gt=0, description="how often expired data is removed")

    # Observability (logs, metrics, error ids)
    log_format: Literal["text", "json"] = Field(
        "text", description="text: human-readable lines; json: one JSON object per line"
    )
    metrics_enabled: bool = Field(True, description="serve Prometheus metrics at GET /metrics")

    # Page, pushed progress, live audio and webhooks (issue 12)
    webhook_secret: str | None = Field(None, description="HMAC-SHA256 key signing webhooks")
    webhook_allow_private: bool = Field(False, description="let callback_url reach private and loopback addresses")
    webhook_max_attempts: int = Field(5, ge=1, le=20, description="deliveries tried per webhook, backoff 1, 2, 4 s...")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="per webhook attempt")
    media_token_secret: str | None = Field(None, description="signs media URLs for players; default random per process")
    media_token_seconds: int = Field(900, ge=10, description="how long a signed media URL stays valid")

    # Distributed mode (issue 10): a broker, shared storage and job leases. All unset = embedded (one process).
    broker_url: str | None = Field(None, description="empty: in-process workers; redis://... or sqs://...: Celery")
    storage_url: str | None = Field(None, description="default file:// under DATA_DIR; s3://bucket/prefix for S3")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible store (MinIO, moto); empty: AWS")
    download_redirect: bool = Field(False, description="S3: GET /download answers 302 to a presigned URL")
    download_url_seconds: int = Field(300, ge=10, le=604800, description="lifetime of a presigned download URL")
    job_lease_seconds: float = Field(30.0, ge=2, description="a claimed job without a heartbeat this long is re-run")
    broker_visibility_seconds: int = Field(7200, ge=60, description="redeliver unacked after; > longest job")

    @model_validator(mode="after")
    def _coherent_deployment(self) -> Settings:
        """Refuse combinations that cannot work across hosts, naming the setting that fixes them."""
        if self.broker_url:
            if self.resolved_database_url.startswith("sqlite"):
                raise ValueError("BROKER_URL needs a database every host reaches: set DATABASE_URL="
                                 "postgresql+psycopg://... (SQLite is one machine's file)")  # fmt: skip
            if not self.storage_url:
                raise ValueError("BROKER_URL needs storage every host reaches: set STORAGE_URL=s3://bucket/prefix "
                                 "(or STORAGE_URL=file:///path for a directory every host mounts)")  # fmt: skip
        if self.storage_url and not self.storage_url.startswith(("file://", "s3://")):
            raise ValueError(f"STORAGE_URL must start with file:// or s3://, got {self.storage_url!r}")
        if self.broker_url and not self.broker_url.startswith(("redis://", "rediss://", "sqs://")):
            raise ValueError(f"BROKER_URL must start with redis://, rediss:// or sqs://, got {self.broker_url!r}")
        return self

    @property
    def distributed(self) -> bool:
        """Jobs go through a broker to `motif worker` processes; this process runs no inference."""
        return bool(self.broker_url)

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @field_validator("host", "database_url", "webhook_secret", "media_token_secret", "broker_url", "storage_url",
                     "s3_endpoint_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @property
    def bind_host(self) -> str:
        """Loopback unless keys protect the API or HOST says otherwise."""
        return self.host or ("0.0.0.0" if self.require_api_key else "127.0.0.1")

    # Generation (models area): cross-field checks, so a bad combination stops the start naming the settings.
    @model_validator(mode="after")
    def _check_generation_windows(self) -> Settings:
        if self.extend_overlap_seconds >= self.window_seconds:
            raise ValueError(
                f"EXTEND_OVERLAP_SECONDS ({self.extend_overlap_seconds}) must be below WINDOW_SECONDS "
                f"({self.window_seconds}): each long-form window continues from that much of the last one and "
                "needs room for new audio"
            )
        if self.prompt_seconds >= self.window_seconds:
            raise ValueError(
                f"PROMPT_SECONDS ({self.prompt_seconds}) must be below WINDOW_SECONDS ({self.window_seconds}): "
                "the continuation prompt and the new audio share one window"
            )
        return self

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "motif.db"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.sqlite_path}"
