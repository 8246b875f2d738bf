"""motif.audio: decoding by content, limits and typed errors, resampling, loudness, encoding."""

from __future__ import annotations

import io
import json
import os
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from motif import audio
from motif.audio import (
    DecodeLimits,
    encode_audio,
    load_audio,
    loudness_normalize,
    measure_loudness,
    measure_true_peak,
    probe_audio,
    resample,
    write_audio,
)
from motif.config import Settings
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
from tests.e2e.bombs import write_bomb
from tests.synth import FORMATS, SR, click_track, music_like, noise, sine, square, write_format

AUDIO_FORMATS = [f for f in FORMATS if f != "mp4_video_only"]
EXPECTED_CODEC = {
    "wav16": "pcm_s16le", "wav8": "pcm_u8", "wav24": "pcm_s24le", "wav32": "pcm_s32le", "float": "pcm_f32le",
    "ulaw": "pcm_mulaw", "flac": "flac", "mp3": "mp3", "ogg": "vorbis", "opus": "opus", "m4a": "aac", "mp4": "aac",
}  # fmt: skip


def misleading_name(fmt: str) -> str:
    """A file name whose extension lies about `fmt`."""
    return "upload.mp3" if fmt.startswith(("wav", "float", "ulaw")) else "upload.wav"


def dominant_hz(samples: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.shape[0])))
    return float(np.fft.rfftfreq(samples.shape[0], 1 / sample_rate)[np.argmax(spectrum)])


def amplitude_at(samples: np.ndarray, sample_rate: int, hz: float) -> float:
    """Amplitude of the sinusoid at `hz` (an integer number of cycles fits: no window needed)."""
    spectrum = np.fft.rfft(samples) / (samples.shape[0] / 2)
    return float(np.abs(spectrum[round(hz * samples.shape[0] / sample_rate)]))


def reference_true_peak_db(samples: np.ndarray) -> float:
    """16x polyphase oversampling: finer than the code's 6x, with scipy's own filter."""
    return float(20 * np.log10(np.abs(resample_poly(samples.astype(np.float64), 16, 1)).max()))


class CountingReader(io.RawIOBase):
    """A binary file that counts the bytes read through it."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        self.n_read = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(n)
        self.n_read += len(data)
        return data

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()
        super().close()


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("fmt", AUDIO_FORMATS)
def test_every_format_decodes_by_content_to_the_right_length_and_pitch(tmp_path: Path, fmt: str) -> None:
    path = write_format(tmp_path / misleading_name(fmt), sine(1000.0, 2.0), SR, fmt)

    decoded = load_audio(path, sample_rate=SR)

    assert EXPECTED_CODEC[fmt] in decoded.codec
    assert decoded.sample_rate == SR and decoded.samples.dtype == np.float32 and decoded.samples.ndim == 1
    assert decoded.duration == pytest.approx(2.0, abs=0.05)
    assert decoded.samples.shape[0] == pytest.approx(2.0 * SR, abs=0.05 * SR)
    assert dominant_hz(decoded.samples, SR) == pytest.approx(1000.0, abs=3.0)
    assert np.isfinite(decoded.samples).all() and np.abs(decoded.samples).max() <= 1.0
    assert decoded.n_nonfinite == 0


def test_native_rate_is_kept_when_no_rate_is_asked_for(tmp_path: Path) -> None:
    opus = load_audio(write_format(tmp_path / "a.bin", sine(1000.0, 2.0), SR, "opus"))
    wav = load_audio(write_format(tmp_path / "b.bin", sine(1000.0, 2.0, sr=44_100), 44_100, "wav16"))

    assert (opus.sample_rate, opus.source_sample_rate) == (48_000, 48_000)  # Opus always decodes at 48 kHz
    assert (wav.sample_rate, wav.samples.shape[0]) == (44_100, 88_200)


def test_bytes_and_file_objects_decode_like_paths(tmp_path: Path) -> None:
    path = write_format(tmp_path / "a.ogg", sine(440.0, 1.5), SR, "mp3")

    from_path = load_audio(path)
    from_bytes = load_audio(path.read_bytes())
    with path.open("rb") as file:
        from_file = load_audio(file)

    np.testing.assert_array_equal(from_path.samples, from_bytes.samples)
    np.testing.assert_array_equal(from_path.samples, from_file.samples)


@pytest.mark.parametrize("fmt", ["mp3", "m4a", "flac"])
def test_a_non_seekable_stream_decodes(tmp_path: Path, fmt: str) -> None:
    class Upload:  # what a streamed request body offers: read() and nothing else
        def __init__(self, data: bytes) -> None:
            self.read = io.BytesIO(data).read

    data = write_format(tmp_path / "a.bin", sine(440.0, 2.0), SR, fmt).read_bytes()
    assert load_audio(Upload(data)).duration == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("fmt", ["wav16", "mp3", "ogg"])
def test_stereo_is_averaged_to_mono(tmp_path: Path, fmt: str) -> None:
    stereo = np.stack([sine(500.0, 2.0, amplitude=0.4), sine(750.0, 2.0, amplitude=0.4)], axis=1)
    decoded = load_audio(write_format(tmp_path / "s.bin", stereo, SR, fmt), sample_rate=SR)

    middle = decoded.samples[SR // 2 : SR // 2 + SR]  # 1 s away from codec edges
    assert decoded.source_channels == 2
    assert amplitude_at(middle, SR, 500.0) == pytest.approx(0.2, abs=0.02)
    assert amplitude_at(middle, SR, 750.0) == pytest.approx(0.2, abs=0.02)


@pytest.mark.parametrize("rate", [16_000, 48_000])
def test_load_audio_resamples_to_the_asked_rate(tmp_path: Path, rate: int) -> None:
    decoded = load_audio(write_format(tmp_path / "r.bin", sine(1000.0, 2.0), SR, "flac"), sample_rate=rate)

    assert decoded.sample_rate == rate and decoded.source_sample_rate == SR
    assert decoded.samples.shape[0] == pytest.approx(2 * rate, abs=2)
    assert dominant_hz(decoded.samples, rate) == pytest.approx(1000.0, abs=1.0)


def test_resample_length_shape_and_identity() -> None:
    mono, stereo = sine(440.0, 1.0), np.stack([sine(440.0, 1.0)] * 2, axis=1)

    assert resample(mono, SR, 48_000).shape == (48_000,)
    assert resample(mono[:1001], 44_100, SR).shape == (round(1001 * SR / 44_100),)
    assert resample(stereo, SR, 16_000).shape == (16_000, 2)
    assert resample(mono, SR, SR) is mono  # float32 at the same rate: nothing to do
    assert resample(np.zeros(0, np.float32), SR, 48_000).shape == (0,)
    with pytest.raises(ValueError):
        resample(mono, 0, SR)


def test_probe_reads_the_header_only(tmp_path: Path) -> None:
    info = probe_audio(write_format(tmp_path / "p.bin", np.stack([sine(440.0, 3.0)] * 2, axis=1), SR, "mp3"))

    assert (info.container, info.sample_rate, info.channels) == ("mp3", SR, 2)
    assert "mp3" in info.codec and info.duration == pytest.approx(3.0, abs=0.1)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "content",
    [np.random.default_rng(7).bytes(50_000), b"Not a song.\n" * 500, b"", b'{"audio": null}'],
    ids=["random-bytes", "text", "empty-file", "json"],
)
def test_non_media_is_refused_as_not_audio(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "song.mp3"
    path.write_bytes(content)
    with pytest.raises(NotAudioError, match="not audio or video"):
        load_audio(path)


def test_an_image_is_not_audio() -> None:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="image2pipe") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "rgb24"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(NotAudioError):
        load_audio(buffer.getvalue())


def test_video_without_audio_is_refused(tmp_path: Path) -> None:
    path = write_format(tmp_path / "clip.mp4", sine(440.0, 2.0), SR, "mp4_video_only")
    with pytest.raises(NoAudioStreamError, match="no audio track"):
        load_audio(path)
    with pytest.raises(NoAudioStreamError):
        probe_audio(path)


def test_video_with_audio_yields_its_audio(tmp_path: Path) -> None:
    decoded = load_audio(write_format(tmp_path / "clip.bin", sine(440.0, 2.0), SR, "mp4"), sample_rate=SR)
    assert decoded.container.startswith("mov,mp4") and dominant_hz(decoded.samples, SR) == pytest.approx(440, abs=3)


def test_wav_with_no_samples_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), SR, subtype="PCM_16")
    with pytest.raises(EmptyAudioError):
        load_audio(path)


def test_too_short_is_refused_and_min_duration_is_respected(tmp_path: Path) -> None:
    path = write_format(tmp_path / "short.bin", sine(440.0, 0.5), SR, "wav16")
    with pytest.raises(TooShortError, match="0.50 s long; at least 1 s"):
        load_audio(path)
    assert load_audio(path, min_duration=0.25).duration == pytest.approx(0.5)


@pytest.mark.parametrize("fmt", ["wav16", "mp3", "flac"])
def test_too_long_stops_decoding_early(tmp_path: Path, fmt: str) -> None:
    path = write_format(tmp_path / "long.bin", noise(60.0, seed=1), SR, fmt)
    reader = CountingReader(path)

    tracemalloc.start()
    try:
        with pytest.raises(TooLongError, match="longer than the 2 s limit"):
            load_audio(reader, max_duration=2.0)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        reader.close()

    # 60 s of mono float32 is 7.7 MB: holding (and reading) only ~2 s of it proves an early stop.
    assert reader.n_read < 0.25 * path.stat().st_size
    assert peak_bytes < 2_000_000


def test_length_is_measured_on_decoded_audio_not_the_header(tmp_path: Path) -> None:
    data = bytearray(write_format(tmp_path / "x.mp3", noise(10.0), SR, "mp3").read_bytes())
    tag = max(data.find(b"Xing"), data.find(b"Info"))
    data[tag + 8 : tag + 12] = (28).to_bytes(4, "big")  # the LAME tag now claims 28 frames (< 1 s)

    claimed = probe_audio(bytes(data)).duration
    assert claimed is not None and claimed < 1.0
    with pytest.raises(TooLongError):
        load_audio(bytes(data), max_duration=5.0)
    assert load_audio(bytes(data)).duration == pytest.approx(10.0, abs=0.05)


def test_codec_padding_at_the_limit_is_trimmed_not_refused(tmp_path: Path) -> None:
    decoded = load_audio(write_format(tmp_path / "a.bin", sine(440.0, 3.0), SR, "m4a"), max_duration=3.0)
    assert decoded.duration == pytest.approx(3.0)


def test_a_few_nan_samples_are_zeroed_and_counted(tmp_path: Path) -> None:
    stereo = np.stack([sine(440.0, 2.0)] * 2, axis=1)
    stereo[1000:1020, 0] = np.nan
    stereo[5000, 1] = np.inf
    decoded = load_audio(write_format(tmp_path / "nan.bin", stereo, SR, "float"))

    assert decoded.n_nonfinite == 21
    assert np.isfinite(decoded.samples).all()
    assert decoded.samples[1000:1020] == pytest.approx(stereo[1000:1020, 1] / 2)  # the good channel survives


def test_mostly_nan_audio_is_corrupt(tmp_path: Path) -> None:
    samples = sine(440.0, 2.0)
    samples[::50] = np.nan  # 2% of samples
    with pytest.raises(CorruptAudioError, match="2.0% of its samples"):
        load_audio(write_format(tmp_path / "nan.bin", samples, SR, "float"))


def test_heavily_damaged_audio_is_corrupt(tmp_path: Path) -> None:
    data = write_format(tmp_path / "a.m4a", music_like(10.0), SR, "m4a").read_bytes()
    garbage = np.random.default_rng(3).bytes(len(data) // 2)
    damaged = data[: len(data) // 4] + garbage + data[len(data) // 4 + len(garbage) :]
    with pytest.raises(CorruptAudioError, match="could not be decoded"):
        load_audio(damaged)


def test_a_little_damage_is_skipped_like_ffmpeg_does(tmp_path: Path) -> None:
    data = write_format(tmp_path / "a.mp3", music_like(10.0), SR, "mp3").read_bytes()
    start, size = len(data) // 2, len(data) // 200
    damaged = data[:start] + np.random.default_rng(4).bytes(size) + data[start + size :]
    assert 9.0 < load_audio(damaged).duration <= 10.0  # the frames around the damage are lost, no more


@pytest.mark.parametrize("kind", ["hls", "ffconcat"])
def test_a_playlist_cannot_make_ffmpeg_read_other_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    target = write_format(tmp_path / "secret.mp3", sine(440.0, 2.0), SR, "mp3")
    monkeypatch.chdir(tmp_path)  # FFmpeg's concat demuxer resolves relative names from the working directory
    if kind == "hls":
        text = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.0,\nfile://{target}\n#EXT-X-ENDLIST\n"
    else:
        text = f"ffconcat version 1.0\nfile {target.name}\n"
    with pytest.raises(NotAudioError):
        load_audio(text.encode())


# ---------------------------------------------------------------- limits on what decoding costs


def test_a_sample_rate_over_the_limit_is_refused_at_the_header(tmp_path: Path) -> None:
    reader = CountingReader(write_bomb(tmp_path / "x.flac", "flac", 655_350, 1, 30.0))
    try:
        with pytest.raises(UnsupportedAudioError, match="655350 Hz; the limit is 192000 Hz"):
            load_audio(reader)
    finally:
        reader.close()
    assert reader.n_read < 100_000  # the header and FFmpeg's probe, not the stream


@pytest.mark.parametrize("fmt", ["flac", "wav"])
def test_channels_and_rate_limits_are_settings(tmp_path: Path, fmt: str) -> None:
    path = write_bomb(tmp_path / "x.bin", fmt, 96_000, 6, 2.0)

    with pytest.raises(UnsupportedAudioError, match="6 channels; the limit is 2"):
        load_audio(path, limits=DecodeLimits(max_channels=2))
    with pytest.raises(UnsupportedAudioError, match="96000 Hz; the limit is 48000 Hz"):
        load_audio(path, limits=DecodeLimits(max_sample_rate=48_000))
    assert load_audio(path, sample_rate=SR).source_channels == 6  # within the defaults


def test_decoded_samples_are_counted_over_all_channels_and_refused_early(tmp_path: Path) -> None:
    path = write_bomb(tmp_path / "x.wav", "wav", 48_000, 8, 30.0)  # 11.5 M values
    reader = CountingReader(path)
    try:
        with pytest.raises(TooManySamplesError, match="more than 2000000 samples") as refused:
            load_audio(reader, sample_rate=SR, limits=DecodeLimits(max_samples=2_000_000))
    finally:
        reader.close()
    assert isinstance(refused.value, TooLongError)  # the API's 413
    assert reader.n_read < 0.3 * path.stat().st_size  # 5.2 s of 30: it stopped there


def test_a_stream_cut_into_tiny_packets_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "tiny-blocks.flac"
    with av.open(str(path), "w", format="flac") as container:  # 16-sample FLAC frames: 12,000 packets a second
        stream = container.add_stream("flac", rate=192_000, layout="mono", options={"frame_size": "16"})
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 192_000 * 5), np.int16), format="s16", layout="mono")
        frame.sample_rate = 192_000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)

    with pytest.raises(UnsupportedAudioError, match="packets per second"):
        load_audio(path)


def test_decoding_to_a_lower_rate_holds_the_output_not_the_source(tmp_path: Path) -> None:
    path = write_bomb(tmp_path / "x.flac", "flac", 192_000, 8, 60.0, click_every=0.5)

    tracemalloc.start()
    try:
        decoded = load_audio(path, sample_rate=SR, max_duration=60.0)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    output = 60.0 * SR * 4  # 7.7 MB of float32 at 32 kHz; the source would be 369 MB decoded
    assert decoded.duration == pytest.approx(60.0) and (decoded.source_sample_rate, decoded.source_channels) == (
        192_000, 8)  # fmt: skip
    assert peak_bytes < output + 8_000_000
    clicks = np.flatnonzero(np.abs(decoded.samples) > 0.5)
    starts = clicks[np.r_[True, np.diff(clicks) > 100]]
    assert starts.size == 120 and np.abs(np.diff(starts) - SR / 2).max() <= 2  # a click every 0.5 s, in time


def test_limits_come_from_the_settings() -> None:
    settings = Settings(_env_file=None, max_duration=60, max_sample_rate=48_000, max_channels=2,  # type: ignore[call-arg]
                        max_samples=1000)  # fmt: skip
    assert DecodeLimits.from_settings(settings) == DecodeLimits(max_duration=60.0, max_sample_rate=48_000,
                                                                max_channels=2, max_samples=1000)  # fmt: skip


# ---------------------------------------------------------------- loudness


def lufs(samples: np.ndarray) -> float:
    return float(pyloudnorm.Meter(SR).integrated_loudness(samples.astype(np.float64)))


@pytest.mark.parametrize(
    "samples",
    [music_like(20.0), sine(60.0, 3.0, amplitude=0.01), click_track(30.0, 12.0), np.r_[np.zeros(5 * SR), noise(2.0)]],
    ids=["music", "quiet-bass", "clicks-in-silence", "late-noise"],
)
def test_loudness_is_pyloudnorms_measured_a_chunk_at_a_time(samples: np.ndarray) -> None:
    measured = measure_loudness(samples.astype(np.float32), SR)
    assert measured == pytest.approx(lufs(samples), abs=1e-6)


def test_loudness_of_silence_and_nothing_is_none() -> None:
    assert measure_loudness(np.zeros(3 * SR, np.float32), SR) is None
    assert measure_loudness(np.zeros(0, np.float32), SR) is None
    assert measure_loudness(np.full(SR, np.nan, np.float32), SR) is None


def test_a_quiet_sine_is_raised_to_minus_14_lufs() -> None:
    out = loudness_normalize(sine(440.0, 5.0, amplitude=0.01), SR)
    assert out.dtype == np.float32
    assert lufs(out) == pytest.approx(-14.0, abs=0.5)
    assert reference_true_peak_db(out) <= -1.0


def test_a_full_scale_square_is_lowered_to_minus_14_lufs() -> None:
    out = loudness_normalize(square(100.0, 5.0, amplitude=0.85), SR)
    assert lufs(out) == pytest.approx(-14.0, abs=0.5)


@pytest.mark.parametrize(
    ("samples", "target"),
    [(square(100.0, 5.0), 0.0), (click_track(120, 5.0) * 0.05, -14.0), (music_like(10.0), -14.0)],
    ids=["square-pushed-to-0-LUFS", "quiet-clicks", "music"],
)
def test_the_true_peak_ceiling_holds_when_gain_would_pass_it(samples: np.ndarray, target: float) -> None:
    out = loudness_normalize(samples, SR, target_lufs=target)
    assert np.isfinite(out).all()
    assert reference_true_peak_db(out) <= -1.0
    assert measure_true_peak(out, SR) <= -1.0
    assert lufs(out) <= target + 0.5


def test_music_reaches_the_target_despite_limiting() -> None:
    assert lufs(loudness_normalize(music_like(10.0), SR)) == pytest.approx(-14.0, abs=0.5)


def test_silence_stays_silence() -> None:
    out = loudness_normalize(np.zeros(SR * 2, np.float32), SR)
    assert out.shape == (SR * 2,) and not out.any()
    assert not loudness_normalize(np.zeros(10, np.float32), SR).any()
    assert loudness_normalize(np.zeros(0, np.float32), SR).shape == (0,)


def test_audio_below_the_gate_gets_no_gain() -> None:
    whisper = sine(440.0, 2.0, amplitude=1e-5)  # about -100 LUFS: below BS.1770's -70 LUFS gate
    np.testing.assert_array_equal(loudness_normalize(whisper, SR), whisper)


def test_a_clip_shorter_than_a_gating_block_is_still_normalised() -> None:
    out = loudness_normalize(sine(440.0, 0.2, amplitude=0.01), SR)
    assert lufs(np.tile(out, 5)) == pytest.approx(-14.0, abs=0.5)


def test_nan_input_gives_finite_output() -> None:
    samples = sine(440.0, 2.0, amplitude=0.1)
    samples[100:200] = np.nan
    out = loudness_normalize(samples, SR)
    assert np.isfinite(out).all() and not out[100:200].any()


# ---------------------------------------------------------------- encoding


def test_wav_is_16_bit_pcm_at_the_given_rate() -> None:
    samples = sine(440.0, 1.0)
    samples[:3] = [2.0, -2.0, np.nan]  # clipped, clipped, zeroed
    data = encode_audio(samples, SR, "wav")

    info = sf.info(io.BytesIO(data))
    assert (info.format, info.subtype, info.samplerate, info.channels, info.frames) == ("WAV", "PCM_16", SR, 1, SR)
    decoded, _ = sf.read(io.BytesIO(data), dtype="int16")
    assert list(decoded[:3]) == [32767, -32768, 0]  # full scale is 32768, clipped at +32767
    np.testing.assert_allclose(decoded[3:] / 32768, samples[3:], atol=1 / 32768)


def test_flac_round_trips() -> None:
    samples = music_like(2.0)
    data = encode_audio(samples, SR, "flac")
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert sf.info(io.BytesIO(data)).format == "FLAC" and rate == SR
    np.testing.assert_allclose(decoded, samples, atol=2 / 32767)


@pytest.mark.parametrize("rate", [SR, 96_000])
def test_mp3_decodes_back_with_the_right_length(rate: int) -> None:
    data = encode_audio(sine(1000.0, 3.0, sr=rate), rate, "mp3")
    decoded = load_audio(data, sample_rate=SR)
    assert decoded.container == "mp3" and decoded.duration == pytest.approx(3.0, abs=0.05)
    assert dominant_hz(decoded.samples, SR) == pytest.approx(1000.0, abs=3.0)


def test_unknown_format_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="choose one of wav, flac, mp3"):
        encode_audio(sine(440.0, 1.0), SR, "aiff")
    with pytest.raises(ValueError):
        write_audio(tmp_path / "out.aiff", sine(440.0, 1.0), SR)
    assert list(tmp_path.iterdir()) == []


def test_write_audio_takes_the_format_from_the_suffix_and_leaves_no_temp_files(tmp_path: Path) -> None:
    for name in ("out.wav", "out.flac", "out.mp3"):
        path = write_audio(tmp_path / name, sine(440.0, 1.5), SR)
        assert load_audio(path).duration == pytest.approx(1.5, abs=0.05)
        assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.flac", "out.mp3", "out.wav"]
    assert sf.info(write_audio(tmp_path / "named.bin", sine(440.0, 1.0), SR, "flac")).format == "FLAC"


def test_write_audio_is_atomic_when_the_final_rename_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.wav"
    path.write_bytes(b"previous result")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(audio.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_audio(path, sine(440.0, 1.0), SR)
    assert path.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["out.wav"]


def test_decoded_audio_fields_are_json_friendly(tmp_path: Path) -> None:
    decoded = load_audio(write_format(tmp_path / "a.bin", sine(440.0, 1.0), SR, "wav16"))
    fields = {k: v for k, v in vars(decoded).items() if k != "samples"}
    assert json.loads(json.dumps(fields)) == fields
