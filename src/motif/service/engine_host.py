"""The process's Engine, built on first use off the start-up path, and the models' states for /api/health.

Importing the engine brings torch and the model code (seconds on a small CPU); the workers do it in
their threads while the server already answers, so start-up waits for the database only.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from motif.config import Settings
from motif.engine.types import ModelState

if TYPE_CHECKING:
    from motif.engine import Engine

ROLES = ("generation", "embedding")


class EngineHost:
    """Builds the Engine once, in whichever thread asks first; the others wait for it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        """The Engine (models still load on their first use). Blocks while another thread builds it."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    from motif.engine import Engine
                    from motif.service.logs import adopt_library_logging

                    adopt_library_logging()
                    self._engine = Engine(self.settings)
        return self._engine

    @property
    def built(self) -> Engine | None:
        """The Engine if it exists already; never blocks."""
        return self._engine

    def model_states(self, warming: dict[str, bool]) -> list[ModelState]:
        """Each model's state without loading one; `warming[role]`: a worker is loading that model now.

        Answers at once while the workers still import the engine (every warming model is "loading");
        builds the engine here only when no worker is loading anything (workers not started).
        """
        engine = self.built
        if engine is None and not any(warming.values()):
            engine = self.engine
        if engine is None:
            model_ids = {"generation": self.settings.generation_model, "embedding": self.settings.embedding_model}
            return [ModelState(role, model_ids[role], "loading" if warming.get(role) else "available",
                                "importing the model code" if warming.get(role) else "loads on first use")
                    for role in ROLES]  # fmt: skip
        states = []
        for state in engine.model_states():
            if state.state == "available" and warming.get(state.role):
                states.append(ModelState(state.role, state.model_id, "loading", "loading into memory now"))
            else:
                states.append(state)
        return states
