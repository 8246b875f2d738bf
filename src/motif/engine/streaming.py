"""Audio while it is generated: the frames decoded so far, rendered by EnCodec in overlapping chunks.

A listener gets (samples, offset) pieces that tile the result from sample 0 without gaps or overlaps.
Each chunk is decoded with up to STREAM_CONTEXT_FRAMES frames before it (dropped) so EnCodec's LSTM and
convolutions start warm, and stops STREAM_LOOKAHEAD_FRAMES short of the last known frame, whose
samples still depend on frames not sampled yet (the decoder's convolutions look ahead). The first chunk
starts where the final render starts, so it matches it; later chunks differ from the final render by
the LSTM state they start from (bounded in tests/engine/test_streaming.py). The last piece is cut from
the final render itself. The final file is loudness-normalised afterwards; the stream is not.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from motif.engine.types import FRAMES_PER_SECOND, SAMPLE_RATE, AudioCallback

HOP = SAMPLE_RATE // FRAMES_PER_SECOND  # 640 samples per EnCodec frame
STREAM_CONTEXT_FRAMES = 50  # 1 s decoded before each chunk and dropped
STREAM_LOOKAHEAD_FRAMES = 5  # 0.1 s held back until the frames after it are known
FIRST_CHUNK_FRAMES = 10  # 0.2 s: the first audio comes early (time to first audio)
CHUNK_FRAMES = 50  # then one render per second of audio: EnCodec's cost per chunk is (50 + 50 + 5) frames


class AudioTap:
    """One task's stream: decides when a chunk is due, renders it, hands it to `on_audio`.

    Frame numbers are absolute in the task's token sequence (source prompt frames first).
    """

    def __init__(
        self, on_audio: AudioCallback, wanted: Callable[[], bool] | None, n_source_frames: int, render_start: int
    ) -> None:
        self.on_audio = on_audio
        self.wanted = wanted
        self.n_source = n_source_frames
        self.render_start = render_start  # where the final render starts decoding (it keeps some prompt context)
        self.emitted = 0  # generated frames already handed over

    def step(
        self, n_known: int, codes: Callable[[int, int], torch.Tensor], render: Callable[[torch.Tensor], np.ndarray]
    ) -> None:
        """After a decode step with `n_known` generated frames complete: render a chunk if one is due.

        codes(start, end) -> (K, end - start) frames; render(codes) -> (samples,) float32, HOP per frame.
        """
        ready = n_known - STREAM_LOOKAHEAD_FRAMES
        due = FIRST_CHUNK_FRAMES if self.emitted == 0 else CHUNK_FRAMES
        if ready - self.emitted < due or (self.wanted is not None and not self.wanted()):
            return
        first = self.n_source + self.emitted
        start = self.render_start if self.emitted == 0 else max(self.render_start, first - STREAM_CONTEXT_FRAMES)
        audio = render(codes(start, self.n_source + n_known))
        skip = (first - start) * HOP
        self._send(audio[skip : skip + (ready - self.emitted) * HOP])
        self.emitted = ready

    def finish(self, final: np.ndarray) -> None:
        """The task is done: send what is left, cut from the final render (samples,) of the whole result."""
        if self.emitted == 0 and self.wanted is not None and not self.wanted():
            return
        self._send(final[self.emitted * HOP :])
        self.emitted = final.shape[0] // HOP

    def _send(self, samples: np.ndarray) -> None:
        if samples.shape[0]:
            self.on_audio(np.ascontiguousarray(samples, dtype=np.float32), self.emitted * HOP)
