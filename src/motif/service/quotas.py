"""Per-key quotas and server-wide caps: requests per minute, active generations, audio-seconds a day,
stored bytes, and the length of the queue. A refusal says why and, where waiting helps, for how long.

Request rates use the `limits` library (a moving window, in memory or in Redis when several API processes
share one count); the other quotas are counted from the job and upload rows, so every process agrees.
Two requests racing past a count can overshoot it by one job: quotas are fairness, not billing.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta
from typing import TypeVar

from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import func, select

from motif.config import Settings
from motif.service.jobs import JobKind, JobStatus
from motif.service.keys import Principal
from motif.service.store import AudioRow, Database, JobRow, utcnow

N = TypeVar("N", int, float)
DAY = timedelta(days=1)
BUSY_RETRY_AFTER = 30  # seconds suggested when the whole server's queue is full
ACTIVE_RETRY_AFTER = 10  # seconds suggested when a key has its maximum of generations running


class QuotaExceeded(Exception):
    """A request over a quota or cap: `status` (429, 413 or 503), a reason, and seconds to wait if any."""

    def __init__(self, status: int, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.retry_after = status, detail, retry_after


class Quotas:
    """The checks routes make before accepting work; one per process."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings, self.db = settings, db
        self._limiter = MovingWindowRateLimiter(storage_from_string(settings.rate_limit_storage_url))

    def hit_rate(self, principal: Principal) -> None:
        """Count one request of `principal`; raise 429 past its requests per minute."""
        per_minute = _pick(principal.rate_per_minute, self.settings.quota_requests_per_minute)
        if not principal.quota_bound or not per_minute:
            return
        item = RateLimitItemPerMinute(per_minute)
        if not self._limiter.hit(item, "requests", str(principal.key_id)):
            reset = self._limiter.get_window_stats(item, "requests", str(principal.key_id)).reset_time
            wait = max(1, math.ceil(reset - time.time()))
            raise QuotaExceeded(429, f"more than {per_minute} requests per minute for this key", wait)

    def check_upload(self, principal: Principal) -> None:
        """Before receiving an upload: the embedding queue's cap, and room left in the key's storage."""
        self._check_queue(JobKind.EMBEDDING)
        self.check_storage(principal, 1)

    def check_generation(self, principal: Principal, seconds: float) -> None:
        """Before queueing a generation of `seconds`: the server's queue cap, then the key's quotas."""
        self._check_queue(JobKind.GENERATION)
        if not principal.quota_bound:
            return
        owner = principal.key_id
        most = _pick(principal.max_active_generations, self.settings.quota_active_generations)
        with self.db.session() as session:
            active = session.scalar(select(func.count()).select_from(JobRow).where(
                JobRow.owner == owner, JobRow.kind == JobKind.GENERATION.value,
                JobRow.status.in_((JobStatus.QUEUED.value, JobStatus.PROCESSING.value)))) or 0  # fmt: skip
            if most and active >= most:
                raise QuotaExceeded(429, f"this key has {active} generations queued or running (at most {most})",
                                    ACTIVE_RETRY_AFTER)  # fmt: skip
            daily = _pick(principal.daily_audio_seconds, self.settings.quota_daily_audio_seconds)
            if not daily:
                return
            since = utcnow() - DAY
            rows = session.execute(select(JobRow.created_at, JobRow.params).where(
                JobRow.owner == owner, JobRow.kind == JobKind.GENERATION.value, JobRow.created_at >= since,
                JobRow.status.not_in((JobStatus.FAILED.value, JobStatus.CANCELLED.value))
            ).order_by(JobRow.created_at)).all()  # fmt: skip
        used = sum(float(params.get("duration", 0.0)) for _, params in rows)
        if used + seconds > daily:
            wait = (rows[0][0] + DAY - utcnow()).total_seconds() if rows else DAY.total_seconds()
            raise QuotaExceeded(429, f"this key asked for {used:g} s of audio in the last 24 h; {seconds:g} s more "
                                f"would pass its {daily:g} s a day", max(1, math.ceil(wait)))  # fmt: skip

    def check_storage(self, principal: Principal, incoming: int) -> None:
        """Before keeping `incoming` more bytes for the key: 413 past its stored-bytes quota."""
        most = _pick(principal.max_stored_bytes, self.settings.quota_stored_bytes)
        if not principal.quota_bound or not most:
            return
        stored = self.stored_bytes(principal.key_id)
        if stored + incoming > most:
            raise QuotaExceeded(413, f"this key stores {stored} bytes; {incoming} more would pass its quota of "
                                f"{most} bytes: delete uploads or results first")  # fmt: skip

    def _check_queue(self, kind: JobKind) -> None:
        with self.db.session() as session:
            depth = session.scalar(select(func.count()).select_from(JobRow).where(
                JobRow.kind == kind.value, JobRow.status == JobStatus.QUEUED.value)) or 0  # fmt: skip
        if depth >= self.settings.max_queued_jobs:
            raise QuotaExceeded(503, f"the {kind.value} queue is full ({depth} jobs); retry later", BUSY_RETRY_AFTER)

    def stored_bytes(self, owner: str | None) -> int:
        """Uploads and results kept for `owner`, in bytes."""
        with self.db.session() as session:
            uploads = session.scalar(select(func.sum(AudioRow.size_bytes)).where(AudioRow.owner == owner)) or 0
            results = session.scalar(select(func.sum(JobRow.output_bytes)).where(JobRow.owner == owner)) or 0
        return int(uploads) + int(results)


def _pick(override: N | None, default: N) -> N:
    return default if override is None else override
