"""Prometheus metrics of one server process: HTTP traffic, jobs, generation speed, queue and model states.

prometheus-client itself rather than prometheus-fastapi-instrumentator: the request middleware already
times every request for the log line and knows its route template, so one more library (with its own
middleware and label conventions) would measure the same thing twice. Each app owns a CollectorRegistry
(not the process-global one), so several apps in one process (tests) never collide. Queue depth and model
states are read at scrape time by `ServiceCollector`, never kept in step by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from motif.service.runtime import Services

MODEL_STATES = ("loaded", "loading", "available", "missing", "error")
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_JOB_SECONDS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
_BYTES = (1e4, 1e5, 1e6, 1e7, 5e7, 1e8, 5e8, 1e9)


class Metrics:
    """The metrics one app records; `registry` is what GET /metrics exposes."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.http_requests = Counter("motif_http_requests", "HTTP requests by route template and status",
                                     ["method", "route", "status"], registry=registry)  # fmt: skip
        self.http_seconds = Histogram("motif_http_request_duration_seconds", "HTTP request latency",
                                      ["method", "route"], buckets=_SECONDS, registry=registry)  # fmt: skip
        self.upload_bytes = Histogram("motif_upload_bytes", "bytes received per upload request, by status",
                                      ["status"], buckets=_BYTES, registry=registry)  # fmt: skip
        self.jobs = Counter("motif_jobs", "jobs that reached a final status", ["kind", "status"], registry=registry)
        self.job_seconds = Histogram("motif_job_duration_seconds", "wall seconds from claim to final status",
                                     ["kind", "status"], buckets=_JOB_SECONDS, registry=registry)  # fmt: skip
        self.realtime_factor = Histogram(
            "motif_generation_realtime_factor", "wall seconds per second of generated audio (lower is faster)",
            buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0), registry=registry,
        )  # fmt: skip
        self.generated_seconds = Counter("motif_generated_audio_seconds", "seconds of audio generated",
                                         registry=registry)  # fmt: skip
        self.decode_steps = Counter("motif_decode_steps", "MusicGen decode steps run", registry=registry)
        self.decode_step_seconds = Histogram("motif_decode_step_seconds", "wall seconds per decode step",
                                             buckets=_SECONDS, registry=registry)  # fmt: skip
        self.decode_steps_per_second = Gauge("motif_decode_steps_per_second", "decode steps per second, last step",
                                             registry=registry)  # fmt: skip
        self.batch_size = Histogram("motif_generation_batch_size", "generation jobs decoded together per step",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=registry)  # fmt: skip

    def watch(self, services: Callable[[], Services | None]) -> None:
        """Report queue depth, model states and worker liveness of `services()` at every scrape."""
        self.registry.register(ServiceCollector(services))

    # Hooks for the workers (motif.service.worker) -------------------------------------------------------

    def job_finished(self, kind: str, status: str, seconds: float | None) -> None:
        self.jobs.labels(kind, status).inc()
        if seconds is not None:
            self.job_seconds.labels(kind, status).observe(seconds)

    def generation_finished(self, audio_seconds: float, wall_seconds: float) -> None:
        self.generated_seconds.inc(audio_seconds)
        if audio_seconds > 0:
            self.realtime_factor.observe(wall_seconds / audio_seconds)

    def decode_step(self, n_jobs: int, seconds: float) -> None:
        """One decode step of `n_jobs` generations together (each is two rows with CFG)."""
        self.decode_steps.inc()
        self.decode_step_seconds.observe(seconds)
        self.batch_size.observe(n_jobs)
        if seconds > 0:
            self.decode_steps_per_second.set(1.0 / seconds)


class ServiceCollector(Collector):
    """Gauges computed when Prometheus scrapes: nothing to keep in step, nothing stale."""

    def __init__(self, services: Callable[[], Services | None]) -> None:
        self.services = services

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        services = self.services()
        families = self._families()
        if services is None:  # before start-up finished: the families exist, empty
            return list(families)
        depth, models, workers = families
        for kind, counts in services.queue.depth().items():
            for status, count in counts.items():
                depth.add_metric([kind, status], count)
        from motif.service.redact import scrub_paths

        for model in services.model_states():
            for state in MODEL_STATES:
                models.add_metric([model.role, scrub_paths(model.model_id), state], float(model.state == state))
        for kind, alive in services.workers.alive().items():
            workers.add_metric([kind], float(alive))
        return [depth, models, workers]

    @staticmethod
    def _families() -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("motif_queue_depth", "jobs waiting or running now", labels=["kind", "status"])
        yield GaugeMetricFamily("motif_model_state", "1 for the state each model is in now",
                                labels=["role", "model", "state"])  # fmt: skip
        yield GaugeMetricFamily("motif_worker_alive", "1 while the worker thread of a job kind runs", labels=["kind"])
