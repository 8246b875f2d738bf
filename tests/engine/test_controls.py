"""Generation controls and settings: sections, prompt included, seamless loops, tempo/key hints, stereo output,
validated windows, per-model load slots with backoff, EnCodec in bounded memory, melody across windows."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from pydantic import ValidationError

from motif.audio import encode_audio, loudness_normalize, measure_loudness, measure_true_peak
from motif.config import Settings
from motif.engine import Engine, GenerationMode, GenerationParams, OutputFormat
from motif.engine import codec as codec_module
from motif.engine import pipeline as pipeline_module
from motif.engine.chroma import melody_chroma
from motif.engine.controls import make_loop, plan_loop, select_section
from motif.engine.generator import DecodeTask, MusicGenerator, _cyclic_slice
from motif.engine.models import load_generator
from motif.engine.pipeline import GenerationJob
from motif.engine.slots import ModelSlot
from motif.engine.types import SAMPLE_RATE
from motif.errors import InvalidRequestError, ModelUnavailableError
from tests.engine.test_engine import _settings as tiny_settings
from tests.engine.test_engine import source as source  # noqa: F401 - the 12 s music_like fixture
from tests.synth import music_like

CPU = torch.device("cpu")


def _settings(model_cache: Path, **overrides: Any) -> Settings:
    """test_engine's tiny-model settings, in fp32."""
    return tiny_settings(model_cache, **{"generation_precision": "fp32", **overrides})


@pytest.fixture(scope="module")
def engine(model_cache: Path) -> Engine:
    return Engine(_settings(model_cache))


def _seam(audio: np.ndarray) -> tuple[float, np.ndarray]:
    """The jump from the last sample back to the first, and the signal's own sample-to-sample steps."""
    return float(np.abs(audio[0] - audio[-1]).max()), np.abs(np.diff(audio, axis=0)).max(axis=-1, initial=0)


def test_make_loop_turns_a_cut_with_a_click_into_a_step_the_signal_itself_takes() -> None:
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    slow = (0.5 * np.sin(2 * np.pi * 3.3 * t)).astype(np.float32)  # a loop length it does not divide
    plan = plan_loop(2.0, bpm=120.0)  # one bar of 4/4 at 120 BPM: 2 s
    assert (plan.n_bars, plan.n_loop) == (1, 2 * SAMPLE_RATE)
    raw_jump, steps = _seam(slow[: plan.n_loop])
    assert raw_jump > 100 * steps.max()  # cut without care: a click
    looped = make_loop(slow[: plan.n_loop + plan.n_fade], plan)
    jump, steps = _seam(looped)
    assert looped.shape == (plan.n_loop,) and jump <= steps.max() * 1.01


def test_a_loop_is_whole_bars_at_the_tempo_and_repeats_without_a_click(engine: Engine, source: np.ndarray) -> None:
    params = GenerationParams(duration=7.0, seed=4, loop=True, bpm=100.0)  # 4/4 at 100 BPM: 2.4 s bars -> 3 bars
    result = engine.generate(source, SAMPLE_RATE, params)
    assert result.audio.shape == (round(3 * 2.4 * SAMPLE_RATE),)
    jump, steps = _seam(result.audio)
    assert jump <= np.quantile(steps, 0.99)  # the loop point is no larger a step than the music's own


def test_a_loop_takes_the_uploads_tempo_when_none_is_given(engine: Engine, source: np.ndarray) -> None:
    analysis = {"tempo_bpm": 120.0, "key": "A", "mode": "minor"}
    job = GenerationJob(source, GenerationParams(duration=5.0, seed=4, loop=True), analysis=analysis)
    task = engine._plan(job)
    assert task.n_frames == 213 and task.text == "120 BPM, in A minor"  # two 2 s bars and a 0.25 s fade: 212.5


def test_continuation_from_a_chosen_section_with_the_prompt_included(engine: Engine, source: np.ndarray) -> None:
    params = GenerationParams(duration=5.0, seed=6, continuation_start=2.0, continuation_end=6.0, include_prompt=True)
    task = engine._plan(GenerationJob(source, params, analysis={"tempo_bpm": None}))
    assert np.array_equal(task.prompt_audio, source[2 * SAMPLE_RATE : 6 * SAMPLE_RATE])  # type: ignore[arg-type]
    result = engine.generate(source, SAMPLE_RATE, params)
    assert result.audio.shape == ((4 + 5) * SAMPLE_RATE,)
    lead_in = result.audio[: 4 * SAMPLE_RATE]  # the section, under the limiter the tiny model's loud output needs
    assert np.corrcoef(lead_in, source[2 * SAMPLE_RATE : 6 * SAMPLE_RATE])[0, 1] > 0.95


def test_section_and_prompt_controls_are_refused_where_they_mean_nothing(engine: Engine, source: np.ndarray) -> None:
    with pytest.raises(InvalidRequestError, match="past the end"):
        select_section(source, 20.0, None)
    with pytest.raises(InvalidRequestError, match="after continuation_start"):
        select_section(source, 5.0, 4.0)
    style = GenerationParams(mode=GenerationMode.STYLE, include_prompt=True)
    with pytest.raises(InvalidRequestError, match="include_prompt"):
        engine._plan(GenerationJob(source, style))
    with pytest.raises(InvalidRequestError, match="tempo"):
        plan_loop(10.0, None)


def test_bpm_and_key_override_the_detected_ones_in_every_mode(engine: Engine, source: np.ndarray) -> None:
    analysis = {"tempo_bpm": 90.0, "key": "C", "mode": "major"}
    detected = engine._plan(GenerationJob(source, GenerationParams(prompt="lofi"), analysis=analysis))
    assert detected.text == "lofi, 90 BPM, in C major"
    given = GenerationParams(prompt="lofi", bpm=128.0, key="F# minor")
    assert engine._plan(GenerationJob(source, given, analysis=analysis)).text == "lofi, 128 BPM, in F# minor"
    style = GenerationParams(mode=GenerationMode.STYLE, bpm=128.0, key="F# minor")
    assert "128 BPM, in F# minor" in engine._plan(GenerationJob(source, style, analysis=analysis)).text


def test_a_stereo_model_gives_two_normalised_channels_in_every_format(model_cache: Path, source: np.ndarray) -> None:
    stereo = Engine(_settings(model_cache, generation_model="tiny-stereo"))
    result = stereo.generate(source, SAMPLE_RATE, GenerationParams(duration=5.0, seed=2))  # a mono upload
    assert result.audio.shape == (5 * SAMPLE_RATE, 2) and result.similarity is not None
    assert measure_true_peak(result.audio, SAMPLE_RATE) <= -1.0 + 0.01  # one limiter over both channels
    t = np.arange(4 * SAMPLE_RATE) / SAMPLE_RATE
    wide = np.stack([0.05 * np.sin(2 * np.pi * 440 * t), 0.02 * np.sin(2 * np.pi * 660 * t)], 1).astype(np.float32)
    normalised = loudness_normalize(wide, SAMPLE_RATE)
    assert abs(measure_loudness(normalised, SAMPLE_RATE) - (-14.0)) < 0.1  # type: ignore[operator]
    gain = float(np.dot(normalised[:, 0], wide[:, 0]) / np.dot(wide[:, 0], wide[:, 0]))
    np.testing.assert_allclose(normalised, wide * gain, rtol=0, atol=1e-5)  # one gain for both: the image is kept
    for fmt in OutputFormat:
        data, rate = sf.read(io.BytesIO(encode_audio(result.audio, SAMPLE_RATE, fmt)))
        assert data.ndim == 2 and data.shape[1] == 2, fmt


def test_overlap_at_or_above_the_window_is_refused_at_start_naming_the_settings(model_cache: Path) -> None:
    with pytest.raises(ValidationError, match="EXTEND_OVERLAP_SECONDS.*WINDOW_SECONDS"):
        _settings(model_cache, window_seconds=10.0, extend_overlap_seconds=10.0)
    with pytest.raises(ValidationError, match="PROMPT_SECONDS.*WINDOW_SECONDS"):
        _settings(model_cache, window_seconds=8.0, prompt_seconds=9.0, extend_overlap_seconds=2.0)
    loaded = load_generator("tiny", CPU, torch.float32, model_cache, allow_download=False)
    with pytest.raises(ValueError, match="EXTEND_OVERLAP_SECONDS"):
        MusicGenerator(loaded, window_frames=300, overlap_frames=300)  # used to loop forever


def test_a_batch_size_whose_cache_cannot_fit_is_refused_naming_the_settings(
    model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline_module.models, "free_memory_bytes", lambda device: 1024)
    with pytest.raises(ModelUnavailableError, match="MAX_BATCH_SIZE=4 with WINDOW_SECONDS=30"):
        _ = Engine(_settings(model_cache)).generator


def test_a_failed_load_is_remembered_and_retried_with_backoff() -> None:
    now, calls = [0.0], []

    def load() -> str:
        calls.append(now[0])
        if len(calls) < 3:
            raise ModelUnavailableError("hub unreachable")
        return "model"

    slot = ModelSlot("embedding", load, clock=lambda: now[0])
    for _ in range(2):
        with pytest.raises(ModelUnavailableError, match="hub unreachable"):
            slot.get()
    assert calls == [0.0] and slot.failure is not None  # the second answer came from memory
    now[0] = 5.0
    with pytest.raises(ModelUnavailableError):
        slot.get()
    now[0] = 14.0  # backoff doubled to 10 s: not yet
    with pytest.raises(ModelUnavailableError, match="next attempt"):
        slot.get()
    now[0] = 15.0
    assert slot.get() == "model" and slot.failure is None and calls == [0.0, 5.0, 15.0]


def test_an_embedding_never_waits_behind_a_musicgen_download(
    model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each model has its own slot, and files are fetched before the (serialised) construction: a generation
    model stuck downloading holds up nothing else."""
    engine = Engine(_settings(model_cache, generation_model="tiny-stereo"))
    release, fetching = threading.Event(), threading.Event()
    fetch = pipeline_module.models._fetch

    def slow_fetch(model_id: str, allow_download: bool) -> None:
        if model_id == "tiny-stereo":
            fetching.set()
            release.wait(timeout=60)
        fetch(model_id, allow_download)

    monkeypatch.setattr(pipeline_module.models, "_fetch", slow_fetch)
    loading = threading.Thread(target=lambda: engine.generator)
    loading.start()
    try:
        assert fetching.wait(timeout=60)
        assert engine.embed_text(["calm piano"]).shape == (1, 512)  # while the generator is still "downloading"
        assert engine._generator_slot.value is None
    finally:
        release.set()
        loading.join(timeout=120)
    assert engine._generator_slot.value is not None


def test_encodec_renders_long_outputs_in_chunks_that_join_seamlessly(
    model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = load_generator("tiny", CPU, torch.float32, model_cache, allow_download=False).model.audio_encoder
    codes = torch.randint(0, 2048, (4, 700), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole = codec.decode(codes[None, None], [None]).audio_values[0, 0].numpy()
    monkeypatch.setattr(codec_module, "RENDER_CHUNK_FRAMES", 200)
    chunked = codec_module.render_codes(codec, codes, 1)
    assert chunked.shape == whole.shape
    assert codec_module.snr_db(torch.from_numpy(whole), torch.from_numpy(chunked)) > 60


def test_melody_windows_follow_the_chroma_of_their_own_stretch_of_the_source(model_cache: Path) -> None:
    """Each long-form window is conditioned on the chroma of the source where that window starts (cycled),
    and the prefix differs from a control conditioned on other audio. (The tiny model's weights are random,
    so what its audio does with the chroma says nothing; the conditioning is what Motif controls.)"""
    loaded = load_generator("tiny-melody", CPU, torch.float32, model_cache, allow_download=False)
    generator = MusicGenerator(loaded, window_frames=300, overlap_frames=100)
    seen: list[tuple[int, torch.Tensor]] = []
    conditioning = generator._conditioning

    def spy(state: Any, window_start: int) -> Any:
        cond, uncond = conditioning(state, window_start)
        seen.append((window_start, cond[0]))
        return cond, uncond

    generator._conditioning = spy  # type: ignore[method-assign]
    t = np.arange(20 * SAMPLE_RATE) / SAMPLE_RATE
    notes = 220 * 2 ** (np.floor(t / 2.5) / 12)  # a rising scale, one note per 2.5 s
    melody = (0.4 * np.sin(2 * np.pi * np.cumsum(notes) / SAMPLE_RATE)).astype(np.float32)
    control = music_like(20.0, SAMPLE_RATE, seed=9)
    out: dict[str, Any] = {}
    for key, audio in (("melody", melody), ("control", control)):
        generator.run([DecodeTask(key=key, text="", params=GenerationParams(seed=1), seed=1, n_frames=650,
                                  melody_audio=audio, on_done=lambda o, k=key: out.__setitem__(k, o))])  # fmt: skip
    starts = [start for start, _ in seen]
    assert starts == [0, 200, 400] * 2  # 300-frame windows continuing from the last 100 frames
    proj, chroma_len = loaded.model.audio_enc_to_dec_proj, loaded.model.config.chroma_length
    for start, prefix in seen[:3]:
        chroma = melody_chroma(_cyclic_slice(melody, start * 640, 30 * SAMPLE_RATE))
        with torch.inference_mode():
            expected = proj(chroma[None])[0]
        tiled = expected.repeat(-(-chroma_len // len(expected)), 1)[:chroma_len]
        torch.testing.assert_close(prefix[:chroma_len], tiled)
    assert not torch.equal(seen[1][1], seen[2][1])  # later windows hear later notes
    assert not torch.equal(seen[1][1], seen[4][1])  # and not the control's
    assert out["melody"].shape == (650 * 640,)
