"""The AVX2 + FMA kernel library (kernels_avx2.c) on whatever CPU runs the suite, and CPU_PATH selection.

AVX-512 CPUs also run AVX2, so this library is built and tested here as it would run on a laptop: same
tokens alone and batched, the fp32 fidelity bounds test_decoder applies to int8, and a disassembly check
that it holds no AVX-512 instruction (which would be SIGILL on such a laptop).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from motif.config import Settings
from motif.engine import cpuops, kernels
from motif.engine.decoder import StaticCacheDecoder
from tests.engine.test_decoder import _fp32_logits, _fused_and_layered_logits, _memory, _ours, _rel_err, _tokens
from tests.engine.test_decoder import model as model  # noqa: F401 - the tiny MusicGen fixture

AVX2_REASON = kernels.kernel_error("avx2") or "no AVX2+FMA CPU or no gcc"
needs_avx2 = pytest.mark.skipif(kernels.load_kernel("avx2") is None,
                                reason=f"CPU path avx2 NOT TESTED: {AVX2_REASON}")  # fmt: skip
needs_both = pytest.mark.skipif(kernels.load_kernel("avx512") is None,
                                reason="CPU path avx512 NOT TESTED (the avx2 comparison with it neither)")  # fmt: skip


@pytest.fixture
def avx2_path() -> Iterator[None]:
    """Decoders built inside take the AVX2 library, as CPU_PATH=avx2 (or auto on a laptop) would."""
    kernels.select_cpu_path("avx2")
    try:
        yield
    finally:
        kernels.select_cpu_path("auto")


def _int8_decoder(model: Any) -> StaticCacheDecoder:
    decoder = StaticCacheDecoder(copy.deepcopy(model), False, 64)
    decoder.quantize_int8(heads=True)
    assert decoder.precision == "int8" and decoder._fused is not None
    return decoder


@needs_avx2
@pytest.mark.parametrize(("n_in", "n_out"), [(64, 192), (30, 40), (300, 64)])
def test_avx2_int8_projection_matches_its_torch_reference_and_rows_never_interact(n_in: int, n_out: int) -> None:
    torch.manual_seed(n_in)
    linear = nn.Linear(n_in, n_out, bias=n_in == 30)
    fast = cpuops.Int8Linear(linear)
    fast.kernel = kernels.load_kernel("avx2")
    slow = cpuops.Int8Linear(linear, use_kernel=False)
    for n_rows in (1, 2, 3, 5, 8):
        x = torch.randn(n_rows, n_in) * 3 + 1
        got = fast(x)
        torch.testing.assert_close(got, slow(x), rtol=1e-5, atol=1e-5)
        assert torch.equal(fast(x[-1:]), got[-1:])
        assert _rel_err(got, linear(x).detach()) < 0.01


@needs_avx2
@needs_both
def test_avx2_projection_sums_exactly_what_the_avx512_one_does() -> None:
    """vpmaddwd + vpaddd sum each group exactly in int32, as vpdpwssd does, then scale in the same order."""
    torch.manual_seed(5)
    linear = nn.Linear(1024, 3072 + 48, bias=False)  # a last tile of 3 blocks
    avx512, avx2 = cpuops.Int8Linear(linear), cpuops.Int8Linear(linear)
    avx512.kernel, avx2.kernel = kernels.load_kernel("avx512"), kernels.load_kernel("avx2")
    x = torch.randn(7, 1024)
    assert torch.equal(avx2(x), avx512(x))


@needs_avx2
def test_avx2_decoder_steps_a_row_the_same_alone_and_batched(model: Any, avx2_path: None) -> None:
    states, mask = _memory()
    tokens = _tokens(10)
    lone = _ours(_int8_decoder(model), tokens, states, mask, n_prefill=3)
    batched = _int8_decoder(model)
    assert not kernels.has_bf16_linear(batched._kernel)
    batched.reserve(3)
    batched.prefill(1, _tokens(6, seed=3), *_memory(7, seed=5))  # a longer neighbour
    rows = [batched.prefill(0, tokens[:, :3], states, mask)]
    batched.prefill(2, _tokens(1, seed=4), torch.zeros_like(states), mask)  # an unconditional one
    for t in range(3, 10):
        step_tokens = torch.stack([tokens[:, t], _tokens(1, seed=t)[:, 0], _tokens(1, seed=t + 50)[:, 0]])
        rows.append(batched.step(step_tokens)[0])
    assert torch.equal(torch.stack(rows), lone)


@needs_avx2
def test_avx2_int8_stays_close_to_fp32(model: Any, avx2_path: None) -> None:
    """The bounds test_decoder's int8 test applies (and the bench's fidelity stage measures)."""
    states, mask = _memory()
    tokens = _tokens(24)
    reference = _fp32_logits(model, tokens, states, mask)
    ours = _ours(_int8_decoder(model), tokens, states, mask)
    assert _rel_err(ours, reference) < 0.08
    assert (ours.argmax(-1) == reference.argmax(-1)).float().mean() > 0.85


@needs_avx2
def test_avx2_fused_step_matches_its_layer_by_layer_step(model: Any, avx2_path: None) -> None:
    fused, layered = _fused_and_layered_logits(_int8_decoder(model), _int8_decoder(model))
    assert _rel_err(fused, layered) < 1e-3
    assert torch.equal(fused.argmax(-1), layered.argmax(-1))


@needs_avx2
@needs_both
def test_avx2_and_avx512_decoders_agree(model: Any) -> None:
    """Same projections; norms, softmax and GELU reduce over 8 lanes instead of 16 (float rounding only)."""
    states, mask = _memory()
    tokens = _tokens(12)
    avx512 = _ours(_int8_decoder(model), tokens, states, mask)
    kernels.select_cpu_path("avx2")
    try:
        avx2 = _ours(_int8_decoder(model), tokens, states, mask)
    finally:
        kernels.select_cpu_path("auto")
    assert _rel_err(avx2, avx512) < 1e-3


@needs_avx2
@pytest.mark.skipif(shutil.which("objdump") is None, reason="CPU path avx2 NOT CHECKED: needs objdump (binutils)")
def test_the_avx2_library_holds_no_avx512_instruction() -> None:
    """zmm registers, mask registers, {k}/{z}/{rn-sae} decorations and ymm16-31 all need EVEX (AVX-512)."""
    library = Path(kernels.load_kernel("avx2")._name)  # type: ignore[union-attr]
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    evex = re.compile(r"%zmm|%k[0-7]\b|\{|%[xy]mm(1[6-9]|2[0-9]|3[01])\b|vpdpwssd|vdpbf16ps|vcvtneps2bf16")
    offending = [line for line in listing.splitlines() if evex.search(line.split("#")[0])]
    assert offending == []
    assert "vpmaddwd" in listing and "%ymm" in listing  # it is the AVX2 kernel, not an empty one


def test_auto_picks_avx512_with_vnni_avx2_without_and_torch_on_other_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = {
        "avx512": "flags: fpu sse2 avx fma avx2 avx512f avx512bw avx512vl avx512_vnni",
        "avx2": "flags: fpu sse2 avx fma avx2",
        "torch": "Features: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp",  # ARM64
    }
    for expected, line in flags.items():
        monkeypatch.setattr(kernels, "_cpu_flags", lambda line=line: line)
        assert kernels.resolve_cpu_path("auto") == expected
    assert kernels.resolve_cpu_path("avx2") == "avx2"  # an explicit choice is taken as it is


def test_cpu_path_is_one_setting_and_the_engine_applies_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from motif.engine.pipeline import Engine

    assert Settings().cpu_path == "auto"
    monkeypatch.setenv("CPU_PATH", "sse")
    with pytest.raises(ValueError, match="cpu_path"):
        Settings()
    try:
        Engine(Settings(cpu_path="torch", _env_file=None))  # type: ignore[call-arg]
        assert kernels.load_kernel() is None and kernels.resolve_cpu_path() == "torch"
    finally:
        kernels.select_cpu_path("auto")
    with pytest.raises(ValueError, match="CPU_PATH"):
        kernels.select_cpu_path("neon")
