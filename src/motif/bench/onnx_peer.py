"""The ONNX Runtime peer: MusicGen's decoder step in onnxruntime with int8 weights, measured like Motif.

The decode loop runs one session per step (CFG pair as two rows, top-k 250 sampling, the codebook delay
pattern); the text encoder, the cross-attention keys and values and EnCodec stay in torch fp32, as they
would in a user's port that exports only the decoder (they run once per request). Reported: the batch-1
RTF of a whole request, the step at 2 and 8 rows, and teacher-forced fidelity against the same decoder in
torch fp32 (the measure `fidelity.py` applies to Motif's precisions).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from motif.bench.machine import timed
from motif.bench.onnx_export import DecoderStep, StepShape, cross_kv, exported_step
from motif.engine.types import FRAMES_PER_SECOND

PROMPT = "upbeat rock with piano and drums"
PAD = 2048  # MusicGen's pad / start token, one past the codebook vocabulary
GUIDANCE, TOP_K = 3.0, 250  # musicgen's shipped generation config


class StepSession(Protocol):
    """One decode step in a runtime: what `generate`, `step_ms` and `fidelity` need."""

    n_codebooks: int

    def zeros(self, rows: int, length: int) -> list[np.ndarray]: ...

    def run(self, ids: np.ndarray, bias: np.ndarray, past: list[np.ndarray],
            cross: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]: ...  # fmt: skip


class OrtStep(StepShape):
    """An onnxruntime session over the exported step, with the shapes its inputs need."""

    def __init__(self, path: Path, model: Any, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.read_shape(model)

    def run(self, ids: np.ndarray, bias: np.ndarray, past: list[np.ndarray],
            cross: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:  # fmt: skip
        """ids (rows, K) -> logits (rows, K, vocab) and the present keys/values (past one longer)."""
        logits, *present = self.session.run(None, dict(zip(self.input_names, [ids, bias, *past, *cross], strict=True)))
        return logits, present


def encode_text(model: Any, tokenizer: Any) -> torch.Tensor:
    """The prompt through T5 and enc_to_dec_proj, with the unconditional (zero) row: (2, S, width)."""
    inputs = tokenizer([PROMPT], return_tensors="pt")
    states = model.text_encoder(**inputs).last_hidden_state
    if getattr(model, "enc_to_dec_proj", None) is not None:
        states = model.enc_to_dec_proj(states)
    return torch.cat([states, torch.zeros_like(states)])


def sample(logits: torch.Tensor, generator: torch.Generator, top_k: int | None = TOP_K) -> torch.Tensor:
    """CFG on the (cond, uncond) pair (2, K, vocab), then top-k sampling -> (K,) tokens."""
    guided = logits[1] + GUIDANCE * (logits[0] - logits[1])
    if top_k is None:
        return torch.multinomial(guided.softmax(-1), 1, generator=generator)[:, 0]
    values, indices = guided.topk(min(top_k, guided.shape[-1]))
    choice = torch.multinomial(values.softmax(-1), 1, generator=generator)
    return indices.gather(1, choice)[:, 0]


@torch.inference_mode()
def generate(model: Any, tokenizer: Any, step: StepSession, seconds: float, seed: int = 0) -> np.ndarray:
    """A text-to-music request, batch 1, CFG 3: returns the audio (1, channels, samples) float32."""
    n_frames, k = round(seconds * FRAMES_PER_SECOND), step.n_codebooks
    states = encode_text(model, tokenizer)
    cross = [c.numpy() for c in cross_kv(model, states)]
    bias = np.zeros((2, 1, 1, states.shape[1]), np.float32)
    past, ids = step.zeros(2, 0), np.full((2, k), PAD, np.int64)
    generator, delays, rows = torch.Generator().manual_seed(seed), np.arange(k), []
    for t in range(n_frames + k - 1):
        logits, past = step.run(ids, bias, past, cross)
        row = sample(torch.from_numpy(logits), generator).numpy()
        frame = t - delays  # codebook k runs k steps behind codebook 0
        row[(frame < 0) | (frame >= n_frames)] = PAD
        rows.append(row)
        ids = np.stack([row, row])
    seq = np.stack(rows)  # (steps, K)
    codes = np.stack([seq[c : c + n_frames, c] for c in range(k)])  # undo the delays: (K, frames)
    codes_t = torch.from_numpy(codes).view(1, 1, k, n_frames)
    return model.audio_encoder.decode(codes_t, [None]).audio_values.numpy()


def step_ms(step: StepSession, rows: int, n_past: int, n_text: int, repeats: int) -> float:
    """Median wall ms of one session run for rows rows that each hold n_past positions."""
    ids, bias = np.zeros((rows, step.n_codebooks), np.int64), np.zeros((rows, 1, 1, n_text), np.float32)
    past, cross = step.zeros(rows, n_past), step.zeros(rows, n_text)
    step.run(ids, bias, past, cross)
    return timed(lambda: step.run(ids, bias, past, cross), repeats)[0] * 1e3


@torch.inference_mode()
def fidelity(model: Any, tokenizer: Any, step: StepSession, n_steps: int) -> dict[str, float]:
    """int8 session against the same step in torch fp32, teacher-forced on fp32's own CFG-3 samples.

    Returns {rel_err, top1}: the median over steps and rows of |logits - ref| / |ref|, and the share of
    (step, row, codebook) argmaxes that agree (as `fidelity.fidelity` reports for Motif's precisions).
    """
    reference = DecoderStep(model).eval()
    states = encode_text(model, tokenizer)
    cross_t = cross_kv(model, states)
    cross, bias = [c.numpy() for c in cross_t], np.zeros((2, 1, 1, states.shape[1]), np.float32)
    past_t, past = [torch.from_numpy(a) for a in step.zeros(2, 0)], step.zeros(2, 0)
    ids, generator = torch.full((2, step.n_codebooks), PAD), torch.Generator().manual_seed(0)
    ref_logits, ort_logits = [], []
    for _ in range(n_steps + 1):
        logits_t, *past_t = reference(ids, torch.from_numpy(bias), *past_t, *cross_t)
        logits, past = step.run(ids.numpy(), bias, past, cross)
        ref_logits.append(logits_t.numpy())
        ort_logits.append(logits)
        row = sample(logits_t, generator, top_k=None)
        ids = torch.stack([row, row])
    ref, got = np.stack(ref_logits), np.stack(ort_logits)
    rel = np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    return {"rel_err": float(np.median(rel)), "top1": float((got.argmax(-1) == ref.argmax(-1)).mean())}


def open_ort_step(model: Any, path: str, cache_dir: Path, threads: int) -> tuple[StepSession, str]:
    """The int8 ONNX step (exported on first use) in an onnxruntime session, and a note on what it is."""
    onnx_path = exported_step(model, path, cache_dir)
    return OrtStep(onnx_path, model, threads), f"{onnx_path.stat().st_size / 1e6:.0f} MB int8 graph"


OpenStep = Callable[[Any, str, Path, int], tuple[StepSession, str]]


def measure(path: str, cache_dir: Path, seconds: float, quick: bool,
            open_step: OpenStep = open_ort_step) -> dict[str, Any]:  # fmt: skip
    """Open the runtime's step, then {rtf, step_ms: {"2x1", "2x300", "8x1", "8x300"}, fidelity, detail}."""
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    with torch.inference_mode():
        step, detail = open_step(model, path, cache_dir, torch.get_num_threads())
    generate(model, tokenizer, step, 0.1)  # warm-up: 5 frames
    start = time.perf_counter()
    generate(model, tokenizer, step, seconds)
    rtf = (time.perf_counter() - start) / seconds
    n_text, repeats = len(tokenizer(PROMPT).input_ids), 1 if quick else 5
    steps = {f"{rows}x{n_past}": step_ms(step, rows, n_past, n_text, repeats) for rows in (2, 8) for n_past in (1, 300)}
    return {"rtf": rtf, "step_ms": steps, "fidelity": fidelity(model, tokenizer, step, 16 if quick else 200),
            "detail": detail}  # fmt: skip
