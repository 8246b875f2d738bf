"""Text scrubbing for what leaves the process: secrets out of log lines, absolute paths out of HTTP answers."""

from __future__ import annotations

import re

REDACTED = "[REDACTED]"

# Order matters: a whole Authorization value first (its scheme and credentials), then named secrets,
# then bare Bearer tokens and anything shaped like a Motif API key (motif_ + 43 url-safe base64) anywhere.
_SECRET_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"""(?i)(\b(?:proxy-)?authorization["']?\s*[:=]\s*["']?)[^"'\r\n,;}]+"""), rf"\1{REDACTED}"),
    (re.compile(r"""(?i)(\b(?:x-api-key|api[_-]?key|apikey|access[_-]?token|refresh[_-]?token|token|secret"""
                r"""|password|passwd)["']?\s*[:=]\s*["']?)[^\s"'&,;}]+"""), rf"\1{REDACTED}"),  # fmt: skip
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), rf"\1{REDACTED}"),
    (re.compile(r"(?<![A-Za-z0-9_-])motif_[A-Za-z0-9_-]{43,}"), f"motif_{REDACTED}"),
]

# An absolute POSIX path of two or more components (not an API route such as /api/status/...), or a
# Windows drive path. What precedes it must not be part of a word or URL.
_POSIX_PATH = re.compile(r"(?<![\w.:/~-])(?!/api/)(?:/[\w.@+~-]+){2,}/?")
_WINDOWS_PATH = re.compile(r"(?<![\w])[A-Za-z]:\\[^\s'\"]+")


_TRIGGERS = ("auth", "key", "token", "secret", "passw", "bearer", "motif_")  # no secret pattern matches without one


def redact_secrets(text: str) -> str:
    """`text` with every secret-shaped value replaced by [REDACTED]."""
    lowered = text.lower()
    if not any(trigger in lowered for trigger in _TRIGGERS):
        return text  # the common line: no regex runs
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_paths(text: str) -> str:
    """`text` with each absolute file path shortened to `…/<last component>` (server layout stays private)."""
    text = _POSIX_PATH.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)
    return _WINDOWS_PATH.sub(lambda m: "…\\" + m.group(0).rstrip("\\").rsplit("\\", 1)[-1], text)
