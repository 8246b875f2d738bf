"""Thread budgets: an embedding takes its share of the cores and the decode loop makes room for it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from motif.config import Settings
from motif.engine.generator import DecodeTask, MusicGenerator
from motif.engine.models import load_generator
from motif.engine.threads import CoreBudget
from motif.engine.types import FRAMES_PER_SECOND, GenerationParams


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_defaults_split_a_small_machine_instead_of_doubling_it() -> None:
    budget = CoreBudget(2)
    assert (budget.embedding, budget.generation) == (1, 2)
    assert budget.generation_threads() == 2  # alone: every core
    with budget.embedding_work():
        assert torch.get_num_threads() == 1
        assert budget.generation_threads() == 1  # together: 1 + 1 on 2 cores
    assert budget.generation_threads() == 2
    assert CoreBudget(16).embedding == 8


def test_explicit_budgets_that_fit_together_are_kept() -> None:
    budget = CoreBudget(8, embedding=2, generation=6)
    with budget.embedding_work():
        assert budget.generation_threads() == 6
    assert CoreBudget(1, embedding=1).generation_threads() == 1  # never zero, even on one core


def test_the_engine_takes_its_budget_from_settings() -> None:
    from motif.engine.pipeline import Engine

    engine = Engine(Settings(num_threads=4, embedding_threads=1, generation_threads=3, _env_file=None))  # type: ignore[call-arg]
    assert (engine.cores.n_cores, engine.cores.embedding, engine.cores.generation) == (4, 1, 3)


def test_decode_steps_use_fewer_threads_while_an_embedding_runs(model_cache: Path) -> None:
    loaded = load_generator("tiny", torch.device("cpu"), torch.float32, model_cache, allow_download=False)
    budget = CoreBudget(4, embedding=2)
    seen: list[int] = []

    def before_step() -> None:
        budget.apply_generation_threads()
        seen.append(torch.get_num_threads())

    holding, release = threading.Event(), threading.Event()

    def embed() -> None:  # stands in for the embedding worker: holds its budget until released
        with budget.embedding_work():
            holding.set()
            release.wait(30)

    embedder = threading.Thread(target=embed)
    calls = {"n": 0}

    def take_more(n_free: int) -> list[DecodeTask]:
        calls["n"] += 1
        if calls["n"] == 5:
            embedder.start()
            assert holding.wait(30)
        elif calls["n"] == 15:
            release.set()
            embedder.join(30)
        return []

    outcome: dict = {}
    task = DecodeTask(key="t", text="calm piano", params=GenerationParams(duration=1.0, seed=1), seed=1,
                      n_frames=FRAMES_PER_SECOND, on_done=lambda o: outcome.setdefault("o", o))  # fmt: skip
    MusicGenerator(loaded, before_step=before_step).run([task], take_more)
    assert not isinstance(outcome["o"], BaseException)
    assert seen[:4] == [4] * 4 and seen[4:14] == [2] * 10 and set(seen[14:]) == {4}
