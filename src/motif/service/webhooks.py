"""Webhooks: a POST to a generation's `callback_url` with its final status, signed, retried, off the workers.

The body is the JSON of the final status; `X-Motif-Signature: sha256=<hex>` is HMAC-SHA256 of the exact
body bytes with WEBHOOK_SECRET. A URL must be http(s), and every address its host resolves to must be
public unless WEBHOOK_ALLOW_PRIVATE=true; it is checked when the job is created and again before each
attempt (DNS can change in between).

Deliveries are an outbox in the job rows (`webhook_state`, `webhook_attempts`, `webhook_due_at`), sent by a
thread in every API process with exponential backoff, so a slow or dead receiver never holds a worker, a
crash loses nothing (the next process sends what is pending), and in a cluster the API processes send the
webhooks of jobs that workers finished. An attempt is claimed by moving `webhook_due_at` past its timeout
in one conditional UPDATE, so two processes never send the same attempt; a process killed during an
attempt leaves it to be retried: delivery is at least once (receivers dedupe on generation_id).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select, update

from motif.config import Settings
from motif.service.jobs import JobKind, JobQueue, JobStatus
from motif.service.store import JobRow, utcnow

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Motif-Signature"
EVENT_HEADER = "X-Motif-Event"
FIRST_RETRY_DELAY = 1.0  # seconds; doubles after each failed attempt
POLL_SECONDS = 1.0  # how often the outbox is read (one indexed query); a job finished here wakes it at once
BATCH = 20  # deliveries claimed per read
FINAL = [status.value for status in JobStatus if status.is_final]


class WebhookURLError(ValueError):
    """A callback URL Motif refuses to call (the message says why)."""


def sign(secret: str, body: bytes) -> str:
    """The X-Motif-Signature value: `sha256=` and the hex HMAC-SHA256 of body with secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check_url(url: str, allow_private: bool) -> None:
    """Raise WebhookURLError unless url is http(s) with a host whose every address may be called."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebhookURLError("callback_url must be an http or https URL")
    if not parts.hostname:
        raise WebhookURLError("callback_url has no host")
    if parts.username or parts.password:
        raise WebhookURLError("callback_url must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError) as error:
        raise WebhookURLError(f"callback_url host {parts.hostname!r} does not resolve: {error}") from error
    if allow_private:
        return
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global or address.is_multicast:
            raise WebhookURLError(f"callback_url resolves to a private or loopback address ({address}); "
                                  "set WEBHOOK_ALLOW_PRIVATE=true to allow it")  # fmt: skip


def check_callback(settings: Settings, url: str) -> None:
    """A generation request's callback_url, before it is queued; raises WebhookURLError with the reason."""
    if not settings.webhook_secret:
        raise WebhookURLError("callback_url needs WEBHOOK_SECRET set on the server (it signs every webhook)")
    check_url(url, settings.webhook_allow_private)


class WebhookSender:
    """The thread that sends due webhooks from the job rows: `notify()` only wakes it, never blocks."""

    def __init__(self, queue: JobQueue, settings: Settings) -> None:
        self.queue, self.secret, self.allow_private = queue, settings.webhook_secret, settings.webhook_allow_private
        self.max_attempts, self.timeout = settings.webhook_max_attempts, settings.webhook_timeout_seconds
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="motif-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def notify(self, job_id: str) -> None:
        """A job in this process reached a final state: read the outbox now rather than at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, follow_redirects=False, trust_env=False) as client:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    for job_id, attempt in self._claim_due():
                        self._attempt(client, job_id, attempt)
                except Exception:  # the database is unreachable, say: the rows wait, the thread lives on
                    log.exception("webhook delivery pass failed")
                self._wake.wait(POLL_SECONDS)

    def _claim_due(self) -> list[tuple[str, int]]:
        """Up to BATCH (job id, attempt number) whose webhook is due, each claimed for its attempt's timeout."""
        now = utcnow()
        due = (JobRow.webhook_state == "pending", JobRow.status.in_(FINAL),
               JobRow.webhook_due_at.is_(None) | (JobRow.webhook_due_at <= now))  # fmt: skip
        lease_end = now + timedelta(seconds=self.timeout + 30)
        claimed = []
        with self.queue.db.transaction() as session:
            found = session.execute(select(JobRow.id, JobRow.webhook_attempts).where(*due)
                                    .order_by(JobRow.seq).limit(BATCH)).all()  # fmt: skip
            for job_id, attempts in found:
                won = session.execute(update(JobRow).where(JobRow.id == job_id, *due)
                                      .values(webhook_due_at=lease_end, webhook_attempts=attempts + 1)
                                      .execution_options(synchronize_session=False))  # fmt: skip
                if won.rowcount:  # type: ignore[attr-defined]
                    claimed.append((job_id, attempts + 1))
        return claimed

    def _attempt(self, client: httpx.Client, job_id: str, attempt: int) -> None:
        found = webhook_payload(self.queue, job_id)
        if found is None:  # no callback after all: nothing to send
            self._settle(job_id, "failed")
            return
        url, status = found
        body = json.dumps(status, separators=(",", ":"), default=str).encode()
        headers = {"Content-Type": "application/json", EVENT_HEADER: f"generation.{status.get('status')}"}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        try:
            check_url(url, self.allow_private)
            response = client.post(url, content=body, headers=headers)
            ok, reason = response.is_success, f"HTTP {response.status_code}"
        except WebhookURLError as error:
            log.warning("webhook for %s not sent: %s", job_id, error)
            self._settle(job_id, "failed")
            return
        except httpx.HTTPError as error:
            ok, reason = False, f"{type(error).__name__}: {error}"
        if ok:
            self._settle(job_id, "delivered")
        elif attempt >= self.max_attempts:
            log.warning("webhook for %s gave up after %d attempts (%s)", job_id, attempt, reason)
            self._settle(job_id, "failed")
        else:
            delay = FIRST_RETRY_DELAY * 2 ** (attempt - 1)
            log.info("webhook for %s: %s; attempt %d in %.0f s", job_id, reason, attempt + 1, delay)
            self._settle(job_id, "pending", utcnow() + timedelta(seconds=delay))

    def _settle(self, job_id: str, state: str, due: datetime | None = None) -> None:
        with self.queue.db.transaction() as session:
            session.execute(update(JobRow).where(JobRow.id == job_id)
                            .values(webhook_state=state, webhook_due_at=due)
                            .execution_options(synchronize_session=False))  # fmt: skip


def webhook_payload(queue: JobQueue, job_id: str) -> tuple[str, dict[str, Any]] | None:
    """(callback_url, final status) of a finished generation that asked for a webhook, else None.

    The status has the fields of GET /api/status/{id} that a finished job has.
    """
    row = queue.get(job_id)
    if row is None or row.kind != JobKind.GENERATION.value or not row.params.get("callback_url"):
        return None
    status = JobStatus(row.status)
    if not status.is_final:
        return None
    result: dict[str, Any] = row.result or {}
    completed = status is JobStatus.COMPLETED
    body = {"generation_id": row.id, "audio_id": row.audio_id, "status": status.value, "progress": row.progress,
            "error": row.error if status is JobStatus.FAILED else None, "error_code": row.error_code,
            "similarity": result.get("similarity"), "description": result.get("description"),
            "seed": result.get("seed", row.params.get("seed")), "mode": result.get("mode", row.params.get("mode")),
            "duration": result.get("duration"), "params": row.params, "created_at": row.created_at,
            "started_at": row.started_at, "finished_at": row.finished_at,
            "download_url": f"/api/download/{row.id}" if completed else None}  # fmt: skip
    return str(row.params["callback_url"]), body
