"""The static-cache decoder against transformers' forward, slot handling, and the fast paths' error bounds.

The model here is a tiny random MusicGen with 16-wide heads (as `tiny`), so the bf16 attention kernel and the
fused int8 step (which need head_dim % 16 == 0) run in these tests, and weights larger than `tiny`'s.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from motif.engine import cpuops, kernels
from motif.engine import decoder as decoder_module
from motif.engine.decoder import StaticCacheDecoder
from motif.engine.tiny import _tiny_musicgen_configs

PAD = 2048
needs_kernel = pytest.mark.skipif(
    kernels.load_kernel("avx512") is None, reason=f"CPU path avx512 NOT TESTED: {kernels.kernel_error('avx512')}"
)
needs_any_kernel = pytest.mark.skipif(
    kernels.load_kernel() is None, reason=f"int8 kernels NOT TESTED: {kernels.kernel_error('avx2')}"
)
needs_bf16_prefill = pytest.mark.skipif(
    not (kernels.has_dequantize(kernels.load_kernel("avx512")) and kernels.cpu_has_bf16_dot()),
    reason="bf16 prefill of int8 weights NOT TESTED: needs the avx512 kernels and AVX512-BF16",
)
# A long int8 prefill runs as matmuls in bf16 where the CPU has it natively, else in float32 (any kernel library).
WIDE_DTYPES = [pytest.param(torch.bfloat16, marks=needs_bf16_prefill, id="bf16"),
               pytest.param(torch.float32, marks=needs_any_kernel, id="f32")]  # fmt: skip


@pytest.fixture(scope="module")
def model() -> Any:
    from transformers import MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration

    parts = _tiny_musicgen_configs(vocab_size=200)
    parts["decoder"].update(hidden_size=64, ffn_dim=128, num_attention_heads=4)
    parts["decoder"] = MusicgenDecoderConfig(**parts["decoder"])
    torch.manual_seed(0)
    built = MusicgenForConditionalGeneration(MusicgenConfig(**parts)).eval()
    with torch.no_grad():  # larger than the 0.02 init, so reduced precision has something to get wrong
        for param in built.decoder.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.08)
    return built


def _memory(n_keys: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n_keys, 64, generator=generator), torch.ones(n_keys, dtype=torch.bool)


def _tokens(n: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, 2048, (4, n), generator=torch.Generator().manual_seed(seed))


def _hf_logits(model: Any, tokens: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """transformers' own forward: (K, T) tokens -> (T, K, vocab)."""
    with torch.inference_mode():
        out = model.decoder(input_ids=tokens, encoder_hidden_states=states[None], use_cache=False)
    return out.logits.transpose(0, 1).float()  # logits come back (K, T, vocab) for one sequence


def _ours(decoder: StaticCacheDecoder, tokens: torch.Tensor, states: torch.Tensor, mask: torch.Tensor,
          n_prefill: int = 1, slot: int = 0) -> torch.Tensor:  # fmt: skip
    """Prefill n_prefill tokens then step the rest one by one: (T - n_prefill + 1, K, vocab)."""
    decoder.reserve(slot + 1)
    out = [decoder.prefill(slot, tokens[:, :n_prefill], states, mask)]
    assert slot == 0, "step() drives rows 0..n-1"
    for t in range(n_prefill, tokens.shape[1]):
        out.append(decoder.step(tokens[None, :, t])[0])
    return torch.stack(out)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


def _fp32_logits(model: Any, tokens: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The fp32 static-cache decoder's `_ours`: the reference reduced precisions are held to."""
    return _ours(StaticCacheDecoder(copy.deepcopy(model), False, 64), tokens, states, mask)


def _bf16_copy(model: Any) -> Any:
    """A copy of `model` with its decoder in bf16, as the service loads it."""
    half = copy.deepcopy(model)
    half.decoder.to(torch.bfloat16)
    return half


def _fused_and_layered_logits(
    fused: StaticCacheDecoder, layered: StaticCacheDecoder
) -> tuple[torch.Tensor, torch.Tensor]:
    """Six steps of two rows of different lengths through `fused` and through `layered` with its fused step
    turned off: their logits, each (6, 2, K, vocab)."""
    states, mask = _memory()
    layered._fused = None
    logits = []
    for decoder in (fused, layered):
        decoder.reserve(2)
        decoder.prefill(0, _tokens(3), states, mask)
        decoder.prefill(1, _tokens(6, seed=7), *_memory(7, seed=5))
        logits.append(torch.stack([decoder.step(torch.stack([_tokens(1, seed=t)[:, 0]] * 2)) for t in range(6)]))
    return logits[0], logits[1]


def test_fp32_prefill_then_steps_match_transformers_forward(model: Any) -> None:
    states, mask = _memory()
    tokens = _tokens(12)
    reference = _hf_logits(model, tokens, states)
    ours = _ours(StaticCacheDecoder(copy.deepcopy(model), False, 64), tokens, states, mask, n_prefill=5)
    torch.testing.assert_close(ours, reference[4:], rtol=1e-4, atol=1e-5)


def _in_precision(model: Any, precision: str) -> StaticCacheDecoder:
    decoder = StaticCacheDecoder(_bf16_copy(model) if precision == "bf16" else copy.deepcopy(model), False, 64)
    if precision == "int8":
        decoder.quantize_int8(heads=True)
    return decoder


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_kernel),
                                       pytest.param("int8", marks=needs_kernel)])  # fmt: skip
def test_a_row_steps_the_same_alone_and_beside_rows_of_other_lengths(model: Any, precision: str) -> None:
    """The kernel paths compute each row on its own: bit-identical. fp32 goes through MKL, whose matmul
    rounds differently for 1 and 3 rows (about 1e-7 relative), so there the difference is bounded."""
    states, mask = _memory()
    tokens = _tokens(10)
    lone = _ours(_in_precision(model, precision), tokens, states, mask, n_prefill=3)
    batched = _in_precision(model, precision)
    batched.reserve(3)
    other_states, other_mask = _memory(7, seed=5)
    batched.prefill(1, _tokens(6, seed=3), other_states, other_mask)  # a longer neighbour
    first = batched.prefill(0, tokens[:, :3], states, mask)
    batched.prefill(2, _tokens(1, seed=4), torch.zeros_like(states), mask)  # an unconditional one
    rows = [first]
    for t in range(3, 10):
        step_tokens = torch.stack([tokens[:, t], _tokens(1, seed=t)[:, 0], _tokens(1, seed=t + 50)[:, 0]])
        rows.append(batched.step(step_tokens)[0])
    if precision == "fp32":
        torch.testing.assert_close(torch.stack(rows), lone, rtol=0, atol=1e-5)
    else:
        assert torch.equal(torch.stack(rows), lone)


def test_move_slot_carries_a_row_on_as_if_nothing_moved(model: Any) -> None:
    states, mask = _memory()
    tokens = _tokens(9)
    expected = _ours(StaticCacheDecoder(copy.deepcopy(model), False, 64), tokens, states, mask, n_prefill=2)
    decoder = StaticCacheDecoder(copy.deepcopy(model), False, 64)
    decoder.reserve(3)
    decoder.prefill(0, _tokens(4, seed=9), states, mask)
    decoder.prefill(1, _tokens(2, seed=8), states, mask)
    got = [decoder.prefill(2, tokens[:, :2], states, mask)]
    for t in range(2, 5):
        got.append(decoder.step(torch.stack([tokens[:, t]] * 3))[2])
    decoder.move_slot(2, 0)  # rows 0 and 1 finished; the survivor becomes row 0
    for t in range(5, 9):
        got.append(decoder.step(tokens[None, :, t])[0])
    # fp32 through MKL: 3 rows and 1 row round differently (about 1e-7 relative), as in the test above
    torch.testing.assert_close(torch.stack(got), expected, rtol=0, atol=1e-5)


def test_cache_grows_in_chunks_and_keeps_what_it_held(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoder_module, "CACHE_CHUNK", 4)
    states, mask = _memory()
    tokens = _tokens(14)
    decoder = StaticCacheDecoder(copy.deepcopy(model), False, 64)
    ours = _ours(decoder, tokens, states, mask, n_prefill=2)
    assert decoder.capacity == 16  # 14 positions, grown 4 at a time, never the whole max_len
    torch.testing.assert_close(ours, _hf_logits(model, tokens, states)[1:], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds"):
        decoder.prefill(0, _tokens(64), states, mask)  # 64 positions do not fit a 64-long cache


def test_bf16_stays_within_bf16_error_of_fp32(model: Any) -> None:
    states, mask = _memory()
    tokens = _tokens(24)
    reference = _fp32_logits(model, tokens, states, mask)
    decoder = StaticCacheDecoder(_bf16_copy(model), False, 64)
    assert decoder.cache_dtype == (torch.bfloat16 if kernels.load_kernel() else torch.float32)
    ours = _ours(decoder, tokens, states, mask)
    assert _rel_err(ours, reference) < 0.05
    assert (ours.argmax(-1) == reference.argmax(-1)).float().mean() > 0.9


@needs_kernel
def test_int8_stays_close_to_fp32_and_releases_the_float_weights(model: Any) -> None:
    states, mask = _memory()
    tokens = _tokens(24)
    reference = _fp32_logits(model, tokens, states, mask)
    quantized = copy.deepcopy(model)
    decoder = StaticCacheDecoder(quantized, False, 64)
    float_bytes = decoder.weight_bytes_per_step()
    decoder.quantize_int8(heads=True)
    assert decoder.precision == "int8" and decoder.cache_dtype == torch.bfloat16
    assert decoder.weight_bytes_per_step() < 0.3 * float_bytes
    assert quantized.decoder.model.decoder.layers[0].fc1.weight.numel() == 0
    ours = _ours(decoder, tokens, states, mask)
    assert _rel_err(ours, reference) < 0.08
    assert (ours.argmax(-1) == reference.argmax(-1)).float().mean() > 0.85


@needs_kernel
def test_fused_int8_step_matches_the_layer_by_layer_int8_step(model: Any) -> None:
    """One C call for every layer (motif.engine.fused) against the torch-orchestrated int8 layers, on rows of
    different lengths. Norms and GELU round differently (about 1e-7), which int16 activations can amplify
    to about 1e-5: the bound says so."""
    fused, layered = _in_precision(model, "int8"), _in_precision(model, "int8")
    assert fused._fused is not None
    fused_logits, layered_logits = _fused_and_layered_logits(fused, layered)
    assert _rel_err(fused_logits, layered_logits) < 1e-3
    assert torch.equal(fused_logits.argmax(-1), layered_logits.argmax(-1))
    torch.testing.assert_close(fused._k[1].float(), layered._k[1].float(), rtol=0.02, atol=0.02)


@needs_kernel
def test_fused_int8_step_matches_layer_by_layer_for_musicgen_melody() -> None:
    """MusicGen-Melody has no cross-attention: its conditioning is a prefix of the self-attention keys."""
    from transformers import MusicgenMelodyConfig, MusicgenMelodyDecoderConfig, MusicgenMelodyForConditionalGeneration

    parts = _tiny_musicgen_configs(vocab_size=200)
    parts["decoder"] = MusicgenMelodyDecoderConfig(**parts["decoder"])
    torch.manual_seed(4)
    melody = MusicgenMelodyForConditionalGeneration(MusicgenMelodyConfig(**parts)).eval()
    prefix, ok = _memory(6, seed=9)
    ok[:2] = False  # padding at the front, as a short text leaves it
    logits = {}
    for name in ("fused", "layered"):
        decoder = StaticCacheDecoder(copy.deepcopy(melody), True, 64, int8=True)
        assert decoder._fused is not None and not decoder.has_cross
        if name == "layered":
            decoder._fused = None
        decoder.reserve(1)
        decoder.prefill(0, _tokens(2), prefix, ok)
        logits[name] = torch.stack([decoder.step(_tokens(1, seed=t).T) for t in range(5)])
    assert _rel_err(logits["fused"], logits["layered"]) < 1e-3
    assert torch.equal(logits["fused"].argmax(-1), logits["layered"].argmax(-1))


@needs_kernel
def test_int8_from_bf16_weights_stays_close_to_fp32(model: Any) -> None:
    """The service loads the decoder in bf16 (half the memory) and quantises that."""
    states, mask = _memory()
    tokens = _tokens(16)
    reference = _fp32_logits(model, tokens, states, mask)
    decoder = StaticCacheDecoder(_bf16_copy(model), False, 64, int8=True)
    assert decoder.precision == "int8" and decoder.dtype == torch.float32 and decoder._fused is not None
    ours = _ours(decoder, tokens, states, mask)
    assert _rel_err(ours, reference) < 0.08
    assert (ours.argmax(-1) == reference.argmax(-1)).float().mean() > 0.85


@needs_kernel
def test_int8_from_bf16_runs_on_a_cpu_without_avx512_bf16(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """VNNI without BF16 (Cascade Lake): the codebook heads stay a float32 matmul, and the fused step,
    which stores keys/values as bf16 with integer rounding, needs no bf16 instruction."""
    monkeypatch.setattr(decoder_module, "cpu_has_bf16_dot", lambda: False)
    states, mask = _memory()
    tokens = _tokens(8)
    reference = _ours(_in_precision(model, "int8"), tokens, states, mask)
    decoder = StaticCacheDecoder(_bf16_copy(model), False, 64, int8=True)
    assert isinstance(decoder.heads, decoder_module.Dense) and decoder.heads.weight.dtype == torch.float32
    assert decoder._fused is not None
    ours = _ours(decoder, tokens, states, mask)
    assert _rel_err(ours, reference) < 0.02  # bf16-rounded weights and heads differ a little from the model's


@needs_kernel
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils) to read the kernels")
def test_only_the_bf16_kernels_use_avx512_bf16_instructions() -> None:
    """Everything but bf16_linear and dequantize_bf16 (whose callers check the CPU) must run on VNNI CPUs without
    AVX512-BF16, where those would be SIGILL."""
    library = Path(kernels.load_kernel()._name)  # type: ignore[union-attr]
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    using, function = set(), ""
    for line in listing.splitlines():
        if line.endswith(">:"):
            function = line.split("<", 1)[1].rstrip(">:")
        elif any(op in line for op in ("vdpbf16ps", "vcvtneps2bf16", "vcvtne2ps2bf16")):
            using.add(function.split(".")[0])
    assert using == {"bf16_linear", "dequantize_bf16"}


@needs_kernel
@pytest.mark.parametrize(("n_in", "n_out"), [(64, 192), (30, 40), (300, 64)])
def test_int8_kernel_matches_its_torch_reference_and_rows_never_interact(n_in: int, n_out: int) -> None:
    torch.manual_seed(n_in)
    linear = nn.Linear(n_in, n_out, bias=n_in == 30)
    fast, slow = cpuops.Int8Linear(linear), cpuops.Int8Linear(linear, use_kernel=False)
    for n_rows in (1, 2, 5, 8):
        x = torch.randn(n_rows, n_in) * 3 + 1
        got = fast(x)
        torch.testing.assert_close(got, slow(x), rtol=1e-5, atol=1e-5)  # float32 vs float64 scaling of exact sums
        assert torch.equal(fast(x[-1:]), got[-1:])
        assert _rel_err(got, linear(x).detach()) < 0.01
    torch.testing.assert_close(fast(torch.zeros(2, n_in)), linear(torch.zeros(2, n_in)).detach())


@pytest.mark.parametrize("dtype", WIDE_DTYPES)
@pytest.mark.parametrize(("n_in", "n_out"), [(64, 192), (30, 40), (300, 64), (8, 16), (512, 80)])
def test_int8_weights_unpack_exactly_as_q_times_scale_rounded_once(n_in: int, n_out: int, dtype: torch.dtype) -> None:
    """Full and partial tiles of channels, several groups, rows whose length is not a multiple of 32 inputs."""
    torch.manual_seed(n_out)
    linear = nn.Linear(n_in, n_out, bias=False)
    fast = cpuops.Int8Linear(linear)
    padded = nn.functional.pad(linear.weight.detach(), (0, fast.k_padded - n_in, 0, fast.n_padded - n_out))
    q, scales = cpuops.quantize_groups(padded, fast.group)
    expected = (q.view(fast.n_padded, -1, fast.group).float() * scales[:, :, None]).view(padded.shape).to(dtype)
    assert torch.equal(fast.dequantized(dtype), expected)


def _long_prefill(decoder: StaticCacheDecoder, tokens: torch.Tensor, states: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Prefill all but the last 4 tokens, step those: the logits, and layer 1's cached keys of the prompt."""
    n_prefill = tokens.shape[1] - 4
    logits = _ours(decoder, tokens, states, mask, n_prefill=n_prefill)
    return logits, decoder._k[1][0, :, :n_prefill].float()


@pytest.mark.parametrize("dtype", WIDE_DTYPES)
def test_a_long_int8_prefill_runs_as_matmuls_within_int8_error_of_fp32(
    model: Any, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    """A continuation prompt is hundreds of positions: its int8 prefill unpacks each weight once (bf16, or
    float32 without native bf16) and runs one matmul. Its logits and cache stay as close to float32 as the int8
    kernel's, and to the kernel's."""
    states, mask = _memory()
    tokens = _tokens(decoder_module.WIDE_PREFILL_ROWS + 20)
    reference = _long_prefill(StaticCacheDecoder(copy.deepcopy(model), False, 128), tokens, states, mask)
    unpacked: list[torch.dtype] = []
    monkeypatch.setattr(cpuops.Int8Linear, "dequantized", _counting(cpuops.Int8Linear.dequantized, unpacked))
    monkeypatch.setattr(decoder_module, "WIDE_F32_ROWS", decoder_module.WIDE_PREFILL_ROWS)  # a short cache here
    wide = StaticCacheDecoder(copy.deepcopy(model), False, 128, int8=True)
    assert wide.wide_prefill is not None
    wide.wide_prefill = dtype
    got = _long_prefill(wide, tokens, states, mask)
    assert unpacked == [dtype] * 6 * len(wide.layers)  # qkv, out, cross q and out, fc1, fc2: the prefill's only
    narrow = StaticCacheDecoder(copy.deepcopy(model), False, 128, int8=True)
    narrow.wide_prefill = None
    kernel = _long_prefill(narrow, tokens, states, mask)
    for ours in (got, kernel):
        assert _rel_err(ours[0], reference[0]) < 0.08
        assert (ours[0].argmax(-1) == reference[0].argmax(-1)).float().mean() > 0.85
    assert _rel_err(got[0], kernel[0]) < 0.03
    torch.testing.assert_close(got[1], reference[1], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("dtype", WIDE_DTYPES)
def test_a_short_int8_prefill_stays_on_the_int8_kernel(model: Any, dtype: torch.dtype) -> None:
    """Below WIDE_PREFILL_ROWS positions (bf16), or WIDE_F32_ROWS rows (float32), unpacking would cost more than
    it saves: the same logits as without."""
    states, mask = _memory()
    n_prefill = decoder_module.WIDE_PREFILL_ROWS - 1 if dtype == torch.bfloat16 else decoder_module.WIDE_PREFILL_ROWS
    assert n_prefill < decoder_module.WIDE_F32_ROWS
    tokens = _tokens(n_prefill + 4)
    wide, narrow = (StaticCacheDecoder(copy.deepcopy(model), False, 128, int8=True) for _ in range(2))
    narrow.wide_prefill = None
    assert wide.wide_prefill is not None
    wide.wide_prefill = dtype
    assert torch.equal(_long_prefill(wide, tokens, states, mask)[0], _long_prefill(narrow, tokens, states, mask)[0])


def _counting(method: Any, calls: list[Any]) -> Any:
    def counted(self: Any, dtype: torch.dtype) -> torch.Tensor:
        calls.append(dtype)
        return method(self, dtype)

    return counted


def test_int8_weights_get_one_scale_per_channel_and_group() -> None:
    weight = torch.ones(16, 2 * cpuops.GROUP) * 0.01
    weight[:, 0] = 1.0  # an outlier in the first group only
    q, scales = cpuops.quantize_groups(weight)
    assert scales.shape == (16, 2)
    torch.testing.assert_close(scales[:, 0], torch.full((16,), 1.0 / 127))
    torch.testing.assert_close(scales[:, 1], torch.full((16,), 0.01 / 127))
    assert bool((q[:, cpuops.GROUP :] == 127).all())  # the second group keeps full resolution


@needs_kernel
def test_attention_kernel_matches_sdpa_on_the_same_bf16_cache() -> None:
    generator = torch.Generator().manual_seed(3)
    n_rows, n_heads, capacity, head_dim, span = 3, 4, 40, 32, 29
    cache_k = torch.randn(n_rows + 1, n_heads, capacity, head_dim, generator=generator).bfloat16()
    cache_v = torch.randn(n_rows + 1, n_heads, capacity, head_dim, generator=generator).bfloat16()
    q = torch.randn(n_rows, n_heads, head_dim, generator=generator)
    ok = torch.zeros(n_rows + 1, capacity, dtype=torch.bool)
    ok[0, :span] = True
    ok[1, :10] = True  # a shorter row
    ok[2, 5:span] = True  # a masked prefix (MusicGen-Melody's padding)
    got = cpuops.decode_attention(kernels.load_kernel(), q, cache_k, cache_v, ok, span, 0.125)  # type: ignore[arg-type]
    bias = torch.zeros(n_rows, 1, 1, span).masked_fill(~ok[:n_rows, None, None, :span], float("-inf"))
    expected = F.scaled_dot_product_attention(
        q[:, :, None], cache_k[:n_rows, :, :span].float(), cache_v[:n_rows, :, :span].float(), attn_mask=bias,
        scale=0.125,
    )[:, :, 0]  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", pytest.param("int8", marks=needs_kernel)])
def test_rows_prefilled_together_match_rows_prefilled_one_by_one(model: Any, precision: str) -> None:
    """CFG's two rows are prefilled in one pass (conditional and unconditional memory); each row's logits and
    cache are those of its own prefill, up to matmul rounding."""
    states, mask = _memory()
    tokens = _tokens(decoder_module.WIDE_PREFILL_ROWS + 8)  # long enough for the int8 path's bf16 matmuls
    conditions = [(states, mask), (torch.zeros_like(states), mask)]
    together, apart = (StaticCacheDecoder(copy.deepcopy(model), False, 128, int8=precision == "int8") for _ in range(2))
    together.reserve(2)
    apart.reserve(2)
    both = together.prefill_rows(0, tokens, conditions)
    one_by_one = torch.stack([apart.prefill(row, tokens, *conditions[row]) for row in range(2)])
    assert _rel_err(both, one_by_one) < 1e-3
    assert torch.equal(both.argmax(-1), one_by_one.argmax(-1))
    assert together.lengths[:2] == apart.lengths[:2] == [tokens.shape[1]] * 2
    torch.testing.assert_close(together._k[1][:2].float(), apart._k[1][:2].float(), rtol=0.02, atol=0.02)
    step = torch.stack([_tokens(1, seed=9)[:, 0]] * 2)
    assert _rel_err(together.step(step), apart.step(step)) < 1e-3
