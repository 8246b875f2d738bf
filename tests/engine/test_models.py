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


def _mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads this process's memory map (Linux)")
def test_the_decoder_is_read_straight_into_its_dtype_and_nothing_stays_mapped(tmp_path: Path) -> None:
    reference = load_generator("tiny", CPU, torch.float32, tmp_path, allow_download=False).model
    reference.decoder.to(torch.bfloat16)  # what loading in float32 and then casting gives
    loaded = load_generator("tiny", CPU, torch.float32, tmp_path, allow_download=False, decoder_dtype=torch.bfloat16)
    model = loaded.model
    assert loaded.dtype is torch.bfloat16
    assert {p.dtype for p in model.decoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.text_encoder.parameters()} == {torch.float32}
    assert {p.dtype for p in model.audio_encoder.parameters()} == {torch.float32}
    want = reference.state_dict()
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == want[name].dtype and torch.equal(tensor, want[name]), name
    shared = model.text_encoder.shared.weight
    assert model.text_encoder.encoder.embed_tokens.weight is shared  # tied weights stay tied
    del reference
    checkpoint = str(tmp_path / "tiny-musicgen-v2" / "model.safetensors")
    assert checkpoint not in _mapped_files()  # no weight is a view of the memory-mapped file


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads this process's memory map (Linux)")
def test_clap_is_read_into_its_dtype_with_nothing_left_mapped(tmp_path: Path) -> None:
    loaded = load_embedder("tiny", CPU, torch.bfloat16, tmp_path, allow_download=False)
    floats = {t.dtype for t in loaded.model.state_dict().values() if t.is_floating_point()}
    assert floats == {torch.bfloat16}
    assert str(tmp_path / "tiny-clap-v2" / "model.safetensors") not in _mapped_files()
