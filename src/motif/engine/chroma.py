"""Melody conditioning for MusicGen-Melody: the argmax chroma of the source, without torchaudio.

transformers' MusicgenMelodyFeatureExtractor computes this with torchaudio's Spectrogram, which we do
not install (it pins its own torch build). This is the same computation: a centred Hann STFT with
n_fft=16384 and hop 4096 at 32 kHz, power spectrum normalised by the window's L2 norm, librosa's chroma
filter bank (transformers.audio_utils), max-normalised, then one-hot at each frame's strongest pitch class.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

N_FFT = 16_384
HOP_LENGTH = 4_096
N_CHROMA = 12


@lru_cache(maxsize=4)
def _filters(sample_rate: int) -> torch.Tensor:
    from transformers.audio_utils import chroma_filter_bank

    bank = chroma_filter_bank(sampling_rate=sample_rate, num_frequency_bins=N_FFT, tuning=0, num_chroma=N_CHROMA)
    return torch.from_numpy(bank).float()  # (12, n_fft // 2 + 1)


def melody_chroma(samples: np.ndarray, sample_rate: int = 32_000) -> torch.Tensor:
    """(samples,) mono float32 -> (frames, 12) float32 one-hot chroma, frames = samples // 4096 + 1."""
    wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if wave.shape[0] < N_FFT:
        pad = N_FFT - wave.shape[0]
        wave = torch.nn.functional.pad(wave, (pad // 2, pad - pad // 2))
    window = torch.hann_window(N_FFT)
    spec = torch.stft(
        wave, N_FFT, hop_length=HOP_LENGTH, win_length=N_FFT, window=window, center=True, pad_mode="reflect",
        normalized=False, return_complex=True,
    )  # fmt: skip
    power = spec.abs().pow(2) / window.pow(2).sum()  # torchaudio's normalized=True for power=2
    raw = _filters(sample_rate) @ power  # (12, frames)
    norm = raw / raw.amax(dim=0, keepdim=True).clamp_min(1e-6)
    one_hot = torch.zeros_like(norm.T)
    one_hot.scatter_(1, norm.T.argmax(dim=1, keepdim=True), 1.0)
    return one_hot
