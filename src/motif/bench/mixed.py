"""A mixed load: an upload embedded while a generation decodes, in one Engine as the service holds it, with the
cores split (EMBEDDING_THREADS / GENERATION_THREADS, the default) against two full OpenMP teams on the same
cores (what ran before the budget). Both latencies, each alone and together, side by side in one run:

    python -m motif.bench.mixed [--cache-dir DIR] [--seconds 10] [--rounds 2]

The embedding starts once the generation is 10% through; its latency is from then to its vector.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from motif.bench.builders import build_clap_htsat_unfused, build_musicgen
from motif.bench.machine import cpu_name
from motif.config import Settings
from motif.engine import models
from motif.engine.threads import CoreBudget
from motif.engine.types import CLAP_SAMPLE_RATE, SAMPLE_RATE, GenerationMode, GenerationParams

START_AT_PROGRESS = 10.0  # percent of the generation done when the upload arrives


class FullTeams(CoreBudget):
    """No budget: an embedding and every decode step each take all the cores (torch's default per thread)."""

    def __init__(self, n_cores: int) -> None:
        super().__init__(n_cores, embedding=n_cores, generation=n_cores)

    def generation_threads(self) -> int:
        return self.n_cores


def _music(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tones = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(110, 880, size=3))
    return (0.1 * tones + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def _engine(settings: Settings, full_teams: bool) -> Any:
    from motif.engine.pipeline import Engine

    engine = Engine(settings)
    if full_teams:  # before the generator loads: its decode loop binds the budget's hooks then
        engine.cores = FullTeams(engine.cores.n_cores)
    engine.load()
    return engine


def _generation(engine: Any, seconds: float, prompt: np.ndarray, track: np.ndarray | None) -> dict[str, float]:
    """One continuation; with `track`, that upload is embedded on another thread once it is 10% through."""
    embedded: dict[str, float] = {}
    started = threading.Event()

    def embed() -> None:
        begin = time.perf_counter()
        engine.embed_audio(track, CLAP_SAMPLE_RATE)
        embedded["embed_s"] = time.perf_counter() - begin

    worker = threading.Thread(target=embed)

    def progress(value: float) -> None:
        if track is not None and value >= START_AT_PROGRESS and not started.is_set():
            started.set()
            worker.start()

    params = GenerationParams(duration=seconds, seed=3, mode=GenerationMode.CONTINUATION)
    begin = time.perf_counter()
    engine.generate(prompt, SAMPLE_RATE, params, progress=progress)
    out = {"generate_s": time.perf_counter() - begin}
    if started.is_set():
        worker.join()
    return out | embedded


def run(cache_dir: Path, seconds: float, rounds: int, quick: bool = False) -> dict[str, Any]:
    """quick: the tiny test models (a smoke run, no meaning)."""
    if quick:
        generation, embedding = str(models.build_tiny_generator(cache_dir)), str(models.build_tiny_clap(cache_dir))
    else:
        generation, embedding = str(build_musicgen(cache_dir, "small")), str(build_clap_htsat_unfused(cache_dir))
    settings = Settings(generation_model=generation, embedding_model=embedding, model_cache_dir=cache_dir,
                        allow_model_download=False, data_dir=Path(tempfile.mkdtemp(prefix="motif-mixed-")))  # fmt: skip
    prompt, track = _music(4.0, SAMPLE_RATE, seed=1), _music(10.0, CLAP_SAMPLE_RATE, seed=2)
    engines = {"budget": _engine(settings, full_teams=False), "full teams": _engine(settings, full_teams=True)}
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in engines}
    for engine in engines.values():  # warm-up: kernels, allocator, the prompt's codes
        _generation(engine, 1.0, prompt, track)
    for _ in range(rounds):  # interleaved, so a change in the machine's load falls on both
        for name, engine in engines.items():
            begin = time.perf_counter()
            engine.embed_audio(track, CLAP_SAMPLE_RATE)
            figures = {"embed_alone_s": time.perf_counter() - begin}
            for label, upload in (("alone", None), ("mixed", track)):
                timings = _generation(engine, seconds, prompt, upload)
                figures |= {f"{key.removesuffix('_s')}_{label}_s": value for key, value in timings.items()}
            for key, value in figures.items():
                samples[name].setdefault(key, []).append(value)
    medians = {name: {k: statistics.median(v) for k, v in figures.items()} for name, figures in samples.items()}
    return {"machine": cpu_name(), "seconds": seconds, "rounds": rounds, "cores": engines["budget"].cores.n_cores,
            "medians": medians, "samples": samples}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m motif.bench.mixed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: MODEL_CACHE_DIR")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the generation")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny models: CI smoke, no meaning")
    args = parser.parse_args(argv)
    result = run(Path(args.cache_dir or Settings().model_cache_dir), args.seconds, args.rounds, args.quick)
    print(f"{result['machine']}, {result['cores']} cores; {args.seconds:g} s continuation, a 10 s upload embedded "
          f"from {START_AT_PROGRESS:g}% of it; medians of {args.rounds} rounds")  # fmt: skip
    print(f"{'':12} {'embed alone':>12} {'embed mixed':>12} {'gen alone':>10} {'gen mixed':>10}")
    for name, m in result["medians"].items():
        print(f"{name:12} {m['embed_alone_s']:11.2f}s {m['embed_mixed_s']:11.2f}s {m['generate_alone_s']:9.2f}s "
              f"{m['generate_mixed_s']:9.2f}s")  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
