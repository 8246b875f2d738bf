"""Webhooks: a POST to a generation's `callback_url` with its final status, signed, retried, off the workers.

The body is the JSON of the final status; `X-Motif-Signature: sha256=<hex>` is HMAC-SHA256 of the exact
body bytes with WEBHOOK_SECRET. Deliveries run in their own thread with exponential backoff, so a slow or
dead receiver never holds a worker. A URL must be http(s), and every address its host resolves to must be
public unless WEBHOOK_ALLOW_PRIVATE=true; it is checked when the job is created and again before each
attempt (DNS can change in between). Pending deliveries live in memory: a crash loses them.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from motif.config import Settings
from motif.service.jobs import JobKind, JobQueue, JobStatus

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Motif-Signature"
EVENT_HEADER = "X-Motif-Event"
FIRST_RETRY_DELAY = 1.0  # seconds; doubles after each failed attempt
MAX_REMEMBERED = 10_000  # delivered job ids kept to ignore a second notify


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
    """One thread delivering final statuses: `notify(job_id)` is cheap and never blocks the caller.

    `describe(job_id)` returns (callback_url, status body) when the job has a callback and is final, else None.
    """

    def __init__(self, describe: Callable[[str], tuple[str, dict[str, Any]] | None], secret: str | None,
                 allow_private: bool, max_attempts: int, timeout: float) -> None:  # fmt: skip
        self.describe, self.secret, self.allow_private = describe, secret, allow_private
        self.max_attempts, self.timeout = max_attempts, timeout
        self._due: list[tuple[float, int, str]] = []  # (when, attempt, job id) heap
        self._cond = threading.Condition()
        self._stopping = False
        self._sent: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="motif-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def notify(self, job_id: str) -> None:
        """A job reached a final state: deliver its webhook (if it has one) soon."""
        with self._cond:
            heapq.heappush(self._due, (time.monotonic(), 1, job_id))
            self._cond.notify()

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, follow_redirects=False, trust_env=False) as client:
            while True:
                with self._cond:
                    while not self._stopping and (not self._due or self._due[0][0] > time.monotonic()):
                        self._cond.wait(None if not self._due else self._due[0][0] - time.monotonic())
                    if self._stopping:
                        return
                    _, attempt, job_id = heapq.heappop(self._due)
                try:
                    self._attempt(client, job_id, attempt)
                except Exception:  # the thread must live; the delivery is dropped with the reason logged
                    log.exception("webhook for %s failed", job_id)

    def _attempt(self, client: httpx.Client, job_id: str, attempt: int) -> None:
        if job_id in self._sent:
            return
        found = self.describe(job_id)
        if found is None:
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
            return
        except httpx.HTTPError as error:
            ok, reason = False, f"{type(error).__name__}: {error}"
        if ok:
            if len(self._sent) >= MAX_REMEMBERED:
                self._sent.clear()
            self._sent.add(job_id)
            return
        if attempt >= self.max_attempts:
            log.warning("webhook for %s gave up after %d attempts (%s)", job_id, attempt, reason)
            return
        delay = FIRST_RETRY_DELAY * 2 ** (attempt - 1)
        log.info("webhook for %s: %s; attempt %d in %.0f s", job_id, reason, attempt + 1, delay)
        with self._cond:
            heapq.heappush(self._due, (time.monotonic() + delay, attempt + 1, job_id))


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
