"""Run Motif's whole pipeline without the API: decode, analyse, embed, generate, write the results.

    python test_pipeline.py [FILE]

Without FILE a short synthetic piece is written to DATA_DIR/pipeline-test/test_input.wav and used. Settings
come from the environment and .env as for the server, so `GENERATION_MODEL=tiny EMBEDDING_MODEL=tiny python
test_pipeline.py` runs offline. Writes DATA_DIR/pipeline-test/test_embedding.npy and test_generated.wav: a
folder of its own, since the server's start removes files in uploads/, processed/ and generated/ that no row
of its database points at.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

OUTPUT_DIR = "pipeline-test"  # under DATA_DIR, outside the areas a server start sweeps


def make_test_audio(path: Path, seconds: float = 12.0, sample_rate: int = 32_000) -> Path:
    """A little piece: an A-minor chord progression over a kick on every beat at 100 BPM."""
    from motif.audio import write_audio

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    chords = [(220.0, 261.63, 329.63), (174.61, 220.0, 261.63), (196.0, 246.94, 293.66), (164.81, 207.65, 246.94)]
    bar = 4 * 60 / 100
    audio = np.zeros_like(t)
    for i, chord in enumerate(chords * int(np.ceil(seconds / bar / len(chords)))):
        span = (t >= i * bar) & (t < (i + 1) * bar)
        audio[span] = sum(np.sin(2 * np.pi * f * t[span]) for f in chord) / 6
    beat = 60 / 100
    phase = t % beat
    audio += 0.5 * np.sin(2 * np.pi * 60 * phase) * np.exp(-phase * 30)
    return write_audio(path, audio.astype(np.float32), sample_rate, "wav")


def main(argv: list[str]) -> int:
    from motif.analysis import analyze
    from motif.audio import load_audio, write_audio
    from motif.config import Settings
    from motif.engine import Engine, GenerationParams
    from motif.errors import MotifError

    settings = Settings()
    out_dir = settings.data_dir / OUTPUT_DIR
    source = Path(argv[0]) if argv else make_test_audio(out_dir / "test_input.wav")
    engine = Engine(settings)
    try:
        started = time.perf_counter()
        decoded = load_audio(source, sample_rate=32_000, max_duration=settings.max_duration)
        print(f"1. decoded {source}: {decoded.duration:.2f} s, {decoded.codec}, {decoded.source_channels} ch")
        analysis = analyze(decoded.samples, decoded.sample_rate).to_dict()
        print(f"2. analysis: {analysis}")
        vector = engine.embed_audio(decoded.samples, decoded.sample_rate)
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / "test_embedding.npy", vector)
        print(f"3. embedding ({settings.embedding_model}): {vector.shape[0]}-d, norm {np.linalg.norm(vector):.4f}")
        params = GenerationParams(duration=5.0, seed=0)
        def show(percent: float) -> None:
            print(f"\r4. generating: {percent:3.0f}%", end="", flush=True)

        result = engine.generate(decoded.samples, decoded.sample_rate, params, progress=show)
        out = write_audio(out_dir / "test_generated.wav", result.audio, result.sample_rate, "wav")
        print(f"\n5. wrote {out}: {result.audio.size / result.sample_rate:.2f} s, similarity {result.similarity}")
        print(f"done in {time.perf_counter() - started:.1f} s")
    except MotifError as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
