"""The decode loop: delay pattern, exact lengths, long-form windows, seeds, batching, joining, cancel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from motif.engine import kernels
from motif.engine.generator import DecodeTask, MusicGenerator
from motif.engine.models import LoadedGenerator, load_generator
from motif.engine.patterns import delay_pattern, sample_next, undelay
from motif.engine.types import FRAMES_PER_SECOND, SAMPLE_RATE, GenerationParams
from motif.errors import GenerationCancelled


@pytest.fixture(scope="module")
def loaded(model_cache: Path) -> LoadedGenerator:
    return load_generator("tiny", torch.device("cpu"), torch.float32, model_cache, allow_download=False)


@pytest.fixture
def loaded_int8(model_cache: Path) -> LoadedGenerator:
    """Its own copy: the int8 decoder releases the model's float projection weights."""
    return load_generator("tiny", torch.device("cpu"), torch.float32, model_cache, allow_download=False)


# Batch invariance holds bit for bit on the kernel paths, which compute each row on its own. fp32 goes
# through MKL, whose matmul rounds 2 and 6 rows differently (about 1e-7): a sampled token can then flip.
needs_kernel = pytest.mark.skipif(
    kernels.load_kernel() is None, reason=f"CPU paths avx512 and avx2 NOT TESTED ({kernels.resolve_cpu_path()})"
)


@pytest.fixture(scope="module")
def loaded_melody(model_cache: Path) -> LoadedGenerator:
    return load_generator("tiny-melody", torch.device("cpu"), torch.float32, model_cache, allow_download=False)


def _source(seconds: float = 6.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2).astype(np.float32)


def _task(key: str, seed: int, duration: float, outcomes: dict, **kwargs) -> DecodeTask:
    params = kwargs.pop("params", GenerationParams(duration=duration, seed=seed))
    return DecodeTask(
        key=key, text=kwargs.pop("text", "calm piano"), params=params, seed=seed,
        n_frames=round(duration * FRAMES_PER_SECOND), on_done=lambda o: outcomes.__setitem__(key, o), **kwargs,
    )  # fmt: skip


def test_delay_pattern_places_codebook_k_k_steps_late_and_round_trips() -> None:
    prompt = torch.arange(4 * 3).reshape(4, 3)
    window = delay_pattern(prompt, n_frames=5)
    assert window.seq.shape == (4, 9)
    for k in range(4):
        assert window.seq[k, k + 1 : k + 4].tolist() == prompt[k].tolist()
        assert not window.known[k, k + 4 : k + 6].any()  # the two new frames are left to sample
        assert window.known[k, : k + 4].all() and window.known[k, k + 6 :].all()
    window.seq[~window.known] = 7
    frames = undelay(window.seq, 5)
    assert frames[:, :3].tolist() == prompt.tolist()
    assert (frames[:, 3:] == 7).all()


def test_sample_next_top_k_one_is_greedy_and_seeded_draws_repeat() -> None:
    logits_c = torch.randn(4, 2048)
    logits_u = torch.randn(4, 2048)
    guided = logits_u + (logits_c - logits_u) * 3.0
    greedy = GenerationParams(top_k=1, cfg_coef=3.0)
    out = sample_next(logits_c, logits_u, greedy, torch.Generator().manual_seed(0))
    assert out.tolist() == guided.argmax(-1).tolist()
    nucleus = GenerationParams(top_k=0, top_p=1e-6, cfg_coef=3.0)
    assert sample_next(logits_c, logits_u, nucleus, torch.Generator().manual_seed(5)).tolist() == out.tolist()
    wide = GenerationParams(top_k=0, temperature=2.0)
    a = sample_next(logits_c, logits_u, wide, torch.Generator().manual_seed(9))
    b = sample_next(logits_c, logits_u, wide, torch.Generator().manual_seed(9))
    assert a.tolist() == b.tolist()


def test_outputs_have_exactly_the_requested_length_and_exclude_the_prompt(loaded: LoadedGenerator) -> None:
    outcomes: dict = {}
    source = _source()
    MusicGenerator(loaded).run([
        _task("cont", 1, 5.0, outcomes, prompt_audio=source[-3 * SAMPLE_RATE :]),
        _task("style", 2, 7.3, outcomes),
    ])  # fmt: skip
    assert outcomes["cont"].shape == (5 * SAMPLE_RATE,)
    assert outcomes["style"].shape == (round(7.3 * FRAMES_PER_SECOND) * SAMPLE_RATE // FRAMES_PER_SECOND,)
    assert all(np.isfinite(o).all() for o in outcomes.values())


def test_long_form_45s_continues_each_window_from_the_exact_last_tokens(loaded: LoadedGenerator) -> None:
    generator = MusicGenerator(loaded, window_frames=1500, overlap_frames=500)
    prefills: list[torch.Tensor] = []
    original = generator.decoder.prefill_rows

    def spy(slot: int, tokens: torch.Tensor, *args):  # type: ignore[no-untyped-def]
        if slot == 0:
            prefills.append(tokens.clone())
        return original(slot, tokens, *args)

    generator.decoder.prefill_rows = spy  # type: ignore[method-assign]
    frames_seen: list[torch.Tensor] = []
    original_advance = generator._advance

    def record(state, *args, **kwargs):  # type: ignore[no-untyped-def]
        done = original_advance(state, *args, **kwargs)
        frames_seen.append(state.frames)
        return done

    generator._advance = record  # type: ignore[method-assign]
    outcomes: dict = {}
    generator.run([_task("long", 3, 45.0, outcomes, prompt_audio=_source()[-5 * SAMPLE_RATE :])])
    assert outcomes["long"].shape == (45 * SAMPLE_RATE,)
    # windows: 250 source frames + 1250 new, then 500 frames of context + the last 1000 new
    assert len(prefills) == 2
    final_frames = frames_seen[-1]
    for window, tokens in enumerate(prefills[1:], start=1):
        prompt = undelay(torch.cat([tokens, torch.full((4, 4), 2048)], dim=1), tokens.shape[1] - 1)
        generated_before = {1: 250 + 1250}[window]
        expected = final_frames[:, generated_before - 500 : generated_before]
        assert prompt[:, :-3].tolist() == expected[:, :-3].tolist()  # last frames of k>0 are still delayed
    assert final_frames.shape[1] == 250 + 45 * FRAMES_PER_SECOND


@needs_kernel
def test_same_seed_same_audio_other_seed_other_audio(loaded_int8: LoadedGenerator) -> None:
    outcomes: dict = {}
    generator = MusicGenerator(loaded_int8, int8=True)
    generator.run([_task("a", 7, 5.0, outcomes)])
    generator.run([_task("b", 7, 5.0, outcomes), _task("c", 8, 5.0, outcomes)])
    assert np.array_equal(outcomes["a"], outcomes["b"])
    assert not np.array_equal(outcomes["a"], outcomes["c"])


@needs_kernel
def test_a_seeded_job_gets_the_same_audio_alone_batched_and_joining_late(loaded_int8: LoadedGenerator) -> None:
    """The int8 step (the CPU default) computes every row on its own, so equality is exact."""
    source = _source()
    generator = MusicGenerator(loaded_int8, max_batch=4, int8=True)
    alone: dict = {}
    generator.run([_task("x", 11, 5.0, alone, prompt_audio=source)])
    batched: dict = {}
    others = [
        _task("o1", 1, 9.0, batched, params=GenerationParams(duration=9.0, temperature=1.5, top_k=50)),
        _task("o2", 2, 6.0, batched, text="dark techno", prompt_audio=source[: 2 * SAMPLE_RATE]),
    ]
    joiner = [_task("x", 11, 5.0, batched, prompt_audio=source)]
    steps = {"n": 0}

    def take_more(n_free: int) -> list[DecodeTask]:
        steps["n"] += 1
        return [joiner.pop()] if steps["n"] == 40 and joiner else []  # joins mid-decode of the others

    generator.run(others, take_more)
    assert set(batched) == {"o1", "o2", "x"}
    assert np.array_equal(alone["x"], batched["x"])


@needs_kernel
def test_without_guidance_a_job_steps_one_row_and_gets_the_same_audio_alone_and_batched(
    loaded_int8: LoadedGenerator,
) -> None:
    """cfg_coef 1 never uses the unconditional logits, so its row is never computed; rows of other widths
    around it shift down when a job leaves, and its audio stays what it is alone."""
    generator = MusicGenerator(loaded_int8, max_batch=4, int8=True)
    rows: list[int] = []
    step = generator.decoder.step
    generator.decoder.step = lambda tokens: rows.append(tokens.shape[0]) or step(tokens)  # type: ignore[method-assign]
    no_cfg = GenerationParams(duration=3.0, seed=5, cfg_coef=1.0)
    alone: dict = {}
    generator.run([_task("x", 5, 3.0, alone, params=no_cfg)])
    assert set(rows) == {1}
    rows.clear()
    batched: dict = {}
    generator.run([_task("short", 1, 1.0, batched), _task("x", 5, 3.0, batched, params=no_cfg),
                   _task("long", 3, 4.0, batched)])  # fmt: skip
    assert list(dict.fromkeys(rows)) == [5, 3, 2]  # 2 + 1 + 2 rows; then "short" leaves; then "x"
    assert np.array_equal(alone["x"], batched["x"])
    assert batched["long"].shape == (4 * SAMPLE_RATE,)


def test_progress_is_monotonic_and_cancel_stops_only_that_job(loaded: LoadedGenerator) -> None:
    outcomes: dict = {}
    seen: list[float] = []
    cancelled = _task("stop", 1, 10.0, outcomes, should_cancel=lambda: len(seen) >= 20, progress=seen.append)
    kept_progress: list[float] = []
    kept = _task("keep", 2, 5.0, outcomes, progress=kept_progress.append)
    MusicGenerator(loaded).run([cancelled, kept])
    assert isinstance(outcomes["stop"], GenerationCancelled)
    assert outcomes["keep"].shape == (5 * SAMPLE_RATE,)
    assert kept_progress == sorted(kept_progress) and kept_progress[-1] == 95.0
    assert len(set(kept_progress)) == len(kept_progress)  # throttled to whole points


def test_a_failing_job_does_not_sink_the_batch(loaded: LoadedGenerator) -> None:
    outcomes: dict = {}
    bad = _task("bad", 1, 5.0, outcomes, prompt_audio=np.full(100, np.nan, dtype=np.float32))
    bad.n_frames = -1  # impossible request: the loop must report it, not crash
    MusicGenerator(loaded).run([bad, _task("good", 2, 5.0, outcomes)])
    assert isinstance(outcomes["bad"], Exception)
    assert outcomes["good"].shape == (5 * SAMPLE_RATE,)


def test_melody_model_follows_the_chroma_of_its_source(loaded_melody: LoadedGenerator) -> None:
    outcomes: dict = {}
    source = _source(8.0)
    generator = MusicGenerator(loaded_melody)
    generator.run([_task("m1", 5, 5.0, outcomes, melody_audio=source), _task("m2", 5, 5.0, outcomes)])
    assert outcomes["m1"].shape == (5 * SAMPLE_RATE,)
    assert not np.array_equal(outcomes["m1"], outcomes["m2"])  # same seed: only the chroma differs


def test_a_finished_jobs_rendering_and_delivery_do_not_stall_the_batchs_decode_steps(loaded: LoadedGenerator) -> None:
    """The short job's on_done waits for the long job to make progress: it can only see it if the long job
    keeps stepping meanwhile, i.e. if finishing happens off the decode loop (it waits 30 s at most)."""
    import threading

    outcomes: dict = {}
    steps: list[float] = []
    moved_on = threading.Event()
    marks: dict[str, int] = {}

    def long_progress(value: float) -> None:
        steps.append(value)
        if "short" in marks and len(steps) >= marks["short"] + 5:
            moved_on.set()

    def short_done(outcome: object) -> None:
        marks["short"] = len(steps)
        outcomes["saw_progress"] = moved_on.wait(timeout=30)
        outcomes["short"] = outcome

    short = DecodeTask(key="short", text="", params=GenerationParams(seed=1), seed=1, n_frames=25, on_done=short_done)
    long = _task("long", 2, 5.0, outcomes, progress=long_progress)
    MusicGenerator(loaded).run([short, long])
    assert outcomes["saw_progress"] and outcomes["short"].shape == (25 * 640,)
    assert outcomes["long"].shape == (5 * SAMPLE_RATE,)
