"""MusicGen's decoder stack run with a static, slot-addressed KV cache and a lean one-position step.

transformers' own `generate` grows a DynamicCache by concatenation (an O(length) copy per layer per step)
and cannot give each batch member its own position, so jobs of different lengths cannot share a batch.
This module runs the *same* weights (taken from the loaded transformers model) with:
- one key/value cache per layer, shaped (slots, heads, capacity, head_dim), grown in chunks as slots get
  longer (so memory follows what is generated, not the 30 s window); in reduced precision on CPU it is
  bf16, read by motif.engine.cpuops' one-query attention (torch's SDPA is slow for that shape);
- per-slot lengths, so every slot has its own position and rows can join or leave between steps;
- fused q/k/v projections and one matmul for the codebook heads;
- a step path of plain functional calls on (rows, hidden) tensors, since at batch 1-8 a step is a few
  hundred small ops and their dispatch overhead is a large part of its time;
- int8 projections (`int8=True`, see motif.engine.cpuops): half the bytes bf16 reads per step, at bf16's
  error; their step runs every layer in one C call (motif.engine.fused). A prefill is hundreds of rows, where
  streaming int8 is compute-bound: there each weight is unpacked for one matmul, bf16 where the CPU has it
  (AMX or AVX512-BF16), else float32.
Slots are kept compact (active rows are 0..n-1) so each step reads cache views, never gathers.
`tests/engine/test_decoder.py` checks its logits against transformers' forward on the same weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from motif.engine.cpuops import MAX_HEAD_DIM, Bf16Linear, Int8Linear, decode_attention
from motif.engine.fused import FusedLayers
from motif.engine.kernels import cpu_has_bf16_dot, has_bf16_linear, has_dequantize, load_kernel
from motif.engine.layers import (
    Dense,
    Layer,
    Norm,
    Projection,
    build_layer,
    linear_weight,
    projection_bytes,
    projection_macs,
    share_fused,
    to_int8,
)

log = logging.getLogger(__name__)

CACHE_CHUNK = 256  # positions the KV cache grows by
Condition = tuple[torch.Tensor | None, torch.Tensor | None]  # a row's (encoder_states, encoder_mask)
WIDE_PREFILL_ROWS = 64  # int8 prefills at least this long run their projections as bf16 matmuls
# In float32 (no native bf16) the int8 kernel keeps up with the matmul longer: on an AVX2-only AMD EPYC (2 cores)
# a 1024 x 4096 projection of 384 / 512 / 768 / 1002 rows took 28 / 38 / 50 / 68 ms in the kernel against
# 32 / 39 / 44 / 62 ms unpacked to float32 and multiplied. So float32 only from this many rows (positions x rows).
WIDE_F32_ROWS = 640


class StaticCacheDecoder:
    """Batched incremental decoding over slots. Not thread-safe: one decode loop owns it.

    Shapes: tokens are (rows, codebooks[, time]); logits come back (rows, codebooks, vocab) float32.
    A "row" is one slot; callers pair a conditional and an unconditional row for CFG.
    `cache_dtype` (default: see `_default_cache_dtype`) is what keys and values are stored in. `int8`
    quantises the projections (`quantize_int8`) from the model's float32 or bf16 weights.
    """

    def __init__(
        self, model: Any, is_melody: bool, max_len: int, cache_dtype: torch.dtype | None = None, int8: bool = False
    ) -> None:
        causal_lm = model.decoder
        decoder = causal_lm.model.decoder
        self.n_codebooks = decoder.num_codebooks
        self.has_cross = not is_melody
        first = decoder.layers[0].self_attn
        self.n_heads, self.head_dim, self.scaling = first.num_heads, first.head_dim, first.scaling
        self.hidden_size = self.n_heads * self.head_dim
        self.vocab_in = decoder.embed_tokens[0].weight.shape[0]  # codebook size + pad/special rows
        self.embed_weight = linear_weight(list(decoder.embed_tokens))  # (K * vocab_in, hidden): one lookup
        share_fused(list(decoder.embed_tokens), self.embed_weight)
        self._embed_offsets = torch.arange(self.n_codebooks, device=self.embed_weight.device) * self.vocab_in
        positions = decoder.embed_positions
        if positions.weights.shape[0] < max_len:
            positions.make_weights(max_len, positions.embedding_dim)
        self.layers = [build_layer(layer, self.has_cross) for layer in decoder.layers]
        self.gelu_exact = decoder.config.activation_function == "gelu"
        self._fused: FusedLayers | None = None
        self.wide_prefill: torch.dtype | None = None  # long int8 prefills as matmuls of this dtype (quantize_int8)
        self._source = causal_lm  # its projection weights are released when we repack them (bf16 kernel, int8)
        self.final_ln = Norm.of(decoder.layer_norm)
        heads = linear_weight(list(causal_lm.lm_heads))  # (K * vocab, hidden)
        share_fused(list(causal_lm.lm_heads), heads)
        self.vocab = causal_lm.lm_heads[0].weight.shape[0]
        self.heads: Projection = Dense(heads)
        self.dtype = heads.dtype  # activations' dtype between projections
        self.device = heads.device
        self.positions = positions.weights.to(self.device, self.dtype)
        self._kernel = load_kernel() if self.device.type == "cpu" and self.head_dim <= MAX_HEAD_DIM else None
        self._auto_cache = cache_dtype is None
        self.cache_dtype = cache_dtype or self._default_cache_dtype(self.dtype)
        self.precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "?")
        self.max_len = max_len
        self.n_slots = 0
        self.capacity = 0  # positions allocated per slot (grows by CACHE_CHUNK up to max_len)
        self.lengths: list[int] = []
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self._key_ok = torch.zeros(0, 0, dtype=torch.bool, device=self.device)
        self._cross_k: list[torch.Tensor] = []
        self._cross_v: list[torch.Tensor] = []
        self._cross_ok = torch.zeros(0, 0, dtype=torch.bool, device=self.device)
        if int8:
            self.quantize_int8()
        elif has_bf16_linear(self._kernel) and self.dtype == torch.bfloat16 and cpu_has_bf16_dot():
            self._swap_projections(self._bf16, heads=True)

    def _default_cache_dtype(self, precision_dtype: torch.dtype) -> torch.dtype:
        """fp32 keeps the exact float32 reference path; reduced precision on CPU uses the bf16 attention kernel."""
        if self.device.type != "cpu":
            return precision_dtype
        if precision_dtype == torch.float32 or self._kernel is None or self.head_dim % 16:
            return torch.float32
        return torch.bfloat16

    @property
    def _kernel_attention(self) -> bool:
        return self._kernel is not None and self.cache_dtype == torch.bfloat16 and self.head_dim % 16 == 0

    @property
    def _attn_dtype(self) -> torch.dtype:
        """Prefill attention (and the SDPA fallback) run in float32 on CPU."""
        return torch.float32 if self.device.type == "cpu" else self.cache_dtype

    def _set_cache_dtype(self, dtype: torch.dtype) -> None:
        if dtype == self.cache_dtype:
            return
        self.cache_dtype = dtype
        self._k = [k.to(dtype) for k in self._k]
        self._v = [v.to(dtype) for v in self._v]
        self._cross_k = [k.to(dtype) for k in self._cross_k]
        self._cross_v = [v.to(dtype) for v in self._cross_v]

    # ---------------------------------------------------------------- slot management

    @torch.inference_mode()
    def reserve(self, n_slots: int) -> None:
        """Grow the cache to at least n_slots rows (existing contents kept)."""
        if n_slots <= self.n_slots:
            return
        self._resize(n_slots, max(self.capacity, 1))
        self._grow_cross(n_slots, self._cross_ok.shape[1])
        self.lengths += [0] * (n_slots - self.n_slots)
        self.n_slots = n_slots

    def _ensure_capacity(self, n_positions: int) -> None:
        if n_positions > self.max_len:
            raise ValueError(f"{n_positions} positions exceed the cache's max_len ({self.max_len})")
        if n_positions > self.capacity:
            self._resize(self.n_slots, min(self.max_len, -(-n_positions // CACHE_CHUNK) * CACHE_CHUNK))

    def _resize(self, n_slots: int, capacity: int) -> None:
        old_slots, old_cap = self._key_ok.shape
        shape = (n_slots, self.n_heads, capacity, self.head_dim)

        def grow(cache: list[torch.Tensor]) -> None:
            """In place, layer by layer: at most one layer's old tensor is held beside the new ones."""
            for i in range(len(self.layers)):
                tensor = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
                if i < len(cache):
                    tensor[:old_slots, :, :old_cap] = cache[i]
                    cache[i] = tensor
                else:
                    cache.append(tensor)

        grow(self._k)
        grow(self._v)
        key_ok = torch.zeros(n_slots, capacity, dtype=torch.bool, device=self.device)
        key_ok[:old_slots, :old_cap] = self._key_ok
        self._key_ok = key_ok
        self.capacity = capacity

    def _grow_cross(self, n_slots: int, n_keys: int) -> None:
        if not self.has_cross:
            return
        old_slots, old_keys = self._cross_ok.shape
        if n_slots <= old_slots and n_keys <= old_keys and self._cross_k:
            return
        n_slots, n_keys = max(n_slots, old_slots), max(n_keys, old_keys, 1)
        shape = (n_slots, self.n_heads, n_keys, self.head_dim)
        new_k, new_v = [], []
        for i in range(len(self.layers)):
            k = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
            v = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
            if self._cross_k:
                k[:old_slots, :, :old_keys] = self._cross_k[i]
                v[:old_slots, :, :old_keys] = self._cross_v[i]
            new_k.append(k)
            new_v.append(v)
        self._cross_k, self._cross_v = new_k, new_v
        ok = torch.zeros(n_slots, n_keys, dtype=torch.bool, device=self.device)
        ok[:old_slots, :old_keys] = self._cross_ok
        self._cross_ok = ok

    @torch.inference_mode()
    def move_slot(self, src: int, dst: int) -> None:
        """Copy slot src into dst (used to keep active slots compact when a row leaves)."""
        if src == dst:
            return
        span = self.lengths[src]
        for i in range(len(self.layers)):
            self._k[i][dst, :, :span] = self._k[i][src, :, :span]
            self._v[i][dst, :, :span] = self._v[i][src, :, :span]
            if self.has_cross:
                self._cross_k[i][dst] = self._cross_k[i][src]
                self._cross_v[i][dst] = self._cross_v[i][src]
        self._key_ok[dst] = self._key_ok[src]
        if self.has_cross:
            self._cross_ok[dst] = self._cross_ok[src]
        self.lengths[dst] = self.lengths[src]

    # ---------------------------------------------------------------- forward passes

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(rows, codebooks, time) token ids -> (rows, time, hidden) summed codebook embeddings."""
        ids = tokens + self._embed_offsets[None, :, None]
        return F.embedding(ids, self.embed_weight).sum(dim=1)

    @torch.inference_mode()
    def prefill(
        self,
        slot: int,
        tokens: torch.Tensor,
        encoder_states: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Start slot afresh: conditioning plus tokens (codebooks, time) -> logits of the last position.

        encoder_states (keys, hidden) with encoder_mask (keys,) bool: cross-attention memory for
        MusicGen; for MusicGen-Melody they are the prefix the decoder reads before its tokens.
        Returns (codebooks, vocab) float32.
        """
        return self.prefill_rows(slot, tokens, [(encoder_states, encoder_mask)])[0]

    @torch.inference_mode()
    def prefill_rows(self, slot: int, tokens: torch.Tensor, conditions: list[Condition]) -> torch.Tensor:
        """Start slots slot..slot + n - 1 afresh on the same tokens, each with its own conditioning (CFG's
        conditional and unconditional rows), in one pass: the weights are read, and for a long int8 prefill
        unpacked, once for all n. conditions: n (encoder_states, encoder_mask) as in `prefill`, whose prefixes
        (MusicGen-Melody) have one length. Returns (n, codebooks, vocab) float32.
        """
        hidden, key_ok = self._prefill_inputs(tokens, conditions)  # (rows, time, hidden), (rows, time)
        n_rows, length = key_ok.shape
        if length >= self.max_len:
            raise ValueError(f"prefill of {length} positions exceeds the cache ({self.max_len})")
        rows = slice(slot, slot + n_rows)
        self._ensure_capacity(length + 1)
        self._key_ok[rows] = False
        self._key_ok[rows, :length] = key_ok
        if self.has_cross:
            for row, (states, mask) in enumerate(conditions):
                self._set_cross(slot + row, states, mask)
        hidden = hidden + self.positions[:length]
        causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        bias = _additive_mask(causal[None] & key_ok[:, None, :], self._attn_dtype)[:, None]  # (rows, 1, time, time)
        cross_bias = self._cross_bias(rows)
        for i, layer in enumerate(self.layers):
            hidden = self._prefill_layer(i, layer, hidden, bias, cross_bias, rows)
        for row in range(slot, slot + n_rows):
            self.lengths[row] = length
        return self._logits(hidden[:, -1])

    def _prefill_inputs(self, tokens: torch.Tensor, conditions: list[Condition]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded tokens (and MusicGen-Melody's prefixes) per row (rows, time, hidden); keys to attend."""
        embedded = self.embed_tokens(tokens[None].to(self.device))[0]  # (time, hidden)
        ones = torch.ones(embedded.shape[0], dtype=torch.bool, device=self.device)
        rows, oks = [], []
        for states, mask in conditions:
            if states is not None and not self.has_cross:
                rows.append(torch.cat([states.to(self.device, embedded.dtype), embedded]))
                oks.append(torch.cat([mask.to(self.device), ones]))  # type: ignore[union-attr]
            else:
                rows.append(embedded)
                oks.append(ones)
        if len({row.shape[0] for row in rows}) != 1:
            raise ValueError("rows prefilled together need conditioning prefixes of one length")
        return torch.stack(rows), torch.stack(oks)

    def _prefill_layer(
        self, i: int, layer: Layer, hidden: torch.Tensor, bias: torch.Tensor, cross_bias: torch.Tensor | None,
        rows: slice,
    ) -> torch.Tensor:  # fmt: skip
        """hidden (rows, time, hidden) -> the same, filling the rows' key/value cache."""
        n_rows, time = hidden.shape[:2]
        qkv = self._wide(layer.qkv, layer.ln1(hidden)).view(n_rows, time, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).to(self._attn_dtype).unbind(0)  # (rows, heads, time, head_dim) each
        self._k[i][rows, :, :time] = k
        self._v[i][rows, :, :time] = v
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scaling)
        hidden = hidden + self._wide(layer.out, attn.transpose(1, 2).reshape(n_rows, time, -1).to(hidden.dtype))
        if self.has_cross:
            hidden = self._cross(i, layer, hidden, cross_bias, rows, wide=True)
        return hidden + self._wide(layer.fc2, layer.act(self._wide(layer.fc1, layer.ln2(hidden))))

    def _wide(self, proj: Projection, x: torch.Tensor) -> torch.Tensor:
        """proj(x) for a prefill's (rows, time, in) -> (rows, time, out) float32. An int8 projection over at least
        WIDE_PREFILL_ROWS positions, where `wide_prefill`, is unpacked to that dtype and run as one matmul
        (bf16: AMX or AVX512-BF16, several times faster than the int8 kernel on that many rows; float32 from
        WIDE_F32_ROWS rows, about 10% faster), within its error. Only prefills call this, and the test is the
        prefill's own size (its positions and CFG rows), never a batch's: what a task gets never depends on what
        else runs."""
        dtype = self.wide_prefill
        if dtype is None or not isinstance(proj, Int8Linear) or x.shape[-2] < WIDE_PREFILL_ROWS:
            return proj(x)
        if dtype == torch.float32 and x.shape[:-1].numel() < WIDE_F32_ROWS:
            return proj(x)
        rows = x.reshape(-1, x.shape[-1])
        weight = proj.dequantized(dtype)[: proj.out_features, : proj.in_features]
        out = F.linear(rows.to(dtype), weight).float()
        out = out if proj.bias is None else out + proj.bias
        return out.reshape(*x.shape[:-1], proj.out_features)

    def _set_cross(self, slot: int, states: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        if states is None or mask is None:
            raise ValueError("MusicGen needs encoder states for cross-attention")
        n_keys = states.shape[0]
        states = states * mask[:, None].to(states.dtype)
        if not bool(mask.any()):  # unconditional: zero memory, whose attention output is exactly 0
            mask = torch.ones_like(mask)
        self._grow_cross(self.n_slots, n_keys)
        self._cross_ok[slot] = False
        self._cross_ok[slot, :n_keys] = mask.to(self.device)
        states = states.to(device=self.device, dtype=self.dtype)
        for i, layer in enumerate(self.layers):
            kv = layer.cross_kv(states).view(n_keys, 2, self.n_heads, self.head_dim)  # type: ignore[misc]
            self._cross_k[i][slot, :, :n_keys] = kv[:, 0].transpose(0, 1)
            self._cross_v[i][slot, :, :n_keys] = kv[:, 1].transpose(0, 1)
            self._cross_k[i][slot, :, n_keys:] = 0
            self._cross_v[i][slot, :, n_keys:] = 0

    def _cross_bias(self, rows: slice) -> torch.Tensor | None:
        """(rows, 1, 1, keys) additive mask for cross-attention, or None for MusicGen-Melody."""
        if not self.has_cross:
            return None
        return _additive_mask(self._cross_ok[rows], self._attn_dtype)[:, None, None, :]

    def _cross(
        self, i: int, layer: Layer, hidden: torch.Tensor, bias: torch.Tensor | None, rows: slice, wide: bool = False
    ) -> torch.Tensor:
        """Cross-attention: hidden (rows, time, hidden) -> (rows, time, hidden); `wide`: a prefill's rows."""
        n_rows, time, _ = hidden.shape
        project = self._wide if wide else _apply
        q = project(layer.cross_q, layer.ln_cross(hidden)).view(n_rows, time, self.n_heads, self.head_dim)  # type: ignore[arg-type, misc]
        if time == 1 and self._kernel_attention:
            attn = decode_attention(self._kernel, q[:, 0].float(), self._cross_k[i], self._cross_v[i],  # type: ignore[arg-type]
                                    self._cross_ok, self._cross_ok.shape[1], self.scaling)  # fmt: skip
            return hidden + layer.cross_out(attn.view(n_rows, time, -1).to(hidden.dtype))  # type: ignore[misc]
        dtype = self._attn_dtype
        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2).to(dtype), self._cross_k[i][rows].to(dtype), self._cross_v[i][rows].to(dtype),
            attn_mask=bias, scale=self.scaling,
        )  # (rows, heads, time, head_dim)
        attn = attn.transpose(1, 2).reshape(n_rows, time, -1).to(hidden.dtype)
        return hidden + project(layer.cross_out, attn)  # type: ignore[arg-type]

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One new position for slots 0..rows-1: tokens (rows, codebooks) -> logits (rows, codebooks, vocab)."""
        n_rows = tokens.shape[0]
        lengths = self.lengths[:n_rows]
        span = max(lengths) + 1
        self._ensure_capacity(span)
        positions = torch.tensor(lengths, device=self.device)
        hidden = self.embed_tokens(tokens[:, :, None].to(self.device))[:, 0] + self.positions[positions]
        same = min(lengths) == span - 1  # every row at one position: a plain slice write, no scatter
        where: Any = span - 1 if same else (torch.arange(n_rows, device=self.device), slice(None), positions)
        self._key_ok[where[0] if not same else slice(0, n_rows), positions] = True
        if self._fused is not None:
            hidden = self._fused.step(self, hidden, positions, span)
        else:
            hidden = self._step_layers(hidden, n_rows, span, where)
        for row in range(n_rows):
            self.lengths[row] += 1
        return self._logits(hidden)

    def _step_layers(self, hidden: torch.Tensor, n_rows: int, span: int, where: Any) -> torch.Tensor:
        bias = cross_bias = None
        if not self._kernel_attention:
            bias = _additive_mask(self._key_ok[:n_rows, :span], self._attn_dtype)[:, None, None, :]
            cross_bias = self._cross_bias(slice(0, n_rows))
        for i, layer in enumerate(self.layers):
            hidden = self._step_layer(i, layer, hidden, bias, cross_bias, n_rows, span, where)
        return hidden

    def _step_layer(
        self, i: int, layer: Layer, hidden: torch.Tensor, bias: torch.Tensor | None,
        cross_bias: torch.Tensor | None, n_rows: int, span: int, where: Any,
    ) -> torch.Tensor:  # fmt: skip
        """hidden (rows, hidden) -> (rows, hidden) for one new position per row."""
        qkv = layer.qkv(layer.ln1(hidden)).view(n_rows, 3, self.n_heads, self.head_dim)
        cache_k, cache_v = self._k[i], self._v[i]
        if isinstance(where, int):
            cache_k[:n_rows, :, where] = qkv[:, 1]
            cache_v[:n_rows, :, where] = qkv[:, 2]
        else:
            cache_k[where] = qkv[:, 1].to(self.cache_dtype)
            cache_v[where] = qkv[:, 2].to(self.cache_dtype)
        if self._kernel_attention:
            attn = decode_attention(self._kernel, qkv[:, 0].float(), cache_k, cache_v, self._key_ok, span,  # type: ignore[arg-type]
                                    self.scaling)  # fmt: skip
        else:
            q = qkv[:, 0, :, None].to(self.cache_dtype)  # (rows, heads, 1, head_dim)
            attn = F.scaled_dot_product_attention(
                q, cache_k[:n_rows, :, :span], cache_v[:n_rows, :, :span], attn_mask=bias, scale=self.scaling
            )
        hidden = hidden + layer.out(attn.reshape(n_rows, -1).to(hidden.dtype))
        if self.has_cross:
            hidden = self._cross(i, layer, hidden[:, None], cross_bias, slice(0, n_rows))[:, 0]
        return hidden + layer.fc2(layer.act(layer.fc1(layer.ln2(hidden))))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(rows, hidden) -> (rows, codebooks, vocab) float32 through the K codebook heads at once."""
        logits = self.heads(self.final_ln(hidden))
        return logits.view(hidden.shape[0], self.n_codebooks, self.vocab).float()

    # ---------------------------------------------------------------- precision

    def quantize_int8(self, heads: bool = False) -> None:
        """Int8 projections (weights per channel and group of inputs; see motif.engine.cpuops).

        The residual stream, norms and attention math run in float32 (the KV cache becomes bf16 where the
        attention kernel runs). The codebook heads, which feed the logits directly, become bf16 (float32
        out) where the bf16 kernel runs, int8 if `heads`. The model's float copies are released.
        """
        if self.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError("quantize_int8 expects the decoder in float32 or bf16")
        if any(not isinstance(layer.qkv, Dense) for layer in self.layers):
            raise ValueError("the projections are already repacked: build the decoder with int8=True")
        if self.device.type != "cpu":
            raise ValueError("the int8 kernels are CPU kernels")
        if self._kernel is None:  # the torch fallback is exact but far slower than float32: not worth it
            log.warning("GENERATION_PRECISION=int8 needs the AVX-512 or AVX2 kernel and gcc; staying in %s",
                        self.precision)
            return
        self._swap_projections(to_int8, heads=False)
        if heads:
            self._swap_heads(to_int8)
        elif has_bf16_linear(self._kernel) and cpu_has_bf16_dot():
            self._swap_heads(self._bf16)
        self._residual_in_float32()
        if self._auto_cache:
            self._set_cache_dtype(self._default_cache_dtype(torch.bfloat16))
        self.precision = "int8"
        self._fused = FusedLayers(self) if FusedLayers.supports(self) else None
        if self._kernel is not None:  # bf16 where the CPU has it natively (torch emulates it elsewhere: slower)
            native = has_dequantize(self._kernel) and cpu_has_bf16_dot()
            self.wide_prefill = torch.bfloat16 if native else torch.float32

    def _residual_in_float32(self) -> None:
        """Embeddings, positions and norms in float32: the int8 path's residual stream (from a bf16 model)."""
        if self.dtype == torch.float32:
            return
        self.embed_weight = self.embed_weight.float()
        share_fused(list(self._source.model.decoder.embed_tokens), self.embed_weight)
        self.positions = self.positions.float()
        for layer in self.layers:
            for norm in (layer.ln1, layer.ln2, layer.ln_cross):
                if norm is not None:
                    norm.weight, norm.bias = norm.weight.float(), norm.bias.float()
        self.final_ln.weight, self.final_ln.bias = self.final_ln.weight.float(), self.final_ln.bias.float()
        if isinstance(self.heads, Dense):  # no bf16 kernel for them on this CPU: a float32 matmul
            self.heads.weight = self.heads.weight.float()
        self.dtype = torch.float32

    def _bf16(self, dense: Dense) -> Bf16Linear:
        is_heads = dense is self.heads  # logits leave in float32, as the float path's .float() would give
        return Bf16Linear(dense.weight, self._kernel, torch.float32 if is_heads else None)  # type: ignore[arg-type]

    def _swap_projections(self, make: Callable[[Dense], Projection], heads: bool) -> None:
        """Replace every plain layer projection (and the heads if asked); release the model's float copies."""
        for layer, source in zip(self.layers, self._source.model.decoder.layers, strict=True):
            for name in ("qkv", "out", "fc1", "fc2", "cross_q", "cross_kv", "cross_out"):
                proj = getattr(layer, name)
                if isinstance(proj, Dense):
                    setattr(layer, name, make(proj))
                    proj.weight = torch.empty(0)
            for module in source.modules():  # layer by layer, so at most one layer is held twice
                if isinstance(module, nn.Linear):
                    module.weight = nn.Parameter(torch.empty(0, dtype=module.weight.dtype), requires_grad=False)
        if heads:
            self._swap_heads(make)

    def _swap_heads(self, make: Callable[[Dense], Projection]) -> None:
        if not isinstance(self.heads, Dense):
            return
        old = self.heads
        self.heads = make(old)
        old.weight = torch.empty(0)
        for head in self._source.lm_heads:
            head.weight = nn.Parameter(torch.empty(0, dtype=head.weight.dtype), requires_grad=False)

    def _step_projections(self) -> list[Any]:
        """Every projection one decode step runs (cross-attention keys/values are per window, not per step)."""
        per_layer = [(l.qkv, l.out, l.fc1, l.fc2, l.cross_q, l.cross_out) for l in self.layers]  # noqa: E741
        return [proj for projs in per_layer for proj in projs] + [self.heads]

    def weight_bytes_per_step(self) -> int:
        """Bytes of projection weights one decode step reads (cross-attention keys/values excluded)."""
        return sum(projection_bytes(proj) for proj in self._step_projections())

    def macs_per_row(self) -> int:
        """Multiply-accumulates of one row's projections per step (attention excluded)."""
        return sum(projection_macs(proj) for proj in self._step_projections())


def _apply(proj: Projection, x: torch.Tensor) -> torch.Tensor:
    return proj(x)


def _additive_mask(ok: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool keep-mask -> 0 where kept, -inf where masked (SDPA's additive form)."""
    return torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill_(~ok, float("-inf"))
