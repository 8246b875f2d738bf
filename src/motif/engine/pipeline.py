"""Engine: the one object the CLI, the service and the benchmark hold. Loads models lazily, once."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from motif.config import Settings
from motif.engine import kernels, models
from motif.engine.codec import cast_codec_decoder
from motif.engine.embedder import Embedder
from motif.engine.generator import DecodeTask, MusicGenerator
from motif.engine.threads import CoreBudget, available_cores
from motif.engine.types import (
    CLAP_SAMPLE_RATE,
    FRAMES_PER_SECOND,
    SAMPLE_RATE,
    CancelCheck,
    GenerationMode,
    GenerationParams,
    GenerationResult,
    ModelState,
    ProgressCallback,
)
from motif.errors import InvalidRequestError, ModelUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationJob:
    """One member of a batch: the source (mono float32 at 32 kHz) and its request."""

    source: np.ndarray
    params: GenerationParams
    progress: ProgressCallback | None = None
    should_cancel: CancelCheck | None = None
    on_done: Callable[[GenerationResult | BaseException], None] | None = None
    key: str = ""  # the caller's id for logs
    source_embedding: np.ndarray | None = None  # saves re-embedding the source for `similarity`
    analysis: dict[str, Any] | None = None  # saves re-analysing it for `style` captions


class Engine:
    """Thread-safe facade. Construction is cheap; models load on first use (or `load()`)."""

    pipeline_version = "1"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._load_lock = threading.Lock()
        self._decode_lock = threading.Lock()
        self._generator: MusicGenerator | None = None
        self._embedder: Embedder | None = None
        self._errors: dict[str, str] = {}
        if settings.num_threads:
            torch.set_num_threads(settings.num_threads)
        kernels.select_cpu_path(settings.cpu_path)
        self.cores = CoreBudget(settings.num_threads or available_cores(), settings.embedding_threads,
                                settings.generation_threads)  # fmt: skip

    # ---------------------------------------------------------------- models

    @property
    def device(self) -> torch.device:
        return models.resolve_device(self.settings.device)

    @property
    def generator(self) -> MusicGenerator:
        if self._generator is None:
            with self._load_lock:
                if self._generator is None:
                    self._generator = self._guarded("generation", self._load_generator)
        return self._generator

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            with self._load_lock:
                if self._embedder is None:
                    self._embedder = self._guarded("embedding", self._load_embedder)
        return self._embedder

    def _guarded(self, role: str, load: Callable[[], Any]) -> Any:
        try:
            loaded = load()
        except ModelUnavailableError as error:
            self._errors[role] = str(error)
            raise
        self._errors.pop(role, None)
        return loaded

    def _load_generator(self) -> MusicGenerator:
        s = self.settings
        device = self.device
        precision = models.resolve_generation_precision(s.generation_precision, device)
        dtype = models.resolve_dtype(precision, device)  # int8: bf16 now, quantised by the decoder
        # The decoder is where the time goes and is read straight into `dtype`; T5 and EnCodec's encoder stay fp32.
        loaded = models.load_generator(s.generation_model, device, torch.float32, s.model_cache_dir,
                                       s.allow_model_download, decoder_dtype=dtype)  # fmt: skip
        if precision != "fp32" and device.type == "cpu" and models.cpu_has_native_bf16():
            cast_codec_decoder(loaded.model.audio_encoder, torch.bfloat16)  # tokens -> audio; SNR in `motif bench`
        return MusicGenerator(
            loaded,
            window_frames=int(s.window_seconds * FRAMES_PER_SECOND),
            overlap_frames=int(s.extend_overlap_seconds * FRAMES_PER_SECOND),
            max_batch=s.max_batch_size,
            int8=precision == "int8",
            before_step=self.cores.apply_generation_threads,
        )

    def _load_embedder(self) -> Embedder:
        s = self.settings
        device = self.device
        dtype = models.resolve_dtype(s.embedding_precision, device)
        return Embedder(models.load_embedder(s.embedding_model, device, dtype, s.model_cache_dir,
                                             s.allow_model_download))  # fmt: skip

    def load(self) -> None:
        """Load every configured model now (start-up warm-up); raises ModelUnavailableError."""
        _ = self.generator, self.embedder

    def model_states(self) -> list[ModelState]:
        """Without loading anything: loaded, available locally, or missing and why."""
        s = self.settings
        roles = [("generation", s.generation_model, self._generator), ("embedding", s.embedding_model, self._embedder)]
        states = []
        for role, model_id, loaded in roles:
            if loaded is not None:
                states.append(ModelState(role, model_id, "loaded", "in memory"))
            elif role in self._errors:
                states.append(ModelState(role, model_id, "error", self._errors[role]))
            elif models.is_locally_available(model_id, s.model_cache_dir):
                states.append(ModelState(role, model_id, "available", "loads on first use"))
            elif s.allow_model_download:
                states.append(ModelState(role, model_id, "missing", "not cached; will try the Hugging Face hub"))
            else:
                detail = "not cached and ALLOW_MODEL_DOWNLOAD=false: run `motif models pull`"
                states.append(ModelState(role, model_id, "missing", detail))
        return states

    # ---------------------------------------------------------------- embeddings

    def embed_audio(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """(samples,) mono float32 at any rate -> (512,) float32, L2 norm 1, deterministic."""
        from motif.audio import resample

        with self.cores.embedding_work():
            return self.embedder.embed_audio(resample(samples, sample_rate, CLAP_SAMPLE_RATE))

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """-> (n, 512) float32 rows of norm 1, in the same space as embed_audio."""
        with self.cores.embedding_work():
            return self.embedder.embed_text(texts)

    # ---------------------------------------------------------------- generation

    def generate(
        self,
        source: np.ndarray,
        sample_rate: int,
        params: GenerationParams,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> GenerationResult:
        """Generate `params.duration` s of new audio "like" source. Raises GenerationCancelled."""
        from motif.audio import resample

        outcome: list[GenerationResult | BaseException] = []
        job = GenerationJob(resample(source, sample_rate, SAMPLE_RATE), params, progress, should_cancel,
                            on_done=outcome.append)  # fmt: skip
        self.run_batch([job])
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def run_batch(
        self,
        jobs: list[GenerationJob],
        take_more: Callable[[int], list[GenerationJob]] | None = None,
    ) -> None:
        """Decode jobs together until all are done, calling each job's `on_done` as it finishes.

        `take_more(n_free)` is called at each joining opportunity and returns up to n_free new
        jobs that join the running batch. Each job keeps its own seeded stream, so its audio does
        not depend on what it shared a batch with. Never raises for one job's failure: that job's
        on_done gets the exception (GenerationCancelled, ModelUnavailableError, ...).
        """
        try:
            generator = self.generator
        except ModelUnavailableError as error:
            for job in jobs:
                _deliver(job, error)
            return
        more = None if take_more is None else (lambda n: self._plan_all(take_more(n)))
        with self._decode_lock:
            generator.run(self._plan_all(jobs), more)

    def _plan_all(self, jobs: list[GenerationJob]) -> list[DecodeTask]:
        tasks = []
        for job in jobs:
            try:
                tasks.append(self._plan(job))
            except Exception as error:
                _deliver(job, error)
        return tasks

    def check_mode(self, mode: GenerationMode | None) -> None:
        """Raise InvalidRequestError now for a mode the configured model cannot serve (cheap: no loading)."""
        if mode is not GenerationMode.MELODY:
            return
        loaded = self._generator
        is_melody = loaded.loaded.is_melody if loaded else models.is_melody_model(self.settings.generation_model)
        if is_melody is False:
            raise InvalidRequestError(
                f"mode 'melody' needs a MusicGen-Melody model; GENERATION_MODEL is {self.settings.generation_model}"
            )

    def _plan(self, job: GenerationJob) -> DecodeTask:
        """Turn a request into what the decode loop needs: text, prompt audio, seed, frame count."""
        params = job.params
        generator = self.generator
        mode = params.mode or (GenerationMode.MELODY if generator.loaded.is_melody else GenerationMode.CONTINUATION)
        self.check_mode(mode)
        seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
        text, description = params.prompt or "", params.prompt
        if mode is GenerationMode.STYLE:
            description = self.describe(job.source, job.source_embedding, job.analysis)
            text = f"{params.prompt}. {description}" if params.prompt else description
        prompt_audio = melody_audio = None
        if mode is GenerationMode.CONTINUATION:
            n_prompt = int(self.settings.prompt_seconds * SAMPLE_RATE)
            prompt_audio = job.source[-n_prompt:]
        elif mode is GenerationMode.MELODY:
            melody_audio = job.source
        started = time.perf_counter()

        def on_done(outcome: np.ndarray | BaseException) -> None:
            if isinstance(outcome, BaseException):
                _deliver(job, outcome)
                return
            try:
                result = self._finish(job, outcome, seed, mode, description, started)
            except Exception as error:
                _deliver(job, error)
                return
            _deliver(job, result)

        return DecodeTask(
            key=job.key, text=text, params=params, seed=seed,
            n_frames=round(params.duration * FRAMES_PER_SECOND), prompt_audio=prompt_audio,
            melody_audio=melody_audio, progress=job.progress, should_cancel=job.should_cancel, on_done=on_done,
        )  # fmt: skip

    def describe(self, source: np.ndarray, embedding: np.ndarray | None, analysis: dict[str, Any] | None) -> str:
        """A caption of a 32 kHz source from its CLAP vector plus tempo and key."""
        from motif.analysis import analyze

        if embedding is None:
            embedding = self.embed_audio(source, SAMPLE_RATE)
        if analysis is None:
            analysis = analyze(source, SAMPLE_RATE).to_dict()
        key = f"{analysis['key']} {analysis['mode']}" if analysis.get("key") else None
        tempo = analysis.get("tempo_bpm")
        return self.embedder.caption(embedding, float(tempo) if tempo is not None else None, key).text

    def _finish(
        self, job: GenerationJob, audio: np.ndarray, seed: int, mode: GenerationMode, description: str | None,
        started: float,
    ) -> GenerationResult:  # fmt: skip
        from motif.audio import loudness_normalize

        decoded = time.perf_counter()
        audio = loudness_normalize(audio, SAMPLE_RATE)
        similarity = None
        try:
            reference = job.source_embedding
            if reference is None:
                reference = self.embed_audio(job.source, SAMPLE_RATE)
            similarity = float(np.dot(reference, self.embed_audio(audio, SAMPLE_RATE)))
        except ModelUnavailableError as error:
            log.warning("no similarity for %s: %s", job.key, error)
        if job.progress is not None:
            job.progress(100.0)
        timings = {"generate_s": decoded - started, "postprocess_s": time.perf_counter() - decoded}
        return GenerationResult(audio, SAMPLE_RATE, seed, mode, description, similarity, timings)


def _deliver(job: GenerationJob, outcome: GenerationResult | BaseException) -> None:
    if job.on_done is not None:
        job.on_done(outcome)
