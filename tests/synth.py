"""Deterministic synthetic audio for tests, and writers for every upload format we claim to decode.

Everything here is independent of `motif.audio` (soundfile and PyAV directly), so decoding tests do not
check our code against itself. Signals are float32 in [-1, 1], shaped (frames,) or (frames, channels).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr

SR = 32_000
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

# soundfile writes the WAV / FLAC variants: (container, libsndfile subtype).
_SOUNDFILE_FORMATS = {
    "wav16": ("WAV", "PCM_16"),
    "wav8": ("WAV", "PCM_U8"),
    "wav24": ("WAV", "PCM_24"),
    "wav32": ("WAV", "PCM_32"),
    "float": ("WAV", "FLOAT"),
    "ulaw": ("WAV", "ULAW"),
    "flac": ("FLAC", "PCM_16"),
}
# PyAV writes the lossy ones: (muxer, audio encoder, encoder rates or None for any).
_PYAV_FORMATS = {
    "mp3": ("mp3", "libmp3lame", None),
    "ogg": ("ogg", "vorbis", None),
    "opus": ("ogg", "libopus", (48_000, 24_000, 16_000, 12_000, 8_000)),
    "m4a": ("ipod", "aac", None),
    "mp4": ("mp4", "aac", None),
}
FORMATS = (*_SOUNDFILE_FORMATS, *_PYAV_FORMATS, "mp4_video_only")


def note_freq(name: str) -> float:
    """'A4' -> 440.0 Hz, 'C#3' -> 138.6 Hz (equal temperament)."""
    pitch, octave = name[:-1], int(name[-1])
    midi = NOTE_NAMES.index(pitch) + 12 * (octave + 1)
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def sine(freq: float, seconds: float, sr: int = SR, amplitude: float = 0.5) -> np.ndarray:
    """(round(seconds * sr),) float32 sine."""
    t = np.arange(round(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def square(freq: float, seconds: float, sr: int = SR, amplitude: float = 0.8) -> np.ndarray:
    """(round(seconds * sr),) float32 band-limited square wave (odd harmonics up to 0.45 sr).

    `amplitude` is the flat top; the Gibbs overshoot peaks about 18% above it, as in real audio.
    """
    t = np.arange(round(seconds * sr)) / sr
    harmonics = range(1, int(0.45 * sr / freq) + 1, 2)
    wave = sum((np.sin(2 * np.pi * freq * k * t) / k for k in harmonics), np.zeros_like(t)) * 4 / np.pi
    return (amplitude * wave).astype(np.float32)


def noise(seconds: float, sr: int = SR, seed: int = 0, amplitude: float = 0.1) -> np.ndarray:
    """(round(seconds * sr),) float32 Gaussian noise, clipped to [-1, 1]."""
    rng = np.random.default_rng(seed)
    return np.clip(amplitude * rng.standard_normal(round(seconds * sr)), -1, 1).astype(np.float32)


def tone(freq: float, seconds: float, sr: int = SR, amplitude: float = 0.3, n_harmonics: int = 4) -> np.ndarray:
    """A plucked harmonic tone: decaying partials 1/k, 10 ms attack so note starts do not click."""
    n = round(seconds * sr)
    t = np.arange(n) / sr
    partials = (np.sin(2 * np.pi * freq * k * t) / k for k in range(1, n_harmonics + 1) if freq * k < sr / 2)
    wave = sum(partials, np.zeros_like(t))
    envelope = np.minimum(1.0, t / 0.01) * np.exp(-t * 1.5)
    return (amplitude * wave * envelope / 1.5).astype(np.float32)


def chord(notes: list[str], seconds: float, sr: int = SR, amplitude: float = 0.25) -> np.ndarray:
    """Notes like ['C4', 'E4', 'G4'] sounded together: (round(seconds * sr),) float32."""
    mix = sum((tone(note_freq(n), seconds, sr, amplitude) for n in notes), np.zeros(round(seconds * sr)))
    return (mix / max(1, len(notes)) * 2).astype(np.float32)


def progression(chords: list[list[str]], seconds_each: float, sr: int = SR) -> np.ndarray:
    """Chords played one after another, each `seconds_each` long."""
    return np.concatenate([chord(c, seconds_each, sr) for c in chords])


def click_track(bpm: float, seconds: float, sr: int = SR, amplitude: float = 0.8, seed: int = 0) -> np.ndarray:
    """Short decaying noise bursts (5 ms time constant) every 60 / bpm seconds, first at t = 0."""
    rng = np.random.default_rng(seed)
    out = np.zeros(round(seconds * sr), dtype=np.float32)
    n_click = round(0.03 * sr)
    burst = rng.standard_normal(n_click) * np.exp(-np.arange(n_click) / (0.005 * sr))
    for start in np.arange(0, seconds, 60.0 / bpm):
        _add_at(out, round(start * sr), amplitude * burst / np.abs(burst).max())
    return out


def music_like(seconds: float, sr: int = SR, seed: int = 0, bpm: float = 110.0) -> np.ndarray:
    """A little C-major piece: I-vi-IV-V chords (one per bar), a bass line, kick / snare / hi-hat.

    Realistic enough for an upload (harmonics, transients, a steady tempo); peak about -3 dBFS.
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * sr)
    beat = 60.0 / bpm
    bars = [["C4", "E4", "G4"], ["A3", "C4", "E4"], ["F3", "A3", "C4"], ["G3", "B3", "D4"]]
    basses = ["C2", "A1", "F2", "G2"]
    out = np.zeros(n, dtype=np.float32)
    kick = sine(55.0, 0.15, sr, 1.0) * np.exp(-np.arange(round(0.15 * sr)) / (0.04 * sr))
    snare = rng.standard_normal(round(0.1 * sr)) * np.exp(-np.arange(round(0.1 * sr)) / (0.02 * sr)) * 0.3
    hat = rng.standard_normal(round(0.03 * sr)) * np.exp(-np.arange(round(0.03 * sr)) / (0.004 * sr)) * 0.15
    for i_beat, start in enumerate(np.arange(0, seconds, beat)):
        i = round(start * sr)
        if i_beat % 4 == 0:
            bar = (i_beat // 4) % len(bars)
            _add_at(out, i, chord(bars[bar], 4 * beat, sr, 0.2))
            _add_at(out, i, tone(note_freq(basses[bar]), 2 * beat, sr, 0.35))
        _add_at(out, i, (kick if i_beat % 2 == 0 else snare) * 0.6)
        _add_at(out, i, hat)
        _add_at(out, round((start + beat / 2) * sr), hat)
    return (out / max(1e-9, np.abs(out).max()) * 0.7).astype(np.float32)


def _add_at(out: np.ndarray, start: int, sound: np.ndarray) -> None:
    """Mix `sound` into `out` from sample `start`, cut at the end of `out`."""
    seg = out[start : start + sound.size]
    seg += sound[: seg.size].astype(np.float32)


def write_format(path: str | Path, samples: np.ndarray, sr: int, fmt: str) -> Path:
    """Write `samples` ((frames,) or (frames, channels)) to `path` as `fmt`, whatever the path's suffix.

    fmt is one of FORMATS. "mp4" holds a tiny MPEG-4 video track plus AAC audio; "mp4_video_only" is
    the same video with no audio (samples only set its length). Opus is resampled to 48 kHz first,
    as the encoder demands.
    """
    path = Path(path)
    samples = np.asarray(samples, dtype=np.float32)
    if fmt in _SOUNDFILE_FORMATS:
        major, subtype = _SOUNDFILE_FORMATS[fmt]
        sf.write(path, samples, sr, format=major, subtype=subtype)
    elif fmt in _PYAV_FORMATS or fmt == "mp4_video_only":
        muxer, codec, rates = _PYAV_FORMATS.get(fmt, ("mp4", None, None))
        if rates is not None and sr not in rates:
            samples, sr = soxr.resample(samples, sr, rates[0]), rates[0]
        if codec == "vorbis" and samples.ndim == 1:
            samples = np.stack([samples, samples], axis=1)  # FFmpeg's Vorbis encoder only writes stereo
        with av.open(str(path), "w", format=muxer) as container:
            # Every stream must exist before the first packet is muxed (the header is written then).
            video = _add_video(container) if fmt.startswith("mp4") else None
            audio = None if codec is None else _add_audio(container, codec, samples, sr)
            if video is not None:
                _encode_video(container, video, samples.shape[0] / sr)
            if audio is not None:
                _encode_audio(container, audio, samples, sr)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    return path


def _add_audio(
    container: av.container.OutputContainer, codec: str, samples: np.ndarray, sr: int
) -> av.audio.stream.AudioStream:
    layout = "mono" if samples.ndim == 1 else "stereo"
    options = {"strict": "experimental"} if codec == "vorbis" else {}  # FFmpeg's own Vorbis encoder
    stream = container.add_stream(codec, rate=sr, layout=layout, options=options)
    assert isinstance(stream, av.audio.stream.AudioStream)
    return stream


def _encode_audio(
    container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, samples: np.ndarray, sr: int
) -> None:
    packed = np.ascontiguousarray(samples.reshape(1, -1))  # interleaved (1, frames * channels): "flt"
    frame = av.AudioFrame.from_ndarray(packed, format="flt", layout=stream.layout.name)
    frame.sample_rate, frame.pts, frame.time_base = sr, 0, Fraction(1, sr)
    # PyAV re-chunks to the encoder's frame size and converts the sample format.
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def _add_video(container: av.container.OutputContainer, fps: int = 10) -> av.video.stream.VideoStream:
    stream = container.add_stream("mpeg4", rate=fps)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    return stream


def _encode_video(
    container: av.container.OutputContainer, stream: av.video.stream.VideoStream, seconds: float, fps: int = 10
) -> None:
    for i in range(max(1, round(seconds * fps))):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (i * 25) % 256, dtype=np.uint8), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, fps)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
