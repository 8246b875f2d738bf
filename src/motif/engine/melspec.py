"""CLAP's log-mel features in torch: the same numbers as `ClapFeatureExtractor`, several times faster.

The stock extractor runs one numpy FFT per 10 ms frame in a Python loop (about 13 ms per 10 s window).
For a window of exactly `nb_max_samples` samples it does no cropping and no padding, and its log-mel is:
centred (reflect-padded) STFT with a periodic Hann window, power 2, the mel filter bank (Slaney for
`truncation="rand_trunc"`, HTK for `"fusion"`), floor at 1e-10, then 10·log10 (`top_db` is stored but never
applied). We do exactly that with `torch.stft`, reading every number from the loaded extractor, so a model
with a different preprocessor config is followed rather than silently mis-featurised.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

MEL_FLOOR = 1e-10  # transformers.audio_utils.spectrogram's mel_floor and power_to_db's min_value


class LogMel:
    """Batch log-mel features for exactly-one-window clips, matching `ClapFeatureExtractor` (one mel channel).

    Built from a loaded extractor; holds its Hann window and Slaney mel filter bank as float32 tensors.
    Raises ValueError for an extractor configuration this path does not reproduce.
    """

    def __init__(self, extractor: Any) -> None:
        if extractor.feature_size != extractor.mel_filters_slaney.shape[1]:
            raise ValueError("feature extractor's mel filter bank does not match its feature_size")
        self.n_fft = int(extractor.fft_window_size)
        self.hop_length = int(extractor.hop_length)
        self.sampling_rate = int(extractor.sampling_rate)
        self.window_samples = int(extractor.nb_max_samples)  # max_length_s * sampling_rate
        # `rand_trunc` uses the Slaney-normalised bank (librosa's default); `fusion` the HTK one.
        bank = extractor.mel_filters if extractor.truncation == "fusion" else extractor.mel_filters_slaney
        self.mel_filters = torch.from_numpy(np.asarray(bank, dtype=np.float32))
        self.window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float32)

    def n_frames(self) -> int:
        """Frames per window: 1 + window_samples // hop_length (1001 for CLAP's 10 s at 48 kHz, hop 480)."""
        return 1 + self.window_samples // self.hop_length

    def __call__(self, windows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(n, window_samples) float at `sampling_rate` -> (n, 1, frames, mel) float32 log-mel in dB.

        Raises ValueError when the windows are not exactly `window_samples` long: shorter or longer clips
        go through the extractor's padding or random cropping, which this path does not imitate.
        """
        audio = torch.as_tensor(windows, dtype=torch.float32)
        if audio.ndim != 2 or audio.shape[1] != self.window_samples:
            raise ValueError(f"expected (n, {self.window_samples}) windows, got {tuple(audio.shape)}")
        # One window at a time: its spectrum (~4 MB) stays in cache, where a batch's (~25 MB) runs twice slower.
        return torch.stack([self._log_mel(row) for row in audio]).unsqueeze(1)

    def _log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """(window_samples,) float32 -> (frames, mel) float32 log-mel in dB."""
        spectrum = torch.stft(
            audio, n_fft=self.n_fft, hop_length=self.hop_length, window=self.window.to(audio.device),
            center=True, pad_mode="reflect", onesided=True, return_complex=True,
        )  # fmt: skip
        squares = torch.view_as_real(spectrum).square()  # (freq, frames, 2): re², im²
        power = squares[..., 0] + squares[..., 1]  # |X|²: 5x faster than .sum(-1) or .abs() ** 2, no sqrt
        mel = torch.matmul(power.T, self.mel_filters.to(power.device))  # (frames, mel)
        return 10.0 * torch.log10(mel.clamp_min(MEL_FLOOR))
