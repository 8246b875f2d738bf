"""Log lines: secrets redacted however they reach a record, context fields, JSON or text; paths scrubbed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from motif.config import Settings
from motif.service.logs import ContextFilter, HumanFormatter, JsonLineFormatter, RedactSecrets, bind, log_context
from motif.service.redact import redact_secrets, scrub_paths

KEY = "motif_" + "Ab3-_" * 8 + "xyz"  # the shape of a Motif API key: motif_ + 43 url-safe base64 characters


def test_key_shape() -> None:
    assert len(KEY) == len("motif_") + 43


@pytest.mark.parametrize(
    "text, secret",
    [
        (f"Authorization: Bearer {KEY}", KEY),
        ("authorization='Basic dXNlcjpwYXNzd29yZA=='", "dXNlcjpwYXNzd29yZA=="),
        ("headers {'x-api-key': 'plain-secret-1', 'accept': '*/*'}", "plain-secret-1"),
        ("GET /api/audio?api_key=s3cr3t&limit=5", "s3cr3t"),
        ('{"password": "hunter2", "token": "t0k3n"}', "hunter2"),
        ("sent bearer abc.def-ghi to the hub", "abc.def-ghi"),
        (f"no upload {KEY}", KEY),
        (f"path /api/audio/{KEY}/x", KEY),
    ],
)
def test_secrets_are_redacted(text: str, secret: str) -> None:
    assert secret not in redact_secrets(text)
    assert "[REDACTED]" in redact_secrets(text)


def test_ordinary_text_is_kept() -> None:
    for text in ("GET /api/status/{generation_id} 200 3.1 ms", "motif_http_requests_total", "decoded 40 tokens=5"):
        assert redact_secrets(text) == text


def test_absolute_paths_are_shortened_but_api_routes_kept() -> None:
    text = "could not be loaded from the Hugging Face cache (/root/.cache/huggingface/hub): /models/m/config.json"
    assert scrub_paths(text) == "could not be loaded from the Hugging Face cache (…/hub): …/config.json"
    kept = "generation abc is queued (3%); poll /api/status/abc at 10 MB/s, see https://example.org/a/b"
    assert scrub_paths(kept) == kept
    assert "Users" not in scrub_paths(r"at C:\Users\me\models\clap")


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactSecrets())
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


def test_json_lines_carry_context_and_no_secret(capture: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, handler = capture
    handler.setFormatter(JsonLineFormatter())
    with log_context(request_id="r1", job_id="j1"):
        bind(audio_id="a1")
        logger.info("got %s", f"Bearer {KEY}", extra={"route": "/api/x", "status": 200})
        try:
            raise RuntimeError(f"bad key {KEY}")
        except RuntimeError:
            logger.exception("failed")
    logger.info("outside")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    first, failed, outside = lines
    assert {k: first[k] for k in ("request_id", "job_id", "audio_id", "route", "status", "level", "logger")} == {
        "request_id": "r1", "job_id": "j1", "audio_id": "a1", "route": "/api/x", "status": 200, "level": "INFO",
        "logger": "tests.logs",
    }  # fmt: skip
    assert "RuntimeError" in failed["exc_info"] and failed["request_id"] == "r1"
    assert "request_id" not in outside
    assert KEY not in stream.getvalue()


def test_text_lines_show_context_and_no_secret(capture: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, handler = capture
    handler.setFormatter(HumanFormatter())
    with log_context(request_id="r2"):
        logger.warning("X-API-Key: %s", KEY, extra={"route": "/api/y"})
    line = stream.getvalue().strip()
    assert line.endswith("WARNING tests.logs: X-API-Key: [REDACTED] [route=/api/y request_id=r2]"), line
    assert KEY not in line


def test_settings_accept_json_or_text_only() -> None:
    assert Settings(log_format="json").log_format == "json"
    with pytest.raises(ValueError):
        Settings(log_format="xml")
