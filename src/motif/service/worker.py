"""The in-process workers: threads that keep the models loaded and run jobs off the event loop.

One thread embeds uploads and one runs generation batches, so an upload's embedding never waits behind
a two-minute generation. Progress reaches the job row throttled; cancellation is a flag the decode loop
polls; every outcome (result, cancel, error, even a bug) ends as a committed final state.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from motif.config import Settings
from motif.engine.types import CLAP_SAMPLE_RATE, GenerationMode, GenerationParams, GenerationResult, OutputFormat
from motif.errors import GenerationCancelled, ModelUnavailableError, MotifError
from motif.service import vectors
from motif.service.blobs import BlobStore
from motif.service.engine_host import EngineHost
from motif.service.events import QUEUE_TOPIC, JobEvents
from motif.service.jobs import ErrorCode, JobKind, JobQueue
from motif.service.logs import log_context, log_internal_error
from motif.service.metrics import Metrics
from motif.service.redact import scrub_paths
from motif.service.store import AudioRow, Database, EmbeddingRow, JobRow, get_embedding, save_embedding
from motif.service.streams import AudioStreams

if TYPE_CHECKING:  # torch and the model code load in the workers' threads, after the server answers
    from motif.engine import Engine
    from motif.engine.pipeline import GenerationJob

log = logging.getLogger(__name__)

PROGRESS_MIN_STEP = 1.0  # percentage points between two progress writes
PROGRESS_MIN_INTERVAL = 0.5  # seconds between two progress writes
CANCEL_POLL_INTERVAL = 1.0  # seconds between two reads of a job's cancel flag in the database
IDLE_POLL_INTERVAL = 1.0  # seconds a worker sleeps when the queue is empty and nobody wakes it
SERVICE_PARAMS = ("callback_url",)  # request fields the service keeps in the row's params, not for the engine
MEDIA_TYPES = {OutputFormat.WAV: "audio/wav", OutputFormat.FLAC: "audio/flac", OutputFormat.MP3: "audio/mpeg"}


class ProgressReporter:
    """A ProgressCallback that writes to the job row at most every PROGRESS_MIN_INTERVAL s and 1 point,
    then tells the job's subscribers (pushed progress)."""

    def __init__(self, queue: JobQueue, job_id: str, events: JobEvents | None = None) -> None:
        self.queue, self.job_id, self.events = queue, job_id, events
        self.written, self.written_at = 0.0, time.monotonic()

    def __call__(self, progress: float) -> None:
        now = time.monotonic()
        if progress - self.written >= PROGRESS_MIN_STEP and now - self.written_at >= PROGRESS_MIN_INTERVAL:
            self.queue.set_progress(self.job_id, progress)
            self.written, self.written_at = progress, now
            if self.events is not None:
                self.events.publish(self.job_id)


class _Worker(threading.Thread):
    """Claims jobs of one kind until stopped; subclasses run them."""

    kind: JobKind

    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(name=f"motif-{self.kind.value}-worker", daemon=True)
        self.ctx = ctx
        self.wakeup = threading.Event()
        self.warming = True  # until warm_up has loaded (or failed to load) the model
        self.claimed_at: dict[str, float] = {}  # job id -> monotonic time it was claimed (job duration metric)

    def run(self) -> None:
        try:
            self.warm_up()
        finally:
            self.warming = False
        while not self.ctx.stopping.is_set():
            self.wakeup.clear()
            try:
                worked = self.run_once()
            except Exception:  # a bug must not kill the thread; the job was already settled below
                log.exception("%s worker error", self.kind.value)
                worked = False
            if not worked:
                self.wakeup.wait(IDLE_POLL_INTERVAL)

    def warm_up(self) -> None:
        """Load the model now so the first job does not pay for it; a missing model is reported, not fatal."""

    def run_once(self) -> bool:
        raise NotImplementedError

    def settle(self, job_id: str, error: BaseException) -> None:
        """Turn an exception into the job's final state. Users see MotifError reasons (without paths);
        any other error is logged with an error id and the job says only `internal error (error id ...)`."""
        queue = self.ctx.queue
        status = "failed"
        if isinstance(error, GenerationCancelled):
            if self.ctx.stopping.is_set() and not queue.is_cancel_requested(job_id):
                queue.release(job_id)  # shutting down: it runs again at the next start
                status = ""
            else:
                queue.mark_cancelled(job_id)
                status = "cancelled"
        elif isinstance(error, ModelUnavailableError):
            queue.fail(job_id, scrub_paths(str(error)), ErrorCode.MODEL_UNAVAILABLE)
        elif isinstance(error, MotifError):  # InvalidRequestError, an AudioError from a stored file
            queue.fail(job_id, scrub_paths(str(error)), ErrorCode.INVALID_REQUEST)
        else:
            error_id = log_internal_error(log, error, f"{self.kind.value} job {job_id}")
            queue.fail(job_id, f"internal error (error id {error_id})", ErrorCode.INTERNAL)
        self.observe(job_id, status)
        self.ctx.events.publish(job_id, final=self.kind is JobKind.GENERATION)

    def observe(self, job_id: str, status: str) -> None:
        """Count a job that reached final `status` ("" = back in the queue: not final, not counted)."""
        claimed_at = self.claimed_at.pop(job_id, None)
        if status and self.ctx.metrics is not None:
            seconds = None if claimed_at is None else time.monotonic() - claimed_at
            self.ctx.metrics.job_finished(self.kind.value, status, seconds)


class EmbeddingWorker(_Worker):
    kind = JobKind.EMBEDDING

    def warm_up(self) -> None:
        """Queue the embeddings uploads lack (they need the engine's pipeline version), then load CLAP."""
        try:
            backfill_embeddings(self.ctx.db, self.ctx.queue, self.ctx.settings.embedding_model,
                                self.ctx.engine.pipeline_version)  # fmt: skip
        except Exception:  # the uploads keep their missing vectors until the next start; the thread must live
            log.exception("could not queue the missing embeddings")
        try:
            _ = self.ctx.engine.embedder
        except ModelUnavailableError as error:
            log.error("embedding model unavailable: %s", error)
        except Exception:  # jobs will retry the load and fail with the reason; the thread must live
            log.exception("could not load the embedding model")

    def run_once(self) -> bool:
        claimed = self.ctx.queue.claim(JobKind.EMBEDDING, 1)
        for job in claimed:
            self.claimed_at[job.id] = time.monotonic()
            with log_context(job_id=job.id, audio_id=job.audio_id):
                try:
                    self.embed(job)
                except Exception as error:
                    self.settle(job.id, error)
                finally:
                    self.claimed_at.pop(job.id, None)  # an upload deleted meanwhile ends uncounted
        return bool(claimed)

    def embed(self, job: JobRow) -> None:
        """Decode the original upload straight to CLAP's 48 kHz, within the upload limits, and store its vector."""
        ctx = self.ctx
        with ctx.db.session() as session:
            audio = session.get(AudioRow, job.audio_id)
        if audio is None:
            return  # deleted meanwhile: its jobs went with it
        from motif.audio import DecodeLimits, load_audio

        with ctx.blobs.open(audio.upload_key) as file:
            decoded = load_audio(file, sample_rate=CLAP_SAMPLE_RATE, limits=DecodeLimits.from_settings(ctx.settings))
        vector = ctx.engine.embed_audio(decoded.samples, decoded.sample_rate)
        model, version = ctx.settings.embedding_model, ctx.engine.pipeline_version
        with ctx.db.transaction() as session:
            if session.get(AudioRow, job.audio_id) is not None:
                save_embedding(session, job.audio_id, model, version, vector)
                if vector.size == vectors.DIM and vectors.indexed(ctx.db):
                    vectors.store(session, job.audio_id, model, vector)
                ctx.queue.complete(job.id, {"model": model, "dim": int(vector.size)}, session=session)
        self.observe(job.id, "completed")
        ctx.events.publish(job.id)
        self.warm_prompt(audio)

    def warm_prompt(self, audio: AudioRow) -> None:
        """Where this process has the generation model loaded, encode the upload's default continuation prompt
        now: its first continuation then starts without EnCodec's encoder. The job is done already; a failure
        here costs only that."""
        engine = self.ctx.engine
        if not engine.generator_loaded:
            return
        try:
            engine.warm_prompt(read_source(self.ctx.blobs, audio))
        except Exception:
            log.exception("could not encode the continuation prompt ahead")


class GenerationWorker(_Worker):
    kind = JobKind.GENERATION

    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(ctx)
        self.in_flight: set[str] = set()
        self.cancelled: set[str] = set()
        self._cancel_checked: dict[str, float] = {}
        self._claimed_at = 0.0

    def warm_up(self) -> None:
        try:
            _ = self.ctx.engine.generator
        except ModelUnavailableError as error:
            log.error("generation model unavailable: %s", error)
        except Exception:
            log.exception("could not load the generation model")

    def run_once(self) -> bool:
        jobs = self.take(self.ctx.settings.max_batch_size)
        if not jobs:
            return False
        failure: Exception | None = None
        metrics = self.ctx.metrics
        try:
            self.ctx.engine.run_batch(jobs, self.take_more, on_step=metrics.decode_step if metrics else None)
        except Exception as error:  # the engine failed as a whole (not one job): fail its jobs with the reason
            log.exception("generation batch failed")
            failure = error
        for job_id in list(self.in_flight):  # never leave a job processing without an outcome
            self.settle(job_id, failure or RuntimeError("the generator stopped without a result"))
            self.in_flight.discard(job_id)
        return True

    def take_more(self, n_free: int) -> list[GenerationJob]:
        """Called between decode steps: look at the queue only when woken by a new job, or once a second."""
        now = time.monotonic()
        if not self.wakeup.is_set() and now - self._claimed_at < IDLE_POLL_INTERVAL:
            return []
        self.wakeup.clear()
        return self.take(n_free)

    def take(self, n_free: int) -> list[GenerationJob]:
        """Claim up to n_free queued generations (oldest first) and turn them into engine jobs."""
        self._claimed_at = time.monotonic()
        if self.ctx.stopping.is_set():
            return []
        jobs = []
        claimed = self.ctx.queue.claim(JobKind.GENERATION, n_free)
        if claimed:
            self.ctx.events.publish(QUEUE_TOPIC)  # the others' queue positions moved
        for row in claimed:
            self.ctx.events.publish(row.id)  # processing now
            self.in_flight.add(row.id)
            self.claimed_at[row.id] = time.monotonic()
            with log_context(job_id=row.id, audio_id=row.audio_id):
                try:
                    jobs.append(self.prepare(row))
                except Exception as error:
                    self.finish(row, error)
        return jobs

    def prepare(self, row: JobRow) -> GenerationJob:
        from motif.engine.pipeline import GenerationJob

        ctx = self.ctx
        with ctx.db.session() as session:
            audio = session.get(AudioRow, row.audio_id)
            if audio is None:
                raise GenerationCancelled("the upload was deleted")
            embedding = get_embedding(session, audio.id, ctx.settings.embedding_model, ctx.engine.pipeline_version)
        source = read_source(ctx.blobs, audio)
        streams = ctx.streams
        return GenerationJob(
            source=source, params=params_from_row(row.params), progress=ProgressReporter(ctx.queue, row.id, ctx.events),
            should_cancel=lambda: self.should_cancel(row.id), on_done=lambda outcome: self.finish(row, outcome),
            key=row.id, source_embedding=None if embedding is None else embedding.array(), analysis=audio.analysis,
            on_audio=lambda samples, offset: streams.write(row.id, samples, offset),
            wants_audio=lambda: streams.wanted(row.id),
        )  # fmt: skip

    def should_cancel(self, job_id: str) -> bool:
        if self.ctx.stopping.is_set() or job_id in self.cancelled:
            return True
        now = time.monotonic()
        if now - self._cancel_checked.get(job_id, 0.0) >= CANCEL_POLL_INTERVAL:
            self._cancel_checked[job_id] = now
            if self.ctx.queue.is_cancel_requested(job_id):  # another process may have asked
                self.cancelled.add(job_id)
                return True
        return False

    def finish(self, row: JobRow, outcome: GenerationResult | BaseException) -> None:
        with log_context(job_id=row.id, audio_id=row.audio_id):
            self._finish(row, outcome)

    def _finish(self, row: JobRow, outcome: GenerationResult | BaseException) -> None:
        try:
            if isinstance(outcome, BaseException):
                self.settle(row.id, outcome)
            else:
                self.store(row, outcome)
        except Exception as error:  # e.g. a full disk while writing the result
            self.settle(row.id, error)
        finally:
            self.ctx.streams.close(row.id)
            self.in_flight.discard(row.id)
            self.cancelled.discard(row.id)
            self._cancel_checked.pop(row.id, None)

    def result_extra(self, row: JobRow) -> dict[str, Any]:
        """More for the result's summary (distributed workers say which worker ran it, in what batch)."""
        return {}

    def store(self, row: JobRow, result: GenerationResult) -> None:
        """Write the audio first, then mark the row completed: a crash in between only re-runs the job."""
        from motif.audio import encode_audio

        fmt = OutputFormat(row.params.get("format", OutputFormat.WAV.value))
        key = f"generated/{row.id}.{fmt.value}"
        data = encode_audio(result.audio, result.sample_rate, fmt)
        self.ctx.blobs.put_bytes(key, data)
        summary = {"similarity": result.similarity, "description": result.description, "seed": result.seed,
                   "mode": result.mode.value, "sample_rate": result.sample_rate,
                   "duration": result.audio.shape[0] / result.sample_rate, "timings": result.timings,
                   **self.result_extra(row)}  # fmt: skip
        if not self.ctx.queue.complete(row.id, summary, key, output_bytes=len(data)):
            self.ctx.blobs.delete(key)  # deleted or cancelled meanwhile
            self.observe(row.id, "cancelled")
        else:
            self.observe(row.id, "completed")
            if self.ctx.metrics is not None:
                self.ctx.metrics.generation_finished(summary["duration"], sum(result.timings.values()))
        self.ctx.events.publish(row.id, final=True)


def read_source(blobs: BlobStore, audio: AudioRow) -> np.ndarray:
    """An upload's stored 32 kHz copy: (samples,) or (samples, 2) float32."""
    with blobs.open(audio.processed_key) as file:
        return np.load(io.BytesIO(file.read()), allow_pickle=False)


def params_from_row(params: dict[str, Any]) -> GenerationParams:
    """The JSON a generation row stores -> the engine's frozen GenerationParams."""
    values = {name: value for name, value in params.items() if name not in SERVICE_PARAMS}
    if values.get("mode") is not None:
        values["mode"] = GenerationMode(values["mode"])
    values["format"] = OutputFormat(values.get("format", OutputFormat.WAV.value))
    return GenerationParams(**values)


def backfill_embeddings(db: Database, queue: JobQueue, model: str, pipeline_version: str) -> int:
    """Queue an embedding job for every upload with no vector from the configured model (e.g. a new model)."""
    with db.transaction() as session:
        embedded = select(EmbeddingRow.audio_id).where(
            EmbeddingRow.model == model, EmbeddingRow.pipeline_version == pipeline_version
        )
        missing = list(session.scalars(select(AudioRow.id).where(AudioRow.id.not_in(embedded))))
        for audio_id in missing:
            queue.ensure_embedding(session, audio_id)
    if missing:
        log.info("%d uploads have no %s vector yet; their embedding jobs are queued", len(missing), model)
    return len(missing)


@dataclass
class WorkerContext:
    """What the worker threads share: settings, engine, storage, queue, events and the stop flag."""

    settings: Settings
    host: EngineHost
    db: Database
    blobs: BlobStore
    queue: JobQueue
    events: JobEvents
    stopping: threading.Event = field(default_factory=threading.Event)
    metrics: Metrics | None = None  # job counts and durations, decode steps (motif.service.metrics)
    streams: AudioStreams = field(init=False)

    def __post_init__(self) -> None:
        self.streams = AudioStreams(self.events)

    @property
    def engine(self) -> Engine:
        return self.host.engine


class Workers:
    """The worker threads of one process: start, wake, cancel, stop."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.embedding = EmbeddingWorker(ctx)
        self.generation = GenerationWorker(ctx)
        self._threads: dict[JobKind, _Worker] = {JobKind.EMBEDDING: self.embedding, JobKind.GENERATION: self.generation}

    def start(self) -> None:
        for thread in self._threads.values():
            thread.start()

    def wake(self, kind: JobKind, job_id: str | None = None) -> None:
        self._threads[kind].wakeup.set()

    def cancel(self, job_id: str) -> None:
        self.generation.cancelled.add(job_id)

    def alive(self) -> dict[str, bool]:
        return {kind.value: thread.is_alive() for kind, thread in self._threads.items()}

    def warming(self) -> dict[str, bool]:
        """Per job kind (= model role): its worker is loading the model now."""
        return {kind.value: thread.is_alive() and thread.warming for kind, thread in self._threads.items()}

    def embed_text(self, text: str) -> np.ndarray:
        """A text query's CLAP vector, computed here (the API's own thread: a text is one short forward pass).

        Raises ModelUnavailableError."""
        return self.ctx.host.engine.embed_text([text])[0]

    def stop(self, timeout: float = 30.0) -> None:
        """Interrupt running jobs (they go back to the queue) and wait for the threads to exit."""
        self.ctx.stopping.set()
        for thread in self._threads.values():
            thread.wakeup.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads.values():
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads.values()):
            log.warning("workers still busy after %.0f s; their jobs are re-queued at the next start", timeout)
