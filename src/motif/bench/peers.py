"""Runtimes a user might pick instead of Motif, on the same random-weight model and request.

Each peer reports an RTF and a note: RTF None where it cannot run here, with the reason as the note. torchao
is measured through transformers' `generate` (fp32 activations, CFG 3, batch 1); ONNX Runtime and OpenVINO
run the exported decoder step in a decode loop of the same request (`onnx_peer`), and add the step at 2 and
8 rows and teacher-forced fidelity against fp32.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from motif.engine.types import FRAMES_PER_SECOND

WRONG_REL_ERR = 0.25  # int8 paths sit near 0.02-0.03; above this a runtime computes something else
PROMPT = "upbeat rock with piano and drums"


def load_stock(path: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """transformers' MusicGen in fp32 and the tokenised prompt."""
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    inputs = AutoTokenizer.from_pretrained(path)([PROMPT], padding=True, return_tensors="pt")
    return model, dict(inputs)


def generate_seconds(model: Any, inputs: dict[str, torch.Tensor], seconds: float) -> float:
    """Wall seconds of `generate` for `seconds` of audio (after an 8-token warm-up, which also compiles)."""
    n_tokens = round(seconds * FRAMES_PER_SECOND) + model.decoder.config.num_codebooks - 1
    with torch.inference_mode():
        model.generate(**inputs, do_sample=True, guidance_scale=3.0, max_new_tokens=8)
        start = time.perf_counter()
        model.generate(**inputs, do_sample=True, guidance_scale=3.0, max_new_tokens=n_tokens)
        return time.perf_counter() - start


def peer_torchao(path: str, seconds: float, compile_decoder: bool = True) -> tuple[float | None, str]:
    """transformers + torchao int8 weight-only on the decoder's linears (+ torch.compile of the decoder)."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as error:
        return None, f"torchao not importable here ({error})"
    model, inputs = load_stock(path)
    quantize_(model.decoder, Int8WeightOnlyConfig())
    note = "int8 weight-only (torchao)"
    if compile_decoder:
        try:
            model.decoder.forward = torch.compile(model.decoder.forward, dynamic=True)
            note += " + torch.compile(dynamic)"
        except Exception as error:  # noqa: BLE001 - a peer that cannot compile runs eager, and says so
            note += f"; torch.compile failed ({type(error).__name__}), eager"
    try:
        return generate_seconds(model, inputs, seconds) / seconds, note
    except Exception as error:  # noqa: BLE001 - a peer's failure is a row in the table, not the bench's end
        return None, f"{note}: failed ({type(error).__name__}: {str(error)[:120]})"


def peer_openvino(path: str, seconds: float, cache_dir: Path, quick: bool) -> dict[str, Any]:
    """OpenVINO, INT8 weights (nncf.compress_weights INT8_ASYM) on the same exported decoder step."""
    try:
        import nncf  # noqa: F401
        import openvino
    except ImportError:
        return {"rtf": None, "note": "not run: openvino / nncf not installed (pip install 'motif[bench]')"}
    from motif.bench import onnx_peer, ov_peer

    note = f"openvino {openvino.__version__}, INT8_ASYM weights (nncf.compress_weights), T5 + EnCodec in torch fp32"
    return _measure(note, lambda: onnx_peer.measure(path, cache_dir, seconds, quick, ov_peer.open_ov_step))


def peer_onnxruntime(path: str, seconds: float, cache_dir: Path, quick: bool) -> dict[str, Any]:
    """onnxruntime, int8 weights (quantize_dynamic: MatMulInteger), decoder step exported from this model.

    Returns {rtf, note} and, where it ran, {step_ms, fidelity}; rtf None with the reason where it cannot run.
    """
    try:
        import onnxruntime
    except ImportError:
        return {"rtf": None, "note": "not run: onnxruntime not installed (pip install 'motif[bench]')"}
    from motif.bench import onnx_peer
    from motif.bench.onnx_export import has_vnni

    bits = "int8" if has_vnni() else "7-bit (reduce_range: no VNNI here)"
    note = (f"onnxruntime {onnxruntime.__version__}, {bits} per-channel weights (quantize_dynamic: MatMulInteger), "
            "T5 + EnCodec in torch fp32")  # fmt: skip
    return _measure(note, lambda: onnx_peer.measure(path, cache_dir, seconds, quick))


def _measure(note: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        measured = measure()
    except Exception as error:  # noqa: BLE001 - a peer's failure is a row in the table, not the bench's end
        return {"rtf": None, "note": f"{note}: failed ({type(error).__name__}: {str(error)[:160]})"}
    note = f"{note}; {measured.pop('detail')}"
    if measured["fidelity"]["rel_err"] > WRONG_REL_ERR:  # a fast wrong answer is no figure
        rtf, measured["rtf"] = measured["rtf"], None
        return {**measured, "note": f"{note}: wrong logits (rel err {measured['fidelity']['rel_err']:.2f} vs fp32; "
                                    f"RTF would be {rtf:.2f})"}  # fmt: skip
    return {**measured, "note": note}


def run_peers(
    path: str, seconds: float, quick: bool, cache_dir: Path, compile_torchao: bool | None = None,
    skip: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Every peer: {peer_<name>_rtf: float | None}, {peer_notes: {name: note}}, and for the peers that
    report them {peer_step_ms: {name: {"2x1": ms, ...}}, peer_fidelity: {name: {rel_err, top1}}}.
    compile_torchao: torch.compile the torchao peer's decoder (default: unless quick); skip: peers not run."""
    compile_decoder = not quick if compile_torchao is None else compile_torchao
    out: dict[str, Any] = {"peer_notes": {}, "peer_step_ms": {}, "peer_fidelity": {}}
    peers = {
        "torchao": lambda: _as_report(*peer_torchao(path, seconds, compile_decoder)),
        "openvino": lambda: peer_openvino(path, seconds, cache_dir, quick),
        "onnxruntime": lambda: peer_onnxruntime(path, seconds, cache_dir, quick),
    }
    for name, run in peers.items():
        report = {"rtf": None, "note": "not run: skipped (--skip)"} if name in skip else run()
        out[f"peer_{name}_rtf"] = report["rtf"]
        out["peer_notes"][name] = report["note"]
        for key in ("step_ms", "fidelity"):
            if key in report:
                out[f"peer_{key}"][name] = report[key]
    return out


def _as_report(rtf: float | None, note: str) -> dict[str, Any]:
    return {"rtf": rtf, "note": note}
