"""MusicGen decoder layers' weights, taken from the loaded transformers model and fused where that saves a matmul.

A `Layer` holds plain callables: norms, projections (`Dense` as loaded; swapped for the int8 or bf16 kernels of
motif.engine.cpuops by StaticCacheDecoder) and the activation, so a decode step calls them without
nn.Module overhead. The model's own q/k/v (and codebook) weights become views of the fused tensors, held once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from motif.engine.cpuops import Bf16Linear, Int8Linear

Projection = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Norm:
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float

    @classmethod
    def of(cls, norm: nn.LayerNorm) -> Norm:
        return cls(norm.weight.detach(), norm.bias.detach(), norm.eps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


@dataclass
class Dense:
    """A bias-free projection as a plain F.linear (no nn.Module call overhead)."""

    weight: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


@dataclass
class Layer:
    """One decoder layer's weights, fused where that saves a matmul. Projections are swappable (int8)."""

    ln1: Norm
    qkv: Projection
    out: Projection
    ln2: Norm
    fc1: Projection
    fc2: Projection
    act: Callable[[torch.Tensor], torch.Tensor]
    ln_cross: Norm | None = None
    cross_q: Projection | None = None
    cross_kv: Projection | None = None
    cross_out: Projection | None = None


def linear_weight(parts: list[Any]) -> torch.Tensor:
    """The weights of Linear (or Embedding) modules stacked along their first dim: (sum of outputs, in)."""
    if any(getattr(p, "bias", None) is not None for p in parts):
        raise ValueError("MusicGen's decoder projections have no bias; this one does")
    if len(parts) == 1:
        return parts[0].weight.detach()
    return torch.cat([p.weight.detach() for p in parts], dim=0)


def share_fused(parts: list[Any], fused: torch.Tensor) -> None:
    """Point the model's separate weights (q/k/v, heads, embeddings) at slices of the fused one, held once."""
    start = 0
    for part in parts:
        n = part.weight.shape[0]
        part.weight = nn.Parameter(fused[start : start + n], requires_grad=False)
        start += n


def build_layer(layer: Any, has_cross: bool) -> Layer:
    attn = layer.self_attn
    qkv_parts = [attn.q_proj, attn.k_proj, attn.v_proj]
    qkv = linear_weight(qkv_parts)
    share_fused(qkv_parts, qkv)
    built = Layer(
        ln1=Norm.of(layer.self_attn_layer_norm), qkv=Dense(qkv), out=Dense(linear_weight([attn.out_proj])),
        ln2=Norm.of(layer.final_layer_norm), fc1=Dense(linear_weight([layer.fc1])),
        fc2=Dense(linear_weight([layer.fc2])), act=layer.activation_fn,
    )  # fmt: skip
    if has_cross:
        cross = layer.encoder_attn
        kv_parts = [cross.k_proj, cross.v_proj]
        kv = linear_weight(kv_parts)
        share_fused(kv_parts, kv)
        built.ln_cross = Norm.of(layer.encoder_attn_layer_norm)
        built.cross_q = Dense(linear_weight([cross.q_proj]))
        built.cross_kv = Dense(kv)
        built.cross_out = Dense(linear_weight([cross.out_proj]))
    return built


def to_int8(proj: Dense) -> Int8Linear:
    linear = nn.Linear(proj.weight.shape[1], proj.weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(proj.weight, requires_grad=False)
    return Int8Linear(linear)


def projection_bytes(proj: Projection | None) -> int:
    if proj is None:
        return 0
    if isinstance(proj, Int8Linear | Bf16Linear):
        return proj.weight_bytes
    weight = proj.weight  # type: ignore[attr-defined]
    return weight.numel() * weight.element_size()


def projection_macs(proj: Projection | None) -> int:
    if proj is None:
        return 0
    if isinstance(proj, Int8Linear | Bf16Linear):
        return proj.in_features * proj.out_features
    return proj.weight.numel()  # type: ignore[attr-defined]
