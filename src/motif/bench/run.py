"""The benchmark's stages (a)-(d), the run that strings them together, its table and the CLI entry point."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from motif.bench.builders import SHAPES, build_clap_htsat_unfused, build_musicgen
from motif.bench.fidelity import PROMPT, codec_snr, fidelity
from motif.bench.live import time_to_first_audio
from motif.bench.machine import (
    cpu_features,
    cpu_name,
    measure_bandwidth,
    measure_matmul_flops,
    peak_rss_gb,
    reset_peak_rss,
    rss_parts_gb,
    server_cold_start,
    timed,
)
from motif.bench.peers import run_peers
from motif.config import Settings
from motif.engine import kernels, models
from motif.engine.cpuops import Bf16Linear
from motif.engine.decoder import StaticCacheDecoder
from motif.engine.generator import DecodeTask, MusicGenerator
from motif.engine.types import CLAP_SAMPLE_RATE, FRAMES_PER_SECOND, SAMPLE_RATE, GenerationMode, GenerationParams


def baseline_generate(path: str, seconds: float) -> float:
    """(a) Stock transformers: fp32 `generate` with CFG 3, batch 1. Returns wall seconds."""
    from transformers import (
        AutoConfig,
        AutoProcessor,
        MusicgenForConditionalGeneration,
        MusicgenMelodyForConditionalGeneration,
    )

    melody = AutoConfig.from_pretrained(path).model_type == "musicgen_melody"
    cls = MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
    model = cls.from_pretrained(path, dtype=torch.float32).eval()
    try:
        processor = AutoProcessor.from_pretrained(path)
        inputs = processor(text=[PROMPT], padding=True, return_tensors="pt")
    except (OSError, ValueError, TypeError):  # no processor saved: the tokenizer is what it would wrap
        from transformers import AutoTokenizer

        inputs = AutoTokenizer.from_pretrained(path)([PROMPT], padding=True, return_tensors="pt")
    n_tokens = round(seconds * FRAMES_PER_SECOND) + model.decoder.config.num_codebooks - 1
    with torch.inference_mode():
        model.generate(**inputs, do_sample=True, guidance_scale=3.0, max_new_tokens=8)  # warm-up
        start = time.perf_counter()
        model.generate(**inputs, do_sample=True, guidance_scale=3.0, max_new_tokens=n_tokens)
        return time.perf_counter() - start


def motif_generate(generator: MusicGenerator, seconds: float, seed: int = 1) -> float:
    """(b) Motif's decode loop on the same request (text only). Returns wall seconds."""
    outcome: dict[str, Any] = {}
    task = DecodeTask(
        key="bench", text=PROMPT, params=GenerationParams(duration=seconds, seed=seed), seed=seed,
        n_frames=round(seconds * FRAMES_PER_SECOND), on_done=lambda o: outcome.setdefault("o", o),
    )  # fmt: skip
    start = time.perf_counter()
    generator.run([task])
    elapsed = time.perf_counter() - start
    if isinstance(outcome.get("o"), BaseException):
        raise outcome["o"]
    return elapsed


def motif_batch(engine: Any, seconds: float, n_jobs: int, source: np.ndarray) -> float:
    """(c) n_jobs concurrent requests through Engine.run_batch (the service worker's path). Wall seconds."""
    from motif.engine.pipeline import GenerationJob

    results: list[Any] = []
    jobs = [
        GenerationJob(source, GenerationParams(duration=seconds, seed=i, mode=GenerationMode.CONTINUATION,
                                               temperature=1.0 + 0.1 * i), on_done=results.append, key=f"job{i}")
        for i in range(n_jobs)
    ]  # fmt: skip
    start = time.perf_counter()
    engine.run_batch(jobs)
    elapsed = time.perf_counter() - start
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures or len(results) != n_jobs:
        raise RuntimeError(f"batched jobs failed: {failures[:1]}")
    return elapsed


@torch.inference_mode()
def decode_step_ms(decoder: StaticCacheDecoder, n_rows: int, n_positions: int, repeats: int) -> float:
    """Median wall ms of one decode step for n_rows rows that each already hold n_positions keys.

    Cost depends on shapes, not on what the cache holds, so the rows' lengths are set rather than generated.
    The slots are left dirty: a later job's prefill starts them afresh.
    """
    decoder.reserve(n_rows)
    tokens = torch.zeros(n_rows, decoder.n_codebooks, dtype=torch.long)

    def step() -> None:
        decoder.lengths[:n_rows] = [n_positions] * n_rows
        decoder._ensure_capacity(n_positions + 1)
        decoder._key_ok[:n_rows, : n_positions + 1] = True
        decoder.step(tokens)

    step()
    return timed(step, repeats)[0] * 1e3


def clap_stock(path: str, track: np.ndarray, repeats: int) -> float:
    """(d) Stock CLAP as a user would call it: fp32, the feature extractor's defaults, one call."""
    from transformers import ClapFeatureExtractor, ClapModel

    model = ClapModel.from_pretrained(path, dtype=torch.float32).eval()
    extractor = ClapFeatureExtractor.from_pretrained(path)

    def embed() -> Any:
        with torch.inference_mode():
            inputs = extractor(track, sampling_rate=CLAP_SAMPLE_RATE, return_tensors="pt")
            return model.get_audio_features(**inputs)

    embed()
    seconds, _ = timed(embed, repeats)
    return seconds


def _music(seconds: float, rate: int) -> np.ndarray:
    """A few seconds of synthetic music-like audio (two voices, an envelope), mono float32."""
    t = np.arange(int(seconds * rate)) / rate
    voice = np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 330 * t + np.sin(2 * np.pi * 0.5 * t))
    return (0.2 * voice * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))).astype(np.float32)


def _settings(cache_dir: Path, generation: str, embedding: str, precision: str, data_dir: Path,
              cpu_path: str = "auto") -> Settings:  # fmt: skip
    return Settings(generation_model=generation, embedding_model=embedding, generation_precision=precision,
                    model_cache_dir=cache_dir, allow_model_download=False, data_dir=data_dir,
                    cpu_path=cpu_path)  # fmt: skip


def decoder_path(decoder: StaticCacheDecoder) -> str:
    """Which code a decode step runs: kernel library, fused step, torch."""
    if decoder.precision == "int8":
        library = "avx2" if decoder._kernel is kernels.load_kernel("avx2") else "avx512"
        return f"int8 kernels ({library}){', one fused call per step' if decoder._fused else ''}"
    if decoder.precision == "bf16":
        linear = "bf16_linear kernel" if isinstance(decoder.layers[0].qkv, Bf16Linear) else "torch bf16 matmul"
        return f"bf16: {linear}{', attention kernel' if decoder._kernel_attention else ''}"
    return f"{decoder.precision}: torch"


def run_bench(quick: bool = False, cache_dir: Path | None = None, precisions: tuple[str, ...] = ("bf16", "int8"),
              log: Callable[[str], None] = print, shape: str = "small") -> dict[str, Any]:  # fmt: skip
    """Run every stage and return the results (the JSON line's dict). quick: tiny models, short runs."""
    cache_dir = Path(cache_dir or Settings().model_cache_dir)
    seconds = 1.0 if quick else 10.0
    if quick:
        generation, embedding = str(models.build_tiny_generator(cache_dir)), str(models.build_tiny_clap(cache_dir))
    else:
        log("building or reusing the random-weight models (first run: about a minute)")
        generation, embedding = str(build_musicgen(cache_dir, shape)), str(build_clap_htsat_unfused(cache_dir))
    data_dir = Path(tempfile.mkdtemp(prefix="motif-bench-"))
    result: dict[str, Any] = {"quick": quick, "shape": "tiny" if quick else shape, "seconds": seconds,
                              "date": datetime.date.today().isoformat(),
                              "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
                              "threads": torch.get_num_threads(), "cpu_features": cpu_features(),
                              "cpu_path": kernels.resolve_cpu_path()}  # fmt: skip
    log("server cold start")
    env = {"GENERATION_MODEL": generation, "EMBEDDING_MODEL": embedding, "MODEL_CACHE_DIR": str(cache_dir),
           "ALLOW_MODEL_DOWNLOAD": "false", "DATA_DIR": str(data_dir / "server")}  # fmt: skip
    result["cold_start_s"] = server_cold_start(env)
    log(f"time to first audio over HTTP: {max(5.0, seconds):g} s continuation, streamed")
    live_env = {**env, "DATA_DIR": str(data_dir / "live")}
    result.update(time_to_first_audio(live_env, max(5.0, seconds), _music(12.0, SAMPLE_RATE)))
    log("machine: bandwidth and matmul FLOP/s")
    bandwidth = measure_bandwidth((64 if quick else 1024) * 2**20)
    flops = {str(d).split(".")[-1]: measure_matmul_flops(256 if quick else 2048, d)
             for d in (torch.float32, torch.bfloat16)}  # fmt: skip
    result["bandwidth_gbs"] = bandwidth / 1e9
    result["matmul_gflops"] = {k: v / 1e9 for k, v in flops.items()}
    log("(b) Motif at its defaults, (c) batched jobs, (d) CLAP: one Engine, as the service holds it")
    track = _music(60.0, CLAP_SAMPLE_RATE)
    settings = _settings(cache_dir, generation, embedding, Settings().generation_precision, data_dir)
    result.update(_motif_stages(settings, seconds, track, repeats=1 if quick else 3))
    result["floor_step_ms_bandwidth"] = result.pop("weight_bytes_per_step") / bandwidth * 1e3
    result["floor_rtf_bandwidth"] = result["floor_step_ms_bandwidth"] / 1e3 * FRAMES_PER_SECOND
    row_flops = 2 * result.pop("macs_per_row")
    result["floor_rtf_flops"] = 2 * row_flops / flops["bfloat16"] * FRAMES_PER_SECOND
    result["floor_step_ms_flops_8_rows"] = 8 * row_flops / flops["bfloat16"] * 1e3
    rtf_by_precision = {result["precision"]: result["motif_rtf"]}
    for precision in dict.fromkeys(precisions):
        if precision not in rtf_by_precision:
            log(f"Motif at GENERATION_PRECISION={precision}")
            other = _settings(cache_dir, generation, embedding, precision, data_dir)
            rtf_by_precision[precision], result["paths"][precision] = _motif_rtf(other, seconds)
    result["rtf_by_precision"] = rtf_by_precision
    result.update(_avx2_stage(cache_dir, generation, embedding, data_dir, seconds, result, log))
    log("peers: transformers + torchao int8 (+ torch.compile), OpenVINO, ONNX Runtime")
    result.update(run_peers(generation, seconds, quick, cache_dir))
    log("(a) baseline: transformers generate, fp32, CFG 3, batch 1")
    result["baseline_rtf"] = baseline_generate(generation, seconds) / seconds
    log("(d) stock CLAP")
    result["clap60_stock_s"] = clap_stock(embedding, track, repeats=1 if quick else 3)
    n_steps = 16 if quick else 200
    log(f"fidelity: {n_steps} teacher-forced steps against float32 on the same weights; EnCodec bf16")
    fidelity_precisions = [result["precision"], *precisions] + (["int8-avx2"] if result["avx2_rtf"] else [])
    result.update(_fidelity_stage(generation, cache_dir, n_steps, fidelity_precisions, seconds))
    return result


def _avx2_stage(cache_dir: Path, generation: str, embedding: str, data_dir: Path, seconds: float,
                result: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """int8 on the AVX2 library (what a laptop without AVX-512 runs), here; None where this CPU lacks AVX2."""
    if result["cpu_path"] == "avx2" and result["precision"] == "int8":
        return {"avx2_rtf": result["motif_rtf"]}
    if kernels.load_kernel("avx2") is None:
        result["paths"]["int8-avx2"] = f"not run: {kernels.kernel_error('avx2')}"
        return {"avx2_rtf": None}
    log("Motif int8 on the AVX2 kernels (CPU_PATH=avx2)")
    settings = _settings(cache_dir, generation, embedding, "int8", data_dir, cpu_path="avx2")
    try:
        rtf, result["paths"]["int8-avx2"] = _motif_rtf(settings, seconds)
    finally:
        kernels.select_cpu_path("auto")
    return {"avx2_rtf": rtf}


def _motif_stages(settings: Settings, seconds: float, track: np.ndarray, repeats: int) -> dict[str, Any]:
    """(b), (c) and Motif's (d) on one Engine, with the peak RSS of it all."""
    from motif.engine.pipeline import Engine

    reset_peak_rss()
    engine = Engine(settings)
    start = time.perf_counter()
    generator = engine.generator
    engine.embedder  # noqa: B018 - load both models, as a warmed-up server holds them
    out: dict[str, Any] = {"load_s": time.perf_counter() - start, "precision": generator.decoder.precision,
                           "paths": {generator.decoder.precision: decoder_path(generator.decoder)}}  # fmt: skip
    motif_generate(generator, 0.5)  # warm-up: kernels, allocator, caches
    out["motif_rtf"] = timed(lambda: motif_generate(generator, seconds), repeats)[0] / seconds
    n_jobs, source = 4, _music(4.0, SAMPLE_RATE)
    motif_batch(engine, 0.5, 1, source)  # warm-up of the job path (prompt encoding, finishing), as a server's
    out["batch4_s_per_audio_s"] = motif_batch(engine, seconds, n_jobs, source) / (n_jobs * seconds)
    out["step_ms"] = {f"{rows}x{positions}": decode_step_ms(generator.decoder, rows, positions, 5 if repeats > 1 else 1)
                      for rows in (2, 8) for positions in (1, 300)}  # fmt: skip
    engine.embed_audio(track, CLAP_SAMPLE_RATE)
    out["clap60_motif_s"] = timed(lambda: engine.embed_audio(track, CLAP_SAMPLE_RATE), repeats)[0]
    out["peak_rss_gb"] = peak_rss_gb()
    out.update(rss_parts_gb())
    out["weight_mb_per_step"] = generator.decoder.weight_bytes_per_step() / 1e6
    out["weight_bytes_per_step"] = generator.decoder.weight_bytes_per_step()
    out["macs_per_row"] = generator.decoder.macs_per_row()
    return out


def _motif_rtf(settings: Settings, seconds: float) -> tuple[float, str]:
    """RTF of one job on a fresh Engine with these settings, and the path its decoder took."""
    from motif.engine.pipeline import Engine

    generator = Engine(settings).generator
    motif_generate(generator, 0.5)
    return motif_generate(generator, seconds) / seconds, decoder_path(generator.decoder)


def _fidelity_stage(
    generation: str, cache_dir: Path, n_steps: int, precisions: list[str], seconds: float
) -> dict[str, Any]:
    loaded = models.load_generator(generation, torch.device("cpu"), torch.float32, cache_dir, False)
    report = fidelity(loaded, n_steps, [p for p in dict.fromkeys(precisions) if p != "fp32"])
    default = report.get(precisions[0], {"rel_err": 0.0, "top1": 1.0})
    snr, fp32_s, bf16_s = codec_snr(loaded.model.audio_encoder, round(seconds * FRAMES_PER_SECOND), torch.bfloat16)
    return {"fidelity_by_precision": report, "logits_rel_err": default["rel_err"], "top1_agreement": default["top1"],
            "codec_snr_db": snr, "codec_fp32_s": fp32_s, "codec_bf16_s": bf16_s}  # fmt: skip


def format_table(result: dict[str, Any]) -> str:
    """The human-readable summary printed before the JSON line."""
    secs = result["seconds"]
    features = result.get("cpu_features", {})
    rows = [
        ("machine", result["machine"], ""),
        ("CPU features", " ".join(n for n, ok in features.items() if ok) or "none known",
         "lacks " + (" ".join(n for n, ok in features.items() if not ok) or "nothing")),
        *[(f"    path at {p}", path, "") for p, path in result.get("paths", {}).items()],
        ("(a) baseline: transformers generate fp32, CFG 3, batch 1", f"RTF {result['baseline_rtf']:.2f}",
         f"{secs:g} s"),
        (f"(b) Motif defaults ({result['precision']})", f"RTF {result['motif_rtf']:.2f}",
         f"{result['baseline_rtf'] / result['motif_rtf']:.1f}x faster"),
        *[(f"    Motif at {p}", f"RTF {v:.2f}", "") for p, v in result["rtf_by_precision"].items()],
        ("    Motif int8 on the AVX2 kernels (laptops)", _rtf(result.get("avx2_rtf")),
         _ratio(result.get("avx2_rtf"), result["rtf_by_precision"].get("int8"), "x the AVX-512 int8 RTF")),
        *[(f"peer: {name}", _rtf(result.get(f"peer_{name}_rtf")), note)
          for name, note in result.get("peer_notes", {}).items()],
        *[(f"    {name} step, 2 rows: new / at 300 positions", f"{ms['2x1']:.1f} / {ms['2x300']:.1f} ms",
           f"8 rows: {ms['8x1']:.1f} / {ms['8x300']:.1f} ms") for name, ms in result.get("peer_step_ms", {}).items()],
        ("(c) 4 jobs batched (Engine.run_batch, 4 s source)", f"{result['batch4_s_per_audio_s']:.2f} s/audio s", ""),
        ("(d) CLAP 60 s track: stock fp32 (one 10 s crop)", f"{result['clap60_stock_s']:.2f} s", ""),
        ("    CLAP 60 s track: Motif (all six windows)", f"{result['clap60_motif_s']:.2f} s", ""),
        ("server cold start to /api/health", "n/a" if result["cold_start_s"] is None else
         f"{result['cold_start_s']:.2f} s", ""),
        ("time to first audio over HTTP (POST to first PCM), new upload", f"{result.get('ttfa_s', float('nan')):.2f} s",
         f"stream of {result.get('stream_audio_s', 0):g} s ended at {result.get('stream_end_s', float('nan')):.2f} s"),
        ("    again on the same upload (prompt codes kept)", f"{result.get('ttfa_again_s', float('nan')):.2f} s", ""),
        ("    asked the moment the upload answered", f"{result.get('ttfa_at_upload_s', float('nan')):.2f} s",
         "its prompt encoded then, not at ingest"),
        ("peak RSS, both models loaded and used", f"{result['peak_rss_gb']:.2f} GB",
         f"now {result.get('rss_anon_gb', 0):.2f} GB anon + {result.get('rss_file_gb', 0):.2f} GB file-backed"),
        ("decode step weights", f"{result['weight_mb_per_step']:.0f} MB", f"{result['bandwidth_gbs']:.1f} GB/s read"),
        ("floor RTF: weights / bandwidth", f"{result['floor_rtf_bandwidth']:.2f}",
         f"{result['floor_step_ms_bandwidth']:.1f} ms per step"),
        ("decode step, 2 rows (one job): new / at 300 positions",
         f"{result['step_ms']['2x1']:.1f} / {result['step_ms']['2x300']:.1f} ms", ""),
        ("decode step, 8 rows (four jobs): new / at 300 positions",
         f"{result['step_ms']['8x1']:.1f} / {result['step_ms']['8x300']:.1f} ms",
         f"FLOP floor {result['floor_step_ms_flops_8_rows']:.1f} ms"),
        ("floor RTF: FLOPs / bf16 matmul FLOP/s", f"{result['floor_rtf_flops']:.3f}",
         f"{result['matmul_gflops']['bfloat16']:.0f} GFLOP/s"),
        *[(f"fidelity {p} vs fp32 (teacher-forced)", f"rel err {v['rel_err']:.4f}", f"top-1 {v['top1']:.4f}")
          for p, v in result["fidelity_by_precision"].items()],
        *[(f"fidelity peer {name} vs fp32 (teacher-forced)", f"rel err {v['rel_err']:.4f}", f"top-1 {v['top1']:.4f}")
          for name, v in result.get("peer_fidelity", {}).items()],
        ("EnCodec decode bf16 vs fp32", f"SNR {result['codec_snr_db']:.1f} dB",
         f"{result['codec_fp32_s']:.2f} s -> {result['codec_bf16_s']:.2f} s"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value:<22} {note}".rstrip() for name, value, note in rows)


def _rtf(value: float | None) -> str:
    return "n/a" if value is None else f"RTF {value:.2f}"


def _ratio(value: float | None, reference: float | None, what: str) -> str:
    return "" if value is None or not reference else f"{value / reference:.2f}{what}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="motif bench", description="Motif against stock transformers, here.")
    parser.add_argument("--quick", action="store_true", help="tiny models, short runs: CI smoke, no meaning")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: MODEL_CACHE_DIR")
    parser.add_argument("--precisions", default="bf16,int8", help="also time these GENERATION_PRECISIONs")
    parser.add_argument("--shape", default="small", choices=SHAPES, help="the MusicGen architecture to build")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    result = run_bench(args.quick, args.cache_dir, tuple(p for p in args.precisions.split(",") if p), log, args.shape)
    result["bench_s"] = time.perf_counter() - started
    print(format_table(result))
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0

