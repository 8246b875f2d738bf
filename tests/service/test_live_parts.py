"""The parts behind the page's live features, without a server: event ordering, the audio buffer, peaks,
signed media URLs and the webhook URL check."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from motif.config import Settings
from motif.service.api import media_tokens
from motif.service.api.routes.events import event_rank
from motif.service.events import JobEvents, audio_topic
from motif.service.peaks import compute_peaks
from motif.service.streams import AudioStreams, wav_header
from motif.service.webhooks import WebhookURLError, check_callback, check_url, sign


def test_event_ids_order_queue_positions_then_progress_then_the_end() -> None:
    ids = [None, "q3", "q1", "p0", "p42", "p100", "completed"]
    ranks = [event_rank(i) for i in ids]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    assert event_rank("garbage") == event_rank(None)


def test_audio_buffer_keeps_order_and_ends_when_the_job_ends() -> None:
    async def scenario() -> tuple[bytes, bool, bool]:
        events = JobEvents()
        streams = AudioStreams(events)
        assert not streams.wanted("job")
        streams.write("job", np.ones(4, np.float32), 0)  # nobody listens: dropped
        buffer = streams.listen("job")
        woken = events.subscribe(audio_topic("job"))
        assert streams.wanted("job")
        streams.write("job", np.array([0.5, -2.0], np.float32), 0)
        streams.write("job", np.array([1.0], np.float32), 2)
        await asyncio.wait_for(woken.wait(), 5)
        streams.close("job")
        pcm, cursor, done = buffer.read(0)
        assert cursor == 2
        streams.release("job", buffer)
        return pcm, done, streams.wanted("job")

    pcm, done, wanted = asyncio.run(scenario())
    assert np.frombuffer(pcm, "<i2").tolist() == [16384, -32767, 32767]  # clipped to [-1, 1]
    assert done and not wanted
    assert len(wav_header(1)) == 44 and wav_header(2)[22:24] == b"\x02\x00"


def test_peaks_are_min_max_of_consecutive_spans() -> None:
    samples = np.concatenate([np.zeros(100), np.linspace(-1, 1, 100)]).astype(np.float32)
    peaks = compute_peaks(samples, 2)
    assert peaks == [(0.0, 0.0), (-1.0, 1.0)]
    assert len(compute_peaks(np.ones(3, np.float32), 10)) == 10  # shorter than the buckets asked for
    assert compute_peaks(np.zeros((0,), np.float32), 4) == [(0.0, 0.0)] * 4
    stereo = np.stack([np.ones(10), -np.ones(10)], axis=1).astype(np.float32)
    assert compute_peaks(stereo, 1) == [(0.0, 0.0)]


def test_media_tokens_name_one_path_one_key_and_expire() -> None:
    secret = b"k" * 32
    token, expires = media_tokens.issue(secret, "/api/download/abc", 60, "key1", now=1000)
    assert expires == 1060
    assert media_tokens.verify(secret, "/api/download/abc", token, now=1059) == "key1"
    assert media_tokens.verify(secret, "/api/download/abc", token, now=1061) is None  # expired
    assert media_tokens.verify(secret, "/api/download/abd", token, now=1000) is None  # another result
    assert media_tokens.verify(b"x" * 32, "/api/download/abc", token, now=1000) is None  # another server's
    assert media_tokens.verify(secret, "/api/download/abc", token[:-1] + "0", now=1000) is None  # tampered
    forged = token.replace(".key1.", ".admin.")
    assert media_tokens.verify(secret, "/api/download/abc", forged, now=1000) is None  # another key
    assert media_tokens.verify(secret, "/api/audio", token, now=1000) is None  # not a media path
    assert media_tokens.verify(secret, "/api/download/abc", None) is None
    open_token, _ = media_tokens.issue(secret, "/api/audio/x/file", 60, None, now=1000)
    assert media_tokens.verify(secret, "/api/audio/x/file", open_token, now=1000) == media_tokens.NO_KEY
    assert media_tokens.is_media_path("/api/generations/x/stream") and media_tokens.is_media_path("/api/audio/x/file")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/",
                                 "http://192.168.0.5/", "http://169.254.169.254/latest", "http://[::1]/",
                                 "http://0.0.0.0/"])  # fmt: skip
def test_private_and_loopback_callbacks_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(WebhookURLError, match="private or loopback"):
        check_url(url, allow_private=False)
    if "localhost" not in url:  # IP literals resolve without DNS
        check_url(url, allow_private=True)


def test_callback_needs_a_scheme_a_host_and_a_secret() -> None:
    check_url("https://93.184.216.34/hook", allow_private=False)  # a public address literal
    for bad in ("ftp://93.184.216.34/", "javascript:alert(1)", "http:///path", "https://u:p@93.184.216.34/"):
        with pytest.raises(WebhookURLError):
            check_url(bad, allow_private=True)
    with pytest.raises(WebhookURLError, match="WEBHOOK_SECRET"):
        check_callback(Settings(_env_file=None), "https://93.184.216.34/")  # type: ignore[call-arg]


def test_signature_is_hmac_sha256_of_the_body() -> None:  # the RFC 2104 example Wikipedia quotes
    body = b"The quick brown fox jumps over the lazy dog"
    assert sign("key", body) == "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
