"""Retention: finished results and (when configured) uploads expire; a sweeper thread deletes them.

Rows go first, in one transaction, then their files: a crash in between leaves only orphan files, never a
row pointing at a missing file. The embedded server's start-up sweep removes them (`runtime.sweep_orphans`);
in a cluster, where no start-up is "the" start-up, the API processes' sweepers remove files older than
ORPHAN_AGE that no row points at, once every ORPHAN_SWEEP_SECONDS.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from motif.service import library
from motif.service.jobs import JobKind, JobStatus
from motif.service.runtime import Services, sweep_orphans
from motif.service.store import EVERYONE, AudioRow, JobRow, utcnow

log = logging.getLogger(__name__)

FINAL = (JobStatus.COMPLETED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)
ORPHAN_AGE = timedelta(hours=1)  # far longer than any write-then-commit; a file this old with no row is lost
ORPHAN_SWEEP_SECONDS = 3600.0  # a sweep lists the whole bucket: hourly keeps its LIST requests cheap


@dataclass(frozen=True)
class Expired:
    results: int
    uploads: int


def expire(services: Services, now: datetime | None = None) -> Expired:
    """Delete what has outlived RESULT_RETENTION_DAYS / UPLOAD_RETENTION_DAYS (0 = never)."""
    now = now or utcnow()
    settings = services.settings
    results = uploads = 0
    if settings.result_retention_days > 0:
        results = _expire_results(services, now - timedelta(days=settings.result_retention_days))
    if settings.upload_retention_days > 0:
        cutoff = now - timedelta(days=settings.upload_retention_days)
        with services.db.session() as session:
            old = list(session.scalars(select(AudioRow.id).where(AudioRow.created_at < cutoff)))
        uploads = sum(library.delete_audio(services, EVERYONE, audio_id) for audio_id in old)
    if results or uploads:
        log.info("retention: %d results and %d uploads expired", results, uploads)
    return Expired(results, uploads)


def _expire_results(services: Services, cutoff: datetime) -> int:
    expired = (JobRow.kind == JobKind.GENERATION.value, JobRow.status.in_(FINAL), JobRow.finished_at < cutoff)
    with services.db.transaction() as session:
        rows = session.execute(select(JobRow.seq, JobRow.output_key).where(*expired)).all()
        if rows:
            session.execute(delete(JobRow).where(JobRow.seq.in_([seq for seq, _ in rows])))
    for _, key in rows:
        if key:
            services.blobs.delete(key)
    return len(rows)


class RetentionSweeper(threading.Thread):
    """Runs `expire` every RETENTION_SWEEP_SECONDS until stopped; a failed pass is logged and retried."""

    def __init__(self, services: Services) -> None:
        super().__init__(name="motif-retention", daemon=True)
        self.services = services
        self.stopping = threading.Event()

    def run(self) -> None:
        orphans_swept = time.monotonic()
        while not self.stopping.wait(self.services.settings.retention_sweep_seconds):
            try:
                expire(self.services)
                if self.services.settings.distributed and time.monotonic() - orphans_swept >= ORPHAN_SWEEP_SECONDS:
                    sweep_orphans(self.services.db, self.services.blobs, older_than=ORPHAN_AGE)
                    orphans_swept = time.monotonic()
            except Exception:
                log.exception("retention sweep failed; retrying at the next interval")

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
