"""The int8 decode step's layers in one C call (kernels.c `decoder_step`) instead of ~20 torch ops each.

At batch 1-8 a step's weights stream in about 11 ms on two cores, but run layer by layer it also pays a
torch op, a ctypes call or an OpenMP wake-up several hundred times: about 6 ms more. `FusedLayers` hands the
C side every layer's packed int8 weights and norms once, and per step only the residual stream, positions,
masks and cache pointers. It runs where the layer-by-layer path would use Int8Linear projections, the bf16
attention kernel and exact GELU; StaticCacheDecoder checks `FusedLayers.supports` and keeps that path
otherwise (and as the reference the tests compare against).
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from motif.engine.cpuops import Int8Linear

_PROJECTIONS = ("qkv", "out", "cross_q", "cross_out", "fc1", "fc2")


class _Proj(ctypes.Structure):
    _fields_ = [("w", ctypes.c_void_p), ("scales", ctypes.c_void_p), ("K", ctypes.c_int64), ("G", ctypes.c_int64),
                ("N", ctypes.c_int64)]  # fmt: skip


class _Norm(ctypes.Structure):
    _fields_ = [("weight", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("eps", ctypes.c_float)]


class _Layer(ctypes.Structure):
    _fields_ = [(name, _Norm) for name in ("ln1", "ln_cross", "ln2")] + [(name, _Proj) for name in _PROJECTIONS]


class _Step(ctypes.Structure):
    _fields_ = [
        *[(name, ctypes.c_int64) for name in ("R", "H", "D", "ffn")],
        ("pos", ctypes.c_void_p), ("ok", ctypes.c_void_p), ("ok_stride", ctypes.c_int64), ("span", ctypes.c_int64),
        ("slot_stride", ctypes.c_int64), ("head_stride", ctypes.c_int64), ("n_cross", ctypes.c_int64),
        ("cross_ok", ctypes.c_void_p), ("cross_ok_stride", ctypes.c_int64), ("cross_slot_stride", ctypes.c_int64),
        ("cross_head_stride", ctypes.c_int64), ("scale", ctypes.c_float),
        *[(name, ctypes.c_void_p) for name in ("x", "tmp", "att", "buf", "qbuf", "xscale")],
    ]  # fmt: skip


class FusedLayers:
    """Every layer of a StaticCacheDecoder whose projections are all Int8Linear, stepped in one C call."""

    def __init__(self, decoder: Any) -> None:
        self.kernel = decoder._kernel
        self.n_heads, self.head_dim, self.scale = decoder.n_heads, decoder.head_dim, decoder.scaling
        self.hidden = decoder.hidden_size
        self.ffn = decoder.layers[0].fc1.out_features
        self._keep: list[torch.Tensor] = []  # norm tensors whose pointers the C structs hold
        self.layers = (_Layer * len(decoder.layers))(*[self._layer(layer) for layer in decoder.layers])
        self._workspace: dict[int, tuple[torch.Tensor, ...]] = {}

    @staticmethod
    def supports(decoder: Any) -> bool:
        """True where the fused step computes what the layer-by-layer int8 path does."""
        if not decoder._kernel_attention or not decoder.gelu_exact:  # bf16 caches read by the attention kernel
            return False
        for layer in decoder.layers:
            for name in _PROJECTIONS:
                proj = getattr(layer, name)
                if proj is None and name.startswith("cross") and not decoder.has_cross:
                    continue
                if not (isinstance(proj, Int8Linear) and proj.kernel is not None and proj.bias is None):
                    return False
                if proj.k_padded != proj.in_features or proj.n_padded != proj.out_features:
                    return False
        return decoder.hidden_size % 16 == 0

    def _norm(self, norm: Any) -> _Norm:
        weight, bias = norm.weight.float().contiguous(), norm.bias.float().contiguous()
        self._keep += [weight, bias]
        return _Norm(weight.data_ptr(), bias.data_ptr(), norm.eps)

    def _layer(self, layer: Any) -> _Layer:
        fields: dict[str, Any] = {"ln1": self._norm(layer.ln1), "ln2": self._norm(layer.ln2)}
        if layer.ln_cross is not None:
            fields["ln_cross"] = self._norm(layer.ln_cross)
        for name in _PROJECTIONS:
            proj = getattr(layer, name)
            if proj is not None:
                fields[name] = _Proj(proj.packed.data_ptr(), proj.scales.data_ptr(), proj.k_padded, proj.group,
                                     proj.n_padded)  # fmt: skip
        return _Layer(**fields)

    def _buffers(self, n_rows: int) -> tuple[torch.Tensor, ...]:
        if n_rows not in self._workspace:
            widest = max(3 * self.hidden, self.ffn)
            self._workspace[n_rows] = (
                torch.empty(n_rows, self.hidden), torch.empty(n_rows, self.hidden), torch.empty(n_rows, widest),
                torch.empty(n_rows, max(self.hidden, self.ffn), dtype=torch.int16), torch.empty(n_rows),
            )  # fmt: skip
        return self._workspace[n_rows]

    def step(self, decoder: Any, hidden: torch.Tensor, positions: torch.Tensor, span: int) -> torch.Tensor:
        """hidden (rows, hidden) float32 at int64 positions (rows,) -> (rows, hidden) after every layer.

        The decoder's key mask must already admit each row's new position; its caches get the new keys/values.
        """
        x = hidden.float().contiguous()
        n_rows = x.shape[0]
        tmp, att, buf, qbuf, xscale = self._buffers(n_rows)
        positions = positions.contiguous()
        k0, key_ok = decoder._k[0], decoder._key_ok
        state = _Step(
            R=n_rows, H=self.n_heads, D=self.head_dim, ffn=self.ffn, pos=positions.data_ptr(),
            ok=key_ok.data_ptr(), ok_stride=key_ok.stride(0), span=span, slot_stride=k0.stride(0),
            head_stride=k0.stride(1), scale=self.scale, x=x.data_ptr(), tmp=tmp.data_ptr(), att=att.data_ptr(),
            buf=buf.data_ptr(), qbuf=qbuf.data_ptr(), xscale=xscale.data_ptr(),
        )  # fmt: skip
        cross_k = cross_v = None
        if decoder.has_cross:
            ck, ok = decoder._cross_k[0], decoder._cross_ok
            state.n_cross, state.cross_ok, state.cross_ok_stride = ok.shape[1], ok.data_ptr(), ok.stride(0)
            state.cross_slot_stride, state.cross_head_stride = ck.stride(0), ck.stride(1)
            cross_k, cross_v = _pointer_array(decoder._cross_k), _pointer_array(decoder._cross_v)
        self.kernel.decoder_step(
            self.layers, len(self.layers), _pointer_array(decoder._k), _pointer_array(decoder._v), cross_k, cross_v,
            ctypes.byref(state), torch.get_num_threads(),
        )  # fmt: skip
        return x


def _pointer_array(tensors: list[torch.Tensor]) -> ctypes.Array[ctypes.c_void_p]:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])
