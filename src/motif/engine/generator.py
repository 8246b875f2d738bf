"""MusicGen token generation: conditioning, the delay pattern, long-form windows and a batched decode loop.

Each request ("task") owns a pair of decoder slots (conditional, unconditional; only the conditional one
when `cfg_coef` is 1, where the unconditional logits would go unused) and its own seeded torch.Generator,
so what it samples never depends on what else shares the batch. Tasks join the running batch between any
two decode steps and leave as soon as they finish, fail or are cancelled. Long outputs are made in windows
of `window_frames`, each prompted with the exact last `overlap_frames` tokens of the one before
(AudioCraft's extend_stride idea, but on tokens, so there is no re-encoding seam); the whole token sequence
is decoded by EnCodec at the end, on a finisher thread so the batch's other jobs keep stepping.
Mono (4 codebooks) and stereo (8, interleaved left/right) models share this loop; see motif.engine.patterns.
Every tensor lives on the loaded model's device, sampling generators included.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from motif.engine.chroma import melody_chroma
from motif.engine.codec import PromptCodes, as_channels, render_codes
from motif.engine.decoder import StaticCacheDecoder
from motif.engine.models import LoadedGenerator
from motif.engine.patterns import Window, codebook_delays, delay_pattern, sample_next, undelay
from motif.engine.streaming import AudioTap
from motif.engine.types import (
    FRAMES_PER_SECOND,
    SAMPLE_RATE,
    AudioCallback,
    CancelCheck,
    GenerationParams,
    ProgressCallback,
)
from motif.errors import GenerationCancelled

log = logging.getLogger(__name__)

DECODE_CONTEXT_FRAMES = 50  # prompt frames decoded with the output so EnCodec starts "warm" (1 s)
DECODE_SHARE = 95.0  # progress points given to token decoding; the rest is EnCodec and post-processing


@dataclass
class DecodeTask:
    """One request as the decode loop sees it. Audio arrays are float32 at 32 kHz, (samples,) or (samples, channels)."""

    key: str
    text: str
    params: GenerationParams
    seed: int
    n_frames: int  # new frames to produce (duration * 50)
    prompt_audio: np.ndarray | None = None  # continuation: the source's tail
    melody_audio: np.ndarray | None = None  # melody: the source whose chroma conditions each window
    progress: ProgressCallback | None = None
    should_cancel: CancelCheck | None = None
    on_done: Callable[[np.ndarray | BaseException], None] | None = None
    on_audio: AudioCallback | None = None  # the audio so far, in chunks, while it is generated (streaming.py)
    wants_audio: Callable[[], bool] | None = None  # False: nobody listens yet, skip rendering chunks


@dataclass
class _Active:
    task: DecodeTask
    generator: torch.Generator
    frames: torch.Tensor  # (K, n) all frames so far: source prompt then generated, on the model's device
    n_source_frames: int
    window: Window | None = None
    steps_done: int = 0
    steps_total: int = 1
    last_progress: int = -1
    text_states: torch.Tensor | None = None  # (keys, hidden) conditional text memory
    tap: AudioTap | None = None  # renders the audio so far for a listener
    slot: int = 0  # its first decoder slot: conditional row, then the unconditional one if n_rows is 2
    n_rows: int = 2  # 1 when cfg_coef is 1: no unconditional row
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


class MusicGenerator:
    """Runs DecodeTasks on one loaded MusicGen model. One decode loop at a time (callers serialise).

    Raises ValueError when the overlap leaves no room for new frames in a window (it would never finish).
    """

    def __init__(
        self, loaded: LoadedGenerator, window_frames: int = 1500, overlap_frames: int = 500, max_batch: int = 4,
        int8: bool = False, before_step: Callable[[], None] | None = None,
        before_render: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        if not 0 < overlap_frames < window_frames:
            raise ValueError(
                f"the long-form overlap ({overlap_frames} frames) must be positive and shorter than the window "
                f"({window_frames} frames): set EXTEND_OVERLAP_SECONDS below WINDOW_SECONDS"
            )
        self.loaded = loaded
        self.before_step = before_step  # e.g. the thread budget's, which may change between steps
        # The same on the finisher thread before it renders: torch's thread count is per thread, and that
        # thread also embeds (fewer threads), so without it a render would run on whatever team it last had.
        self.before_render = before_render
        self.model = loaded.model
        self.device = loaded.device
        self.n_codebooks = self.model.decoder.config.num_codebooks
        self.n_channels = loaded.n_channels
        self.delays = codebook_delays(self.n_codebooks, self.n_channels)
        self.window_frames = window_frames
        self.overlap_frames = overlap_frames
        self.max_batch = max_batch
        prefix = self.model.config.chroma_length + 256 if loaded.is_melody else 0
        max_len = window_frames + self.n_codebooks + prefix + 2
        self.decoder = StaticCacheDecoder(self.model, loaded.is_melody, max_len, int8=int8)
        self.prompt_codes = PromptCodes(self.model.audio_encoder, self.n_channels, self.device)
        # Rendering, normalising and embedding a finished job run here, not between two decode steps.
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="motif-finish")

    def cache_bytes_at_full_batch(self) -> int:
        """Bytes the self-attention KV cache reaches with `max_batch` jobs (two rows each) in full windows."""
        d = self.decoder
        bytes_per_value = torch.finfo(d.cache_dtype).bits // 8
        return 2 * self.max_batch * 2 * len(d.layers) * d.max_len * d.hidden_size * bytes_per_value

    # ---------------------------------------------------------------- the loop

    def run(
        self, tasks: list[DecodeTask], take_more: Callable[[int], list[DecodeTask]] | None = None,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:  # fmt: skip
        """Decode tasks (and those take_more adds between steps) until all are done; results go to on_done.

        `on_step(n_tasks, seconds)` hears of each decode step: how many tasks it advanced and its wall time.
        """
        active: list[_Active] = []
        waiting = list(tasks)
        finishing: list[Future[None]] = []
        try:
            self._loop(active, waiting, finishing, take_more, on_step)
        finally:
            for future in finishing:  # every on_done has run when run() returns
                future.result()

    def _loop(
        self, active: list[_Active], waiting: list[DecodeTask], finishing: list[Future[None]],
        take_more: Callable[[int], list[DecodeTask]] | None, on_step: Callable[[int, float], None] | None,
    ) -> None:  # fmt: skip
        while True:
            if take_more is not None and len(active) + len(waiting) < self.max_batch:
                waiting += take_more(self.max_batch - len(active) - len(waiting))
            while waiting and len(active) < self.max_batch:
                task = waiting.pop(0)
                try:
                    state = self._start(task, slot=sum(a.n_rows for a in active))
                except Exception as error:  # one bad task must not sink the batch
                    _finish(task, error)
                    continue
                active.append(state)
            if not active:
                return
            n_tasks, started = len(active), time.perf_counter()
            finishing += self._step(active)
            if on_step is not None:
                on_step(n_tasks, time.perf_counter() - started)

    def _step(self, active: list[_Active]) -> list[Future[None]]:
        if self.before_step is not None:
            self.before_step()
        tokens = torch.stack([a.window.seq[:, a.window.pos] for a in active for _ in range(a.n_rows)])  # type: ignore[union-attr]
        logits = self.decoder.step(tokens)
        finished, futures = [], []
        for i, state in enumerate(active):
            try:
                if state.task.should_cancel is not None and state.task.should_cancel():
                    raise GenerationCancelled(f"generation {state.task.key} was cancelled")
                uncond = logits[state.slot + 1] if state.n_rows == 2 else None
                if self._advance(state, logits[state.slot], uncond):
                    futures.append(self._finisher.submit(self._render_and_finish, state))
                    finished.append(i)
                elif state.tap is not None:
                    state.tap.step(self._n_known(state), functools.partial(self._codes, state), self._decode)
            except Exception as error:
                _finish(state.task, error)
                finished.append(i)
        if finished:
            active[:] = [state for i, state in enumerate(active) if i not in finished]
            self._compact(active)
        return futures

    def _compact(self, active: list[_Active]) -> None:
        """Shift the remaining tasks' rows down over the freed slots (in order: a source is never overwritten
        before it moves), so the active rows stay 0..n-1."""
        slot = 0
        for state in active:
            for row in range(state.n_rows):
                self.decoder.move_slot(state.slot + row, slot + row)
            state.slot = slot
            slot += state.n_rows

    def _render_and_finish(self, state: _Active) -> None:
        try:
            if self.before_render is not None:
                self.before_render()
            audio = self._render(state)
            if state.tap is not None:
                state.tap.finish(audio)  # the stream's last piece, before the job is reported done
        except Exception as error:
            _finish(state.task, error)
            return
        _finish(state.task, audio)

    # ---------------------------------------------------------------- one task

    def _start(self, task: DecodeTask, slot: int) -> _Active:
        if task.n_frames < 1:
            raise ValueError(f"nothing to generate: {task.n_frames} frames requested")
        for audio in (task.prompt_audio, task.melody_audio):
            if audio is not None and not np.isfinite(audio).all():
                raise ValueError("conditioning audio contains NaN or Inf samples")
        n_rows = 1 if task.params.cfg_coef == 1.0 else 2
        self.decoder.reserve(slot + n_rows)
        generator = torch.Generator(device=self.device).manual_seed(task.seed)
        frames = torch.zeros(self.n_codebooks, 0, dtype=torch.long, device=self.device)
        if task.prompt_audio is not None and task.prompt_audio.size:
            frames = self._encode_audio(task.prompt_audio)
        state = _Active(task, generator, frames, n_source_frames=frames.shape[1], slot=slot, n_rows=n_rows)
        state.text_states = self._encode_text(task.text)
        if task.on_audio is not None:
            render_start = frames.shape[1] - min(DECODE_CONTEXT_FRAMES, frames.shape[1])
            state.tap = AudioTap(task.on_audio, task.wants_audio, frames.shape[1], render_start)
        state.steps_total = sum(n + max(self.delays) for n in self._window_sizes(task.n_frames, frames.shape[1]))
        self._open_window(state)
        return state

    def _window_sizes(self, n_new: int, n_prompt: int) -> list[int]:
        sizes = []
        prompt = min(n_prompt, self.window_frames - 1)
        while n_new > 0:
            size = min(n_new, self.window_frames - prompt)
            sizes.append(size)
            n_new -= size
            prompt = min(self.overlap_frames, n_prompt + sum(sizes))
        return sizes

    def _open_window(self, state: _Active) -> None:
        """Prefill the task's slots with the window's conditioning and prompt, then sample its first position."""
        n_generated = state.frames.shape[1] - state.n_source_frames
        limit = self.overlap_frames if n_generated else self.window_frames - 1
        prompt = state.frames[:, max(0, state.frames.shape[1] - limit) :]
        n_new = min(state.task.n_frames - n_generated, self.window_frames - prompt.shape[1])
        state.window = window = delay_pattern(prompt, prompt.shape[1] + n_new, self.delays)
        inputs = window.seq[:, : window.n_prompt + 1]
        cond, uncond = self._conditioning(state, max(0, n_generated - prompt.shape[1]))
        logits = self.decoder.prefill_rows(state.slot, inputs, [cond, uncond][: state.n_rows])
        window.pos = window.n_prompt
        self._advance(state, logits[0], logits[1] if state.n_rows == 2 else None)

    def _advance(self, state: _Active, logits_c: torch.Tensor, logits_u: torch.Tensor | None) -> bool:
        """Sample the next position from the logits; returns True when the whole task is done."""
        window = state.window
        assert window is not None
        nxt = window.pos + 1
        sampled = sample_next(logits_c, logits_u, state.task.params, state.generator)
        window.seq[:, nxt] = torch.where(window.known[:, nxt], window.seq[:, nxt], sampled)
        window.pos = nxt
        state.steps_done += 1
        _report(state)
        if nxt < window.seq.shape[1] - 1:
            return False
        new = undelay(window.seq, window.n_frames, self.delays)[:, window.n_prompt :]
        state.frames = torch.cat([state.frames, new], dim=1)
        if state.frames.shape[1] - state.n_source_frames >= state.task.n_frames:
            return True
        self._open_window(state)
        return False

    # ---------------------------------------------------------------- conditioning and codec

    @torch.inference_mode()
    def _encode_text(self, text: str) -> torch.Tensor:
        """text -> (keys, decoder hidden) projected T5 states. Empty text still encodes (T5 sees </s>)."""
        ids = self.loaded.tokenizer([text], return_tensors="pt", truncation=True, max_length=256)
        device = self.loaded.device
        states = self.model.text_encoder(
            input_ids=ids["input_ids"].to(device), attention_mask=ids["attention_mask"].to(device)
        ).last_hidden_state[0]
        if self.model.text_encoder.config.hidden_size != self.model.decoder.config.hidden_size:
            states = self.model.enc_to_dec_proj(states)
        return states

    def _conditioning(self, state: _Active, window_start: int) -> tuple[tuple, tuple]:
        """Both rows' conditioning for a window starting `window_start` frames into the output."""
        text = state.text_states
        assert text is not None
        ones = torch.ones(text.shape[0], dtype=torch.bool, device=self.device)
        if not self.loaded.is_melody:
            return (text, ones), (torch.zeros_like(text), ones)
        chroma_len = self.model.config.chroma_length
        if state.task.melody_audio is not None:  # the window's own 30 s of the melody, cycled as AudioCraft does
            offset = window_start * SAMPLE_RATE // FRAMES_PER_SECOND
            melody = as_channels(state.task.melody_audio, 1)[:, 0]
            chroma = melody_chroma(_cyclic_slice(melody, offset, 30 * SAMPLE_RATE))
        else:
            chroma = _null_chroma(1)
        with torch.inference_mode():
            proj = self.model.audio_enc_to_dec_proj
            audio = proj(chroma.to(self.loaded.device, proj.weight.dtype)[None])[0]
            null = proj(_null_chroma(1).to(self.loaded.device, proj.weight.dtype)[None])[0]
        audio = audio.repeat(-(-chroma_len // audio.shape[0]), 1)[:chroma_len]
        null = null.repeat(chroma_len, 1)
        cond = torch.cat([audio, text])
        uncond = torch.cat([null, torch.zeros_like(text)])
        prefix_ok = torch.ones(cond.shape[0], dtype=torch.bool, device=self.device)
        return (cond, prefix_ok), (uncond, prefix_ok)

    def _encode_audio(self, audio: np.ndarray) -> torch.Tensor:
        """(samples,) or (samples, channels) at 32 kHz -> (K, frames) codes for this model's channels (cached)."""
        return self.prompt_codes.encode(audio)

    def _render(self, state: _Active) -> np.ndarray:
        """Generated frames (with a little prompt context) -> (samples,) or (samples, 2) float32 at 32 kHz."""
        context = min(DECODE_CONTEXT_FRAMES, state.n_source_frames)
        codes = state.frames[:, state.n_source_frames - context :]
        audio = render_codes(self.model.audio_encoder, codes, self.n_channels)
        hop = SAMPLE_RATE // FRAMES_PER_SECOND
        return audio[context * hop : (context + state.task.n_frames) * hop]

    def _decode(self, codes: torch.Tensor) -> np.ndarray:
        """(K, frames) codes -> (frames * 640,) or (frames * 640, channels) float32 at 32 kHz."""
        return render_codes(self.model.audio_encoder, codes, self.n_channels)

    def _n_known(self, state: _Active) -> int:
        """Generated frames whose every codebook is sampled (the delay pattern completes frame f at f + D + 1)."""
        window = state.window
        assert window is not None
        in_window = max(0, window.pos - max(self.delays) - window.n_prompt)
        return state.frames.shape[1] - state.n_source_frames + in_window

    def _codes(self, state: _Active, start: int, end: int) -> torch.Tensor:
        """(K, end - start) frames start..end of the task's sequence (source prompt first), known so far."""
        window = state.window
        assert window is not None
        n_done = state.frames.shape[1]
        done = state.frames[:, start:end]
        if end <= n_done:
            return done
        offset = window.n_prompt - n_done
        current = undelay(window.seq, window.n_frames, self.delays)[:, max(start, n_done) + offset : end + offset]
        return torch.cat([done, current], dim=1)


# -------------------------------------------------------------------- pure helpers


def _null_chroma(n: int) -> torch.Tensor:
    null = torch.zeros(n, 12)  # moved to the model's device by the caller
    null[:, 0] = 1.0
    return null


def _cyclic_slice(audio: np.ndarray, start: int, length: int) -> np.ndarray:
    """length samples of audio from start, wrapping around: the melody repeats under long outputs."""
    if audio.size == 0:
        return np.zeros(length, dtype=np.float32)
    index = (start + np.arange(min(length, max(audio.size, 1)))) % audio.size
    return audio[index]


def _report(state: _Active) -> None:
    if state.task.progress is None:
        return
    value = int(DECODE_SHARE * state.steps_done / state.steps_total)
    if value > state.last_progress:
        state.last_progress = value
        state.task.progress(float(value))


def _finish(task: DecodeTask, outcome: np.ndarray | BaseException) -> None:
    if isinstance(outcome, BaseException) and not isinstance(outcome, GenerationCancelled):
        log.exception("generation %s failed", task.key, exc_info=outcome)
    if task.on_done is not None:
        task.on_done(outcome)
