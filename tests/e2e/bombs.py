"""Decompression bombs for the upload path, and the server's peak memory while it digests them.

A bomb is long silence with a click every few seconds at a very high sample rate or with many channels:
FLAC stores a 5-minute one in a few hundred kB, yet it decodes to billions of bytes of samples. Files are
written a block at a time, so building even the 8-channel 655,350 Hz one costs the test little memory.
Peak memory is read from Linux's /proc (VmHWM, reset through clear_refs), no extra dependency.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

CLICK_EVERY = 10.0  # seconds between two clicks
CLICK_SECONDS = 0.002
BLOCK_SECONDS = 1.0  # written a block at a time: the builder never holds the whole signal

# (container, libsndfile subtype) of the formats a bomb can take.
BOMB_FORMATS = {"flac": ("FLAC", "PCM_16"), "wav": ("WAV", "PCM_16"), "wav8": ("WAV", "PCM_U8")}


def write_bomb(path: Path, fmt: str, sample_rate: int, channels: int, seconds: float,
               click_every: float = CLICK_EVERY) -> Path:  # fmt: skip
    """Write `seconds` of silence with a full-scale click every `click_every` s on every channel."""
    major, subtype = BOMB_FORMATS[fmt]
    block = max(1, round(BLOCK_SECONDS * sample_rate))
    n_total, n_click = round(seconds * sample_rate), max(1, round(CLICK_SECONDS * sample_rate))
    period = round(click_every * sample_rate)
    silence = np.zeros((block, channels), dtype=np.int16)
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=channels, format=major, subtype=subtype) as out:
        for start in range(0, n_total, block):
            n = min(block, n_total - start)
            first_click = -(-start // period) * period  # the first click at or after `start`
            if first_click >= start + n:
                out.write(silence[:n])
                continue
            chunk = silence[:n].copy()
            for click in range(first_click, start + n, period):
                chunk[click - start : click - start + n_click] = 30_000
            out.write(chunk)
    return path


def peak_rss(pid: int) -> int:
    """Bytes: the highest resident memory of process `pid` since it started or since `reset_peak_rss`."""
    return _status_kib(pid, "VmHWM") * 1024


def current_rss(pid: int) -> int:
    """Bytes resident now."""
    return _status_kib(pid, "VmRSS") * 1024


def reset_peak_rss(pid: int) -> None:
    """Make VmHWM start again from the current resident size (Linux >= 4.0: clear_refs, value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")
