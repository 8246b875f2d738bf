"""Audio of running generations for live listeners: per job, the PCM the engine has rendered so far.

A buffer exists from the first listener (or while its job runs with one) until the job ends; readers
keep their reference and finish reading after it is dropped here. Memory is bounded by the job's
duration: 16-bit PCM, 64 KB per second of mono audio at 32 kHz (7.7 MB for the longest, 120 s).
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field

import numpy as np

from motif.service.events import JobEvents, audio_topic

STREAM_SAMPLE_RATE = 32_000
BYTES_PER_SAMPLE = 2  # 16-bit PCM
OPEN_ENDED = 0xFFFFFFFF  # RIFF and data sizes of a WAV whose length is not known yet (players read to the end)


@dataclass
class AudioBuffer:
    """16-bit PCM chunks in order; `done` once the job ended (completed, failed or cancelled)."""

    chunks: list[bytes] = field(default_factory=list)
    channels: int = 1
    listeners: int = 0
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, cursor: int) -> tuple[bytes, int, bool]:
        """Chunks from index `cursor` on, joined: (pcm, next cursor, the job ended and this is all)."""
        with self.lock:
            new, done = self.chunks[cursor:], self.done
        return b"".join(new), cursor + len(new), done


class AudioStreams:
    """The live audio of this process's generations, keyed by job id."""

    def __init__(self, events: JobEvents) -> None:
        self.events = events
        self._lock = threading.Lock()
        self._buffers: dict[str, AudioBuffer] = {}

    def listen(self, job_id: str) -> AudioBuffer:
        """A listener arrived: from now on the job's audio is rendered while it is generated."""
        with self._lock:
            buffer = self._buffers.setdefault(job_id, AudioBuffer())
            buffer.listeners += 1
        return buffer

    def release(self, job_id: str, buffer: AudioBuffer) -> None:
        """A listener left; a buffer nobody listens to and nothing was written into is dropped."""
        with self._lock:
            buffer.listeners -= 1
            if buffer.listeners <= 0 and not buffer.chunks and self._buffers.get(job_id) is buffer:
                del self._buffers[job_id]

    def wanted(self, job_id: str) -> bool:
        """Someone listens (or listened while it ran): the engine should render the audio so far."""
        return job_id in self._buffers

    def write(self, job_id: str, samples: np.ndarray, offset: int) -> None:
        """The engine's AudioCallback: (samples,) or (samples, channels) float32 in [-1, 1], appended in order."""
        buffer = self._buffers.get(job_id)
        if buffer is None:
            return
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
        with buffer.lock:
            buffer.channels = 1 if pcm.ndim == 1 else int(pcm.shape[1])
            buffer.chunks.append(pcm.tobytes())
        self.events.publish(audio_topic(job_id))

    def close(self, job_id: str) -> None:
        """The job ended: readers get what is buffered, then the end of the stream."""
        with self._lock:
            buffer = self._buffers.pop(job_id, None)
        if buffer is not None:
            with buffer.lock:
                buffer.done = True
            self.events.publish(audio_topic(job_id))


def wav_header(channels: int, sample_rate: int = STREAM_SAMPLE_RATE) -> bytes:
    """A 44-byte 16-bit PCM WAV header with open-ended sizes, for audio whose length is not known yet."""
    byte_rate = sample_rate * channels * BYTES_PER_SAMPLE
    return (b"RIFF" + struct.pack("<I", OPEN_ENDED) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, byte_rate, channels * BYTES_PER_SAMPLE, 16) +
            b"data" + struct.pack("<I", OPEN_ENDED))  # fmt: skip
