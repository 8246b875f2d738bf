"""The OpenVINO peer: the same exported decoder step, converted to OpenVINO with NNCF's INT8 weight compression.

`openvino.convert_model` reads the fp32 ONNX step that the ONNX Runtime peer starts from; `nncf.compress_weights`
(INT8_ASYM: int8 per-output-channel weights, decompressed in the matmul) is what optimum-intel's
`--weight-format int8` applies. The CPU plugin runs with f32 activations and without its generated attention
kernel (`COMPILE_PROPERTIES`). Everything else is measured as in `onnx_peer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from motif.bench.onnx_export import StepShape, cached_export

IR_FILE = "decoder_step.int8.xml"

# f32: the CPU plugin's default on CPUs with AVX512-BF16 or AMX is bf16, which gave NaN logits after 18 positions
# on the tiny model. SNIPPETS_MODE DISABLE: the plugin's snippets fuse q @ k^T, softmax and @ v into one generated
# kernel, and with a dynamic key length that kernel is wrong from 8 keys on, for every request of the compiled
# model, once its first inference had 1 key, as a decode's first step (empty past) has (OpenVINO 2026.4.1:
# logits rel err 1.4 on musicgen-small, 0.025 instead of 0.0065 on the tiny model). Without it the plugin runs
# MatMul, Softmax, MatMul nodes, no slower at 2 and 8 rows (2 layers of musicgen-small).
COMPILE_PROPERTIES = {"INFERENCE_PRECISION_HINT": "f32", "SNIPPETS_MODE": "DISABLE"}


def exported_ir(model: Any, model_path: str | Path, cache_dir: Path) -> Path:
    """The INT8-weight OpenVINO IR of this model's decoder step, converted on the first call, then cached."""
    import nncf
    import openvino

    version = f"openvino {openvino.__version__} nncf {nncf.__version__}"
    return cached_export(model, model_path, cache_dir, ("openvino", version), IR_FILE, _compress)


def _compress(source: Path, target: Path) -> None:
    import nncf
    import openvino

    compressed = nncf.compress_weights(openvino.convert_model(source), mode=nncf.CompressWeightsMode.INT8_ASYM)
    openvino.save_model(compressed, target, compress_to_fp16=False)


class OvStep(StepShape):
    """The compiled IR (or any model file OpenVINO reads, such as the fp32 ONNX step) behind the same interface
    as `onnx_peer.OrtStep` (run, zeros, n_codebooks)."""

    def __init__(self, path: Path, model: Any, threads: int) -> None:
        import openvino

        compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads, **COMPILE_PROPERTIES})
        self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.request = compiled.create_infer_request()
        self.read_shape(model)

    def run(self, ids: np.ndarray, bias: np.ndarray, past: list[np.ndarray],
            cross: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:  # fmt: skip
        results = self.request.infer(dict(zip(self.input_names, [ids, bias, *past, *cross], strict=True)))
        logits, *present = (np.array(value, copy=True) for value in results.values())
        return logits, present


def open_ov_step(model: Any, path: str, cache_dir: Path, threads: int) -> tuple[OvStep, str]:
    """The INT8-weight IR (converted on first use) compiled for the CPU, and a note on what it is."""
    ir_path = exported_ir(model, path, cache_dir)
    step = OvStep(ir_path, model, threads)
    size = ir_path.with_suffix(".bin").stat().st_size / 1e6
    return step, f"{size:.0f} MB INT8-weight IR, {step.precision} activations, attention snippets off"
