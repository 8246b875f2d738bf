"""Decoding any upload to mono float32 at the rate the caller needs, streamed, within limits on its cost.

Frames are downmixed and resampled as FFmpeg hands them over, so memory follows the output (seconds at
the asked rate), never what the file claims: a 300 KB FLAC of silence at 655,350 Hz on 8 channels is
refused at its header, and any file inside `DecodeLimits` costs one output buffer plus a block of frames.
Every refusal is a typed `motif.errors.AudioError` whose message is written for the person who uploaded it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import av
import numpy as np
import soxr

from motif.errors import (
    CorruptAudioError,
    EmptyAudioError,
    NoAudioStreamError,
    NotAudioError,
    TooLongError,
    TooManySamplesError,
    TooShortError,
    UnsupportedAudioError,
)

if TYPE_CHECKING:
    from motif.config import Settings

MAX_DURATION = 300.0  # seconds
MIN_DURATION = 1.0  # seconds
MAX_SAMPLE_RATE = 192_000  # Hz: the highest rate studios deliver
MAX_CHANNELS = 8  # 7.1 surround
MAX_SAMPLES = 120_000_000  # decoded values (frames x channels): 5 min of 192 kHz stereo or of 48 kHz 7.1
DURATION_SLACK = 0.1  # seconds of codec padding tolerated past max_duration, then trimmed
MAX_NONFINITE_FRACTION = 0.01  # more NaN/Inf than this is a broken file, not a few bad samples
MAX_BAD_PACKET_FRACTION = 0.05  # FFmpeg skips a damaged packet; this many means a damaged file
# Each packet costs ~30 us of Python whatever it holds: a FLAC cut into 16-sample blocks would take
# minutes. Real codecs stay well under this (Opus at 2.5 ms: 400 a second; Dolby TrueHD: 1200).
MAX_PACKETS_PER_SECOND = 1500
PACKET_GRACE = 5000  # packets decoded before their rate per second of audio is judged
BLOCK_FRAMES = 1 << 15  # source frames converted together: ~1 MB of float32 at 8 channels
OUTPUT_MARGIN = 4096  # output samples allowed past the limit for a resampler's rounding


class Readable(Protocol):
    """A binary file or stream: read() is required; seek() and tell() are used when present."""

    def read(self, size: int = -1, /) -> bytes | None: ...


Source = str | Path | bytes | Readable

# Demuxers of pictures ("png_pipe", ...) and text: such a file is "not audio", not "audio-less video".
_NON_MEDIA_FORMATS = {"image2", "tty", "srt", "webvtt", "ass", "subviewer", "lrc"}


@dataclass(frozen=True)
class DecodeLimits:
    """What one decode may cost, whatever the file claims; checked on the header, then on every frame.

    Durations in seconds; `max_samples` counts decoded values (frames x channels at the source rate),
    which bounds the decoding time of many channels at a high rate.
    """

    max_duration: float = MAX_DURATION
    min_duration: float = MIN_DURATION
    max_sample_rate: int = MAX_SAMPLE_RATE
    max_channels: int = MAX_CHANNELS
    max_samples: int = MAX_SAMPLES

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeLimits:
        return cls(max_duration=settings.max_duration, max_sample_rate=settings.max_sample_rate,
                   max_channels=settings.max_channels, max_samples=settings.max_samples)  # fmt: skip


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # (frames,) float32 mono in [-1, 1], finite; (frames, 2) when decoded with stereo
    sample_rate: int  # Hz of `samples`
    duration: float  # seconds of decoded audio
    source_sample_rate: int  # Hz of the upload's audio stream
    source_channels: int
    codec: str  # FFmpeg decoder name, e.g. "mp3float", "pcm_s16le"
    container: str  # FFmpeg demuxer name, e.g. "wav", "mov,mp4,m4a,3gp,3g2,mj2"
    n_nonfinite: int  # NaN/Inf source values replaced by 0 (all channels counted)


@dataclass(frozen=True)
class AudioInfo:
    """What the container header claims; `duration` may be None or wrong (headers lie)."""

    container: str
    codec: str
    sample_rate: int
    channels: int
    duration: float | None  # seconds


class _Unnamed:
    """Hides a file's name from FFmpeg so the format is chosen by content, never by extension."""

    def __init__(self, raw: Readable) -> None:
        self.read, self._raw = raw.read, raw

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)  # type: ignore[attr-defined]  # only called when seekable()

    def tell(self) -> int:
        return self._raw.tell()  # type: ignore[attr-defined]

    def seekable(self) -> bool:
        return hasattr(self._raw, "seek") and getattr(self._raw, "seekable", lambda: True)()


@contextmanager
def _open_container(source: Source) -> Iterator[av.container.InputContainer]:
    """Open `source` for demuxing. Raises NotAudioError; FileNotFoundError passes through (our bug)."""
    raw: Readable
    owned: io.BufferedReader | io.BytesIO | None = None
    if isinstance(source, bytes | bytearray | memoryview):
        raw = owned = io.BytesIO(source)
    elif isinstance(source, str | Path):
        raw = owned = open(source, "rb")  # noqa: SIM115 - closed below, after the container
    else:
        raw = source
    try:
        try:
            # No protocols: a playlist (HLS, concat) in an upload must not make FFmpeg open other files.
            container = av.open(_Unnamed(raw), mode="r", options={"protocol_whitelist": "none"})
        except (av.error.FFmpegError, ValueError, EOFError) as error:
            raise NotAudioError(
                "The file is not audio or video that we can read: its format was not recognised, "
                "or it is damaged or cut short before its header ends."
            ) from error
        with container:
            yield container
    finally:
        if owned is not None:
            owned.close()


def _audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream:
    """The first audio stream. Raises NoAudioStreamError (video only) or NotAudioError (anything else)."""
    if container.streams.audio:
        return container.streams.audio[0]
    name = container.format.name
    if container.streams.video and name not in _NON_MEDIA_FORMATS and not name.endswith("_pipe"):
        raise NoAudioStreamError("The file is a video with no audio track; upload one with sound.")
    raise NotAudioError(f"The file ({name}) holds no audio: it is not an audio or video file.")


def probe_audio(source: Source) -> AudioInfo:
    """Read only the header of `source` (path, bytes or binary file). Raises NotAudioError, NoAudioStreamError."""
    with _open_container(source) as container:
        stream = _audio_stream(container)
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        context = stream.codec_context
        return AudioInfo(container.format.name, context.name, context.sample_rate, context.channels, duration)


def load_audio(
    source: Source,
    *,
    sample_rate: int | None = None,
    limits: DecodeLimits | None = None,
    max_duration: float | None = None,
    min_duration: float | None = None,
    stereo: bool = False,
) -> DecodedAudio:
    """Decode the first audio stream of `source` to mono float32 at `sample_rate` Hz (None: native).

    With `stereo`, a source of two or more channels comes out as (frames, 2): left the mean of its even
    channels, right of its odd ones (FFmpeg orders them FL, FR, FC, LFE, ...); a mono source stays (frames,).

    `source` is a path, bytes, or a binary file read from its current position. The format is detected
    from content only. Channels are averaged and the result resampled block by block as frames arrive;
    decoding stops as soon as a limit is passed, so memory is bounded by the output (at most
    `max_duration` s at `sample_rate`) whatever the header says. `max_duration` / `min_duration`
    override those of `limits`. NaN/Inf samples become 0 and are counted.

    Raises NotAudioError, NoAudioStreamError, EmptyAudioError, TooShortError, TooLongError,
    TooManySamplesError (413), UnsupportedAudioError (sample rate, channels or packets per second over
    the limits, 422), CorruptAudioError (too many undecodable packets, or more than 1% non-finite samples).
    """
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    limits = limits or DecodeLimits()
    if max_duration is not None or min_duration is not None:
        limits = DecodeLimits(max_duration if max_duration is not None else limits.max_duration,
                              min_duration if min_duration is not None else limits.min_duration,
                              limits.max_sample_rate, limits.max_channels, limits.max_samples)  # fmt: skip
    with _open_container(source) as container:
        stream = _audio_stream(container)
        decoder = _StreamDecoder(sample_rate, limits, stereo)
        decoder.run(container, stream)
        codec, container_name = stream.codec_context.name, container.format.name
    samples = decoder.result()
    rate = sample_rate or decoder.source_rate
    duration = samples.shape[0] / rate
    if duration < limits.min_duration:
        raise TooShortError(f"The audio is {duration:.2f} s long; at least {limits.min_duration:g} s is needed.")
    return DecodedAudio(samples, rate, duration, decoder.source_rate, decoder.source_channels, codec,
                        container_name, decoder.n_nonfinite)  # fmt: skip


class _StreamDecoder:
    """One decode pass: frames -> blocks -> mono float32 at the target rate, with the limits enforced.

    Frames are kept as FFmpeg gave them until BLOCK_FRAMES have arrived, then converted, downmixed
    and resampled together (per-frame numpy calls would cost more than decoding a small frame).
    """

    def __init__(self, target_rate: int | None, limits: DecodeLimits, stereo: bool = False) -> None:
        self.target_rate, self.limits, self.stereo = target_rate, limits, stereo
        self.out_channels = 1
        self.source_rate = self.source_channels = 0
        self.seconds = 0.0  # decoded so far
        self.n_values = self.n_nonfinite = 0  # decoded values (all channels), bad values among them
        self.n_packets = self.n_bad_packets = 0
        self.first_error: Exception | None = None
        self._pending: list[np.ndarray] = []
        self._pending_format: tuple[int, int, str, bool] | None = None  # rate, channels, format, planar
        self._n_pending = 0
        self._stream: soxr.ResampleStream | None = None
        self._out = np.zeros(0, np.float32)
        self._n_out = 0

    def run(self, container: av.container.InputContainer, stream: av.audio.stream.AudioStream) -> None:
        context = stream.codec_context
        self._check_format(context.sample_rate, context.channels)  # the header, before any decoding
        try:
            for packet in container.demux(stream):
                self._count_packet()
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as error:
                    self._bad_packet(error)
                    continue
                for frame in frames:
                    self._add(frame)
        except av.error.FFmpegError as error:
            raise CorruptAudioError("The audio is damaged and could not be read to the end.") from error
        self._flush()
        if self.n_bad_packets > max(2, MAX_BAD_PACKET_FRACTION * self.n_packets):
            raise self._corrupt()

    def _check_format(self, rate: int, channels: int) -> None:
        limits = self.limits
        if rate > limits.max_sample_rate:
            raise UnsupportedAudioError(
                f"The audio's sample rate is {rate} Hz; the limit is {limits.max_sample_rate} Hz "
                "(MAX_SAMPLE_RATE). Resample it and upload again."
            )
        if channels > limits.max_channels:
            raise UnsupportedAudioError(
                f"The audio has {channels} channels; the limit is {limits.max_channels} (MAX_CHANNELS). "
                "Mix it down and upload again."
            )

    def _count_packet(self) -> None:
        self.n_packets += 1
        if self.n_packets > PACKET_GRACE and self.n_packets > MAX_PACKETS_PER_SECOND * self.seconds:
            raise UnsupportedAudioError(
                f"The audio is cut into {self.n_packets / max(self.seconds, 1e-3):.0f} packets per second "
                f"(the limit is {MAX_PACKETS_PER_SECOND}); re-encode it with a common encoder."
            )

    def _bad_packet(self, error: Exception) -> None:
        # FFmpeg's own tools skip a packet that fails to decode; many failures mean a damaged file.
        self.n_bad_packets += 1
        self.first_error = self.first_error or error
        if self.n_bad_packets > max(20, MAX_BAD_PACKET_FRACTION * self.n_packets):
            raise self._corrupt()

    def _corrupt(self) -> CorruptAudioError:
        error = CorruptAudioError(
            f"The audio is damaged: {self.n_bad_packets} of the first {self.n_packets} packets could not be decoded."
        )
        error.__cause__ = self.first_error  # FFmpeg's words, for the log rather than the user
        return error

    def _add(self, frame: av.AudioFrame) -> None:
        rate, channels, n = frame.sample_rate, frame.layout.nb_channels, frame.samples
        fmt = (rate, channels, frame.format.name, frame.format.is_planar)
        if fmt != self._pending_format:  # the first frame, or a change mid-stream (concatenated MP3s)
            self._flush()
            self._check_format(rate, channels)
            if not self.source_rate:
                self._start(rate, channels)
            self._pending_format = fmt
        self.n_values += n * channels
        self.seconds += n / rate
        self._check_totals()
        self._pending.append(frame.to_ndarray())
        self._n_pending += n
        if self._n_pending >= BLOCK_FRAMES:
            self._flush()

    def _start(self, rate: int, channels: int) -> None:
        self.source_rate, self.source_channels = rate, channels
        self.out_channels = 2 if self.stereo and channels > 1 else 1
        out_rate = self.target_rate or rate
        if out_rate != rate:
            self._stream = soxr.ResampleStream(rate, out_rate, self.out_channels, dtype="float32")
        # Untouched pages of the buffer are never resident: memory follows what is decoded.
        n_frames = math.ceil((self.limits.max_duration + DURATION_SLACK) * out_rate) + OUTPUT_MARGIN
        self._out = np.empty((n_frames, self.out_channels) if self.out_channels > 1 else n_frames, dtype=np.float32)

    def _check_totals(self) -> None:
        limits = self.limits
        if self.seconds > limits.max_duration + DURATION_SLACK:
            raise TooLongError(
                f"The audio is longer than the {limits.max_duration:g} s limit (decoding stopped at "
                f"{self.seconds:.1f} s); trim it and upload again."
            )
        if self.n_values > limits.max_samples:
            raise TooManySamplesError(
                f"The audio holds more than {limits.max_samples} samples (MAX_SAMPLES: seconds x sample rate "
                f"x channels; decoding stopped at {self.seconds:.1f} s of {self.source_channels} channels at "
                f"{self.source_rate} Hz). Mix it down, resample it or trim it, and upload again."
            )

    def _flush(self) -> None:
        """Convert, downmix and resample the pending frames, a block at a time, into the output."""
        if not self._pending:
            return
        assert self._pending_format is not None
        rate, channels, _, planar = self._pending_format
        data = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending, axis=1)
        self._pending, self._n_pending = [], 0
        if not planar:  # packed formats come as (1, samples * channels), interleaved
            data = data.reshape(-1, channels).T
        for start in range(0, data.shape[1], BLOCK_FRAMES):  # a huge frame is converted in slices too
            block = data[:, start : start + BLOCK_FRAMES]
            chunk = self._downmix(block[0::2] if self.out_channels == 2 else block)
            if self.out_channels == 2:  # left from the even channels, right from the odd ones
                chunk = np.stack([chunk, self._downmix(block[1::2]) if block.shape[0] > 1 else chunk], axis=1)
            if rate != self.source_rate:  # rare: a rate change mid-stream
                chunk = soxr.resample(chunk, rate, self.source_rate).astype(np.float32)
            self._emit(self._stream.resample_chunk(chunk) if self._stream else chunk)

    def _downmix(self, block: np.ndarray) -> np.ndarray:
        """(channels, n) in FFmpeg's sample format -> (n,) float32 mean at full scale 1.0; NaN/Inf zeroed, counted.

        Channels are summed into one float32 row before scaling: one pass per channel, no float copy of all.
        """
        n_channels = block.shape[0]
        mono = block[0].astype(np.float32)
        for channel in block[1:]:
            mono += channel
        if block.dtype.kind == "u":  # unsigned 8-bit: silence is 128
            return (mono - np.float32(128 * n_channels)) * np.float32(1 / (128 * n_channels))
        if block.dtype.kind == "i":
            return mono * np.float32(1 / (2 ** (8 * block.dtype.itemsize - 1) * n_channels))
        if not np.isfinite(mono).all():  # rare: NaN/Inf in a float source (or finite values summing past float32)
            finite = np.isfinite(block)
            self.n_nonfinite += int(block.size - np.count_nonzero(finite))
            mono = np.where(finite, block, 0).mean(axis=0, dtype=np.float64).astype(np.float32)
            return np.nan_to_num(mono, posinf=1.0, neginf=-1.0)
        return mono * np.float32(1 / n_channels) if n_channels > 1 else mono

    def _emit(self, chunk: np.ndarray) -> None:
        end = self._n_out + chunk.shape[0]
        if end > self._out.shape[0]:  # only a resampler's rounding could get here; grow rather than fail
            grow = np.empty((end - self._n_out, *self._out.shape[1:]), np.float32)
            self._out = np.concatenate([self._out[: self._n_out], grow])
        self._out[self._n_out : end] = chunk
        self._n_out = end

    def result(self) -> np.ndarray:
        """(frames,) float32 in [-1, 1]. Raises EmptyAudioError, CorruptAudioError."""
        if self.n_values == 0:
            if self.n_bad_packets:
                raise self._corrupt()
            raise EmptyAudioError("The audio track is empty: it decodes to no samples.")
        if self.n_nonfinite > MAX_NONFINITE_FRACTION * self.n_values:
            raise CorruptAudioError(
                f"The audio is damaged: {self.n_nonfinite / self.n_values:.1%} of its samples are not numbers "
                "(NaN or infinite)."
            )
        if self._stream is not None:
            empty = np.zeros((0, self.out_channels) if self.out_channels > 1 else 0, np.float32)
            self._emit(self._stream.resample_chunk(empty, last=True))
        rate = self.target_rate or self.source_rate
        samples = self._out[: min(self._n_out, round(self.limits.max_duration * rate))]  # drop codec padding
        # Float sources and resampling may overshoot full scale; callers are promised [-1, 1].
        return np.clip(samples, -1.0, 1.0, out=samples)

