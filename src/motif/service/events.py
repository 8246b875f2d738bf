"""In-process publish/subscribe between the worker threads and async request handlers.

A topic is a job id (its row changed: progress, a final state), QUEUE_TOPIC (queue positions moved) or
`audio_topic(job_id)` (streamed audio arrived). Handlers subscribe, re-read what they show, then wait;
nothing polls the database in a loop per client. Final-state listeners (webhooks) run in the publisher's
thread and must only hand the job id on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

QUEUE_TOPIC = "queue:generation"  # a generation was claimed or a queued one cancelled: positions moved


def audio_topic(job_id: str) -> str:
    return f"audio:{job_id}"


class JobEvents:
    """Lets async request handlers wait for a job to change without polling the database in a loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._final_listeners: list[Callable[[str], None]] = []

    def subscribe(self, topic: str) -> asyncio.Event:
        """Call on the event loop; the event is set at the topic's next publish. Pair with `unsubscribe`."""
        event = asyncio.Event()
        with self._lock:
            self._waiters.setdefault(topic, []).append((asyncio.get_running_loop(), event))
        return event

    def unsubscribe(self, topic: str, event: asyncio.Event) -> None:
        with self._lock:
            waiters = [w for w in self._waiters.get(topic, []) if w[1] is not event]
            if waiters:
                self._waiters[topic] = waiters
            else:
                self._waiters.pop(topic, None)

    def publish(self, topic: str, final: bool = False) -> None:
        """Thread-safe: wake everyone waiting on `topic`; `final`: the job `topic` reached a final state."""
        with self._lock:
            waiters = self._waiters.pop(topic, [])
            listeners = list(self._final_listeners) if final else []
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)
        for listener in listeners:
            try:
                listener(topic)
            except Exception:  # a listener's bug must not break the worker that published
                log.exception("final-state listener failed for %s", topic)

    def on_final(self, listener: Callable[[str], None]) -> None:
        """Call `listener(job_id)` whenever a job is published as final (from the publishing thread)."""
        with self._lock:
            self._final_listeners.append(listener)


async def wait_any(events: list[asyncio.Event], timeout: float) -> bool:
    """Wait until one of the events is set or `timeout` seconds pass; True if one was set."""
    tasks = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    return bool(done)
