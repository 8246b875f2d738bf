"""The ML: CLAP embeddings and MusicGen generation. Knows nothing of HTTP, SQL or files on disk.

`Engine` is imported on first use: it brings torch, which takes a second or more to
import, and the service answers /api/health before that (see motif.service.engine_host).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from motif.engine.types import (
    CLAP_SAMPLE_RATE,
    SAMPLE_RATE,
    GenerationMode,
    GenerationParams,
    GenerationResult,
    ModelState,
    OutputFormat,
)

if TYPE_CHECKING:
    from motif.engine.pipeline import Engine

__all__ = [
    "CLAP_SAMPLE_RATE",
    "SAMPLE_RATE",
    "Engine",
    "GenerationMode",
    "GenerationParams",
    "GenerationResult",
    "ModelState",
    "OutputFormat",
]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from motif.engine import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
