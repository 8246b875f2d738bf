"""`python -m motif.bench [--quick]` (also `motif bench`): Motif against stock transformers, on this machine.

Builds random-weight models of the real architectures once (musicgen-small: T5-base, a 24-layer
1024-wide decoder over 4 codebooks, EnCodec 32 kHz, 587M parameters; CLAP-HTSAT-unfused at
`ClapConfig()` defaults, 154M) into MODEL_CACHE_DIR; speed depends on the shapes, not on the weights.
Then, in one process: (a) the baseline a user would write (transformers `generate`, fp32, CFG 3, batch 1);
(b) Motif's generator at its defaults on the same request; (c) 4 concurrent jobs through
`Engine.run_batch`; (d) CLAP on a 60 s track, stock vs Motif; server cold start; peak memory; the
bandwidth and FLOP floors of a decode step; and the fidelity of the fast paths against float32 on the
same weights (teacher-forced logits, EnCodec SNR). Prints a table, then one JSON line last.
`--quick` runs every stage on the tiny models, for CI smoke (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from motif.config import Settings
from motif.engine import models
from motif.engine.codec import cast_codec_decoder, snr_db
from motif.engine.decoder import StaticCacheDecoder
from motif.engine.generator import DecodeTask, MusicGenerator
from motif.engine.types import CLAP_SAMPLE_RATE, FRAMES_PER_SECOND, SAMPLE_RATE, GenerationMode, GenerationParams

BENCH_BUILD_VERSION = "1"
PROMPT = "upbeat rock with piano and drums"
GENERATION_MODEL_DIR = f"bench-musicgen-small-v{BENCH_BUILD_VERSION}"
EMBEDDING_MODEL_DIR = f"bench-clap-htsat-unfused-v{BENCH_BUILD_VERSION}"


# -------------------------------------------------------------------------------------------- models


def build_musicgen_small(cache_dir: Path) -> Path:
    """Random musicgen-small (587M parameters) in the real architecture, built once under cache_dir."""
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    def build(tmp: Path) -> None:
        text = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
        audio = EncodecConfig(
            sampling_rate=SAMPLE_RATE, upsampling_ratios=[8, 5, 4, 4], codebook_size=2048, codebook_dim=128,
            hidden_size=128, num_filters=64, num_lstm_layers=2, target_bandwidths=[2.2], normalize=False,
            chunk_length_s=None, overlap=None, use_causal_conv=False, audio_channels=1,
        )  # fmt: skip
        decoder = MusicgenDecoderConfig(
            vocab_size=2048, num_codebooks=4, hidden_size=1024, ffn_dim=4096, num_hidden_layers=24,
            num_attention_heads=16, max_position_embeddings=2048, pad_token_id=2048, bos_token_id=2048,
            decoder_start_token_id=2048, audio_channels=1,
        )  # type: ignore[call-arg]  # fmt: skip
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=text, audio_encoder=audio,
                                                                    decoder=decoder))  # fmt: skip
            models.randomize_codebooks(model.audio_encoder)
        models._tiny_generation_config(model)
        model.save_pretrained(tmp)
        models._tiny_t5_tokenizer().save_pretrained(tmp)

    return models._build_once(Path(cache_dir) / GENERATION_MODEL_DIR, build)


def build_clap_htsat_unfused(cache_dir: Path) -> Path:
    """Random CLAP-HTSAT-unfused (`ClapConfig()` defaults, 154M parameters), built once under cache_dir."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    def build(tmp: Path) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = ClapModel(ClapConfig(projection_dim=512))
        model.save_pretrained(tmp)
        ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad").save_pretrained(tmp)
        models._tiny_roberta_tokenizer().save_pretrained(tmp)

    return models._build_once(Path(cache_dir) / EMBEDDING_MODEL_DIR, build)


# -------------------------------------------------------------------------------------------- machine


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall seconds of repeats calls (after none: callers warm up themselves), and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def measure_bandwidth(n_bytes: int) -> float:
    """Read bandwidth in bytes/s: summing a float32 tensor far larger than the caches, best of 10 (a floor
    wants what the machine can do, not what a neighbour's process left of it)."""
    x = torch.ones(n_bytes // 4)
    x.sum()
    best = min(_timed(lambda: x.sum(), 1)[0] for _ in range(10))
    return n_bytes / best


def measure_matmul_flops(n: int, dtype: torch.dtype) -> float:
    """FLOP/s of an n x n x n matmul in dtype, best of 5."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b, 1)[0] for _ in range(5))
    return 2 * n**3 / best


def peak_rss_gb() -> float:
    """Peak resident set size since the last reset_peak_rss (VmHWM), in GB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: restart VmHWM from the current RSS


def rss_parts_gb() -> dict[str, float]:
    """Current RSS split into anonymous memory and file-backed pages (mmapped safetensors count here)."""
    parts = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("RssAnon:", "RssFile:")):
                parts[f"rss_{line[3:7].lower()}_gb"] = int(line.split()[1]) * 1024 / 1e9
    return parts


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -------------------------------------------------------------------------------------------- stages


def baseline_generate(path: str, seconds: float) -> float:
    """(a) Stock transformers: fp32 `generate` with CFG 3, batch 1. Returns wall seconds."""
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
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
    seconds, _ = _timed(embed, repeats)
    return seconds


def teacher_forced_logits(decoder: StaticCacheDecoder, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CFG pair (cond, uncond) fed the same (steps, K) tokens -> (steps + 1, 2, K, vocab) float32 logits."""
    decoder.reserve(2)
    ok = torch.ones(states.shape[0], dtype=torch.bool)
    start = torch.full((tokens.shape[1], 1), 2048)
    uncond = torch.zeros_like(states)
    out = [torch.stack([decoder.prefill(0, start, states, ok), decoder.prefill(1, start, uncond, ok)])]
    for row in tokens:
        out.append(decoder.step(torch.stack([row, row])))
    return torch.stack(out)


def fidelity(loaded: models.LoadedGenerator, n_steps: int, precisions: list[str]) -> dict[str, dict[str, float]]:
    """Each precision's decoder against float32 on the same weights, teacher-forced on float32's own samples.

    loaded must hold the model in float32; it is not modified. Returns {precision: {rel_err, top1}}:
    the median over steps and rows of |logits - ref| / |ref|, and the share of (step, row, codebook)
    argmaxes that agree.
    """
    generator = MusicGenerator(loaded)
    states = generator._encode_text(PROMPT)
    reference_model = copy.deepcopy(loaded.model)
    ref_decoder = StaticCacheDecoder(reference_model, loaded.is_melody, n_steps + 8)
    tokens = _sample_tokens(ref_decoder, states, n_steps)
    ref_decoder = StaticCacheDecoder(reference_model, loaded.is_melody, n_steps + 8)
    reference = teacher_forced_logits(ref_decoder, states, tokens)
    del ref_decoder, reference_model
    report = {}
    for precision in precisions:
        decoder = _decoder_in(loaded.model, loaded.is_melody, precision, n_steps + 8)
        logits = teacher_forced_logits(decoder, states, tokens)
        rel = (logits - reference).norm(dim=-1) / reference.norm(dim=-1)
        top1 = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
        report[precision] = {"rel_err": float(rel.median()), "top1": float(top1)}
    return report


def _sample_tokens(decoder: StaticCacheDecoder, states: torch.Tensor, n_steps: int) -> torch.Tensor:
    """n_steps CFG-3 samples (steps, K) from the float32 decoder, so teacher forcing follows its own path."""
    generator = torch.Generator().manual_seed(0)
    decoder.reserve(2)
    ok = torch.ones(states.shape[0], dtype=torch.bool)
    start = torch.full((decoder.n_codebooks, 1), 2048)
    uncond = torch.zeros_like(states)
    logits = torch.stack([decoder.prefill(0, start, states, ok), decoder.prefill(1, start, uncond, ok)])
    rows = []
    for _ in range(n_steps):
        guided = logits[1] + 3.0 * (logits[0] - logits[1])
        row = torch.multinomial(guided.softmax(-1), 1, generator=generator)[:, 0]
        rows.append(row)
        logits = decoder.step(torch.stack([row, row]))
    return torch.stack(rows)


def _decoder_in(model: Any, is_melody: bool, precision: str, max_len: int) -> StaticCacheDecoder:
    copied = copy.deepcopy(model)
    dtype = models.resolve_dtype(precision, torch.device("cpu"))
    copied.decoder.to(dtype)
    return StaticCacheDecoder(copied, is_melody, max_len, int8=precision == "int8")


def codec_snr(codec: Any, n_frames: int, dtype: torch.dtype) -> tuple[float, float, float]:
    """EnCodec decode of random codes: float32 vs dtype. Returns (snr_db, fp32 seconds, dtype seconds)."""
    codes = torch.randint(0, codec.config.codebook_size, (1, 1, codec.quantizer.get_num_quantizers_for_bandwidth(
        codec.config.target_bandwidths[0]), n_frames))  # fmt: skip
    fast = copy.deepcopy(codec)
    cast_codec_decoder(fast, dtype)
    with torch.inference_mode():
        codec.decode(codes, [None])
        fp32_s, reference = _timed(lambda: codec.decode(codes, [None]).audio_values, 1)
        fast.decode(codes, [None])
        fast_s, audio = _timed(lambda: fast.decode(codes, [None]).audio_values, 1)
    return snr_db(reference, audio), fp32_s, fast_s


def server_cold_start(settings_env: dict[str, str], timeout: float = 60.0) -> float | None:
    """Seconds from `uvicorn` launch to the first answer of GET /api/health (None if it never answers)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, **settings_env}
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "motif.service.api.app:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while time.perf_counter() - start < timeout:
            if process.poll() is not None:
                return None
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                    if response.status < 500:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.05)
        return None
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


# -------------------------------------------------------------------------------------------- the run


def _music(seconds: float, rate: int) -> np.ndarray:
    """A few seconds of synthetic music-like audio (two voices, an envelope), mono float32."""
    t = np.arange(int(seconds * rate)) / rate
    voice = np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 330 * t + np.sin(2 * np.pi * 0.5 * t))
    return (0.2 * voice * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))).astype(np.float32)


def _settings(cache_dir: Path, generation: str, embedding: str, precision: str, data_dir: Path) -> Settings:
    return Settings(generation_model=generation, embedding_model=embedding, generation_precision=precision,
                    model_cache_dir=cache_dir, allow_model_download=False, data_dir=data_dir)


def run_bench(quick: bool = False, cache_dir: Path | None = None, precisions: tuple[str, ...] = ("bf16", "int8"),
              log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Run every stage and return the results (the JSON line's dict). quick: tiny models, short runs."""
    cache_dir = Path(cache_dir or Settings().model_cache_dir)
    seconds = 1.0 if quick else 10.0
    if quick:
        generation, embedding = str(models.build_tiny_generator(cache_dir)), str(models.build_tiny_clap(cache_dir))
    else:
        log("building or reusing the random-weight models (first run: about a minute)")
        generation, embedding = str(build_musicgen_small(cache_dir)), str(build_clap_htsat_unfused(cache_dir))
    data_dir = Path(tempfile.mkdtemp(prefix="motif-bench-"))
    result: dict[str, Any] = {"quick": quick, "seconds": seconds, "date": datetime.date.today().isoformat(),
                              "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
                              "threads": torch.get_num_threads()}  # fmt: skip
    log("server cold start")
    env = {"GENERATION_MODEL": generation, "EMBEDDING_MODEL": embedding, "MODEL_CACHE_DIR": str(cache_dir),
           "ALLOW_MODEL_DOWNLOAD": "false", "DATA_DIR": str(data_dir / "server")}  # fmt: skip
    result["cold_start_s"] = server_cold_start(env)
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
    result["floor_rtf_bandwidth"] = result.pop("weight_bytes_per_step") / bandwidth * FRAMES_PER_SECOND
    result["floor_rtf_flops"] = 2 * 2 * result.pop("macs_per_row") / flops["bfloat16"] * FRAMES_PER_SECOND
    rtf_by_precision = {result["precision"]: result["motif_rtf"]}
    for precision in dict.fromkeys(precisions):
        if precision not in rtf_by_precision:
            log(f"Motif at GENERATION_PRECISION={precision}")
            other = _settings(cache_dir, generation, embedding, precision, data_dir)
            rtf_by_precision[precision] = _motif_rtf(other, seconds)
    result["rtf_by_precision"] = rtf_by_precision
    log("(a) baseline: transformers generate, fp32, CFG 3, batch 1")
    result["baseline_rtf"] = baseline_generate(generation, seconds) / seconds
    log("(d) stock CLAP")
    result["clap60_stock_s"] = clap_stock(embedding, track, repeats=1 if quick else 3)
    n_steps = 16 if quick else 200
    log(f"fidelity: {n_steps} teacher-forced steps against float32 on the same weights; EnCodec bf16")
    result.update(_fidelity_stage(generation, cache_dir, n_steps, [result["precision"], *precisions], seconds))
    return result


def _motif_stages(settings: Settings, seconds: float, track: np.ndarray, repeats: int) -> dict[str, Any]:
    """(b), (c) and Motif's (d) on one Engine, with the peak RSS of it all."""
    from motif.engine.pipeline import Engine

    reset_peak_rss()
    engine = Engine(settings)
    start = time.perf_counter()
    generator = engine.generator
    engine.embedder  # noqa: B018 - load both models, as a warmed-up server holds them
    out: dict[str, Any] = {"load_s": time.perf_counter() - start, "precision": generator.decoder.precision}
    motif_generate(generator, 0.5)  # warm-up: kernels, allocator, caches
    out["motif_rtf"] = _timed(lambda: motif_generate(generator, seconds), repeats)[0] / seconds
    n_jobs, source = 4, _music(4.0, SAMPLE_RATE)
    motif_batch(engine, 0.5, 1, source)  # warm-up of the job path (prompt encoding, finishing), as a server's
    out["batch4_s_per_audio_s"] = motif_batch(engine, seconds, n_jobs, source) / (n_jobs * seconds)
    engine.embed_audio(track, CLAP_SAMPLE_RATE)
    out["clap60_motif_s"] = _timed(lambda: engine.embed_audio(track, CLAP_SAMPLE_RATE), repeats)[0]
    out["peak_rss_gb"] = peak_rss_gb()
    out.update(rss_parts_gb())
    out["weight_mb_per_step"] = generator.decoder.weight_bytes_per_step() / 1e6
    out["weight_bytes_per_step"] = generator.decoder.weight_bytes_per_step()
    out["macs_per_row"] = generator.decoder.macs_per_row()
    return out


def _motif_rtf(settings: Settings, seconds: float) -> float:
    from motif.engine.pipeline import Engine

    generator = Engine(settings).generator
    motif_generate(generator, 0.5)
    return motif_generate(generator, seconds) / seconds


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
    rows = [
        ("machine", result["machine"], ""),
        ("(a) baseline: transformers generate fp32, CFG 3, batch 1", f"RTF {result['baseline_rtf']:.2f}",
         f"{secs:g} s"),
        (f"(b) Motif defaults ({result['precision']})", f"RTF {result['motif_rtf']:.2f}",
         f"{result['baseline_rtf'] / result['motif_rtf']:.1f}x faster"),
        *[(f"    Motif at {p}", f"RTF {v:.2f}", "") for p, v in result["rtf_by_precision"].items()],
        ("(c) 4 jobs batched (Engine.run_batch, 4 s source)", f"{result['batch4_s_per_audio_s']:.2f} s/audio s", ""),
        ("(d) CLAP 60 s track: stock fp32 (one 10 s crop)", f"{result['clap60_stock_s']:.2f} s", ""),
        ("    CLAP 60 s track: Motif (all six windows)", f"{result['clap60_motif_s']:.2f} s", ""),
        ("server cold start to /api/health", "n/a" if result["cold_start_s"] is None else
         f"{result['cold_start_s']:.2f} s", ""),
        ("peak RSS, both models loaded and used", f"{result['peak_rss_gb']:.2f} GB",
         f"now {result.get('rss_anon_gb', 0):.2f} GB anon + {result.get('rss_file_gb', 0):.2f} GB file-backed"),
        ("decode step weights", f"{result['weight_mb_per_step']:.0f} MB", f"{result['bandwidth_gbs']:.1f} GB/s read"),
        ("floor RTF: weights / bandwidth", f"{result['floor_rtf_bandwidth']:.2f}", ""),
        ("floor RTF: FLOPs / bf16 matmul FLOP/s", f"{result['floor_rtf_flops']:.3f}",
         f"{result['matmul_gflops']['bfloat16']:.0f} GFLOP/s"),
        *[(f"fidelity {p} vs fp32 (teacher-forced)", f"rel err {v['rel_err']:.4f}", f"top-1 {v['top1']:.4f}")
          for p, v in result["fidelity_by_precision"].items()],
        ("EnCodec decode bf16 vs fp32", f"SNR {result['codec_snr_db']:.1f} dB",
         f"{result['codec_fp32_s']:.2f} s -> {result['codec_bf16_s']:.2f} s"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value:<22} {note}".rstrip() for name, value, note in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="motif bench", description="Motif against stock transformers, here.")
    parser.add_argument("--quick", action="store_true", help="tiny models, short runs: CI smoke, no meaning")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: MODEL_CACHE_DIR")
    parser.add_argument("--precisions", default="bf16,int8", help="also time these GENERATION_PRECISIONs")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    result = run_bench(args.quick, args.cache_dir, tuple(p for p in args.precisions.split(",") if p), log)
    result["bench_s"] = time.perf_counter() - started
    print(format_table(result))
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
