"""One lazily loaded model: its own lock, and a failed load remembered with its reason and retried with backoff.

Each model gets its own slot, so an embedding never waits behind a MusicGen download; a model that failed to
load answers at once with the remembered reason until its backoff has passed, so searches, similarity and
health never block on an unreachable hub again and again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from motif.errors import ModelUnavailableError

T = TypeVar("T")

FIRST_BACKOFF_S = 5.0
MAX_BACKOFF_S = 300.0


@dataclass(frozen=True)
class LoadFailure:
    reason: str
    attempts: int
    retry_at: float  # on the slot's clock


class ModelSlot(Generic[T]):
    """`get()` loads on first use under this slot's lock; failures back off 5 s, 10 s, ... up to 5 minutes."""

    def __init__(self, role: str, load: Callable[[], T], clock: Callable[[], float] = time.monotonic) -> None:
        self.role = role
        self._load = load
        self._clock = clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self.failure: LoadFailure | None = None

    @property
    def value(self) -> T | None:
        """The loaded model, or None; never waits."""
        return self._value

    def get(self) -> T:
        """The model, loading it now if needed. Raises ModelUnavailableError with the reason it cannot load."""
        value = self._value
        if value is not None:
            return value
        with self._lock:
            if self._value is not None:
                return self._value
            failure = self.failure
            if failure is not None and self._clock() < failure.retry_at:
                wait = failure.retry_at - self._clock()
                raise ModelUnavailableError(f"{failure.reason} (next attempt to load it in {wait:.0f} s)")
            try:
                self._value = self._load()
            except Exception as error:
                raise self._failed(error) from error
            self.failure = None
            return self._value

    def _failed(self, error: Exception) -> ModelUnavailableError:
        reason = str(error) if isinstance(error, ModelUnavailableError) else (
            f"{self.role} model failed to load: {type(error).__name__}: {error}")  # fmt: skip
        attempts = self.failure.attempts + 1 if self.failure else 1
        backoff = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (attempts - 1))
        self.failure = LoadFailure(reason, attempts, self._clock() + backoff)
        return error if isinstance(error, ModelUnavailableError) else ModelUnavailableError(reason)
