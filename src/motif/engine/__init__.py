"""The ML: CLAP embeddings and MusicGen generation. Knows nothing of HTTP, SQL or files on disk."""

from motif.engine.pipeline import Engine, ModelState
from motif.engine.types import (
    CLAP_SAMPLE_RATE,
    SAMPLE_RATE,
    GenerationMode,
    GenerationParams,
    GenerationResult,
    OutputFormat,
)

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
