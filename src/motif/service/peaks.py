"""Waveform peaks: a few hundred (min, max) pairs of a track, so a browser draws it without decoding it."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

import numpy as np

from motif.service.blobs import BlobStore

DEFAULT_BUCKETS = 400
CACHE_ENTRIES = 512  # (key, buckets) results kept; each is a few KB
PROCESSED_RATE = 32_000  # an upload's processed .npy: mono float32 at 32 kHz


def load_processed(blobs: BlobStore, key: str) -> np.ndarray:
    """An upload's processed audio: (samples,) float32 at PROCESSED_RATE."""
    with blobs.open(key) as file:
        return np.load(io.BytesIO(file.read()), allow_pickle=False)


def compute_peaks(samples: np.ndarray, n_buckets: int) -> list[tuple[float, float]]:
    """(samples,) or (samples, channels) float -> n_buckets (min, max) pairs over consecutive spans."""
    mono = samples if samples.ndim == 1 else samples.mean(axis=1)
    if mono.size == 0:
        return [(0.0, 0.0)] * n_buckets
    edges = np.linspace(0, mono.size, n_buckets + 1).astype(np.int64)
    edges[1:] = np.maximum(edges[1:], edges[:-1] + 1)  # never an empty span (shorter than n_buckets samples)
    edges = np.minimum(edges, mono.size)
    starts = np.minimum(edges[:-1], mono.size - 1)
    lows = np.minimum.reduceat(mono, starts)
    highs = np.maximum.reduceat(mono, starts)
    return [(round(float(lo), 4), round(float(hi), 4)) for lo, hi in zip(lows, highs, strict=True)]


class PeaksCache:
    """Peaks of stored blobs, computed once per (key, buckets); thread-safe, bounded (least recently used)."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int], tuple[float, list[tuple[float, float]]]] = OrderedDict()

    def get(self, key: str, n_buckets: int) -> tuple[float, list[tuple[float, float]]]:
        """(duration in seconds, peaks) of the blob at key: a processed .npy (32 kHz) or an encoded audio file."""
        with self._lock:
            if (key, n_buckets) in self._cache:
                self._cache.move_to_end((key, n_buckets))
                return self._cache[(key, n_buckets)]
        samples, rate = self._load(key)
        found = (samples.shape[0] / rate, compute_peaks(samples, n_buckets))
        with self._lock:
            self._cache[(key, n_buckets)] = found
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return found

    def _load(self, key: str) -> tuple[np.ndarray, int]:
        if key.endswith(".npy"):
            return load_processed(self.blobs, key), PROCESSED_RATE
        from motif.audio import load_audio  # PyAV: imported when first needed

        with self.blobs.open(key) as file:
            decoded = load_audio(file, max_duration=10_000.0)
        return decoded.samples, decoded.sample_rate
