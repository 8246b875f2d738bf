"""Thread budgets: how the embedding and the generation workers share the CPU cores.

Each worker is one Python thread, and torch's intra-op thread count (OpenMP, which the int8 kernels use
too) is set per calling thread. Left alone, both start a full team on the same cores; a decode step has
hundreds of barriers, so a generation thread descheduled by an embedding stalls the whole team, and the
upload waits behind it. Here an embedding takes EMBEDDING_THREADS while a generation runs (by default half the
cores; all of them when no generation runs), and while one runs the decode loop steps with what is left of
GENERATION_THREADS on the cores (at least one); alone, it has them all.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's cpuset), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class CoreBudget:
    """Threads for embeddings and decode steps on `n_cores`. Thread-safe.

    embedding / generation: 0 picks the default: embeddings get half the cores (at least one) while a
    generation runs and all of them otherwise, generation all of them, less the embedding threads while an
    embedding runs. A number set for embeddings holds whether or not a generation runs.
    """

    def __init__(self, n_cores: int, embedding: int = 0, generation: int = 0) -> None:
        self.n_cores = max(1, n_cores)
        self.embedding_fixed = embedding > 0
        self.embedding = embedding or max(1, self.n_cores // 2)
        self.generation = generation or self.n_cores
        self._lock = threading.Lock()
        self._embedding_active = 0
        self._generating = 0

    @contextmanager
    def generation_work(self) -> Iterator[None]:
        """Around a decode loop: embeddings started meanwhile take their share, not every core."""
        with self._lock:
            self._generating += 1
        try:
            yield
        finally:
            with self._lock:
                self._generating -= 1

    def embedding_threads(self) -> int:
        """Threads for an embedding starting now: its share while a generation runs (or as set), else all."""
        with self._lock:
            generating = self._generating > 0
        return self.embedding if generating or self.embedding_fixed else self.n_cores

    @contextmanager
    def embedding_work(self) -> Iterator[None]:
        """Around an embedding: the calling thread uses `embedding` threads, and decode steps make room.

        The thread's count is given back afterwards: the generator's finisher thread embeds for `similarity`
        and then renders the next job, which must not inherit the embedding's smaller team.
        """
        with self._lock:
            self._embedding_active += 1
        before = torch.get_num_threads()
        torch.set_num_threads(self.embedding_threads())
        try:
            yield
        finally:
            torch.set_num_threads(before)
            with self._lock:
                self._embedding_active -= 1

    def generation_threads(self) -> int:
        """Threads for the next decode step: all of GENERATION_THREADS, unless an embedding needs cores."""
        with self._lock:
            busy = self._embedding_active > 0
        if busy and self.generation + self.embedding > self.n_cores:
            return max(1, min(self.generation, self.n_cores - self.embedding))
        return self.generation

    def apply_generation_threads(self) -> None:
        """Set the calling thread's torch threads for generation work (the decode loop's next step, or the
        finisher's render of a finished job), if they changed."""
        wanted = self.generation_threads()
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
