"""Continuation prompts' EnCodec codes are kept per loaded model, by the prompt audio's content."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from motif.engine.codec import PromptCodes, encode_prompt
from motif.engine.generator import DecodeTask, MusicGenerator
from motif.engine.models import LoadedGenerator, load_generator
from motif.engine.types import FRAMES_PER_SECOND, SAMPLE_RATE, GenerationParams
from tests.service.conftest import wait_until

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def loaded(model_cache: Path) -> LoadedGenerator:
    return load_generator("tiny", CPU, torch.float32, model_cache, allow_download=False)


def _tone(hz: float, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


class _CountingCodec:
    """The real codec, counting its encode calls; `fail_next` makes the next one raise (a crash mid-encode);
    with `hold`, an encode says so in `entered` and goes on once `hold` is set."""

    def __init__(self, codec: Any, hold: threading.Event | None = None) -> None:
        self.codec, self.calls, self.fail_next, self.hold = codec, 0, False, hold
        self.entered = threading.Event()

    def encode(self, values: torch.Tensor) -> Any:
        self.calls += 1
        if self.hold is not None:
            self.entered.set()
            assert self.hold.wait(timeout=60)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("killed while encoding")
        return self.codec.encode(values)

    def parameters(self) -> Any:
        return self.codec.parameters()


def test_the_same_prompt_is_encoded_once_and_gets_the_codes_a_fresh_encoding_gets(loaded: LoadedGenerator) -> None:
    codec = _CountingCodec(loaded.model.audio_encoder)
    cache = PromptCodes(codec, 1, CPU)
    first, again = cache.encode(_tone(220)), cache.encode(_tone(220).copy())
    assert codec.calls == 1 and (cache.hits, cache.misses) == (1, 1)
    assert torch.equal(again, encode_prompt(loaded.model.audio_encoder, _tone(220), 1, CPU))
    assert torch.equal(first, again)


def test_a_changed_source_or_section_is_encoded_again(loaded: LoadedGenerator) -> None:
    codec = _CountingCodec(loaded.model.audio_encoder)
    cache = PromptCodes(codec, 1, CPU)
    source = _tone(220)
    cache.encode(source)
    changed = source.copy()
    changed[1000] += 0.01  # one sample
    got = cache.encode(changed)
    assert codec.calls == 2
    assert torch.equal(got, encode_prompt(loaded.model.audio_encoder, changed, 1, CPU))
    cache.encode(source[: -SAMPLE_RATE // 2])  # another section of the same upload
    assert codec.calls == 3


def test_another_model_never_reuses_the_codes(model_cache: Path, loaded: LoadedGenerator) -> None:
    """Each loaded model has its own cache: a model with other codec weights encodes the prompt itself."""
    other = load_generator("tiny", CPU, torch.float32, model_cache, allow_download=False)
    with torch.no_grad():
        for param in other.model.audio_encoder.parameters():
            param.mul_(1.5)
    source = _tone(330)
    ours = MusicGenerator(loaded, window_frames=300, overlap_frames=100)
    theirs = MusicGenerator(other, window_frames=300, overlap_frames=100)
    mine = ours.prompt_codes.encode(source)
    got = theirs.prompt_codes.encode(source)
    assert theirs.prompt_codes.misses == 1 and theirs.prompt_codes.hits == 0
    assert torch.equal(got, encode_prompt(other.model.audio_encoder, source, 1, CPU))
    assert not torch.equal(got, mine)  # the scaled codec does pick other codes: the check above can fail


def test_a_crash_while_encoding_leaves_no_entry(loaded: LoadedGenerator) -> None:
    codec = _CountingCodec(loaded.model.audio_encoder)
    cache = PromptCodes(codec, 1, CPU)
    codec.fail_next = True
    with pytest.raises(RuntimeError, match="killed"):
        cache.encode(_tone(220))
    got = cache.encode(_tone(220))
    assert codec.calls == 2 and cache.hits == 0
    assert torch.equal(got, encode_prompt(loaded.model.audio_encoder, _tone(220), 1, CPU))


@pytest.mark.parametrize("fails", [False, True])
def test_a_prompt_asked_for_while_it_is_encoded_is_encoded_once(loaded: LoadedGenerator, fails: bool) -> None:
    """An upload's prompt encoded at ingest while its first continuation asks for it: the second caller waits for
    the first one's codes (or its error) instead of running the encoder beside it."""
    release = threading.Event()
    codec = _CountingCodec(loaded.model.audio_encoder, hold=release)
    codec.fail_next = fails
    cache = PromptCodes(codec, 1, CPU)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(cache.encode, _tone(220))
        assert codec.entered.wait(timeout=60)
        second = pool.submit(cache.encode, _tone(220).copy())
        wait_until(lambda: cache.joined == 1, timeout=60, what="the second caller waiting for the first")
        release.set()
        if fails:
            for future in (first, second):
                with pytest.raises(RuntimeError, match="killed"):
                    future.result()
        else:
            assert torch.equal(first.result(), second.result())
    assert codec.calls == 1 and cache.misses == 1
    if fails:  # nothing was kept: the next caller encodes
        assert torch.equal(cache.encode(_tone(220)), encode_prompt(loaded.model.audio_encoder, _tone(220), 1, CPU))
        assert codec.calls == 2


def test_the_cache_keeps_only_the_most_recent_prompts(loaded: LoadedGenerator) -> None:
    codec = _CountingCodec(loaded.model.audio_encoder)
    cache = PromptCodes(codec, 1, CPU, capacity=2)
    for hz in (200, 300, 400):
        cache.encode(_tone(hz, 1.0))
    cache.encode(_tone(400, 1.0))  # kept
    assert codec.calls == 3
    cache.encode(_tone(200, 1.0))  # evicted: encoded again
    assert codec.calls == 4


def test_a_continuation_again_gets_the_same_audio_with_the_prompt_encoded_once(loaded: LoadedGenerator) -> None:
    generator = MusicGenerator(loaded, window_frames=300, overlap_frames=100)
    outcomes: list[Any] = []
    params = GenerationParams(duration=1.0, seed=5)
    for _ in range(2):
        task = DecodeTask(key="c", text="calm", params=params, seed=5, n_frames=FRAMES_PER_SECOND,
                          prompt_audio=_tone(220), on_done=outcomes.append)  # fmt: skip
        generator.run([task])
    assert (generator.prompt_codes.misses, generator.prompt_codes.hits) == (1, 1)
    assert isinstance(outcomes[0], np.ndarray)
    np.testing.assert_array_equal(outcomes[0], outcomes[1])
