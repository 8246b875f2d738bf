"""The bench's ONNX Runtime peer on the tiny model: it exports MusicGen's own step, reports, or says why not."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from motif.bench.onnx_export import DecoderStep, cross_kv, export_fp32
from motif.bench.peers import peer_onnxruntime
from motif.engine import models


def test_the_step_that_is_exported_gives_transformers_logits(model_cache: Path) -> None:
    from transformers import MusicgenForConditionalGeneration

    path = models.build_tiny_generator(model_cache)
    model = MusicgenForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    n_codebooks, width = model.decoder.config.num_codebooks, model.decoder.config.hidden_size
    states = torch.randn(2, 5, width)
    ids = torch.randint(0, 2048, (2, n_codebooks, 4))
    ids[:, :, 0] = 2048
    with torch.inference_mode():
        reference = model.decoder(input_ids=ids.reshape(-1, 4), encoder_hidden_states=states).logits
        step = DecoderStep(model).eval()
        n_heads = step.n_heads
        past = [torch.zeros(2, n_heads, 0, width // n_heads) for _ in range(2 * len(step.layers))]
        logits = []
        for t in range(4):
            out, *past = step(ids[:, :, t], torch.zeros(2, 1, 1, 5), *past, *cross_kv(model, states))
            logits.append(out)
    assert past[0].shape[2] == 4  # each step appended one position
    torch.testing.assert_close(torch.stack(logits, 2).reshape(reference.shape), reference, atol=1e-4, rtol=1e-4)


def test_onnxruntime_peer_measures_the_int8_step_and_caches_the_export(model_cache: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the bench extra (onnxruntime) is not installed")
    path = str(models.build_tiny_generator(model_cache))
    report = peer_onnxruntime(path, 0.2, tmp_path, quick=True)
    assert report["rtf"] is not None and math.isfinite(report["rtf"]) and report["rtf"] > 0, report["note"]
    assert set(report["step_ms"]) == {"2x1", "2x300", "8x1", "8x300"}
    assert report["fidelity"]["rel_err"] < 0.05 and report["fidelity"]["top1"] > 0.9  # int8 tracks fp32
    (exported,) = (tmp_path / "onnx-peer" / "onnxruntime").glob("*/decoder_step.int8.onnx")
    mtime = exported.stat().st_mtime_ns
    assert peer_onnxruntime(path, 0.2, tmp_path, quick=True)["rtf"] is not None
    assert exported.stat().st_mtime_ns == mtime  # the second run reused the export


def test_openvino_peer_measures_the_int8_weight_step(model_cache: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="the bench extra (openvino) is not installed")
    pytest.importorskip("nncf", reason="the bench extra (nncf) is not installed")
    from motif.bench.peers import peer_openvino

    report = peer_openvino(str(models.build_tiny_generator(model_cache)), 0.5, tmp_path, quick=True)
    assert report["rtf"] is not None and math.isfinite(report["rtf"]) and report["rtf"] > 0, report["note"]
    # INT8 weights alone give 0.0065 here; the broken attention kernel gave 0.025
    assert report["fidelity"]["rel_err"] < 0.015 and report["fidelity"]["top1"] > 0.9
    assert list((tmp_path / "onnx-peer" / "openvino").glob("*/decoder_step.int8.xml"))


def test_openvino_runs_the_fp32_step_as_torch_does_in_the_real_head_layout(tmp_path: Path) -> None:
    """From an empty past (a decode's first step) to 12 keys: OpenVINO's fused attention kernel, once run on 1 key,
    went wrong from 8 keys on. Two layers of 64-wide heads, as in every MusicGen checkpoint."""
    pytest.importorskip("openvino", reason="the bench extra (openvino) is not installed")
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    from motif.bench.ov_peer import OvStep

    config = MusicgenDecoderConfig(vocab_size=2048, hidden_size=256, num_attention_heads=4, ffn_dim=512,
                                   num_hidden_layers=2, num_codebooks=4, max_position_embeddings=64)  # fmt: skip
    model = SimpleNamespace(decoder=MusicgenForCausalLM(config).eval())
    export_fp32(model, tmp_path / "step.onnx")
    session, reference = OvStep(tmp_path / "step.onnx", model, 1), DecoderStep(model).eval()
    states, bias = torch.randn(2, 5, 256), torch.zeros(2, 1, 1, 5)
    past, past_t = session.zeros(2, 0), [torch.from_numpy(a) for a in session.zeros(2, 0)]
    with torch.inference_mode():
        cross_t = cross_kv(model, states)
        cross = [c.numpy() for c in cross_t]
        for _ in range(12):
            ids = torch.randint(0, 2048, (2, 4))
            want, *past_t = reference(ids, bias, *past_t, *cross_t)
            got, past = session.run(ids.numpy(), bias.numpy(), past, cross)
            torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=1e-4)
    assert past[0].shape[2] == 12


def test_a_peer_that_cannot_run_is_a_null_with_the_reason(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the bench extra (onnxruntime) is not installed")
    report = peer_onnxruntime(str(tmp_path / "no-model"), 0.2, tmp_path, quick=True)
    assert report["rtf"] is None and "failed" in report["note"]


def test_a_changed_model_gets_a_new_export_key(tmp_path: Path) -> None:
    from motif.bench.onnx_export import model_key

    (tmp_path / "config.json").write_text('{"hidden_size": 16}')
    (tmp_path / "model.safetensors").write_bytes(b"0" * 8)
    before = model_key(tmp_path, "1.0")
    assert model_key(tmp_path, "1.0") == before and model_key(tmp_path, "1.1") != before
    (tmp_path / "config.json").write_text('{"hidden_size": 32}')
    assert model_key(tmp_path, "1.0") != before


def test_the_comparison_table_has_a_row_per_runtime_and_the_reason_for_a_null() -> None:
    from motif.bench.compare import format_comparison

    steps = {"2x1": 10.0, "2x300": 12.0, "8x1": 20.0, "8x300": 30.0}
    result = {
        "machine": "m", "threads": 2, "bandwidth_gbs": 10.0, "seconds": 10.0, "baseline_rtf": 5.0,
        "motif_int8_rtf": 1.0, "motif_int8_step_ms": steps, "motif_int8_fidelity": {"rel_err": 0.02, "top1": 0.9},
        "motif_int8_weight_mb_per_step": 380.0, "peer_onnxruntime_rtf": 3.0, "peer_openvino_rtf": None,
        "peer_notes": {"onnxruntime": "int8", "openvino": "not run: openvino not installed"},
        "peer_step_ms": {"onnxruntime": steps}, "peer_fidelity": {"onnxruntime": {"rel_err": 0.03, "top1": 0.95}},
    }  # fmt: skip
    lines = format_comparison(result).splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["transformers", "Motif", "peer:", "peer:"]
    assert "not run: openvino not installed" in lines[-1] and "n/a" in lines[-1]
    assert "10.0 / 12.0" in lines[4] and "0.0300" in lines[4]
