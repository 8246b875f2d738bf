"""motif.analysis: tempo, key, loudness and spectral numbers of synthetic clips with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from motif.analysis import AudioAnalysis, analyze
from motif.audio import loudness_normalize
from tests.synth import SR, chord, click_track, music_like, noise, progression, sine

C_MAJOR = [["C4", "E4", "G4"], ["F3", "A3", "C4"], ["G3", "B3", "D4"], ["C4", "E4", "G4"]]  # I IV V I
A_MINOR = [["A3", "C4", "E4"], ["D4", "F4", "A4"], ["E3", "G#3", "B3"], ["A3", "C4", "E4"]]  # i iv V i
D_MAJOR = [["D4", "F#4", "A4"], ["G3", "B3", "D4"], ["A3", "C#4", "E4"], ["D4", "F#4", "A4"]]


def json_roundtrip(result: AudioAnalysis) -> dict:
    return json.loads(json.dumps(result.to_dict(), allow_nan=False))


@pytest.mark.parametrize("bpm", [90.0, 120.0, 150.0])
def test_tempo_of_a_click_track(bpm: float) -> None:
    result = analyze(click_track(bpm, 20.0), SR)
    assert result.tempo_bpm == pytest.approx(bpm, abs=2.0)
    assert result.tempo_confidence > 0.5


@pytest.mark.parametrize("bpm", [95.0, 128.0])
def test_tempo_of_a_piece_with_drums(bpm: float) -> None:
    assert analyze(music_like(20.0, bpm=bpm, seed=2), SR).tempo_bpm == pytest.approx(bpm, abs=2.0)


def test_tempo_does_not_depend_on_level_or_rate() -> None:
    clicks = click_track(120.0, 12.0, sr=48_000)
    assert analyze(clicks * 0.01, 48_000).tempo_bpm == pytest.approx(120.0, abs=2.0)


@pytest.mark.parametrize(
    ("samples", "key", "mode"),
    [
        (chord(["C4", "E4", "G4"], 6.0), "C", "major"),
        (chord(["A3", "C4", "E4"], 6.0), "A", "minor"),
        (progression(C_MAJOR, 2.0), "C", "major"),
        (progression(A_MINOR, 2.0), "A", "minor"),
        (progression(D_MAJOR, 2.0), "D", "major"),
        (music_like(16.0), "C", "major"),
    ],
    ids=["C-triad", "Am-triad", "C-progression", "Am-progression", "D-progression", "music"],
)
def test_key_and_mode(samples: np.ndarray, key: str, mode: str) -> None:
    result = analyze(samples, SR)
    assert (result.key, result.mode) == (key, mode)
    assert result.key_confidence > 0.7


def test_no_key_for_unpitched_noise_and_no_tempo_for_a_steady_tone() -> None:
    assert analyze(noise(10.0), SR).key is None
    assert analyze(sine(440.0, 10.0), SR).tempo_bpm is None


def test_spectral_numbers_of_a_1khz_sine() -> None:
    result = analyze(sine(1000.0, 5.0, amplitude=0.5), SR)
    assert result.spectral_centroid_hz == pytest.approx(1000.0, rel=0.02)
    assert result.spectral_rolloff_hz == pytest.approx(1000.0, rel=0.02)
    assert result.spectral_flatness is not None and result.spectral_flatness < 0.01
    assert result.zero_crossings_per_s == pytest.approx(2000.0, rel=0.01)
    assert result.peak_dbfs == pytest.approx(-6.02, abs=0.05)
    assert result.rms_dbfs == pytest.approx(-9.03, abs=0.05)
    assert result.duration == pytest.approx(5.0)


def test_noise_is_brighter_and_flatter_than_a_sine() -> None:
    tone, hiss = analyze(sine(1000.0, 5.0), SR), analyze(noise(5.0, amplitude=0.3), SR)
    assert hiss.spectral_centroid_hz and tone.spectral_centroid_hz and hiss.spectral_flatness and tone.spectral_flatness
    assert hiss.spectral_centroid_hz > 3 * tone.spectral_centroid_hz
    assert hiss.spectral_flatness > 0.2 > tone.spectral_flatness


def test_loudness_agrees_with_normalisation() -> None:
    normalised = loudness_normalize(music_like(10.0), SR)
    assert analyze(normalised, SR).loudness_lufs == pytest.approx(-14.0, abs=0.5)


@pytest.mark.parametrize("samples", [np.zeros(SR * 5, np.float32), np.zeros(100, np.float32),
                                     np.zeros(0, np.float32)], ids=["5s", "100-samples", "empty"])  # fmt: skip
def test_silence_gives_nones_never_nan(samples: np.ndarray) -> None:
    data = json_roundtrip(analyze(samples, SR))
    assert data["duration"] == pytest.approx(samples.shape[0] / SR, abs=1e-3)
    for name in ("tempo_bpm", "key", "mode", "loudness_lufs", "rms_dbfs", "peak_dbfs", "spectral_centroid_hz"):
        assert data[name] is None, name


def test_nan_and_stereo_input_are_accepted() -> None:
    stereo = np.stack([click_track(120.0, 10.0)] * 2, axis=1)
    stereo[:100] = np.nan
    data = json_roundtrip(analyze(stereo, SR))
    assert data["tempo_bpm"] == pytest.approx(120.0, abs=2.0)


def test_a_clip_too_short_for_a_tempo_still_gets_the_rest() -> None:
    result = analyze(sine(440.0, 0.3), SR)
    assert result.tempo_bpm is None and result.spectral_centroid_hz == pytest.approx(440.0, rel=0.05)


def test_five_minutes_analyse_like_the_ten_second_loop_they_repeat() -> None:
    """Blockwise analysis over a long input agrees with the short one (its speed is measured by `motif bench`,
    not asserted here: wall-clock bounds flake on a shared machine)."""
    clip = music_like(10.0)
    short, long = analyze(clip, SR), analyze(np.tile(clip, 30), SR)  # 5 min at 32 kHz
    assert long.duration == pytest.approx(300.0) and long.key == short.key and long.mode == short.mode
    assert long.tempo_bpm == pytest.approx(short.tempo_bpm, rel=0.02)
    assert long.spectral_centroid_hz == pytest.approx(short.spectral_centroid_hz, rel=0.02)
