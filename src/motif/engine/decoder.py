"""MusicGen's decoder stack run with a static, slot-addressed KV cache.

transformers' own `generate` grows a DynamicCache by concatenation (an O(length) copy per layer per step)
and cannot give each batch member its own position, so jobs of different lengths cannot share a batch.
This module runs the *same* modules and weights (taken from the loaded transformers model) with:
- one preallocated key/value cache per layer, shaped (slots, heads, max_len, head_dim);
- per-slot lengths, so every slot has its own position and rows can join or leave between steps;
- fused q/k/v projections and one batched matmul for the codebook heads.
Slots are kept compact (active rows are 0..n-1) so each step reads cache views, never gathers.
`tests/engine/test_decoder.py` checks its logits against transformers' forward on the same weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class _Layer(nn.Module):
    """One decoder layer's weights, fused where that saves a matmul."""

    def __init__(self, layer: Any, has_cross: bool) -> None:
        super().__init__()
        attn = layer.self_attn
        self.n_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.ln1 = layer.self_attn_layer_norm
        self.qkv = _fused_linear([attn.q_proj, attn.k_proj, attn.v_proj])
        self.out = attn.out_proj
        self.has_cross = has_cross
        if has_cross:
            cross = layer.encoder_attn
            self.ln_cross = layer.encoder_attn_layer_norm
            self.cross_q = cross.q_proj
            self.cross_kv = _fused_linear([cross.k_proj, cross.v_proj])
            self.cross_out = cross.out_proj
        self.ln2 = layer.final_layer_norm
        self.fc1 = layer.fc1
        self.fc2 = layer.fc2
        self.act = layer.activation_fn


def _fused_linear(parts: list[nn.Linear]) -> nn.Linear:
    weight = torch.cat([p.weight for p in parts], dim=0)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=parts[0].bias is not None)
    fused = fused.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight)
        if parts[0].bias is not None:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))
    return fused.requires_grad_(False)


class StaticCacheDecoder:
    """Batched incremental decoding over slots. Not thread-safe: one decode loop owns it.

    Shapes: tokens are (rows, codebooks[, time]); logits come back (rows, codebooks, vocab) float32.
    A "row" is one slot; callers pair a conditional and an unconditional row for CFG.
    """

    def __init__(self, model: Any, is_melody: bool, max_len: int) -> None:
        causal_lm = model.decoder
        decoder = causal_lm.model.decoder
        self.n_codebooks = decoder.num_codebooks
        self.has_cross = not is_melody
        self.embed = decoder.embed_tokens
        positions = decoder.embed_positions
        if positions.weights.shape[0] < max_len:
            positions.make_weights(max_len, positions.embedding_dim)
        self.positions = positions.weights
        self.layers = [_Layer(layer, self.has_cross) for layer in decoder.layers]
        self.final_ln = decoder.layer_norm
        self.heads_weight = torch.stack([h.weight for h in causal_lm.lm_heads]).detach()  # (K, V, D)
        first = self.layers[0]
        self.n_heads, self.head_dim = first.n_heads, first.head_dim
        self.dtype = self.heads_weight.dtype
        self.device = self.heads_weight.device
        self.max_len = max_len
        self.n_slots = 0
        self.lengths: list[int] = []
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self._key_ok = torch.zeros(0, max_len, dtype=torch.bool, device=self.device)
        self._cross_k: list[torch.Tensor] = []
        self._cross_v: list[torch.Tensor] = []
        self._cross_ok = torch.zeros(0, 0, dtype=torch.bool, device=self.device)

    # ---------------------------------------------------------------- slot management

    def reserve(self, n_slots: int) -> None:
        """Grow the cache to at least n_slots rows (existing contents kept)."""
        if n_slots <= self.n_slots:
            return
        shape = (n_slots, self.n_heads, self.max_len, self.head_dim)
        grown_k, grown_v = [], []
        for i in range(len(self.layers)):
            k = torch.zeros(shape, dtype=self.dtype, device=self.device)
            v = torch.zeros(shape, dtype=self.dtype, device=self.device)
            if self.n_slots:
                k[: self.n_slots] = self._k[i]
                v[: self.n_slots] = self._v[i]
            grown_k.append(k)
            grown_v.append(v)
        self._k, self._v = grown_k, grown_v
        key_ok = torch.zeros(n_slots, self.max_len, dtype=torch.bool, device=self.device)
        key_ok[: self.n_slots] = self._key_ok
        self._key_ok = key_ok
        self._grow_cross(n_slots, self._cross_ok.shape[1])
        self.lengths += [0] * (n_slots - self.n_slots)
        self.n_slots = n_slots

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
            k = torch.zeros(shape, dtype=self.dtype, device=self.device)
            v = torch.zeros(shape, dtype=self.dtype, device=self.device)
            if self._cross_k:
                k[:old_slots, :, :old_keys] = self._cross_k[i]
                v[:old_slots, :, :old_keys] = self._cross_v[i]
            new_k.append(k)
            new_v.append(v)
        self._cross_k, self._cross_v = new_k, new_v
        ok = torch.zeros(n_slots, n_keys, dtype=torch.bool, device=self.device)
        ok[:old_slots, :old_keys] = self._cross_ok
        self._cross_ok = ok

    def move_slot(self, src: int, dst: int) -> None:
        """Copy slot src into dst (used to keep active slots compact when a row leaves)."""
        if src == dst:
            return
        for i in range(len(self.layers)):
            self._k[i][dst] = self._k[i][src]
            self._v[i][dst] = self._v[i][src]
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
        return sum(self.embed[k](tokens[:, k]) for k in range(self.n_codebooks))  # type: ignore[return-value]

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
        hidden = self.embed_tokens(tokens[None].to(self.device))
        key_ok = torch.ones(hidden.shape[1], dtype=torch.bool, device=self.device)
        if encoder_states is not None and not self.has_cross:
            hidden = torch.cat([encoder_states[None].to(hidden.dtype), hidden], dim=1)
            key_ok = torch.cat([encoder_mask.to(self.device), key_ok])  # type: ignore[union-attr]
        length = hidden.shape[1]
        if length >= self.max_len:
            raise ValueError(f"prefill of {length} positions exceeds the cache ({self.max_len})")
        self._key_ok[slot] = False
        self._key_ok[slot, :length] = key_ok
        if self.has_cross:
            self._set_cross(slot, encoder_states, encoder_mask)
        hidden = hidden + self.positions[:length].to(hidden.dtype)
        causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        mask = (causal & key_ok[None, :])[None, None]
        for i, layer in enumerate(self.layers):
            hidden = self._layer(i, layer, hidden, mask, slots=slice(slot, slot + 1), start=0)
        self.lengths[slot] = length
        return self._logits(hidden[:, -1])[0]

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
        states = states.to(device=self.device, dtype=self.dtype)[None]
        for i, layer in enumerate(self.layers):
            kv = layer.cross_kv(states).view(1, n_keys, 2, self.n_heads, self.head_dim)
            self._cross_k[i][slot, :, :n_keys] = kv[0, :, 0].transpose(0, 1)
            self._cross_v[i][slot, :, :n_keys] = kv[0, :, 1].transpose(0, 1)
            self._cross_k[i][slot, :, n_keys:] = 0
            self._cross_v[i][slot, :, n_keys:] = 0

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One new position for slots 0..rows-1: tokens (rows, codebooks) -> logits (rows, codebooks, vocab)."""
        n_rows = tokens.shape[0]
        lengths = torch.tensor(self.lengths[:n_rows], device=self.device)
        if int(lengths.max()) >= self.max_len:
            raise ValueError("a slot has reached the cache's max_len")
        hidden = self.embed_tokens(tokens[:, :, None].to(self.device))
        hidden = hidden + self.positions[lengths][:, None].to(hidden.dtype)
        span = int(lengths.max()) + 1
        key_ok = self._key_ok[:n_rows, :span].clone()
        key_ok[torch.arange(n_rows), lengths] = True
        mask = key_ok[:, None, None, :]
        for i, layer in enumerate(self.layers):
            hidden = self._layer(i, layer, hidden, mask, slots=slice(0, n_rows), start=lengths)
        for row in range(n_rows):
            self._key_ok[row, self.lengths[row]] = True
            self.lengths[row] += 1
        return self._logits(hidden[:, -1])

    def _layer(
        self, i: int, layer: _Layer, hidden: torch.Tensor, mask: torch.Tensor, slots: slice, start: Any
    ) -> torch.Tensor:
        rows, time, _ = hidden.shape
        qkv = layer.qkv(layer.ln1(hidden)).view(rows, time, 3, self.n_heads, self.head_dim)
        q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))  # (rows, heads, time, head_dim)
        cache_k, cache_v = self._k[i][slots], self._v[i][slots]
        if isinstance(start, int):  # prefill: one slot, positions start..start+time
            cache_k[:, :, start : start + time] = k
            cache_v[:, :, start : start + time] = v
            span = start + time
        else:  # step: each row writes its own position
            index = torch.arange(rows, device=self.device)
            cache_k[index, :, start] = k[:, :, 0]
            cache_v[index, :, start] = v[:, :, 0]
            span = mask.shape[-1]
        attn = F.scaled_dot_product_attention(
            q, cache_k[:, :, :span], cache_v[:, :, :span], attn_mask=mask, scale=layer.scaling
        )
        hidden = hidden + layer.out(attn.transpose(1, 2).reshape(rows, time, -1))
        if layer.has_cross:
            q = layer.cross_q(layer.ln_cross(hidden)).view(rows, time, self.n_heads, self.head_dim)
            cross_mask = self._cross_ok[slots][:, None, None, :]
            attn = F.scaled_dot_product_attention(
                q.transpose(1, 2), self._cross_k[i][slots], self._cross_v[i][slots],
                attn_mask=cross_mask, scale=layer.scaling,
            )  # fmt: skip
            hidden = hidden + layer.cross_out(attn.transpose(1, 2).reshape(rows, time, -1))
        return hidden + layer.fc2(layer.act(layer.fc1(layer.ln2(hidden))))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(rows, hidden) -> (rows, codebooks, vocab) float32 through the K codebook heads at once."""
        hidden = self.final_ln(hidden)
        return torch.einsum("rd,kvd->rkv", hidden, self.heads_weight).float()

    def quantize_int8(self) -> None:
        """Dynamic int8 quantisation of every projection (weights int8, activations quantised per step).

        Opt-in (GENERATION_PRECISION=int8): its logits drift further from fp32 than bf16's do.
        """
        from torch.ao.quantization import quantize_dynamic

        self.layers = [quantize_dynamic(layer, {nn.Linear}, dtype=torch.qint8) for layer in self.layers]
