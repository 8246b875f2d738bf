"""`motif bench --quick` runs every stage end to end on the tiny models and ends with the JSON line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from motif import bench

REQUIRED_KEYS = {
    "baseline_rtf", "motif_rtf", "batch4_s_per_audio_s", "clap60_stock_s", "clap60_motif_s", "cold_start_s",
    "peak_rss_gb", "floor_rtf_bandwidth", "floor_rtf_flops", "logits_rel_err", "top1_agreement", "ttfa_s",
    "ttfa_again_s", "ttfa_at_upload_s",
}  # fmt: skip


def test_quick_bench_prints_a_table_then_one_json_line_with_every_key(
    model_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(["--quick", "--cache-dir", str(model_cache)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert set(result) >= REQUIRED_KEYS
    assert any(line.startswith("(a) baseline") for line in lines[:-1])
    for key in REQUIRED_KEYS - {"cold_start_s"}:  # no timing assertions: only that each was measured
        assert isinstance(result[key], float) and result[key] >= 0, key
    assert 0.0 <= result["top1_agreement"] <= 1.0
    assert set(result["rtf_by_precision"]) >= {"bf16", "int8"}
    peers = {"peer_torchao_rtf", "peer_openvino_rtf", "peer_onnxruntime_rtf"}
    assert set(result) >= {"avx2_rtf", "cpu_features", "paths", *peers}
    for key in {"avx2_rtf", *peers}:  # a figure, or null with the reason in the table
        name = key.removeprefix("peer_").removesuffix("_rtf")
        assert result[key] is None or result[key] > 0, key
        if key in peers:
            assert result["peer_notes"][name], key
    assert {"AVX2+FMA", "AVX-512", "AVX512-VNNI", "AVX512-BF16", "AMX"} <= set(result["cpu_features"])
    table = "\n".join(lines[:-1])
    assert "CPU features" in table and f"path at {result['precision']}" in table
    if result["cpu_features"]["AVX2+FMA"]:  # every x86-64 CI machine: the laptop path is measured and checked
        assert result["avx2_rtf"] is not None and "int8-avx2" in result["fidelity_by_precision"]


def test_the_table_says_so_when_the_server_did_not_answer() -> None:
    result = {
        "machine": "m", "seconds": 1.0, "baseline_rtf": 2.0, "motif_rtf": 1.0, "precision": "bf16",
        "rtf_by_precision": {"bf16": 1.0}, "batch4_s_per_audio_s": 0.5, "clap60_stock_s": 0.1,
        "clap60_motif_s": 0.1, "cold_start_s": None, "peak_rss_gb": 1.0, "weight_mb_per_step": 1.0,
        "bandwidth_gbs": 10.0, "floor_rtf_bandwidth": 0.1, "floor_rtf_flops": 0.01,
        "matmul_gflops": {"bfloat16": 100.0}, "fidelity_by_precision": {"bf16": {"rel_err": 0.01, "top1": 0.99}},
        "codec_snr_db": 40.0, "codec_fp32_s": 1.0, "codec_bf16_s": 0.5, "floor_step_ms_bandwidth": 2.0,
        "floor_step_ms_flops_8_rows": 3.0, "step_ms": {"2x1": 1.0, "2x300": 1.5, "8x1": 2.0, "8x300": 3.0},
    }  # fmt: skip
    table = bench.format_table(result)
    assert "n/a" in table and "2.0x faster" in table
    result.update(avx2_rtf=None, peer_torchao_rtf=None, peer_notes={"torchao": "torchao not importable here"},
                  cpu_features={"AVX2+FMA": True, "AMX": False}, paths={"bf16": "bf16: torch bf16 matmul"})  # fmt: skip
    table = bench.format_table(result)
    assert "peer: torchao" in table and "torchao not importable here" in table
    assert "lacks AMX" in table and "path at bf16" in table


def test_the_mixed_load_bench_times_an_embedding_during_a_generation_both_ways(
    model_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from motif.bench import mixed

    assert mixed.main(["--quick", "--cache-dir", str(model_cache), "--seconds", "2", "--rounds", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("budget", "full teams"):
        figures = result["medians"][name]
        assert set(figures) == {"embed_alone_s", "generate_alone_s", "embed_mixed_s", "generate_mixed_s"}
        assert all(value > 0 for value in figures.values())
