"""The `motif` CLI and `test_pipeline.py`, run as a user would (tiny models, audio the test writes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from motif.cli import app
from tests.synth import music_like, write_format

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"GENERATION_MODEL": "tiny", "EMBEDDING_MODEL": "tiny", "MODEL_CACHE_DIR": str(model_cache),
              "DATA_DIR": str(tmp_path / "data"), "DEVICE": "cpu", "ALLOW_MODEL_DOWNLOAD": "false",
              "NUM_THREADS": "1"}  # fmt: skip
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # no stray .env from the checkout
    return values


@pytest.fixture
def song(tmp_path: Path) -> Path:
    return write_format(tmp_path / "song.mp3", music_like(8.0, 44_100, seed=1), 44_100, "mp3")


def test_embed_json_prints_a_unit_512_vector(env: dict[str, str], song: Path) -> None:
    result = CliRunner().invoke(app, ["embed", str(song), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["dim"] == 512 and len(doc["embedding"]) == 512
    assert abs(np.linalg.norm(doc["embedding"]) - 1) < 1e-4


def test_analyze_prints_tempo_and_key(env: dict[str, str], song: Path) -> None:
    result = CliRunner().invoke(app, ["analyze", str(song)])
    assert result.exit_code == 0, result.output
    assert "tempo_bpm" in result.stdout and "key" in result.stdout


def test_generate_writes_audio_of_the_requested_length(env: dict[str, str], song: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.flac"
    result = CliRunner().invoke(app, ["generate", str(song), "-o", str(out), "--duration", "5", "--seed", "3"])
    assert result.exit_code == 0, result.output
    audio, rate = sf.read(out)
    assert rate == 32_000 and audio.shape[0] == 5 * 32_000
    assert "seed 3" in result.stdout


def test_generate_a_loop_of_whole_bars_from_a_section(env: dict[str, str], song: Path, tmp_path: Path) -> None:
    out = tmp_path / "loop.wav"
    args = ["generate", str(song), "-o", str(out), "--duration", "7", "--loop", "--bpm", "120", "--key", "A minor",
            "--start", "1", "--end", "4", "--seed", "2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    audio, rate = sf.read(out)
    assert rate == 32_000 and audio.shape[0] == 8 * 32_000  # four 2 s bars at 120 BPM
    assert "120 BPM, in A minor" in result.stdout


def test_bad_input_exits_2_with_the_reason(env: dict[str, str], tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("definitely not audio")
    result = CliRunner().invoke(app, ["embed", str(text)])
    assert result.exit_code == 2
    assert "error" in result.output.lower()


def test_models_list_and_pull_for_tiny(env: dict[str, str]) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["models", "pull"]).exit_code == 0
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0 and "available" in listed.stdout


def test_test_pipeline_script_writes_embedding_and_audio(env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "test_pipeline.py")], env={**os.environ, **env},
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = Path(env["DATA_DIR"])
    from motif.config import Settings
    from motif.service.runtime import close_services, open_services

    close_services(open_services(Settings(_env_file=None, data_dir=data), start_workers=False))  # a server start
    vector = np.load(data / "pipeline-test" / "test_embedding.npy")
    assert vector.shape == (512,)
    audio, rate = sf.read(data / "pipeline-test" / "test_generated.wav")
    assert rate == 32_000 and audio.shape[0] == 5 * 32_000


def test_the_cli_decodes_within_the_configured_limits(
    env: dict[str, str], song: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_SAMPLE_RATE", "32000")  # the song is 44.1 kHz
    result = CliRunner().invoke(app, ["analyze", str(song)])
    assert result.exit_code != 0 and "44100" in result.output, result.output
