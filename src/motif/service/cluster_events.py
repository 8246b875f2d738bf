"""Job events across processes, for a cluster: workers NOTIFY on PostgreSQL, each API process LISTENs.

In one process, `JobEvents` wakes the request handlers that wait on a job (SSE, bounded waits) and the
webhook sender. In a cluster the job runs in a `motif worker` and the handler waits in an API process, so
`NotifyingEvents` also sends each topic with `pg_notify` (workers, and API processes for a cancel), and
`EventListener` (one thread per API process, one connection) publishes what arrives into that process's
events, locally only (so nothing echoes). PostgreSQL is what a
cluster's database is (a broker with SQLite is refused), so this needs no other service, works with any
broker, and keeps "no polling per client": without it (another database) handlers still re-read a job on
their keep-alive timer. Live audio stays in the worker's process (NOTIFY payloads are capped at 8 kB).
"""

from __future__ import annotations

import logging
import threading

import psycopg
from sqlalchemy import make_url, text

from motif.service.events import JobEvents
from motif.service.store import Database

log = logging.getLogger(__name__)

CHANNEL = "motif_events"
RECONNECT_SECONDS = 2.0  # after the listening connection drops
STOP_CHECK_SECONDS = 1.0  # how long the listener blocks before it looks at its stop flag


def supported(db: Database) -> bool:
    return db.engine.dialect.name == "postgresql"


class NotifyingEvents(JobEvents):
    """JobEvents whose every publish of a job topic also reaches the other processes' listeners."""

    def __init__(self, db: Database) -> None:
        super().__init__()
        self.db = db

    def publish_local(self, topic: str, final: bool = False) -> None:
        super().publish(topic, final)

    def publish(self, topic: str, final: bool = False) -> None:
        super().publish(topic, final)
        if topic.startswith("audio:"):  # live audio is not carried across processes
            return
        try:
            with self.db.engine.connect() as conn:
                conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                             {"channel": CHANNEL, "payload": f"{topic}|{int(final)}"})  # fmt: skip
                conn.commit()
        except Exception:  # the row holds the change: listeners see it at their next re-read
            log.warning("could not notify the API processes of %s", topic, exc_info=True)


class EventListener(threading.Thread):
    """LISTENs on CHANNEL and publishes each notification into this API process's `events`."""

    def __init__(self, db: Database, events: NotifyingEvents) -> None:
        super().__init__(name="motif-cluster-events", daemon=True)
        url = make_url(db.url).set(drivername="postgresql")
        self.conninfo = url.render_as_string(hide_password=False)
        self.events = events
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._listen()
            except Exception:
                log.warning("cluster event listener lost its connection; reconnecting", exc_info=True)
                self.stopping.wait(RECONNECT_SECONDS)

    def _listen(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            while not self.stopping.is_set():
                for notice in conn.notifies(timeout=STOP_CHECK_SECONDS):
                    topic, _, final = notice.payload.rpartition("|")
                    self.events.publish_local(topic, final == "1")

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=2 * STOP_CHECK_SECONDS + 1)
