"""The decode step's CPU kernels (kernels.c, AVX-512): int8 and bf16 projections, attention, a whole step.

Compiled once per user with gcc into a private cache ($XDG_CACHE_HOME/motif/kernels, checked before every
load: motif.engine.kernel_cache) and called through ctypes (motif.engine.cpuops wraps them for torch tensors).
Where that is impossible (no gcc, no AVX512-VNNI) `load_kernel` returns None
and callers take their torch paths. OpenMP comes from the libgomp torch already loaded (same soname), so the
kernels and torch share one thread pool instead of fighting over two cores.

- `w8a16_linear`: int8 weights with one scale per output channel and group of inputs, activations
  quantised per row to int16 (symmetric); `vpdpwssd` sums each group exactly in int32, which is scaled into
  float32. Rows never interact. int16 activations add about 1e-5 relative error, so the result is the
  weight-only int8 model's.
- `bf16_linear`: bf16 weights and activations, `vdpbf16ps` with float32 accumulation.
- `decode_attention`: one query per (row, head) against that row's bf16 keys/values, float32 softmax.
- `decoder_step`: all decoder layers of one int8 decode step in one call (see motif.engine.fused).
Weights are streamed once per call in tiles of 4 x 16 output channels, so 1-8 rows cost one weight read.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import subprocess
import threading
from pathlib import Path

from motif.engine.kernel_cache import load_or_build

log = logging.getLogger(__name__)

BLOCK = 16  # output channels per vector of int32 accumulators
TILE_BLOCKS = 4  # blocks that share one pass over the activations
GROUP = 128  # inputs per int8 weight scale (at most 128: int32 sums must not overflow)

_SOURCE_FILE = Path(__file__).with_name("kernels.c")
_FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavx512bf16", "-fopenmp", "-shared",
          "-fPIC"]  # fmt: skip
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_library_error: str | None = None


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_vnni() -> bool:
    return all(f in _cpu_flags() for f in ("avx512f", "avx512bw", "avx512vl", "avx512_vnni"))


def cpu_has_bf16_dot() -> bool:
    """AVX512-BF16 (vdpbf16ps): what Bf16Linear's kernel needs on top of the library's baseline."""
    return "avx512_bf16" in _cpu_flags()


def load_kernel() -> ctypes.CDLL | None:
    """The compiled kernel, building it on first use; None (and a logged reason) where it cannot run."""
    global _library, _library_error
    with _lock:
        if _library is not None or _library_error is not None:
            return _library
        try:
            _library = _build()
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            _library_error = str(error)
            log.warning("int8 kernel unavailable (%s); using the slow torch fallback", error)
        return _library


def _build() -> ctypes.CDLL:
    if not cpu_has_vnni():
        raise RuntimeError("this CPU lacks AVX512-VNNI")
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise RuntimeError("no C compiler (gcc) on PATH")
    library = load_or_build(_SOURCE_FILE.read_text(), "kernels", compiler, _FLAGS)
    library.decode_attention.restype = None
    library.decode_attention.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_float,
        ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    library.bf16_linear.restype = None
    library.bf16_linear.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    library.decoder_step.restype = None
    library.decoder_step.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]  # fmt: skip
    library.w8a16_linear.restype = None
    library.w8a16_linear.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    return library
