"""`python -m motif.bench.compare [--quick]`: Motif int8 against the peers only, side by side in one process.

The subset of `motif bench` that issue 13 §1 asks for, without the server, CLAP and batching stages:
stock transformers fp32, Motif at GENERATION_PRECISION=int8, torchao int8, ONNX Runtime int8 (and OpenVINO
where wired up), each with its batch-1 RTF, the decode step at 2 and 8 rows where it reports one, and the
teacher-forced fidelity against fp32. Prints a table, then one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from motif.bench.builders import SHAPES, build_musicgen
from motif.bench.fidelity import fidelity
from motif.bench.machine import cpu_name, measure_bandwidth
from motif.bench.peers import run_peers
from motif.bench.run import _settings, baseline_generate, decode_step_ms, motif_generate
from motif.config import Settings
from motif.engine import models


def run_comparison(quick: bool, cache_dir: Path, shape: str, log: Callable[[str], None], compile_torchao: bool = False,
                   seconds: float | None = None, skip: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    """Every runtime on the same random-weight model and request; returns the JSON line's dict.
    compile_torchao: torch.compile the torchao peer (minutes of compiling on a small loaded box; off by default)."""
    from motif.engine.pipeline import Engine

    seconds = seconds or (1.0 if quick else 10.0)
    if quick:
        generation, embedding = str(models.build_tiny_generator(cache_dir)), str(models.build_tiny_clap(cache_dir))
    else:
        generation, embedding = str(build_musicgen(cache_dir, shape)), "tiny"
    result: dict[str, Any] = {"quick": quick, "shape": "tiny" if quick else shape, "seconds": seconds,
                              "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
                              "threads": torch.get_num_threads(), "bandwidth_gbs": measure_bandwidth(
                                  (64 if quick else 1024) * 2**20) / 1e9}  # fmt: skip
    log("Motif at GENERATION_PRECISION=int8")
    settings = _settings(cache_dir, generation, embedding, "int8", Path(tempfile.mkdtemp(prefix="motif-compare-")))
    generator = Engine(settings).generator
    motif_generate(generator, 0.5)
    result["motif_int8_rtf"] = motif_generate(generator, seconds) / seconds
    result["motif_int8_step_ms"] = {f"{rows}x{n}": decode_step_ms(generator.decoder, rows, n, 1 if quick else 5)
                                    for rows in (2, 8) for n in (1, 300)}  # fmt: skip
    result["motif_int8_weight_mb_per_step"] = generator.decoder.weight_bytes_per_step() / 1e6
    del generator
    loaded = models.load_generator(generation, torch.device("cpu"), torch.float32, cache_dir, False)
    result["motif_int8_fidelity"] = fidelity(loaded, 16 if quick else 200, ["int8"])["int8"]
    del loaded
    log("peers: transformers + torchao int8, OpenVINO, ONNX Runtime")
    result.update(run_peers(generation, seconds, quick, cache_dir, compile_torchao, skip))
    log("baseline: transformers generate, fp32, CFG 3, batch 1")
    result["baseline_rtf"] = baseline_generate(generation, seconds) / seconds
    return result


def format_comparison(result: dict[str, Any]) -> str:
    """One row per runtime: RTF, step ms at 2 / 8 rows (new / at 300 positions), fidelity vs fp32."""
    rows = [("transformers fp32 (baseline)", result["baseline_rtf"], None, None, "")]
    rows.append(("Motif int8", result["motif_int8_rtf"], result["motif_int8_step_ms"], result["motif_int8_fidelity"],
                 f"{result['motif_int8_weight_mb_per_step']:.0f} MB weights per step"))  # fmt: skip
    for name, note in result["peer_notes"].items():
        rows.append((f"peer: {name}", result[f"peer_{name}_rtf"], result["peer_step_ms"].get(name),
                     result["peer_fidelity"].get(name), note))  # fmt: skip
    lines = [f"{result['machine']}, {result['threads']} threads, {result['bandwidth_gbs']:.1f} GB/s read; "
             f"{result['seconds']:g} s of audio, batch 1, CFG 3", f"{'runtime':<30}{'RTF':>7}  {'2 rows ms':>13}  "
             f"{'8 rows ms':>13}  {'rel err':>8} {'top-1':>6}  note"]  # fmt: skip
    for name, rtf, ms, fid, note in rows:
        rtf_s = "n/a" if rtf is None else f"{rtf:.2f}"
        two = "" if ms is None else f"{ms['2x1']:.1f} / {ms['2x300']:.1f}"
        eight = "" if ms is None else f"{ms['8x1']:.1f} / {ms['8x300']:.1f}"
        fid_s = "" if fid is None else f"{fid['rel_err']:8.4f} {fid['top1']:6.3f}"
        lines.append(f"{name:<30}{rtf_s:>7}  {two:>13}  {eight:>13}  {fid_s:>15}  {note}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m motif.bench.compare", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny models, short runs: smoke, no meaning")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: MODEL_CACHE_DIR")
    parser.add_argument("--shape", default="small", choices=SHAPES, help="the MusicGen architecture to build")
    parser.add_argument("--compile-torchao", action="store_true", help="torch.compile the torchao peer's decoder")
    parser.add_argument("--seconds", type=float, default=None, help="audio per request (default 10, --quick 1)")
    parser.add_argument("--skip", default="", help="peers not to run, comma-separated (their rows say so)")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    cache_dir = Path(args.cache_dir or Settings().model_cache_dir)
    skip = tuple(name for name in args.skip.split(",") if name)
    result = run_comparison(args.quick, cache_dir, args.shape, log, args.compile_torchao, args.seconds, skip)
    result["bench_s"] = time.perf_counter() - started
    print(format_comparison(result))
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
