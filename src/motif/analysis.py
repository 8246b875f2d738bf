"""A small music analysis of a mono clip: tempo, key, loudness and a few spectral / timbre numbers.

Numpy and scipy only (no librosa). Each feature is computed at the lowest rate that serves it, so
five minutes of 32 kHz audio take about 0.6 s on one core.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import uniform_filter1d

from motif.audio import measure_loudness, resample

SPECTRAL_RATE = 22_050  # Hz: centroid and roll-off need the upper octaves
SPECTRAL_N_FFT, SPECTRAL_HOP = 2048, 2048  # averages need no overlap
RHYTHM_RATE = 11_025  # Hz: onsets of drums and notes are plain below 5.5 kHz
RHYTHM_N_FFT, RHYTHM_HOP = 512, 128  # 86 onset frames / s: 120 BPM is a 43-frame lag
CHROMA_N_FFT, CHROMA_HOP = 4096, 2048  # at RHYTHM_RATE: 2.7 Hz bins resolve semitones from about 65 Hz
CHROMA_FMIN, CHROMA_FMAX = 65.0, 2100.0  # C2..C7: bass notes to the top of most melodies
TEMPO_MIN_BPM, TEMPO_MAX_BPM = 30.0, 300.0
TEMPO_PRIOR_BPM = 120.0  # log-normal prior (one octave wide): resolves 60 vs 120 vs 240
TEMPO_MIN_CONFIDENCE = 0.3  # noise, drones and held chords score 0.1-0.27; steady beats 0.8+
ONSET_FLOOR = 0.05  # a steady tone's envelope stays near 1e-3; one real onset reaches 0.3 or more
_ONSET_SMOOTHING = np.hanning(5)[1:-1] / np.hanning(5)[1:-1].sum()  # 3 frames, about 35 ms
KEY_MIN_CONFIDENCE = 0.5  # clicks and noise correlate about 0.3 with some key: report None
ROLLOFF_FRACTION = 0.85
SILENCE_DBFS = -60.0  # frames quieter than this are left out of the spectral averages
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Krumhansl & Kessler (1982) probe-tone profiles, tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


@dataclass(frozen=True)
class AudioAnalysis:
    """Numbers that describe a clip. None where a value is undefined (e.g. the key of silence)."""

    duration: float  # seconds
    tempo_bpm: float | None  # beats per minute
    tempo_confidence: float  # 0..1: normalised autocorrelation of the onset envelope at the beat lag
    key: str | None  # tonic, "C" .. "B" (sharps)
    mode: str | None  # "major" / "minor"
    key_confidence: float  # -1..1: correlation of the chroma with the winning key profile
    loudness_lufs: float | None  # integrated, ITU-R BS.1770-4
    rms_dbfs: float | None
    peak_dbfs: float | None  # sample peak
    spectral_centroid_hz: float | None  # brightness: mean over non-silent frames
    spectral_rolloff_hz: float | None  # frequency below which 85% of the energy lies
    spectral_flatness: float | None  # 0 (tonal) .. 1 (noise-like)
    zero_crossings_per_s: float  # a cheap noisiness / brightness cue

    def to_dict(self) -> dict[str, float | str | None]:
        """JSON-safe: floats rounded to 3 decimals, never NaN or infinite (those become None)."""
        out: dict[str, float | str | None] = {}
        for name, value in asdict(self).items():
            if isinstance(value, float):
                value = round(value, 3) if math.isfinite(value) else None
            out[name] = value
        return out


def analyze(samples: np.ndarray, sample_rate: int) -> AudioAnalysis:
    """Analyse (frames,) mono (or (frames, channels), averaged) float audio at `sample_rate` Hz.

    Never raises for silence or very short input: undefined values come back as None. Memory is a few
    times the input in float32 (uploads are analysed at 32 kHz, never at their native rate).
    """
    x = np.asarray(samples, dtype=np.float32)
    if not np.isfinite(x).all():  # decoded uploads are finite already: no copy for them
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if x.ndim == 2:
        x = x.mean(axis=1)
    peak = float(max(x.max(initial=0.0), -x.min(initial=0.0)))
    rms = math.sqrt(_mean_square(x))
    spectral = resample(x, sample_rate, SPECTRAL_RATE) if sample_rate > SPECTRAL_RATE else x
    low = resample(spectral, min(sample_rate, SPECTRAL_RATE), RHYTHM_RATE)
    tempo, tempo_confidence = estimate_tempo(low, RHYTHM_RATE)
    key, mode, key_confidence = estimate_key(low, RHYTHM_RATE)
    centroid, rolloff, flatness = _spectral_shape(spectral, min(sample_rate, SPECTRAL_RATE))
    crossings = _zero_crossings(x)
    return AudioAnalysis(
        duration=x.shape[0] / sample_rate,
        tempo_bpm=tempo, tempo_confidence=tempo_confidence,
        key=key, mode=mode, key_confidence=key_confidence,
        loudness_lufs=measure_loudness(x, sample_rate),
        rms_dbfs=_db(rms), peak_dbfs=_db(peak),
        spectral_centroid_hz=centroid, spectral_rolloff_hz=rolloff, spectral_flatness=flatness,
        zero_crossings_per_s=float(crossings * sample_rate / max(1, x.shape[0])),
    )  # fmt: skip


def _mean_square(x: np.ndarray) -> float:
    """Mean of x**2 accumulated in float64, a chunk at a time (no float64 copy of a long clip)."""
    total = 0.0
    for start in range(0, x.shape[0], 1 << 18):
        chunk = x[start : start + (1 << 18)].astype(np.float64)
        total += float(np.dot(chunk, chunk))
    return total / x.shape[0] if x.shape[0] else 0.0


def _db(value: float) -> float | None:
    return 20 * math.log10(value) if value > 0 else None


def _magnitudes(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """(samples,) -> (frames, n_fft // 2 + 1) float32 Hann-windowed STFT magnitudes, frames not centred."""
    return np.concatenate(list(_magnitude_blocks(x, n_fft, hop)))


def _magnitude_blocks(x: np.ndarray, n_fft: int, hop: int) -> Iterator[np.ndarray]:
    """`_magnitudes` 1024 frames at a time, so a caller that reduces them never holds them all."""
    if x.shape[0] < n_fft:
        x = np.pad(x, (0, n_fft - x.shape[0]))
    frames = sliding_window_view(x, n_fft)[::hop]
    window = np.hanning(n_fft).astype(np.float32)
    for start in range(0, frames.shape[0], 1024):  # chunks bound the windowed copy to a few MB
        yield np.abs(np.fft.rfft(frames[start : start + 1024] * window, axis=1)).astype(np.float32)


def _onset_envelope(x: np.ndarray) -> np.ndarray:
    """(samples,) -> (frames,) float32 onset strength, one value per RHYTHM_HOP samples.

    Spectral flux of log magnitudes of the peak-normalised signal (so the scale does not depend on
    level), lightly smoothed so a click between two frames still forms one peak.
    """
    peak = float(np.abs(x).max(initial=0.0))
    # Leading zeros let a note or beat at t = 0 register as an onset.
    x = np.pad(x / peak if peak > 0 else x, (RHYTHM_N_FFT // 2, 0))
    flux: list[np.ndarray] = [np.zeros(1)]
    previous: np.ndarray | None = None  # the last frame's log magnitudes, for the first difference of a block
    for mags in _magnitude_blocks(x, RHYTHM_N_FFT, RHYTHM_HOP):
        logs = np.log1p(100.0 * mags)
        steps = np.diff(logs, axis=0) if previous is None else np.diff(logs, axis=0, prepend=previous)
        flux.append(np.maximum(0.0, steps).mean(axis=1))
        previous = logs[-1:]
    return np.convolve(np.concatenate(flux), _ONSET_SMOOTHING, mode="same").astype(np.float32)


def _zero_crossings(x: np.ndarray) -> int:
    """Sign changes between consecutive samples, counted a chunk at a time."""
    count = 0
    for start in range(0, max(0, x.shape[0] - 1), 1 << 18):
        signs = np.signbit(x[start : start + (1 << 18) + 1])
        count += int(np.count_nonzero(signs[1:] != signs[:-1]))
    return count


def estimate_tempo(x: np.ndarray, sample_rate: int) -> tuple[float | None, float]:
    """(samples,) mono -> (BPM or None, confidence 0..1) from the onset envelope's autocorrelation.

    The envelope minus its 1 s running mean is autocorrelated; the lag with the highest
    correlation times a log-normal tempo prior wins, refined with its multiples for sub-frame
    precision. None when the pulse is weaker than TEMPO_MIN_CONFIDENCE (silence, steady tones,
    noise) or the clip is shorter than two periods of the slowest tempo.
    """
    fps = sample_rate / RHYTHM_HOP
    raw = _onset_envelope(x)
    max_lag = int(60.0 * fps / TEMPO_MIN_BPM)
    if raw.shape[0] < 2 * max_lag or raw.max(initial=0.0) < ONSET_FLOOR:
        return None, 0.0
    # Removing a local (not global) mean keeps one loud onset from making every lag look periodic.
    envelope = raw - uniform_filter1d(raw, round(fps), mode="nearest")
    n_fft = 1 << (2 * envelope.shape[0] - 1).bit_length()
    spectrum = np.fft.rfft(envelope, n_fft)
    acf = np.fft.irfft(spectrum.real**2 + spectrum.imag**2, n_fft)[: 4 * max_lag + 4]
    if acf[0] <= 0:
        return None, 0.0
    acf = acf / acf[0]
    lags = np.arange(max(1, int(60.0 * fps / TEMPO_MAX_BPM)), max_lag + 1)
    prior = np.exp(-0.5 * np.log2(60.0 * fps / lags / TEMPO_PRIOR_BPM) ** 2)
    best = int(lags[np.argmax(np.maximum(acf[lags], 0.0) * prior)])
    confidence = float(np.clip(acf[best], 0.0, 1.0))
    if confidence < TEMPO_MIN_CONFIDENCE:
        return None, confidence
    return 60.0 * fps / _refine_period(acf, best), confidence


def _refine_period(acf: np.ndarray, lag: int) -> float:
    """The beat period (frames, fractional) from the peaks near lag, 2 lag, 3 lag, 4 lag."""
    positions, multiples = [], []
    for k in range(1, 5):
        centre = k * lag
        lo, hi = centre - k, centre + k + 1
        if lo < 1 or hi + 1 > acf.shape[0]:
            break
        peak = lo + int(np.argmax(acf[lo:hi]))
        positions.append(peak + _parabolic_offset(acf, peak))
        multiples.append(k)
    return sum(positions) / sum(multiples)


def _parabolic_offset(values: np.ndarray, i: int) -> float:
    """Sub-sample offset (-0.5..0.5) of the vertex of the parabola through values[i - 1 : i + 2]."""
    left, centre, right = values[i - 1], values[i], values[i + 1]
    denominator = left - 2 * centre + right
    return float(np.clip(0.5 * (left - right) / denominator, -0.5, 0.5)) if denominator < 0 else 0.0


@lru_cache(maxsize=4)
def _chroma_filters(sample_rate: int, n_fft: int) -> np.ndarray:
    """(12, n_fft // 2 + 1): each FFT bin between CHROMA_FMIN and CHROMA_FMAX to its nearest pitch class,
    weighted cos^2 of its distance in semitones, so bins between two notes count for little."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    filters = np.zeros((12, freqs.shape[0]), dtype=np.float32)
    band = (freqs >= CHROMA_FMIN) & (freqs <= CHROMA_FMAX)
    midi = 69.0 + 12.0 * np.log2(freqs[band] / 440.0)
    nearest = np.round(midi)
    filters[nearest.astype(int) % 12, np.flatnonzero(band)] = np.cos(np.pi * (midi - nearest)) ** 2
    return filters


def chroma_profile(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """(samples,) -> (12,) float pitch-class energy summed over the clip, C first; zeros for silence."""
    mags = _magnitudes(x, CHROMA_N_FFT, CHROMA_HOP)
    return (_chroma_filters(sample_rate, CHROMA_N_FFT) @ mags.sum(axis=0)).astype(np.float64)


def estimate_key(x: np.ndarray, sample_rate: int) -> tuple[str | None, str | None, float]:
    """(samples,) mono -> (tonic name, "major"/"minor", correlation) by Krumhansl-Schmuckler matching.

    Assumes A = 440 Hz tuning. Key and mode are None when there is no pitched energy or the best
    correlation is under KEY_MIN_CONFIDENCE.
    """
    profile = chroma_profile(x, sample_rate)
    if profile.max() <= 1e-6 * max(1.0, profile.sum()) or np.ptp(profile) == 0:
        return None, None, 0.0
    best = (-2.0, 0, "major")
    for mode, template in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
        for tonic in range(12):
            score = float(np.corrcoef(profile, np.roll(template, tonic))[0, 1])
            best = max(best, (score, tonic, mode))
    score, tonic, mode = best
    if score < KEY_MIN_CONFIDENCE:
        return None, None, score
    return NOTE_NAMES[tonic], mode, score


def _spectral_shape(x: np.ndarray, sample_rate: int) -> tuple[float | None, float | None, float | None]:
    """(centroid Hz, 85% roll-off Hz, flatness) averaged over frames louder than SILENCE_DBFS."""
    mags = _magnitudes(x, SPECTRAL_N_FFT, SPECTRAL_HOP)
    power = np.square(mags)
    # One-sided power of a Hann-windowed frame -> the frame's mean square (Parseval, window energy).
    mean_square = power.sum(axis=1) * 2 / (SPECTRAL_N_FFT * np.square(np.hanning(SPECTRAL_N_FFT)).sum())
    loud = mean_square > 10 ** (SILENCE_DBFS / 10)
    if not loud.any():
        return None, None, None
    mags, power = mags[loud], power[loud]
    freqs = np.fft.rfftfreq(SPECTRAL_N_FFT, 1.0 / sample_rate).astype(np.float32)
    centroid = (mags @ freqs) / mags.sum(axis=1)
    cumulative = np.cumsum(power, axis=1)
    rolloff = freqs[np.argmax(cumulative >= ROLLOFF_FRACTION * cumulative[:, -1:], axis=1)]
    flatness = np.exp(np.log(power + 1e-20).mean(axis=1)) / (power.mean(axis=1) + 1e-20)
    return float(centroid.mean()), float(rolloff.mean()), float(flatness.mean())
