"""MusicGen's decoder step as an ONNX graph with int8 weights, for the bench's ONNX Runtime peer.

One decode step is one session run, as in the optimum / MusicGPT layout: the inputs are the step's tokens,
each layer's past self-attention keys and values, and each layer's cross-attention keys and values (computed
once per request, in torch); the outputs are the logits and each layer's present keys and values (past with
this step's appended). The graph is exported once per model and cached under the bench's cache dir, keyed by
the model's files and the exporter's versions, so a changed model re-exports.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

EXPORT_VERSION = "1"  # bump when DecoderStep or the quantisation below changes
PEER_CACHE = "onnx-peer"
STEP_FILE = "decoder_step.int8.onnx"


class DecoderStep(nn.Module):
    """One MusicGen decoder step over explicit key/value tensors (no Cache objects, so it traces).

    forward(input_ids (rows, K) int64, text_bias (rows, 1, 1, S) float32 additive mask,
    *kv: past_key.0, past_value.0, ... (rows, H, T, D), then cross_key.0, cross_value.0, ... (rows, H, S, D))
    -> (logits (rows, K, vocab), present_key.0, present_value.0, ... (rows, H, T + 1, D)).
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        decoder = model.decoder.model.decoder
        self.embed_tokens, self.layers, self.layer_norm = decoder.embed_tokens, decoder.layers, decoder.layer_norm
        self.lm_heads = model.decoder.lm_heads
        self.register_buffer("positions", decoder.embed_positions.weights.clone(), persistent=False)
        self.n_heads = decoder.layers[0].self_attn.num_heads
        self.positions: torch.Tensor

    def forward(self, input_ids: torch.Tensor, text_bias: torch.Tensor, *kv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n_layers = len(self.layers)
        past, cross = kv[: 2 * n_layers], kv[2 * n_layers :]
        position = past[0].shape[2]
        hidden = sum(emb(input_ids[:, k]) for k, emb in enumerate(self.embed_tokens))
        hidden = (hidden + self.positions[position])[:, None, :]  # (rows, 1, width)
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            hidden, key, value = self._layer(layer, hidden, past[2 * i], past[2 * i + 1], cross[2 * i],
                                             cross[2 * i + 1], text_bias)  # fmt: skip
            presents += [key, value]
        hidden = self.layer_norm(hidden)[:, 0]
        logits = torch.stack([head(hidden) for head in self.lm_heads], dim=1)
        return (logits, *presents)

    def _layer(
        self,
        layer: Any,
        hidden: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
        cross_key: torch.Tensor,
        cross_value: torch.Tensor,
        bias: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """One pre-norm decoder layer: self-attention over past + this step, cross-attention, FFN."""
        attn = layer.self_attn
        normed = layer.self_attn_layer_norm(hidden)
        key = torch.cat([past_key, self._heads(attn.k_proj(normed))], dim=2)
        value = torch.cat([past_value, self._heads(attn.v_proj(normed))], dim=2)
        hidden = hidden + attn.out_proj(self._attend(self._heads(attn.q_proj(normed)) * attn.scaling, key, value))
        cross = layer.encoder_attn
        query = self._heads(cross.q_proj(layer.encoder_attn_layer_norm(hidden))) * cross.scaling
        hidden = hidden + cross.out_proj(self._attend(query, cross_key, cross_value, bias))
        hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))))
        return hidden, key, value

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, 1, width) -> (rows, H, 1, D)."""
        return x.view(x.shape[0], 1, self.n_heads, -1).transpose(1, 2)

    @staticmethod
    def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        scores = query @ key.transpose(2, 3)
        if bias is not None:
            scores = scores + bias
        out = scores.softmax(-1) @ value  # (rows, H, 1, D)
        return out.transpose(1, 2).reshape(out.shape[0], 1, -1)


def cross_kv(model: Any, states: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's cross-attention keys and values of the projected text states (rows, S, width), in torch:
    [key.0, value.0, key.1, ...], each (rows, H, S, D)."""
    out = []
    for layer in model.decoder.model.decoder.layers:
        attn = layer.encoder_attn
        for proj in (attn.k_proj, attn.v_proj):
            x = proj(states)
            out.append(x.view(x.shape[0], x.shape[1], attn.num_heads, -1).transpose(1, 2).contiguous())
    return out


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    kv = [f"{kind}.{i}" for i in range(n_layers) for kind in ("key", "value")]
    inputs = ["input_ids", "text_bias", *[f"past_{n}" for n in kv], *[f"cross_{n}" for n in kv]]
    return inputs, ["logits", *[f"present_{n}" for n in kv]]


def model_key(model_path: str | Path, runtime_version: str) -> str:
    """The model's identity: its config, each file's size and mtime, and the exporter's and runtime's versions."""
    digest = hashlib.sha256(f"{EXPORT_VERSION} {torch.__version__} {runtime_version}".encode())
    for path in sorted(Path(model_path).iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name} {stat.st_size} {stat.st_mtime_ns}".encode())
            if path.name == "config.json":
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def exported_step(model: Any, model_path: str | Path, cache_dir: Path) -> Path:
    """The int8 ONNX decoder step for this model, exported and quantised on the first call, then cached.

    Quantisation: onnxruntime's `quantize_dynamic`, int8 per-channel weights on every MatMul, activations
    quantised per call to uint8 (DynamicQuantizeLinear + MatMulInteger): the int8 path MusicGPT ships.
    """
    import onnxruntime

    reduce_range = not has_vnni()
    version = f"{onnxruntime.__version__}{'-7bit' if reduce_range else ''}"
    quantize = functools.partial(_quantize, reduce_range=reduce_range)
    return cached_export(model, model_path, cache_dir, ("onnxruntime", version), STEP_FILE, quantize)


def has_vnni() -> bool:
    """Whether the CPU has an int8 dot-product instruction (AVX512-VNNI or AVX-VNNI)."""
    from motif.bench.machine import cpu_features

    features = cpu_features()
    return features["AVX512-VNNI"] or features["AVX-VNNI"]


def cached_export(model: Any, model_path: str | Path, cache_dir: Path, runtime: tuple[str, str], filename: str,
                  convert: Callable[[Path, Path], None]) -> Path:  # fmt: skip
    """<cache_dir>/onnx-peer/<runtime>/<model>-<key>/<filename>, made on the first call by convert(fp32 ONNX
    step, target file); the fp32 graph is deleted after, and an older export of the same model replaced."""
    name, version = runtime
    target = Path(cache_dir) / PEER_CACHE / name / f"{Path(model_path).name}-{model_key(model_path, version)}"
    if (target / filename).exists():
        return target / filename
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        export_fp32(model, tmp / "decoder_step.fp32.onnx")
        convert(tmp / "decoder_step.fp32.onnx", tmp / filename)
        for path in tmp.glob("decoder_step.fp32.onnx*"):  # 4 bytes a weight: not worth keeping on disk
            path.unlink()
        for stale in target.parent.glob(f"{Path(model_path).name}-*"):
            if stale != tmp and ".tmp-" not in stale.name:
                shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target / filename


def export_fp32(model: Any, path: Path) -> None:
    """`DecoderStep` of model as an fp32 ONNX graph at path (weights in external data beside it), dynamic in
    rows, past length and text length."""
    step = DecoderStep(model).eval()
    n_layers, n_codebooks = len(step.layers), len(step.embed_tokens)
    n_heads, head_dim = step.n_heads, model.decoder.config.hidden_size // step.n_heads
    rows, n_past, n_text = 2, 3, 5
    past = [torch.zeros(rows, n_heads, n_past, head_dim) for _ in range(2 * n_layers)]
    cross = [torch.zeros(rows, n_heads, n_text, head_dim) for _ in range(2 * n_layers)]
    args = (torch.zeros(rows, n_codebooks, dtype=torch.long), torch.zeros(rows, 1, 1, n_text), *past, *cross)
    inputs, outputs = io_names(n_layers)
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "rows"}, "text_bias": {0: "rows", 3: "text"},
                                       "logits": {0: "rows"}}  # fmt: skip
    axes |= {n: {0: "rows", 2: "past"} for n in inputs if n.startswith("past_")}
    axes |= {n: {0: "rows", 2: "text"} for n in inputs if n.startswith("cross_")}
    axes |= {n: {0: "rows", 2: "present"} for n in outputs if n.startswith("present_")}
    # The TorchScript exporter (deprecated since torch 2.9) needs no onnxscript and traces this loop-free step
    # as is; the torch.export-based one is the move to make when torch drops it.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX")
        torch.onnx.export(step, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=17, dynamo=False, external_data=True)  # fmt: skip


def _quantize(source: Path, target: Path, reduce_range: bool) -> None:
    """Without VNNI, onnxruntime's uint8 x int8 kernels add pairs of products in int16 (vpmaddubsw), which
    saturates: its documentation's advice there is 7-bit weights (`reduce_range`), as a user would set. (On the
    tiny model, 8-bit weights gave logits 25% off float32 on an AVX2-only CPU.)"""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range,
                     op_types_to_quantize=["MatMul"])  # fmt: skip


class StepShape:
    """The decoder's layer and head sizes and the exported step's input names, for a runtime's session."""

    def read_shape(self, model: Any) -> None:
        config = model.decoder.config
        self.n_layers, self.n_heads = config.num_hidden_layers, config.num_attention_heads
        self.head_dim, self.n_codebooks = config.hidden_size // self.n_heads, config.num_codebooks
        self.input_names = io_names(self.n_layers)[0]

    def zeros(self, rows: int, length: int) -> list[np.ndarray]:
        """2 * n_layers key/value arrays (rows, H, length, D)."""
        return [np.zeros((rows, self.n_heads, length, self.head_dim), np.float32) for _ in range(2 * self.n_layers)]
