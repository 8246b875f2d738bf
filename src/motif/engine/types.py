"""Per-call options and results of the engine: frozen, shared by the CLI, the service and the benchmark."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

SAMPLE_RATE = 32_000  # MusicGen / EnCodec 32 kHz
CLAP_SAMPLE_RATE = 48_000
FRAMES_PER_SECOND = 50  # EnCodec 32 kHz: 640-sample hop


class GenerationMode(StrEnum):
    CONTINUATION = "continuation"
    MELODY = "melody"
    STYLE = "style"


class OutputFormat(StrEnum):
    WAV = "wav"
    FLAC = "flac"
    MP3 = "mp3"


@dataclass(frozen=True)
class GenerationParams:
    """One request. Ranges are the public API's; the service validates them before we get here."""

    duration: float = 10.0  # seconds of new audio, 5..120
    temperature: float = 1.0  # 0.1..2.0
    top_k: int = 250  # 0..500, 0 = off
    top_p: float = 0.0  # 0..1, 0 = off
    cfg_coef: float = 3.0  # 1..10, 1 = no classifier-free guidance
    mode: GenerationMode | None = None  # None: melody for melody models, else continuation
    prompt: str | None = None  # optional user text
    seed: int | None = None  # None: a random seed, reported in the result
    format: OutputFormat = OutputFormat.WAV
    continuation_start: float | None = None  # continuation: seconds into the upload the section starts (None: 0)
    continuation_end: float | None = None  # continuation: where it ends; its last PROMPT_SECONDS prompt MusicGen
    include_prompt: bool = False  # continuation: return the section followed by its continuation in one file
    loop: bool = False  # a seamless loop of whole 4/4 bars near `duration`, at `bpm` or the upload's tempo
    bpm: float | None = None  # tempo hint in every mode (overrides the detected one); the loop's tempo
    key: str | None = None  # key hint in every mode, e.g. "A minor" (overrides the detected one)


ProgressCallback = Callable[[float], None]  # called with 0..100, monotonic
CancelCheck = Callable[[], bool]  # True: stop between decode steps


@dataclass
class GenerationResult:
    audio: np.ndarray  # (samples,) mono or (samples, 2) stereo float32 at SAMPLE_RATE, loudness-normalised
    sample_rate: int
    seed: int
    mode: GenerationMode
    description: str | None  # the text condition used (style mode / user prompt)
    similarity: float | None  # CLAP cosine to the source, None if no embedder
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelState:
    """One model as /api/health and `motif models list` report it (no torch here: the service reads it early)."""

    role: str  # "generation" | "embedding"
    model_id: str
    state: str  # "loading" | "loaded" | "available" | "missing" | "error"
    detail: str
