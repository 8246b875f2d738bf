"""Model loading: tiny builders, local paths, clear errors for missing models, device and dtype choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from motif.config import Settings
from motif.engine import Engine
from motif.engine.models import (
    build_tiny_clap,
    build_tiny_generator,
    load_embedder,
    load_generator,
    resolve_device,
    resolve_dtype,
)
from motif.errors import ModelUnavailableError

CPU = torch.device("cpu")


def test_tiny_models_build_deterministically(tmp_path: Path) -> None:
    a = load_generator("tiny", CPU, torch.float32, tmp_path / "a", allow_download=False).model
    b = load_generator("tiny", CPU, torch.float32, tmp_path / "b", allow_download=False).model
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_a_local_directory_loads_through_the_same_path(model_cache: Path) -> None:
    path = build_tiny_generator(model_cache, "tiny-melody")
    loaded = load_generator(str(path), CPU, torch.float32, model_cache, allow_download=False)
    assert loaded.is_melody and loaded.model_id == str(path)
    clap = load_embedder(str(build_tiny_clap(model_cache)), CPU, torch.float32, model_cache, False)
    assert clap.model.config.projection_dim == 512


def test_a_missing_model_says_which_where_and_how_to_fetch_it(model_cache: Path) -> None:
    with pytest.raises(ModelUnavailableError) as caught:
        load_generator("facebook/musicgen-small", CPU, torch.float32, model_cache, allow_download=False)
    message = str(caught.value)
    assert "facebook/musicgen-small" in message
    assert "cache" in message and "motif models pull" in message and "GENERATION_MODEL" in message


def test_a_non_musicgen_directory_is_refused(model_cache: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="not MusicGen"):
        load_generator(str(build_tiny_clap(model_cache)), CPU, torch.float32, model_cache, allow_download=False)


def test_device_and_dtype_resolution() -> None:
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU
        with pytest.raises(ModelUnavailableError, match="DEVICE=cuda"):
            resolve_device("cuda")
    assert resolve_dtype("fp32", CPU) is torch.float32
    assert resolve_dtype("bf16", CPU) is torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float16


def test_engine_reports_model_states_without_loading(model_cache: Path) -> None:
    settings = Settings(_env_file=None, generation_model="facebook/musicgen-small", embedding_model="tiny",
                        model_cache_dir=model_cache, allow_model_download=False)  # fmt: skip
    engine = Engine(settings)
    states = {s.role: s for s in engine.model_states()}
    assert states["generation"].state == "missing" and "motif models pull" in states["generation"].detail
    assert states["embedding"].state == "available"
    with pytest.raises(ModelUnavailableError):
        _ = engine.generator
    assert {s.role: s.state for s in engine.model_states()}["generation"] == "error"
    _ = engine.embedder
    assert {s.role: s.state for s in engine.model_states()}["embedding"] == "loaded"
