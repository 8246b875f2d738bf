"""What users steer besides the sampling knobs: the section to continue from, tempo/key hints, seamless loops.

Pure numpy on (samples,) or (samples, channels) float32 at 32 kHz; the Engine applies these around decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from motif.engine.types import SAMPLE_RATE
from motif.errors import InvalidRequestError

BEATS_PER_BAR = 4  # loops assume 4/4
LOOP_CROSSFADE_SECONDS = 0.25  # the generated audio past the loop's end faded into its start, at most half a beat


def select_section(source: np.ndarray, start: float | None, end: float | None) -> np.ndarray:
    """source[start:end] in seconds (None: its beginning / end). Raises InvalidRequestError outside the upload."""
    duration = source.shape[0] / SAMPLE_RATE
    first = 0.0 if start is None else start
    last = duration if end is None else end
    if first >= duration:
        raise InvalidRequestError(f"continuation_start ({first} s) is past the end of the upload ({duration:.2f} s)")
    if last <= first:
        raise InvalidRequestError(f"continuation_end ({last} s) must be after continuation_start ({first} s)")
    return source[round(first * SAMPLE_RATE) : round(min(last, duration) * SAMPLE_RATE)]


def hint_text(bpm: float | None, key: str | None) -> str:
    """Tempo and key as MusicGen reads them in its captions: "120 BPM, in A minor"; "" when neither is known."""
    parts = []
    if bpm:
        parts.append(f"{round(bpm)} BPM")
    if key:
        parts.append(f"in {key}")
    return ", ".join(parts)


def join_text(*parts: str | None) -> str:
    return ", ".join(p.strip() for p in parts if p and p.strip())


@dataclass(frozen=True)
class LoopPlan:
    """A loop of whole bars: `n_loop` samples returned, `n_fade` more generated and faded into its start."""

    bpm: float
    n_bars: int
    n_loop: int
    n_fade: int

    @property
    def seconds_to_generate(self) -> float:
        return (self.n_loop + self.n_fade) / SAMPLE_RATE


def plan_loop(duration: float, bpm: float | None) -> LoopPlan:
    """The whole number of 4/4 bars at `bpm` nearest `duration` seconds (at least one)."""
    if not bpm or not math.isfinite(bpm) or bpm <= 0:
        raise InvalidRequestError("loop=true needs a tempo: give `bpm`, or upload audio whose tempo can be detected")
    bar_seconds = BEATS_PER_BAR * 60.0 / bpm
    n_bars = max(1, round(duration / bar_seconds))
    n_loop = round(n_bars * bar_seconds * SAMPLE_RATE)
    n_fade = round(min(LOOP_CROSSFADE_SECONDS, 30.0 / bpm) * SAMPLE_RATE)
    return LoopPlan(bpm, n_bars, n_loop, n_fade)


def make_loop(audio: np.ndarray, plan: LoopPlan) -> np.ndarray:
    """(n_loop + n_fade, ...) continuous audio -> (n_loop, ...) that repeats without a click.

    The audio just past the loop's end continues its last sample exactly; fading it into the loop's start
    (linear, so peaks never grow) makes the jump from the last sample back to the first a step the music
    itself takes.
    """
    if audio.shape[0] < plan.n_loop + plan.n_fade:
        raise ValueError(f"loop needs {plan.n_loop + plan.n_fade} samples, got {audio.shape[0]}")
    looped = np.array(audio[: plan.n_loop], dtype=np.float32)
    tail = audio[plan.n_loop : plan.n_loop + plan.n_fade]
    ramp = (np.arange(plan.n_fade, dtype=np.float32) / max(plan.n_fade, 1)).reshape(-1, *([1] * (audio.ndim - 1)))
    looped[: plan.n_fade] = tail * (1 - ramp) + looped[: plan.n_fade] * ramp
    return looped
