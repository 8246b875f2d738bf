"""Give a model loaded by `from_pretrained` weights it owns, read from its safetensors without a memory map.

transformers memory-maps safetensors files and, where the dtype already matches, hands out tensors that
are views of the map. Every page a view has touched stays in the process's RSS while any view of the file
lives, and casting a module (MusicGen's decoder to bf16) touches its pages without letting them go: the
fp32 file stayed resident beside its bf16 copy (about 2.4 GB of RssFile for musicgen-small). Loading
through the map as it is (no copy, nothing touched) and then reading each tensor with pread straight into
memory the model owns, in its final dtype, holds one copy of the weights and lets the map go.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def find_safetensors(model_id: str) -> list[Path]:
    """The safetensors file(s) `from_pretrained` reads for a local directory or a cached hub snapshot.

    Same preference as transformers: one `model.safetensors`, else the shards its index names.
    Returns [] when there are none at hand (a `.bin` checkpoint, or a hub model not downloaded yet).
    """
    local = Path(model_id)
    if local.is_dir():

        def locate(name: str) -> Path | None:
            return local / name if (local / name).is_file() else None

    else:
        from huggingface_hub import try_to_load_from_cache

        def locate(name: str) -> Path | None:
            found = try_to_load_from_cache(model_id, name)
            return Path(found) if isinstance(found, str) else None

    single = locate(SINGLE_FILE)
    if single is not None:
        return [single]
    index = locate(INDEX_FILE)
    if index is None:
        return []
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError):
        return []
    files = [locate(shard) for shard in shards]
    return [file for file in files if file is not None] if all(files) else []


def checkpoint_dtype(files: list[Path]) -> torch.dtype | None:
    """The dtype of the first floating tensor in the files (read from the header only); None if none is."""
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            keys = handle.keys()  # a safe_open handle is not iterable
            for key in keys:
                dtype = _SAFETENSORS_DTYPES.get(handle.get_slice(key).get_dtype())
                if dtype is not None:
                    return dtype
    return None


def own_weights(model: torch.nn.Module, files: list[Path], dtype_for: Callable[[str], torch.dtype]) -> None:
    """Replace every parameter and buffer of `model` with a tensor it owns; floating ones become `dtype_for(name)`.

    `name` is the tensor's dotted name in `model.state_dict()`. Tensors the files hold under one of their
    names are read from the files with pread (the page cache, never this process's map); the others
    (renamed on load, or computed at init) are cast or copied from what the model holds. Tied
    parameters stay tied. Afterwards no tensor of `model` is a view of a memory-mapped checkpoint.
    """
    from safetensors import safe_open

    with contextlib.ExitStack() as stack:
        handle_of: dict[str, Any] = {}
        for file in files:
            handle = stack.enter_context(safe_open(str(file), framework="pt", device="cpu", backend="pread"))
            handle_of.update(dict.fromkeys(handle.keys(), handle))

        def owned(names: list[str], current: torch.Tensor) -> torch.Tensor:
            target = dtype_for(names[0]) if current.is_floating_point() else current.dtype
            stored = next((name for name in names if name in handle_of), None)
            if stored is not None:
                fresh = handle_of[stored].get_tensor(stored)
                if fresh.shape == current.shape:
                    return fresh.to(target)
            fresh = current.detach().to(target)
            same = fresh.untyped_storage().data_ptr() == current.untyped_storage().data_ptr()
            return fresh.clone() if same else fresh

        with torch.no_grad():
            for param, names in _names_by_tensor(model.named_parameters(remove_duplicate=False)):
                param.data = owned(names, param)
            for buffer, names in _names_by_tensor(model.named_buffers(remove_duplicate=False)):
                fresh = owned(names, buffer)
                for name in names:
                    module_name, _, attr = name.rpartition(".")
                    model.get_submodule(module_name)._buffers[attr] = fresh
    log.debug("%s: weights read from %d safetensors file(s) into owned memory", type(model).__name__, len(files))


def _names_by_tensor(named: Any) -> list[tuple[torch.Tensor, list[str]]]:
    """Group (name, tensor) pairs by tensor identity, so a tied tensor is read once under all its names."""
    groups: dict[int, tuple[torch.Tensor, list[str]]] = {}
    for name, tensor in named:
        groups.setdefault(id(tensor), (tensor, []))[1].append(name)
    return list(groups.values())
