"""API keys: create (the secret is shown once), list, revoke, and find the key a request presents.

Secrets are 256 random bits, so a plain SHA-256 is enough to store them: a slow password hash (bcrypt,
argon2) protects low-entropy secrets against guessing, which these are not, and would cost every request.
Keys live in the shared database, so every API process sees a new or revoked key at its next request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from motif.service.store import ApiKeyRow, Database, Scope, new_id, utcnow

PREFIX = "motif_"
SECRET_PATTERN = re.compile(r"motif_[A-Za-z0-9_-]{43}")  # what log redaction looks for, too
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class KeyCommandError(ValueError):
    """A key command that cannot be done (duplicate or unknown name, bad name); the message says why."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key (its id, name, admin flag and quota overrides), or nobody when keys are off."""

    key_id: str | None
    name: str
    is_admin: bool
    rate_per_minute: int | None = None
    max_active_generations: int | None = None
    daily_audio_seconds: float | None = None
    max_stored_bytes: int | None = None

    @property
    def scope(self) -> Scope:
        return Scope(owner=self.key_id, sees_all=self.is_admin)

    @property
    def quota_bound(self) -> bool:
        """Quotas bind real keys that are not admin; with keys off there is one trusted tenant."""
        return self.key_id is not None and not self.is_admin


OPEN = Principal(key_id=None, name="anonymous", is_admin=True)  # keys not required: one tenant, sees all


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(db: Database, name: str, is_admin: bool = False, **quotas: int | float | None) -> tuple[ApiKeyRow, str]:
    """A new key; returns (row, secret). The secret is not stored and cannot be shown again."""
    if not NAME_PATTERN.match(name):
        raise KeyCommandError(f"invalid key name {name!r}: letters, digits, '.', '_' and '-', at most 64")
    secret = PREFIX + secrets.token_urlsafe(32)
    with db.transaction() as session:
        if session.scalar(select(ApiKeyRow).where(ApiKeyRow.name == name)) is not None:
            raise KeyCommandError(f"a key named {name!r} exists already")
        row = ApiKeyRow(id=new_id(), name=name, secret_hash=hash_secret(secret), is_admin=is_admin, **quotas)
        session.add(row)
    return row, secret


def list_keys(db: Database) -> list[ApiKeyRow]:
    with db.session() as session:
        return list(session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.name)))


def revoke_key(db: Database, name: str) -> ApiKeyRow:
    """Revoke by name (idempotent). Raises KeyCommandError for an unknown name."""
    with db.transaction() as session:
        row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.name == name))
        if row is None:
            raise KeyCommandError(f"no key named {name!r}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
    return row


def find_principal(db: Database, secret: str) -> Principal | None:
    """The live key whose secret this is; None for an unknown or revoked one."""
    if not SECRET_PATTERN.fullmatch(secret):
        return None
    digest = hash_secret(secret)
    with db.session() as session:
        row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.secret_hash == digest))
    # The lookup is by hash, so timing says nothing about the secret; compare anyway, in constant time.
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.secret_hash, digest):
        return None
    return Principal(key_id=row.id, name=row.name, is_admin=row.is_admin, rate_per_minute=row.rate_per_minute,
                     max_active_generations=row.max_active_generations, daily_audio_seconds=row.daily_audio_seconds,
                     max_stored_bytes=row.max_stored_bytes)  # fmt: skip
