"""Audio in and out: decode any upload to mono float32, resample, loudness-normalise, encode.

Numpy in, numpy out: nothing here knows about models, HTTP or storage. Every refusal is a typed
`motif.errors.AudioError` whose message is written for the person who uploaded the file.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import av
import numpy as np
import pyloudnorm
import soundfile as sf
import soxr
from scipy.ndimage import minimum_filter1d, uniform_filter1d
from scipy.signal import resample_poly

from motif.engine.types import OutputFormat
from motif.errors import (
    CorruptAudioError,
    EmptyAudioError,
    NoAudioStreamError,
    NotAudioError,
    TooLongError,
    TooShortError,
)

MAX_DURATION = 300.0  # seconds
MIN_DURATION = 1.0  # seconds
DURATION_SLACK = 0.1  # seconds of codec padding tolerated past max_duration, then trimmed
MAX_NONFINITE_FRACTION = 0.01  # more NaN/Inf than this is a broken file, not a few bad samples
MAX_BAD_PACKET_FRACTION = 0.05  # FFmpeg skips a damaged packet; this many means a damaged file
TARGET_LUFS = -14.0
TRUE_PEAK_DBTP = -1.0
TRUE_PEAK_RATE = 192_000  # BS.1770-4 annex 2: oversample to 192 kHz (4x at 48 kHz, 6x at 32 kHz)
LIMITER_WINDOW_S = 0.005  # lookahead / release of the peak limiter
MP3_BIT_RATE = 192_000
WAV_SUBTYPE = "PCM_16"


class Readable(Protocol):
    """A binary file or stream: read() is required; seek() and tell() are used when present."""

    def read(self, size: int = -1, /) -> bytes | None: ...


Source = str | Path | bytes | Readable

# Demuxers of pictures ("png_pipe", ...) and text: such a file is "not audio", not "audio-less video".
_NON_MEDIA_FORMATS = {"image2", "tty", "srt", "webvtt", "ass", "subviewer", "lrc"}


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # (frames,) float32 mono in [-1, 1], finite
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
    max_duration: float = MAX_DURATION,
    min_duration: float = MIN_DURATION,
) -> DecodedAudio:
    """Decode the first audio stream of `source` to mono float32 at `sample_rate` Hz (None: native).

    `source` is a path, bytes, or a binary file read from its current position. The format is
    detected from content only. Channels are averaged. Length is measured on the decoded samples
    and decoding stops as soon as it passes `max_duration` (+ DURATION_SLACK, trimmed), so memory
    stays bounded whatever the header says. NaN/Inf samples become 0 and are counted.

    Raises NotAudioError, NoAudioStreamError, EmptyAudioError, TooShortError, TooLongError,
    CorruptAudioError (too many undecodable packets, or more than 1% non-finite samples).
    """
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    with _open_container(source) as container:
        stream = _audio_stream(container)
        decoder = _StreamDecoder(sample_rate, max_duration)
        decoder.run(container, stream)
        codec, container_name = stream.codec_context.name, container.format.name
    samples = decoder.result()
    rate = sample_rate or decoder.source_rate
    duration = samples.shape[0] / rate
    if duration < min_duration:
        raise TooShortError(f"The audio is {duration:.2f} s long; at least {min_duration:g} s is needed.")
    return DecodedAudio(samples, rate, duration, decoder.source_rate, decoder.source_channels, codec,
                        container_name, decoder.n_nonfinite)  # fmt: skip


class _StreamDecoder:
    """One decode pass: frames -> mono float32 chunks, resampled as they arrive, with the limits enforced."""

    def __init__(self, target_rate: int | None, max_duration: float) -> None:
        self.target_rate, self.max_duration = target_rate, max_duration
        self.source_rate = self.source_channels = 0
        self.n_source = self.n_values = self.n_nonfinite = 0  # source-rate frames, values, bad values
        self.max_frames = 0  # source-rate frames allowed, set from the first frame's rate
        self.n_packets = self.n_bad_packets = 0
        self.first_error: Exception | None = None
        self.chunks: list[np.ndarray] = []
        self._stream: soxr.ResampleStream | None = None

    def run(self, container: av.container.InputContainer, stream: av.audio.stream.AudioStream) -> None:
        try:
            for packet in container.demux(stream):
                self.n_packets += 1
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as error:
                    self._bad_packet(error)
                    continue
                for frame in frames:
                    self._add(frame)
        except av.error.FFmpegError as error:
            raise CorruptAudioError("The audio is damaged and could not be read to the end.") from error
        if self.n_bad_packets > max(2, MAX_BAD_PACKET_FRACTION * self.n_packets):
            raise self._corrupt()

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
        values = _frame_values(frame)  # (channels, n)
        if not self.source_rate:
            self.source_rate, self.source_channels = frame.sample_rate, values.shape[0]
            self.max_frames = math.ceil((self.max_duration + DURATION_SLACK) * self.source_rate)
            if self.target_rate and self.target_rate != self.source_rate:
                self._stream = soxr.ResampleStream(self.source_rate, self.target_rate, 1, dtype="float32")
        finite = np.isfinite(values)
        if not finite.all():
            self.n_nonfinite += int(values.size - np.count_nonzero(finite))
            values = np.where(finite, values, np.float32(0))
        self.n_values += values.size
        mono = values.mean(axis=0, dtype=np.float32)
        if frame.sample_rate != self.source_rate:  # rare: a rate change mid-stream (concatenated MP3s)
            mono = soxr.resample(mono, frame.sample_rate, self.source_rate).astype(np.float32)
        self.n_source += mono.shape[0]
        if self.n_source > self.max_frames:
            raise TooLongError(
                f"The audio is longer than the {self.max_duration:g} s limit (decoding stopped at "
                f"{self.n_source / self.source_rate:.1f} s); trim it and upload again."
            )
        self.chunks.append(self._stream.resample_chunk(mono) if self._stream else mono)

    def result(self) -> np.ndarray:
        """(frames,) float32 in [-1, 1]. Raises EmptyAudioError, CorruptAudioError."""
        if self.n_source == 0:
            if self.n_bad_packets:
                raise self._corrupt()
            raise EmptyAudioError("The audio track is empty: it decodes to no samples.")
        if self.n_nonfinite > MAX_NONFINITE_FRACTION * self.n_values:
            raise CorruptAudioError(
                f"The audio is damaged: {self.n_nonfinite / self.n_values:.1%} of its samples are not numbers "
                "(NaN or infinite)."
            )
        if self._stream is not None:
            self.chunks.append(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))
        samples = np.concatenate(self.chunks)
        rate = self.target_rate or self.source_rate
        samples = samples[: round(self.max_duration * rate)]  # drop the tolerated codec padding
        # Float sources and resampling may overshoot full scale; callers are promised [-1, 1].
        return np.clip(samples, -1.0, 1.0, out=samples)


def _frame_values(frame: av.AudioFrame) -> np.ndarray:
    """A decoded frame as (channels, samples) float32 at full scale 1.0, whatever FFmpeg's sample format."""
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # packed formats come as (1, samples * channels), interleaved
        data = data.reshape(-1, frame.layout.nb_channels).T
    if data.dtype.kind == "u":  # unsigned 8-bit: silence is 128
        return (data.astype(np.float32) - 128.0) / 128.0
    if data.dtype.kind == "i":
        return data.astype(np.float32) / float(2 ** (8 * data.dtype.itemsize - 1))
    return data.astype(np.float32, copy=False)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """(frames,) or (frames, channels) -> float32 at `to_rate` Hz, round(frames * to_rate / from_rate) long.

    soxr "HQ" (linear phase). Returns the input (as float32) when the rates are equal.
    """
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    samples = np.asarray(samples, dtype=np.float32)
    if from_rate == to_rate:
        return samples
    if samples.shape[0] == 0:
        return samples.copy()
    return soxr.resample(samples, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def measure_loudness(samples: np.ndarray, sample_rate: int) -> float | None:
    """Integrated loudness of (frames,) mono or (frames, channels) in LUFS (ITU-R BS.1770-4, pyloudnorm).

    None for digital silence or audio entirely below the -70 LUFS gate. Clips shorter than one 400 ms
    gating block are measured as if looped, which keeps their mean square.
    """
    samples = np.nan_to_num(_frames_first(np.asarray(samples, dtype=np.float64)))
    if not samples.any():
        return None
    block = math.ceil(0.4 * sample_rate) + 1
    if samples.shape[0] < block:
        samples = np.tile(samples, (-(-block // samples.shape[0]),) + (1,) * (samples.ndim - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        lufs = pyloudnorm.Meter(sample_rate).integrated_loudness(samples)
    return float(lufs) if np.isfinite(lufs) else None


def measure_true_peak(samples: np.ndarray, sample_rate: int) -> float:
    """True peak of (frames,) in dBTP (BS.1770-4: oversampled to 192 kHz); -inf for silence or empty input."""
    peak = float(_peak_envelope(samples, sample_rate).max(initial=0.0))
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def _oversampling(sample_rate: int) -> int:
    return max(4, math.ceil(TRUE_PEAK_RATE / sample_rate))


def _peak_envelope(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """(frames,) or (frames, channels) -> (frames,) float32 largest magnitude of the oversampled signal around
    each sample, over all channels (a stereo limiter must act on both channels alike)."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        return np.max([_peak_envelope(channel, sample_rate) for channel in samples.T], axis=0, initial=0.0)
    n, k = samples.shape[0], _oversampling(sample_rate)
    if n == 0:
        return np.zeros(0, np.float32)
    # A windowed-sinc polyphase FIR cut at the source Nyquist, as BS.1770's reference interpolator;
    # soxr's steeper filter rolls off before Nyquist and under-reads broadband transients.
    over = np.abs(resample_poly(samples, k, 1))
    peaks = np.abs(samples)
    for phase in range(k):  # strided maxima: much faster than .reshape(n, k).max(axis=1)
        np.maximum(peaks, over[phase::k], out=peaks)
    return peaks


def _peak_ceiling(true_peak_dbtp: float, sample_rate: int) -> float:
    """The linear limit for the oversampled points that keeps the continuous peak under `true_peak_dbtp`.

    Between oversampled points (1 / (k rate) apart) a signal band-limited to rate / 2 can rise above
    its nearest point by at most a factor 1 / (1 - (pi / 2k)^2 / 2) (Bernstein's inequality on the
    second derivative): 0.30 dB at 6x, 0.70 dB at 4x.
    """
    return 10 ** (true_peak_dbtp / 20) * (1 - (math.pi / (2 * _oversampling(sample_rate))) ** 2 / 2)


def loudness_normalize(
    samples: np.ndarray,
    sample_rate: int,
    target_lufs: float = TARGET_LUFS,
    true_peak_dbtp: float = TRUE_PEAK_DBTP,
) -> np.ndarray:
    """(frames,) or (frames, channels) -> the same shape, float32, at `target_lufs` integrated and true peak
    <= `true_peak_dbtp` (one gain for all channels, so the stereo image is kept).

    Gain to the target, then a lookahead peak limiter where the gain pushed peaks over the ceiling;
    done twice, since limiting lowers loudness. Very peaky audio may end below the target: the ceiling
    wins. Silence (or audio below the -70 LUFS gate) gets no gain; NaN/Inf become 0.
    """
    x = np.nan_to_num(_frames_first(np.asarray(samples, dtype=np.float32)), nan=0.0, posinf=0.0, neginf=0.0)
    ceiling = _peak_ceiling(true_peak_dbtp, sample_rate)
    for _ in range(2):
        lufs = measure_loudness(x, sample_rate)
        if lufs is None or abs(lufs - target_lufs) < 0.05:
            return _limit(x, sample_rate, ceiling)[0]
        x, limited = _limit(x * np.float32(10 ** ((target_lufs - lufs) / 20)), sample_rate, ceiling)
        if not limited:  # a pure gain lands on the target: no second pass
            break
    return x


def _limit(x: np.ndarray, sample_rate: int, ceiling: float) -> tuple[np.ndarray, bool]:
    """Smooth gain reduction so that no true peak exceeds `ceiling` (linear) -> (audio, whether it acted)."""
    peaks = _peak_envelope(x, sample_rate)
    if peaks.max(initial=0.0) <= ceiling:
        return x, False
    needed = np.minimum(1.0, ceiling / np.maximum(peaks, 1e-12))
    # A running minimum over +-w then a moving average over +-w: every averaged value is <= the gain
    # needed at the centre sample, so the smoothed gain never lets a peak through.
    w = max(1, round(LIMITER_WINDOW_S * sample_rate))
    gain = uniform_filter1d(minimum_filter1d(needed, 2 * w + 1, mode="nearest"), 2 * w + 1, mode="nearest")
    x = (x * (gain[:, None] if x.ndim == 2 else gain)).astype(np.float32)
    # Gain shaping can move inter-sample peaks slightly: a final static trim closes the gap.
    peak = float(_peak_envelope(x, sample_rate).max())
    return (x * np.float32(ceiling / peak) if peak > ceiling else x), True


def _frames_first(samples: np.ndarray) -> np.ndarray:
    """(frames, channels) stays; anything else is flattened to (frames,) mono."""
    return samples if samples.ndim == 2 else samples.reshape(-1)


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: OutputFormat | str = OutputFormat.WAV) -> bytes:
    """(frames,) or (frames, channels) float in [-1, 1] -> file bytes.

    WAV and FLAC are 16-bit PCM at `sample_rate`; MP3 is LAME at 192 kb/s (rates LAME cannot
    write are resampled to 48 kHz or the next supported rate). Out-of-range samples are clipped
    and NaN/Inf written as 0. Raises ValueError for an unknown format.
    """
    fmt = _output_format(fmt)
    x = np.clip(np.nan_to_num(np.asarray(samples, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0), -1, 1)
    if fmt is OutputFormat.MP3:
        return _encode_mp3(x, sample_rate)
    buffer = io.BytesIO()
    sf.write(buffer, x, sample_rate, format=fmt.value.upper(), subtype=WAV_SUBTYPE)
    return buffer.getvalue()


def _output_format(fmt: OutputFormat | str) -> OutputFormat:
    try:
        return OutputFormat(str(fmt).lower())
    except ValueError:
        choices = ", ".join(f.value for f in OutputFormat)
        raise ValueError(f"unknown audio format {fmt!r}; choose one of {choices}") from None


def _encode_mp3(x: np.ndarray, sample_rate: int) -> bytes:
    rates = sorted(av.Codec("libmp3lame", "w").audio_rates or ())
    rate = sample_rate if sample_rate in rates else next((r for r in rates if r >= sample_rate), rates[-1])
    if rate != sample_rate:
        x = resample(x, sample_rate, rate)
    layout = "mono" if x.ndim == 1 else "stereo"
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout=layout)
        stream.bit_rate = MP3_BIT_RATE
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x.reshape(1, -1)), format="flt", layout=layout)
        frame.sample_rate = rate
        # PyAV splits the one big frame into encoder-sized frames.
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


def write_audio(path: str | Path, samples: np.ndarray, sample_rate: int, fmt: OutputFormat | str | None = None) -> Path:
    """Encode and write atomically (temp file in the same directory, fsync, os.replace); returns the path.

    `fmt` None takes the format from the suffix (.wav, .flac, .mp3). Raises ValueError for an unknown
    format. Readers never see a half-written file; the file is created with mode 0o644.
    """
    path = Path(path)
    data = encode_audio(samples, sample_rate, _output_format(fmt if fmt is not None else path.suffix.lstrip(".")))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0o600; the server may run as another user than the worker
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
