"""The seed's client flow and the failure cases, on a real cluster: API + two workers, Redis, PostgreSQL, S3.

The tests run in this order on one cluster: the flow, text search, duplicate delivery, cancel, batching,
then the ones that kill or stop workers.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from motif.service.store import Database, JobRow
from tests.cluster.conftest import MAX_ATTEMPTS, Cluster
from tests.e2e.conftest import upload
from tests.e2e.server import poll_status, sse_events, wait_for_embedding
from tests.service.conftest import wait_until
from tests.synth import music_like, write_format
from tests.webhook_receiver import SECRET, receiving, signed_by

HERE = Path(__file__).resolve().parent


def _song(cluster: Cluster, name: str = "song.wav", seconds: float = 8.0) -> Path:
    return write_format(cluster.workdir / name, music_like(seconds, 32_000, seed=3), 32_000, "wav16")


def _uploaded(cluster: Cluster) -> str:
    response = upload(cluster.client, _song(cluster))
    assert response.status_code == 201, response.text
    audio_id: str = response.json()["audio_id"]
    assert wait_for_embedding(cluster.client, audio_id, timeout=120).status_code == 200
    return audio_id


def _generate(client: httpx.Client, audio_id: str, **params: Any) -> str:
    body = {"duration": 5, "seed": 7, **params}
    response = client.post(f"/api/generate/{audio_id}", json=body)
    assert response.status_code == 202, response.text
    generation_id: str = response.json()["generation_id"]
    return generation_id


def _row(cluster: Cluster, job_id: str) -> JobRow:
    db = Database(cluster.env["DATABASE_URL"])
    try:
        with db.session() as session:
            row = session.scalar(select(JobRow).where(JobRow.id == job_id))
            assert row is not None
            return row
    finally:
        db.dispose()


def test_the_seed_flow_runs_through_broker_workers_and_s3(cluster: Cluster) -> None:
    client = cluster.client
    health = client.get("/api/health").json()
    assert health["ready"] is True
    audio_id = _uploaded(cluster)
    assert any(audio_id in key for key in cluster.objects("uploads"))  # the original is in S3, not on disk
    embedding = client.get(f"/api/embedding/{audio_id}").json()
    assert len(embedding["embedding"]) == 512
    generation_id = _generate(client, audio_id)
    statuses = poll_status(client, generation_id, timeout=180)
    assert statuses[-1]["status"] == "completed", statuses[-1]
    whole = client.get(f"/api/download/{generation_id}")
    assert whole.status_code == 200 and whole.content[:4] == b"RIFF"
    assert int(whole.headers["content-length"]) == len(whole.content)
    part = client.get(f"/api/download/{generation_id}", headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == whole.content[4:12]
    assert part.headers["content-range"] == f"bytes 4-11/{len(whole.content)}"
    assert [key for key in cluster.objects("generated") if generation_id in key] != []
    assert client.delete(f"/api/audio/{audio_id}").status_code in (200, 204)
    assert not [key for area in ("uploads", "processed", "generated") for key in cluster.objects(area)
                if audio_id in key or generation_id in key]  # fmt: skip
    assert "random-weight test model" not in cluster.api.log(1_000_000)  # the API never loaded a model


def test_a_text_search_is_answered_by_an_embedding_worker(cluster: Cluster) -> None:
    audio_id = _uploaded(cluster)
    response = cluster.client.get("/api/search", params={"q": "calm piano", "k": 50})
    assert response.status_code == 200, response.text
    assert audio_id in [match["audio_id"] for match in response.json()["results"]]
    assert any("motif.embed_text" in worker.log(1_000_000) for worker in cluster.workers.values())
    assert "random-weight test model" not in cluster.api.log(1_000_000)  # the API never loaded CLAP


def test_the_webhook_of_a_job_a_worker_finished_is_sent_by_the_api(cluster: Cluster) -> None:
    audio_id = _uploaded(cluster)
    with receiving() as (url, handler):
        generation_id = _generate(cluster.client, audio_id, callback_url=url)
        assert poll_status(cluster.client, generation_id, timeout=180)[-1]["status"] == "completed"
        wait_until(lambda: handler.received, timeout=30, what="the webhook")
    headers, body = handler.received[0]
    assert signed_by(SECRET, headers, body) and json.loads(body)["generation_id"] == generation_id
    assert _row(cluster, generation_id).webhook_state == "delivered"


@contextmanager
def workers_paused(cluster: Cluster) -> Iterator[None]:
    """SIGSTOP every live worker for the block, SIGCONT after: what is queued meanwhile waits, for certain."""
    alive = [w.proc for w in cluster.workers.values() if w.alive and w.proc is not None]
    for proc in alive:
        proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for proc in alive:
            proc.send_signal(signal.SIGCONT)


def test_progress_a_worker_makes_is_pushed_to_the_api_s_event_stream(cluster: Cluster) -> None:
    audio_id = _uploaded(cluster)
    # The stream is open, and has told the job queued, before any worker can claim it; the job is long (120 s:
    # thousands of decode steps, far more than the 0.5 s between two progress writes) and is cancelled once a
    # progress value between 0 and 100 arrives. So the test waits on events, never on timing.
    with workers_paused(cluster):
        generation_id = _generate(cluster.client, audio_id, duration=120)
        events = sse_events(cluster.client, generation_id)
        assert next(events)["data"]["status"] == "queued"
    progress, last = [], None
    for event in events:
        last = event
        if event["event"] == "progress":
            progress.append(event["data"]["progress"])
            if 0 < progress[-1] < 100 and len([p for p in progress if 0 < p < 100]) == 1:
                assert cluster.client.post(f"/api/generations/{generation_id}/cancel").status_code == 202
    # Without PostgreSQL's NOTIFY from the worker, the API would re-read the job only on its 15 s keep-alive
    # and see no step in between.
    assert any(0 < value < 100 for value in progress), progress
    assert last is not None and last["event"] == "cancelled", last


def test_a_stream_asked_of_a_running_job_in_a_cluster_answers_with_its_final_file(cluster: Cluster) -> None:
    audio_id = _uploaded(cluster)
    generation_id = _generate(cluster.client, audio_id, duration=10)
    streamed = cluster.client.get(f"/api/generations/{generation_id}/stream", timeout=180)
    assert streamed.status_code == 200 and streamed.content[:4] == b"RIFF"
    assert streamed.content == cluster.client.get(f"/api/download/{generation_id}").content


def _send(cluster: Cluster, job_id: str) -> None:
    """Publish a generation message for `job_id`, as a broker redelivery would."""
    from celery import Celery

    app = Celery(broker=cluster.env["BROKER_URL"], set_as_current=False)
    try:
        app.send_task("motif.generate", args=[job_id], queue="generation")
    finally:
        app.close()


def _wake_ups_ignored(cluster: Cluster, job_id: str) -> int:
    return sum(worker.log(1_000_000).count(f"nothing to claim (woken for {job_id})")
               for worker in cluster.workers.values())  # fmt: skip


def test_the_same_message_delivered_twice_runs_the_job_once(cluster: Cluster) -> None:
    audio_id = _uploaded(cluster)
    generation_id = _generate(cluster.client, audio_id)
    _send(cluster, generation_id)  # two more deliveries of the same message, while it runs
    _send(cluster, generation_id)
    assert poll_status(cluster.client, generation_id, timeout=180)[-1]["status"] == "completed"
    wait_until(lambda: _wake_ups_ignored(cluster, generation_id) >= 2, timeout=60, what="the duplicates consumed")
    finished = _row(cluster, generation_id)
    assert finished.attempts == 1
    _send(cluster, generation_id)  # and once after it finished
    wait_until(lambda: _wake_ups_ignored(cluster, generation_id) >= 3, timeout=60, what="the late duplicate")
    again = _row(cluster, generation_id)
    assert (again.status, again.attempts, again.finished_at) == ("completed", 1, finished.finished_at)
    assert len([key for key in cluster.objects("generated") if generation_id in key]) == 1


def test_cancel_of_a_running_generation_stops_it(cluster: Cluster) -> None:
    audio_id = _uploaded(cluster)
    generation_id = _generate(cluster.client, audio_id, duration=60)
    wait_until(lambda: cluster.client.get(f"/api/status/{generation_id}").json()["progress"] > 0, timeout=120,
               what="the generation running")  # fmt: skip
    response = cluster.client.post(f"/api/generations/{generation_id}/cancel")
    assert response.status_code == 202, response.text
    assert poll_status(cluster.client, generation_id, timeout=60)[-1]["status"] == "cancelled"
    assert not [key for key in cluster.objects("generated") if generation_id in key]


def test_a_job_whose_worker_is_killed_completes_on_the_other_with_one_result(cluster: Cluster) -> None:
    audio_id = _uploaded(cluster)
    # 60 s: thousands of decode steps, so the job is still running when its first progress is seen and the
    # worker is killed (its first progress write comes 0.5 s in).
    generation_id = _generate(cluster.client, audio_id, duration=60)
    claimed = f"claimed generation {generation_id}"
    holder = wait_until(lambda: next((w for w in cluster.workers.values() if claimed in w.log(1_000_000)), None),
                        timeout=60, what="a worker claiming the job")  # fmt: skip
    wait_until(lambda: cluster.client.get(f"/api/status/{generation_id}").json()["progress"] > 0, timeout=120,
               what="the generation decoding")  # fmt: skip
    holder.kill(signal.SIGKILL)
    survivor = next(w for w in cluster.workers.values() if w is not holder and w.alive)
    assert poll_status(cluster.client, generation_id, timeout=240)[-1]["status"] == "completed"
    row = _row(cluster, generation_id)
    assert row.attempts == 2
    assert row.result is not None and row.result["worker"]["pid"] == survivor.proc.pid  # type: ignore[union-attr]
    assert len([key for key in cluster.objects("generated") if generation_id in key]) == 1


def test_two_jobs_sent_together_share_decode_steps_in_one_worker(cluster: Cluster) -> None:
    alive = [w for w in cluster.workers.values() if w.alive]
    assert len(alive) == 1  # the previous test killed the other: every message reaches this one
    audio_id = _uploaded(cluster)
    first, second = _generate(cluster.client, audio_id, duration=10), _generate(cluster.client, audio_id, duration=10)
    # Three more fill the batch (MAX_BATCH_SIZE 4) and leave one claimed but waiting for a slot, longer than a
    # lease: its lease must be renewed all the same, or the sweeper would hand it to a second run.
    rest = [_generate(cluster.client, audio_id, duration=10) for _ in range(3)]
    for generation_id in (first, second, *rest):
        assert poll_status(cluster.client, generation_id, timeout=300)[-1]["status"] == "completed"
    rows = [_row(cluster, job_id) for job_id in (first, second, *rest)]
    assert all(row.result is not None and row.result["worker"]["peak_batch"] >= 2 for row in rows[:2]), \
        [row.result for row in rows]  # fmt: skip
    assert [row.attempts for row in rows] == [1] * 5


def test_a_job_that_always_kills_its_worker_fails_after_max_attempts(cluster: Cluster) -> None:
    from tests.cluster.crashing_worker import CRASH

    for worker in cluster.workers.values():
        worker.stop()
    audio_id = _uploaded_while_no_worker(cluster)
    generation_id = _generate(cluster.client, audio_id, prompt=CRASH)
    crashy = cluster.start_worker("crashy", [str(HERE / "crashing_worker.py")])
    starts = 1

    def settled() -> bool:
        nonlocal crashy, starts
        if _row(cluster, generation_id).status in ("failed", "completed", "cancelled"):
            return True
        if not crashy.alive:
            assert starts <= MAX_ATTEMPTS + 1, f"restarted {starts} times without an outcome:\n{crashy.log()}"
            crashy = cluster.start_worker("crashy", [str(HERE / "crashing_worker.py")])
            starts += 1
        return False

    wait_until(settled, timeout=600, interval=0.5, what="the crashing job to fail")
    row = _row(cluster, generation_id)
    assert (row.status, row.error_code, row.attempts) == ("failed", "interrupted", MAX_ATTEMPTS), row.error
    assert "stopped (killed or crashed) 2 times" in (row.error or "")
    assert crashy.alive  # no loop: the last worker lives on, and the job stays failed
    assert cluster.client.get(f"/api/status/{generation_id}").json()["status"] == "failed"


def _uploaded_while_no_worker(cluster: Cluster) -> str:
    """An upload whose embedding is not needed now (no worker runs): generation only needs its audio."""
    response = upload(cluster.client, _song(cluster, "later.wav"))
    assert response.status_code == 201, response.text
    return str(response.json()["audio_id"])


def test_a_text_search_with_no_embedding_worker_answers_503_with_the_reason(cluster: Cluster) -> None:
    for worker in cluster.workers.values():
        worker.stop()
    response = cluster.client.get("/api/search", params={"q": "fast drums"})
    assert response.status_code == 503, response.text
    assert "no embedding worker answered" in response.json()["detail"]


def test_cancel_of_a_queued_generation_means_it_never_runs(cluster: Cluster) -> None:
    for worker in cluster.workers.values():
        worker.stop()
    audio_id = _uploaded_while_no_worker(cluster)
    generation_id = _generate(cluster.client, audio_id)
    response = cluster.client.post(f"/api/generations/{generation_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    cluster.start_worker("late")
    wait_until(lambda: _wake_ups_ignored(cluster, generation_id) >= 1, timeout=60, what="the message consumed")
    row = _row(cluster, generation_id)
    assert (row.status, row.attempts) == ("cancelled", 0)
