"""Signed media URLs: `?token=<expires>.<hmac>` lets a player fetch one path for a while without the API key.

The auth dependency (where API keys are checked) accepts a request to a media path whose `token` query
verifies: `verify(services.media_secret, request.url.path, token)`. A token names its path and expiry and
nothing else, so it cannot be replayed on another upload or result.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

MEDIA_PATHS = re.compile(r"^/api/(audio/[^/?#]+/file|download/[^/?#]+|generations/[^/?#]+/stream)$")


def is_media_path(path: str) -> bool:
    return bool(MEDIA_PATHS.match(path))


def _mac(secret: bytes, path: str, expires: int) -> str:
    return hmac.new(secret, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()[:32]


def issue(secret: bytes, path: str, ttl_seconds: int, now: float | None = None) -> tuple[str, int]:
    """(token, expires_at in Unix seconds) for `path`."""
    expires = int(now if now is not None else time.time()) + ttl_seconds
    return f"{expires}.{_mac(secret, path, expires)}", expires


def verify(secret: bytes, path: str, token: str | None, now: float | None = None) -> bool:
    """True when token was issued for this media path with this secret and has not expired."""
    if not token or not is_media_path(path):
        return False
    expires_text, _, mac = token.partition(".")
    if not expires_text.isdigit() or int(expires_text) < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(mac, _mac(secret, path, int(expires_text)))
