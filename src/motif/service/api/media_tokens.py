"""Signed media URLs: `?token=<expires>.<key id>.<mac>` lets a player fetch one path for a while without
sending the API key (an <audio> element cannot send headers).

A token names its path, its expiry and the key it was issued to, and nothing else: it cannot be replayed
on another upload or result, and the request it authorises runs with that key's scope (a revoked key's
tokens stop working). The auth dependency (motif.service.api.security) accepts it on media paths only.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

MEDIA_PATHS = re.compile(r"^/api/(audio/[^/?#]+/file|download/[^/?#]+|generations/[^/?#]+/stream)$")
NO_KEY = "-"  # issued while keys are not required


def is_media_path(path: str) -> bool:
    return bool(MEDIA_PATHS.match(path))


def _mac(secret: bytes, path: str, expires: int, key_id: str) -> str:
    return hmac.new(secret, f"{path}\n{expires}\n{key_id}".encode(), hashlib.sha256).hexdigest()[:32]


def issue(secret: bytes, path: str, ttl_seconds: int, key_id: str | None, now: float | None = None) -> tuple[str, int]:
    """(token, expires_at in Unix seconds) for `path`, on behalf of the key `key_id` (None: no key)."""
    expires = int(now if now is not None else time.time()) + ttl_seconds
    subject = key_id or NO_KEY
    return f"{expires}.{subject}.{_mac(secret, path, expires, subject)}", expires


def verify(secret: bytes, path: str, token: str | None, now: float | None = None) -> str | None:
    """The key id the token was issued to ("-" for none) if it is valid for this media path now, else None."""
    if not token or not is_media_path(path):
        return None
    parts = token.split(".")
    if len(parts) != 3 or not parts[0].isdigit():
        return None
    expires, subject, mac = int(parts[0]), parts[1], parts[2]
    if expires < (now if now is not None else time.time()):
        return None
    return subject if hmac.compare_digest(mac, _mac(secret, path, expires, subject)) else None
