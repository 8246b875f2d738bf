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

import torch
from torch import nn

from motif.engine.kernels import BLOCK, TILE_BLOCKS, load_kernel


class Int8Linear(nn.Module):
    """Drop-in for a bias-optional nn.Linear on CPU: (..., in) float -> (..., out) float32.

    Weights are symmetric int8 per output channel; activations asymmetric uint8 per row. Rows never
    interact, so results are identical whatever else is in the batch.
    """

    q: torch.Tensor | None
    packed: torch.Tensor | None
    w_scale: torch.Tensor
    colsum: torch.Tensor

    def __init__(self, linear: nn.Linear, use_kernel: bool = True) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        n_out, n_in = weight.shape
        self.in_features, self.out_features = n_in, n_out
        self.k_padded = -(-n_in // 4) * 4
        self.n_padded = -(-n_out // BLOCK) * BLOCK
        scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        q = nn.functional.pad(q, (0, self.k_padded - n_in, 0, self.n_padded - n_out))
        scale = nn.functional.pad(scale, (0, self.n_padded - n_out), value=1.0)
        self.kernel = load_kernel() if use_kernel else None
        # The kernel reads only the packed layout, the fallback only the plain one: keep just one of them.
        self.register_buffer("q", None if self.kernel else q, persistent=False)  # (n_padded, k_padded)
        self.register_buffer("packed", _pack(q, 4) if self.kernel else None, persistent=False)
        self.register_buffer("w_scale", scale.contiguous(), persistent=False)
        self.register_buffer("colsum", q.sum(dim=1, dtype=torch.int32).contiguous(), persistent=False)
        self.bias = None if linear.bias is None else linear.bias.detach().float().clone()
        if self.kernel is not None:  # CPU buffers never move: taking the pointers once saves calls per step
            self._packed_ptr = self.packed.data_ptr()  # type: ignore[union-attr]
            self._w_scale_ptr = self.w_scale.data_ptr()
            self._colsum_ptr = self.colsum.data_ptr()

    @property
    def weight_bytes(self) -> int:
        """Bytes read per call: int8 weights plus per-channel scale and column sum."""
        return self.n_padded * self.k_padded + 8 * self.n_padded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = _kernel_rows(x, torch.float32, self.k_padded)
        if self.kernel is not None:
            out = self._kernel_forward(rows)
        else:
            out = reference_forward(rows, self.q, self.w_scale, self.colsum)  # type: ignore[arg-type]
        if self.n_padded != self.out_features:
            out = out[:, : self.out_features]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)

    def _kernel_forward(self, rows: torch.Tensor) -> torch.Tensor:
        n_rows = rows.shape[0]
        out = torch.empty(n_rows, self.n_padded, dtype=torch.float32)
        workspace = torch.empty(n_rows * (self.k_padded + 8), dtype=torch.uint8)
        ubuf = workspace.data_ptr()
        self.kernel.w8a8_linear(  # type: ignore[union-attr]
            rows.data_ptr(), n_rows, self.k_padded, self._packed_ptr, self._w_scale_ptr, self._colsum_ptr,
            self.n_padded, out.data_ptr(), ubuf, ubuf + n_rows * self.k_padded, torch.get_num_threads(),
        )  # fmt: skip
        return out


def quantize_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(M, K) float32 -> u (M, K) uint8-valued int32, scale (M,), low (M,): rows ~= low + scale * u."""
    low = rows.amin(dim=1)
    scale = (rows.amax(dim=1) - low) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    u = torch.round((rows - low[:, None]) * (1.0 / scale)[:, None]).clamp_(0, 255)
    return u.to(torch.int32), scale, low


def reference_forward(
    rows: torch.Tensor, q: torch.Tensor, w_scale: torch.Tensor, colsum: torch.Tensor
) -> torch.Tensor:
    """The kernel's arithmetic in torch: (M, K) float32 -> (M, N) float32, integer dot products exact."""
    u, scale, low = quantize_rows(rows)
    dot = (u.double() @ q.double().T).float()  # exact: |dot| < 2^31 fits a double's mantissa
    return w_scale * (scale[:, None] * dot + low[:, None] * colsum.float())


def _pack(weight: torch.Tensor, group: int) -> torch.Tensor:
    """(N, K) -> the kernels' layout: tiles of 4 blocks of 16 channels, each [K/group][blocks][16][group].

    group is how many consecutive k one 32-bit lane holds: 4 int8 (vpdpbusd) or 2 bf16 (vdpbf16ps).
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
