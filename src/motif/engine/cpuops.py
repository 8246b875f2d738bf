"""torch-facing wrappers of motif.engine.kernels: int8 and bf16 projections and one-query decode attention.

Decoding reads every weight once per step for a handful of rows, so a step costs about its weight bytes
over memory bandwidth. torch's own paths do not fit that shape on CPU: fbgemm's dynamic int8 `linear`
quantises activations with one scale for the whole batch (a job's output would depend on what shares its
batch), `_weight_int8pack_mm` and `_int_mm` run at a third of the bandwidth, bf16 `F.linear` at half, and
SDPA with one query row is slow in bf16 and reads twice the bytes in float32. Every op here computes each
row on its own, so results are bit-identical whatever else is in the batch.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
from torch import nn

from motif.engine.kernels import BLOCK, GROUP, TILE_BLOCKS, load_kernel


class Int8Linear(nn.Module):
    """Drop-in for a bias-optional nn.Linear on CPU: (..., in) float -> (..., out) float32.

    Weights are symmetric int8 with one scale per output channel and GROUP consecutive inputs (weight-only
    quantisation: its error is about bf16's); activations become int16 per row, which adds ~1e-5. Rows never
    interact, so results are identical whatever else is in the batch.
    """

    q: torch.Tensor | None
    packed: torch.Tensor | None
    scales: torch.Tensor

    def __init__(self, linear: nn.Linear, use_kernel: bool = True) -> None:
        super().__init__()
        weight = linear.weight.detach()
        n_out, n_in = weight.shape
        self.in_features, self.out_features = n_in, n_out
        # GROUP inputs per scale; a narrower layer (the tiny test models) is one group, padded to 16.
        self.group = GROUP if n_in > GROUP else -(-n_in // 16) * 16
        self.k_padded = -(-n_in // self.group) * self.group
        self.n_padded = -(-n_out // BLOCK) * BLOCK
        padded = nn.functional.pad(weight, (0, self.k_padded - n_in, 0, self.n_padded - n_out))
        q, scales = quantize_groups(padded, self.group)
        self.kernel = load_kernel() if use_kernel else None
        # The kernel reads only the packed layouts, the fallback only the plain ones: keep just one of each.
        self.register_buffer("q", None if self.kernel else q, persistent=False)  # (n_padded, k_padded)
        self.register_buffer("packed", _pack(q, 2) if self.kernel else None, persistent=False)
        self.register_buffer("scales", _pack(scales, 1) if self.kernel else scales, persistent=False)
        self.bias = None if linear.bias is None else linear.bias.detach().float().clone()
        if self.kernel is not None:  # CPU buffers never move: taking the pointers once saves calls per step
            self._packed_ptr = self.packed.data_ptr()  # type: ignore[union-attr]
            self._scales_ptr = self.scales.data_ptr()

    @property
    def weight_bytes(self) -> int:
        """Bytes read per call: int8 weights plus a float scale per channel and group."""
        return self.n_padded * self.k_padded + 4 * self.n_padded * (self.k_padded // self.group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = _kernel_rows(x, torch.float32, self.k_padded)
        out = self._kernel_forward(rows) if self.kernel else reference_forward(rows, self.q, self.scales)  # type: ignore[arg-type]
        if self.n_padded != self.out_features:
            out = out[:, : self.out_features]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight as a plain (out_padded, in_padded) matrix, q * scale rounded once to `dtype`: bf16 (the
        kernel library's `dequantize_bf16`, `has_dequantize`) or float32 (any kernel library). For many rows (a
        prefill), where one matmul beats the int8 kernel."""
        weight = torch.empty(self.n_padded, self.k_padded, dtype=dtype)
        kernel: Any = self.kernel
        unpack = kernel.dequantize_bf16 if dtype == torch.bfloat16 else kernel.dequantize_f32
        unpack(self._packed_ptr, self._scales_ptr, self.n_padded, self.k_padded, self.group, weight.data_ptr(),
               torch.get_num_threads())  # fmt: skip
        return weight

    def _kernel_forward(self, rows: torch.Tensor) -> torch.Tensor:
        n_rows = rows.shape[0]
        out = torch.empty(n_rows, self.n_padded, dtype=torch.float32)
        workspace = torch.empty(n_rows * (self.k_padded + 2), dtype=torch.int16)  # int16 rows, then float scales
        qbuf = workspace.data_ptr()
        self.kernel.w8a16_linear(  # type: ignore[union-attr]
            rows.data_ptr(), n_rows, self.k_padded, self.group, self._packed_ptr, self._scales_ptr, self.n_padded,
            out.data_ptr(), qbuf, qbuf + 2 * n_rows * self.k_padded, torch.get_num_threads(),
        )  # fmt: skip
        return out


def quantize_groups(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float, K a multiple of group -> q (N, K) int8 and scales (N, K / group) float32, w ~= q * scale."""
    n, k = weight.shape
    grouped = weight.float().view(n, k // group, group)
    scales = grouped.abs().amax(dim=2).clamp_min(1e-30) / 127.0
    q = torch.round(grouped / scales[:, :, None]).clamp_(-127, 127).to(torch.int8)
    return q.view(n, k), scales.contiguous()


def quantize_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) float32 -> q (M, K) int16-valued int64, scale (M,): rows ~= scale * q (the kernel's rounding)."""
    scale = rows.abs().amax(dim=1) / 32767.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(rows * (1.0 / scale)[:, None]).clamp_(-32768, 32767).long(), scale


def reference_forward(rows: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The kernel's arithmetic in torch: (M, K) float32 -> (M, N) float32, each group's dot product exact."""
    xq, x_scale = quantize_rows(rows)
    n_groups = scales.shape[1]
    group = q.shape[1] // n_groups
    xg = xq.double().view(xq.shape[0], n_groups, 1, group)
    wg = q.double().view(q.shape[0], n_groups, group).transpose(0, 1)  # (groups, N, group)
    dots = (xg @ wg.transpose(1, 2)[None]).squeeze(2)  # (M, groups, N), exact: |dot| < 2^31
    return ((dots * scales.T.double()[None]).sum(dim=1) * x_scale.double()[:, None]).float()


def _pack(weight: torch.Tensor, group: int) -> torch.Tensor:
    """(N, K) -> the kernels' layout: tiles of 4 blocks of 16 channels, each [K/group][blocks][16][group].

    group is how many consecutive k one 32-bit lane holds: 2 (int8 widened to int16 for vpdpwssd, or bf16
    for vdpbf16ps); 1 lays out per-(channel, k-group) scales.
    """
    n, k = weight.shape
    blocks = weight.view(n // BLOCK, BLOCK, k // group, group)
    tiles = []
    for start in range(0, n // BLOCK, TILE_BLOCKS):
        tile = blocks[start : start + TILE_BLOCKS]  # (nb, 16, K/group, group)
        tiles.append(tile.permute(2, 0, 1, 3).reshape(-1))
    return torch.cat(tiles).contiguous()


class Bf16Linear(nn.Module):
    """Bias-free bf16 projection for decode-sized batches: (..., in) -> (..., out) in the input's dtype.

    torch's bf16 matmul reads weights at about half the memory bandwidth for 1-8 rows on this kind of CPU;
    this kernel streams them once per call with vdpbf16ps and accumulates in float32. Rows never interact.
    """

    packed: torch.Tensor

    def __init__(self, weight: torch.Tensor, kernel: ctypes.CDLL, out_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.out_dtype = out_dtype  # None: the input's dtype
        n_out, n_in = weight.shape
        self.in_features, self.out_features = n_in, n_out
        self.k_padded = -(-n_in // 2) * 2
        self.n_padded = -(-n_out // BLOCK) * BLOCK
        padded = nn.functional.pad(weight.detach().bfloat16(), (0, self.k_padded - n_in, 0, self.n_padded - n_out))
        self.register_buffer("packed", _pack(padded, 2), persistent=False)
        self.kernel = kernel
        self._packed_ptr = self.packed.data_ptr()

    @property
    def weight_bytes(self) -> int:
        return self.n_padded * self.k_padded * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = _kernel_rows(x, torch.bfloat16, self.k_padded)
        out = torch.empty(rows.shape[0], self.n_padded, dtype=torch.float32)
        self.kernel.bf16_linear(rows.data_ptr(), rows.shape[0], self.k_padded, self._packed_ptr, self.n_padded,
                                out.data_ptr(), torch.get_num_threads())  # fmt: skip
        if self.n_padded != self.out_features:
            out = out[:, : self.out_features]
        return out.to(self.out_dtype or x.dtype).reshape(*lead, self.out_features)


MAX_HEAD_DIM = 128  # the attention kernel keeps one output row in 8 registers


def decode_attention(
    kernel: ctypes.CDLL, q: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, ok: torch.Tensor,
    span: int, scale: float,
) -> torch.Tensor:  # fmt: skip
    """q (rows, heads, head_dim) float32 against slots 0..rows-1 of bf16 caches (slots, heads, capacity,
    head_dim), keys j < span where ok (rows, >= span) bool -> (rows, heads, head_dim) float32."""
    n_rows, n_heads, head_dim = q.shape
    if not (cache_k.is_contiguous() and cache_v.is_contiguous() and ok.stride(1) == 1):
        raise ValueError("decode_attention needs contiguous caches and mask rows")
    if cache_k.dtype != torch.bfloat16 or head_dim % 16 or head_dim > MAX_HEAD_DIM:
        raise ValueError("decode_attention needs bf16 caches and head_dim a multiple of 16 up to 128")
    q = q.contiguous()
    out = torch.empty_like(q)
    kernel.decode_attention(
        q.data_ptr(), n_rows, n_heads, head_dim, cache_k.data_ptr(), cache_v.data_ptr(), cache_k.stride(0),
        cache_k.stride(1), ok.data_ptr(), ok.stride(0), span, scale, out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return out


def _kernel_rows(x: torch.Tensor, dtype: torch.dtype, k_padded: int) -> torch.Tensor:
    """(..., in) -> contiguous (rows, k_padded) in the kernel's input dtype, zero-padded on the right."""
    rows = x.reshape(-1, x.shape[-1]).to(dtype)
    if k_padded != rows.shape[1]:
        rows = nn.functional.pad(rows, (0, k_padded - rows.shape[1]))
    return rows.contiguous()
