"""Engine: the one object the CLI, the service and the benchmark hold. Loads models lazily, once."""

from __future__ import annotations

import logging
import math
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
from motif.engine.codec import as_channels, cast_codec_decoder
from motif.engine.controls import LoopPlan, hint_text, join_text, make_loop, plan_loop, select_section
from motif.engine.embedder import WINDOWING_VERSION, Embedder
from motif.engine.generator import DecodeTask, MusicGenerator
from motif.engine.slots import ModelSlot
from motif.engine.threads import CoreBudget, available_cores
from motif.engine.types import (
    CLAP_SAMPLE_RATE,
    FRAMES_PER_SECOND,
    SAMPLE_RATE,
    AudioCallback,
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
    """One member of a batch: the source (float32 at 32 kHz, (samples,) or (samples, channels)) and its request."""

    source: np.ndarray
    params: GenerationParams
    progress: ProgressCallback | None = None
    should_cancel: CancelCheck | None = None
    on_done: Callable[[GenerationResult | BaseException], None] | None = None
    key: str = ""  # the caller's id for logs
    source_embedding: np.ndarray | None = None  # saves re-embedding the source for `similarity`
    analysis: dict[str, Any] | None = None  # saves re-analysing it for `style` captions
    on_audio: AudioCallback | None = None  # the audio so far while it is generated (before loudness normalisation)
    wants_audio: Callable[[], bool] | None = None  # False while nobody listens: no chunks are rendered


class Engine:
    """Thread-safe facade. Construction is cheap; models load on first use (or `load()`)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._decode_lock = threading.Lock()
        self._device_lock = threading.Lock()
        self._device: torch.device | None = None
        self._generator_slot = ModelSlot("generation", self._load_generator, clock)
        self._embedder_slot = ModelSlot("embedding", self._load_embedder, clock)
        if settings.num_threads:
            torch.set_num_threads(settings.num_threads)
        kernels.select_cpu_path(settings.cpu_path)
        self.cores = CoreBudget(settings.num_threads or available_cores(), settings.embedding_threads,
                                settings.generation_threads)  # fmt: skip

    # ---------------------------------------------------------------- models

    @property
    def device(self) -> torch.device:
        """The one device every model and tensor of this Engine lives on, decided once from DEVICE."""
        with self._device_lock:
            if self._device is None:
                self._device = models.resolve_device(self.settings.device)
                log.info("DEVICE=%s: running on %s", self.settings.device, self._device)
            return self._device

    @property
    def pipeline_version(self) -> str:
        """What an embedding means besides its model id: windowing and precision, e.g. "2.fp32".

        Stored with every vector; search and similarity only compare vectors of the same model and version,
        and uploads embedded under another are embedded again (the service's backfill).
        """
        dtype = models.resolve_dtype(self.settings.embedding_precision, self.device)
        return f"{WINDOWING_VERSION}.{models.precision_name(dtype)}"

    @property
    def generator(self) -> MusicGenerator:
        return self._generator_slot.get()

    @property
    def generator_loaded(self) -> bool:
        """Whether the generation model is in memory now (never loads it)."""
        return self._generator_slot.value is not None

    @property
    def embedder(self) -> Embedder:
        return self._embedder_slot.get()

    def _load_generator(self) -> MusicGenerator:
        s = self.settings
        device = self.device
        precision = models.resolve_generation_precision(s.generation_precision, device)
        dtype = models.resolve_dtype(precision, device)  # int8: bf16 now, quantised by the decoder
        # The decoder is where the time goes and is read straight into `dtype`; T5 and EnCodec's encoder stay fp32.
        loaded = models.load_generator(s.generation_model, device, torch.float32, s.model_cache_dir,
                                       s.allow_model_download, decoder_dtype=dtype)  # fmt: skip
        with models.construct_lock:  # repacking builds tensors: not while transformers builds another model
            if precision != "fp32" and device.type == "cpu" and models.cpu_has_native_bf16():
                cast_codec_decoder(loaded.model.audio_encoder, torch.bfloat16)  # tokens -> audio; SNR in `motif bench`
            generator = MusicGenerator(
                loaded,
                window_frames=int(s.window_seconds * FRAMES_PER_SECOND),
                overlap_frames=int(s.extend_overlap_seconds * FRAMES_PER_SECOND),
                max_batch=s.max_batch_size,
                int8=precision == "int8",
                before_step=self.cores.apply_generation_threads,
                before_render=self.cores.apply_generation_threads,
            )
        _check_batch_memory(generator, s, device)
        return generator

    def _load_embedder(self) -> Embedder:
        s = self.settings
        device = self.device
        dtype = models.resolve_dtype(s.embedding_precision, device)
        loaded = models.load_embedder(s.embedding_model, device, dtype, s.model_cache_dir, s.allow_model_download)
        with models.construct_lock:
            return Embedder(loaded)

    def load(self) -> None:
        """Load every configured model now (start-up warm-up); raises ModelUnavailableError."""
        _ = self.generator, self.embedder

    def model_states(self) -> list[ModelState]:
        """Without loading anything: loaded, available locally, or missing and why."""
        s = self.settings
        slots: list[tuple[str, ModelSlot[Any]]] = [(s.generation_model, self._generator_slot),
                                                   (s.embedding_model, self._embedder_slot)]  # fmt: skip
        states = []
        for model_id, slot in slots:
            role = slot.role
            if slot.value is not None:
                states.append(ModelState(role, model_id, "loaded", "in memory"))
            elif slot.failure is not None:
                states.append(ModelState(role, model_id, "error", slot.failure.reason))
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
        """(samples,) or (samples, channels) float32 at any rate -> (512,) float32, L2 norm 1, deterministic.

        Stereo is down-mixed first: CLAP embeds mono.
        """
        from motif.audio import resample

        with self.cores.embedding_work():
            return self.embedder.embed_audio(resample(as_channels(samples, 1)[:, 0], sample_rate, CLAP_SAMPLE_RATE))

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
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        """Decode jobs together until all are done, calling each job's `on_done` as it finishes.

        `on_step(n_jobs, seconds)` is told about each decode step (for metrics).

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
        with self._decode_lock, self.cores.generation_work():
            generator.run(self._plan_all(jobs), more, on_step)

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
        loaded = self._generator_slot.value
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
        _check_controls(params, mode)
        bpm, key = self._hints(job)
        plan = _Plan(job, seed=params.seed if params.seed is not None else secrets.randbelow(2**31), mode=mode,
                     n_channels=generator.n_channels, started=time.perf_counter())  # fmt: skip
        if mode is GenerationMode.STYLE:
            plan.description = self.describe(job.source, job.source_embedding, job.analysis, bpm, key)
            text = f"{params.prompt}. {plan.description}" if params.prompt else plan.description
        else:
            text = join_text(params.prompt, hint_text(bpm, key))
            plan.description = text or None
        prompt_audio = melody_audio = None
        if mode is GenerationMode.CONTINUATION:
            plan.section = select_section(job.source, params.continuation_start, params.continuation_end)
            prompt_audio = self._prompt_of(plan.section)
        elif mode is GenerationMode.MELODY:
            melody_audio = job.source
        n_frames = round(params.duration * FRAMES_PER_SECOND)
        if params.loop:
            plan.loop = plan_loop(params.duration, bpm)
            n_frames = math.ceil(plan.loop.seconds_to_generate * FRAMES_PER_SECOND)
        return DecodeTask(
            key=job.key, text=text, params=params, seed=plan.seed, n_frames=n_frames,
            prompt_audio=prompt_audio, melody_audio=melody_audio, progress=job.progress,
            should_cancel=job.should_cancel, on_done=lambda outcome: self._done(plan, outcome),
            on_audio=job.on_audio, wants_audio=job.wants_audio,
        )  # fmt: skip

    def _prompt_of(self, section: np.ndarray) -> np.ndarray:
        """A continuation's prompt: the last PROMPT_SECONDS of the section it continues."""
        return section[-int(self.settings.prompt_seconds * SAMPLE_RATE) :]

    def warm_prompt(self, source: np.ndarray) -> bool:
        """Encode the prompt of an upload's default continuation (its whole length: the last PROMPT_SECONDS) now,
        when the upload is ingested, so that its first continuation skips EnCodec's encoder.

        `source` is the upload's stored 32 kHz copy, as a generation reads it. Only where this process has the
        generation model loaded (it never loads it) and the model continues audio (melody models condition on
        chroma instead); on the embedding's share of the cores. Returns whether it encoded.
        """
        generator = self._generator_slot.value
        if generator is None or generator.loaded.is_melody:
            return False
        with self.cores.embedding_work():
            generator.prompt_codes.encode(self._prompt_of(select_section(source, None, None)))
        return True

    def _hints(self, job: GenerationJob) -> tuple[float | None, str | None]:
        """Tempo and key for the text condition: the request's, else those detected in the upload."""
        params = job.params
        if params.bpm is not None and params.key is not None:
            return params.bpm, params.key
        analysis = job.analysis if job.analysis is not None else _analyze(job.source)
        tempo = analysis.get("tempo_bpm")
        detected_key = f"{analysis['key']} {analysis['mode']}" if analysis.get("key") else None
        return (params.bpm or (float(tempo) if tempo else None)), (params.key or detected_key)

    def describe(
        self, source: np.ndarray, embedding: np.ndarray | None, analysis: dict[str, Any] | None,
        bpm: float | None = None, key: str | None = None,
    ) -> str:  # fmt: skip
        """A caption of a 32 kHz source from its CLAP vector plus tempo and key (given, else detected)."""
        if embedding is None:
            embedding = self.embed_audio(source, SAMPLE_RATE)
        if bpm is None or key is None:
            analysis = analysis if analysis is not None else _analyze(source)
            tempo = analysis.get("tempo_bpm")
            bpm = bpm or (float(tempo) if tempo is not None else None)
            key = key or (f"{analysis['key']} {analysis['mode']}" if analysis.get("key") else None)
        return self.embedder.caption(embedding, bpm, key).text

    def _done(self, plan: _Plan, outcome: np.ndarray | BaseException) -> None:
        """Runs on the generator's finisher thread: post-process and deliver, never raising."""
        if isinstance(outcome, BaseException):
            _deliver(plan.job, outcome)
            return
        try:
            result = self._finish(plan, outcome)
        except Exception as error:
            _deliver(plan.job, error)
            return
        _deliver(plan.job, result)

    def _finish(self, plan: _Plan, audio: np.ndarray) -> GenerationResult:
        """Decoded audio -> the result: loop or prompt joined, loudness-normalised, similarity to the source."""
        from motif.audio import loudness_normalize

        job = plan.job
        decoded = time.perf_counter()
        if plan.section is not None and job.params.include_prompt:
            audio = np.concatenate([as_channels(plan.section, plan.n_channels), as_channels(audio, plan.n_channels)])
            audio = audio[:, 0] if plan.n_channels == 1 else audio
        audio = loudness_normalize(audio, SAMPLE_RATE)
        if plan.loop is not None:
            audio = make_loop(audio, plan.loop)
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
        timings = {"generate_s": decoded - plan.started, "postprocess_s": time.perf_counter() - decoded}
        return GenerationResult(audio, SAMPLE_RATE, plan.seed, plan.mode, plan.description, similarity, timings)


@dataclass
class _Plan:
    """What a job's post-processing needs to know about how it was planned."""

    job: GenerationJob
    seed: int
    mode: GenerationMode
    n_channels: int
    started: float
    description: str | None = None
    section: np.ndarray | None = None  # continuation: the chosen section of the source
    loop: LoopPlan | None = None


def _check_controls(params: GenerationParams, mode: GenerationMode) -> None:
    if mode is GenerationMode.CONTINUATION:
        return
    for name in ("continuation_start", "continuation_end"):
        if getattr(params, name) is not None:
            raise InvalidRequestError(f"{name} applies to mode 'continuation', not '{mode.value}'")
    if params.include_prompt:
        raise InvalidRequestError(f"include_prompt applies to mode 'continuation', not '{mode.value}'")


def _analyze(source: np.ndarray) -> dict[str, Any]:
    from motif.analysis import analyze

    return analyze(as_channels(source, 1)[:, 0], SAMPLE_RATE).to_dict()


def _check_batch_memory(generator: MusicGenerator, settings: Settings, device: torch.device) -> None:
    """Refuse a MAX_BATCH_SIZE whose KV cache cannot fit the memory left after loading the models."""
    needed = generator.cache_bytes_at_full_batch()
    free = models.free_memory_bytes(device)
    if free is not None and needed > free:
        raise ModelUnavailableError(
            f"MAX_BATCH_SIZE={settings.max_batch_size} with WINDOW_SECONDS={settings.window_seconds} needs "
            f"{needed / 2**30:.1f} GiB of key/value cache on {device}, but {free / 2**30:.1f} GiB is free: "
            "lower MAX_BATCH_SIZE or WINDOW_SECONDS"
        )


def _deliver(job: GenerationJob, outcome: GenerationResult | BaseException) -> None:
    if job.on_done is not None:
        job.on_done(outcome)
