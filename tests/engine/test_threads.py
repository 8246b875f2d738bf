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
    torch.set_num_threads(2)
    with budget.generation_work(), budget.embedding_work():
        assert torch.get_num_threads() == 1
        assert budget.generation_threads() == 1  # together: 1 + 1 on 2 cores
    assert budget.generation_threads() == 2
    assert torch.get_num_threads() == 2  # the embedding's thread gets its own count back
    assert CoreBudget(16).embedding == 8


def test_an_embedding_with_no_generation_running_takes_every_core_unless_its_threads_are_set() -> None:
    torch.set_num_threads(1)
    with CoreBudget(2).embedding_work():
        assert torch.get_num_threads() == 2
    with CoreBudget(4, embedding=1).embedding_work():
        assert torch.get_num_threads() == 1


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


def test_the_finisher_renders_on_the_generation_budget_whatever_its_thread_last_ran(model_cache: Path) -> None:
    """The finisher thread embeds finished jobs (similarity) on fewer threads and renders the next ones: a
    render takes the generation budget of its moment, as a decode step does (all cores alone, fewer while an
    upload's embedding runs), never the team the thread last had (a 10 s job's EnCodec decode once ran on
    one of two cores this way)."""
    loaded = load_generator("tiny", torch.device("cpu"), torch.float32, model_cache, allow_download=False)
    budget = CoreBudget(4, embedding=2)
    generator = MusicGenerator(loaded, before_step=budget.apply_generation_threads,
                               before_render=budget.apply_generation_threads)  # fmt: skip
    seen: list[int] = []

    def on_done(outcome: object) -> None:  # the render is done; then embed as Engine._finish does
        assert not isinstance(outcome, BaseException)
        seen.append(torch.get_num_threads())
        with budget.embedding_work():
            pass

    def run_one() -> None:
        generator.run([DecodeTask(key="t", text="calm piano", params=GenerationParams(duration=0.2, seed=1),
                                  seed=1, n_frames=FRAMES_PER_SECOND // 5, on_done=on_done)])  # fmt: skip

    run_one()
    holding, release = threading.Event(), threading.Event()

    def embed() -> None:  # an upload's embedding on the embedding worker, held until released
        with budget.embedding_work():
            holding.set()
            release.wait(30)

    embedder = threading.Thread(target=embed)
    embedder.start()
    assert holding.wait(30)
    run_one()
    release.set()
    embedder.join(30)
    run_one()
    assert seen == [4, 2, 4]
