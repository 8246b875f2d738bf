"""The decode step's CPU kernels: int8 and bf16 projections, attention, a whole step.

Two libraries with the same entry points: kernels.c (AVX-512 VNNI, plus bf16_linear for AVX512-BF16) and
kernels_avx2.c (AVX2 + FMA: most laptops; no bf16_linear). Which one runs is chosen in one place, the
CPU_PATH setting (`select_cpu_path`): `auto` takes AVX-512 where the CPU has VNNI, else AVX2 where it has
AVX2 and FMA, else none (ARM64 and older x86: callers take their torch bf16/fp32 paths, untested on our
machines). Compiled once per user with gcc into a private cache ($XDG_CACHE_HOME/motif/kernels, checked
before every load: motif.engine.kernel_cache) and called through ctypes (motif.engine.cpuops wraps them).
Where that is impossible (no gcc, no such CPU) `load_kernel` returns None and callers take their torch
paths. OpenMP comes from the libgomp torch already loaded (same soname), so the kernels and torch share one
thread pool instead of fighting over two cores.

- `w8a16_linear`: int8 weights with one scale per output channel and group of inputs, activations
  quantised per row to int16 (symmetric); `vpdpwssd` sums each group exactly in int32, which is scaled into
  float32. Rows never interact. int16 activations add about 1e-5 relative error, so the result is the
  weight-only int8 model's.
- `bf16_linear`: bf16 weights and activations, `vdpbf16ps` with float32 accumulation.
- `decode_attention`: one query per (row, head) against that row's bf16 keys/values, float32 softmax.
- `decoder_step`: all decoder layers of one int8 decode step in one call (see motif.engine.fused).
- `dequantize_bf16`: a packed int8 weight back to a plain (N, K) bf16 matrix, for a prefill's bf16 matmul;
  `dequantize_f32` (both libraries, from kernels_common.h) the same in float32, where the CPU lacks native bf16.
Weights are streamed once per call in tiles of 4 x 16 output channels, so 1-8 rows cost one weight read.
Both sources include kernels_common.h (structs, entry-point glue, threading), compiled in beside them.
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
_AVX2_SOURCE_FILE = Path(__file__).with_name("kernels_avx2.c")
_AVX2_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]  # nothing AVX-512 may be emitted
_COMMON_HEADER = Path(__file__).with_name("kernels_common.h")  # included by both sources
CPU_PATHS = ("auto", "avx512", "avx2", "torch")  # the CPU_PATH setting's values
_lock = threading.Lock()
_libraries: dict[str, ctypes.CDLL | None] = {}  # per path, once built or found impossible
_library_errors: dict[str, str] = {}
_selected = "auto"


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_vnni() -> bool:
    return all(f in _cpu_flags() for f in ("avx512f", "avx512bw", "avx512vl", "avx512_vnni"))


def cpu_has_avx2_fma() -> bool:
    flags = _cpu_flags()
    return all(f" {f}" in flags for f in ("avx2", "fma"))


def cpu_has_bf16_dot() -> bool:
    """AVX512-BF16 (vdpbf16ps): what Bf16Linear's kernel needs on top of the library's baseline."""
    return "avx512_bf16" in _cpu_flags()


def select_cpu_path(path: str) -> None:
    """Which kernel library `load_kernel()` gives from now on (the CPU_PATH setting); decoders built before
    keep theirs. `auto`: avx512 where the CPU has VNNI, else avx2; `torch`: no kernel at all."""
    global _selected
    if path not in CPU_PATHS:
        raise ValueError(f"CPU_PATH must be one of {CPU_PATHS}, not {path!r}")
    _selected = path


def resolve_cpu_path(path: str | None = None) -> str:
    """auto (or None: the selected path) -> the library it means on this CPU: avx512, avx2 or torch."""
    path = path or _selected
    if path != "auto":
        return path
    if cpu_has_vnni():
        return "avx512"
    return "avx2" if cpu_has_avx2_fma() else "torch"


def load_kernel(path: str | None = None) -> ctypes.CDLL | None:
    """The compiled kernel of `path` (default: the selected CPU_PATH), building it on first use; None (and a
    logged reason) where it cannot run. `auto` falls back to avx2 where the AVX-512 library cannot build."""
    resolved = resolve_cpu_path(path)
    library = _load(resolved)
    if library is None and resolved == "avx512" and (path or _selected) == "auto" and cpu_has_avx2_fma():
        library = _load("avx2")
    return library


def kernel_error(path: str) -> str | None:
    """Why `path`'s library could not be loaded (None: it loaded, or was never tried)."""
    return _library_errors.get(path)


def _load(path: str) -> ctypes.CDLL | None:
    with _lock:
        if path in _libraries:
            return _libraries[path]
        try:
            _libraries[path] = _build_avx2() if path == "avx2" else _build() if path == "avx512" else None
            if path == "torch":
                _library_errors[path] = "CPU_PATH=torch"
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            _libraries[path] = None
            _library_errors[path] = str(error)
            log.warning("%s kernel unavailable (%s); using the slow torch fallback", path, error)
        return _libraries[path]


def _build_avx2() -> ctypes.CDLL:
    if not cpu_has_avx2_fma():
        raise RuntimeError("this CPU lacks AVX2 and FMA")
    return _compile_and_bind(_AVX2_SOURCE_FILE, _AVX2_FLAGS)


def _build() -> ctypes.CDLL:
    if not cpu_has_vnni():
        raise RuntimeError("this CPU lacks AVX512-VNNI")
    return _compile_and_bind(_SOURCE_FILE, _FLAGS)


def _compile_and_bind(source_file: Path, flags: list[str]) -> ctypes.CDLL:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise RuntimeError("no C compiler (gcc) on PATH")
    headers = {_COMMON_HEADER.name: _COMMON_HEADER.read_text()}
    library = load_or_build(source_file.read_text(), source_file.stem, compiler, flags, headers=headers)
    library.decode_attention.restype = None
    library.decode_attention.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_float,
        ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    if has_bf16_linear(library):  # the AVX-512 library only
        library.bf16_linear.restype = None
        library.bf16_linear.argtypes = [
            ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
            ctypes.c_int,
        ]  # fmt: skip
    unpacks = [library.dequantize_f32, *([library.dequantize_bf16] if has_dequantize(library) else [])]
    for unpack in unpacks:  # dequantize_bf16: the AVX-512 library only
        unpack.restype = None
        unpack.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                           ctypes.c_void_p, ctypes.c_int]  # fmt: skip
    library.decoder_step.restype = None
    library.decoder_step.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]  # fmt: skip
    library.w8a16_linear.restype = None
    library.w8a16_linear.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    return library


def has_bf16_linear(library: ctypes.CDLL | None) -> bool:
    """Whether `library` holds the bf16 projection (the AVX-512 one does; callers also check the CPU)."""
    return library is not None and hasattr(library, "bf16_linear")


def has_dequantize(library: ctypes.CDLL | None) -> bool:
    """Whether `library` can unpack int8 weights to bf16 for a prefill (the AVX-512 one can)."""
    return library is not None and hasattr(library, "dequantize_bf16")
