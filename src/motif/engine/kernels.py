"""The decode step's CPU kernels in C (AVX-512): int8 and bf16 projections, one-query attention.

Compiled once per machine with gcc into ~/.cache/motif/kernels and called through ctypes (motif.engine.cpuops
wraps them for torch tensors). Where that is impossible (no gcc, no AVX512-VNNI) `load_kernel` returns None
and callers take their torch paths. OpenMP comes from the libgomp torch already loaded (same soname), so the
kernels and torch share one thread pool instead of fighting over two cores.

- `w8a8_linear`: int8 weights (per output channel), activations quantised per row to uint8 (scale and low
  per row), `vpdpbusd` into exact int32, rescaled per row and channel; rows never interact.
- `bf16_linear`: bf16 weights and activations, `vdpbf16ps` with float32 accumulation.
- `decode_attention`: one query per (row, head) against that row's bf16 keys/values, float32 softmax.
Weights are streamed once per call in tiles of 4 x 16 output channels, so 1-8 rows cost one weight read.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path

log = logging.getLogger(__name__)

BLOCK = 16  # output channels per vector of int32 accumulators
TILE_BLOCKS = 4  # blocks that share one pass over the activations

_SOURCE = r"""
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

/* Row of K floats -> K uint8 with x ~= low + scale * u. Returns scale and low. */
static void quantize_row(const float *x, int64_t K, uint8_t *u, float *scale_out, float *low_out) {
    __m512 vmin = _mm512_set1_ps(INFINITY), vmax = _mm512_set1_ps(-INFINITY);
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 v = _mm512_loadu_ps(x + k);
        vmin = _mm512_min_ps(vmin, v);
        vmax = _mm512_max_ps(vmax, v);
    }
    float lo = _mm512_reduce_min_ps(vmin), hi = _mm512_reduce_max_ps(vmax);
    for (; k < K; k++) { lo = fminf(lo, x[k]); hi = fmaxf(hi, x[k]); }
    float scale = (hi - lo) / 255.0f;
    if (!(scale > 0.0f)) scale = 1.0f; /* constant row: every u is 0 and x == low exactly */
    float inv = 1.0f / scale;
    __m512 vlo = _mm512_set1_ps(lo), vinv = _mm512_set1_ps(inv);
    __m512i zero = _mm512_setzero_si512(), top = _mm512_set1_epi32(255);
    for (k = 0; k + 16 <= K; k += 16) {
        __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + k), vlo), vinv);
        __m512i q = _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q = _mm512_min_epi32(_mm512_max_epi32(q, zero), top);
        _mm_storeu_si128((__m128i *)(u + k), _mm512_cvtepi32_epi8(q));
    }
    for (; k < K; k++) {
        float q = nearbyintf((x[k] - lo) * inv);
        u[k] = (uint8_t)(q < 0.0f ? 0.0f : (q > 255.0f ? 255.0f : q));
    }
    *scale_out = scale;
    *low_out = lo;
}

/* MM rows x NB blocks of 16 channels; weights of a tile are laid out [K/4][NB][16 channels][4 k]. */
static inline __attribute__((always_inline)) void tile(
    const uint8_t *u, int64_t K, const int8_t *w, const float *qp, const float *wscale, const int32_t *colsum,
    float *y, int64_t N, int MM, int NB) {
    __m512i acc[4][4];
    for (int m = 0; m < MM; m++)
        for (int b = 0; b < NB; b++) acc[m][b] = _mm512_setzero_si512();
    for (int64_t k4 = 0; k4 < K / 4; k4++) {
        const int8_t *wk = w + k4 * NB * 64;
        __m512i wv[4];
        for (int b = 0; b < NB; b++) wv[b] = _mm512_loadu_si512((const void *)(wk + b * 64));
        for (int m = 0; m < MM; m++) {
            __m512i a = _mm512_set1_epi32(*(const int32_t *)(u + m * K + k4 * 4));
            for (int b = 0; b < NB; b++) acc[m][b] = _mm512_dpbusd_epi32(acc[m][b], a, wv[b]);
        }
    }
    for (int b = 0; b < NB; b++) {
        __m512 ws = _mm512_loadu_ps(wscale + b * 16);
        __m512 cs = _mm512_cvtepi32_ps(_mm512_loadu_si512((const void *)(colsum + b * 16)));
        for (int m = 0; m < MM; m++) {
            __m512 dot = _mm512_cvtepi32_ps(acc[m][b]);
            __m512 low_part = _mm512_mul_ps(_mm512_set1_ps(qp[2 * m + 1]), cs);
            __m512 v = _mm512_fmadd_ps(_mm512_set1_ps(qp[2 * m]), dot, low_part);
            _mm512_storeu_ps(y + m * N + b * 16, _mm512_mul_ps(ws, v));
        }
    }
}

/* exp(x) for x <= 0 (cephes expf: range reduction by ln 2, degree-5 polynomial); about 1 ulp. */
static inline __m512 exp_nonpositive(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 widen_bf16(const uint16_t *p) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

/* q (R, H, D) float32; caches (slots, H, capacity, D) bf16; ok (R, ok_stride) bytes; out (R, H, D).
   Masked keys contribute exact zeros, and sums run over 16-key blocks from position 0, so a row's result
   does not depend on span (that is, on the other rows). */
void decode_attention(const float *q, int64_t R, int64_t H, int64_t D, const uint16_t *kc, const uint16_t *vc,
                      int64_t slot_stride, int64_t head_stride, const uint8_t *ok, int64_t ok_stride, int64_t span,
                      float scale, float *out, int n_threads) {
    int64_t padded = (span + 15) / 16 * 16;
    #pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t p = 0; p < R * H; p++) {
        int64_t r = p / H, h = p % H;
        const float *qp = q + p * D;
        const uint16_t *kp = kc + r * slot_stride + h * head_stride, *vp = vc + r * slot_stride + h * head_stride;
        const uint8_t *okr = ok + r * ok_stride;
        float s[padded];
        float top = -INFINITY;
        for (int64_t j = 0; j < padded; j++) {
            if (j >= span || !okr[j]) { s[j] = -INFINITY; continue; }
            __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(qp), widen_bf16(kp + j * D));
            for (int64_t d = 16; d < D; d += 16)
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(qp + d), widen_bf16(kp + j * D + d), acc);
            s[j] = scale * _mm512_reduce_add_ps(acc);
            top = s[j] > top ? s[j] : top;
        }
        __m512 vtop = _mm512_set1_ps(top), sums = _mm512_setzero_ps();
        for (int64_t j = 0; j < padded; j += 16) {
            __m512 x = _mm512_loadu_ps(s + j);
            __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
            __m512 e = _mm512_maskz_mov_ps(live, exp_nonpositive(_mm512_sub_ps(x, vtop)));
            _mm512_storeu_ps(s + j, e);
            sums = _mm512_add_ps(sums, e);
        }
        float total = _mm512_reduce_add_ps(sums);
        __m512 acc[8];
        for (int64_t d = 0; d < D / 16; d++) acc[d] = _mm512_setzero_ps();
        for (int64_t j = 0; j < span; j++) {
            if (s[j] == 0.0f) continue; /* masked (or underflowed to nothing) */
            __m512 ev = _mm512_set1_ps(s[j]);
            for (int64_t d = 0; d < D / 16; d++)
                acc[d] = _mm512_fmadd_ps(ev, widen_bf16(vp + j * D + d * 16), acc[d]);
        }
        __m512 inv = _mm512_set1_ps(1.0f / total);
        for (int64_t d = 0; d < D / 16; d++) _mm512_storeu_ps(out + p * D + d * 16, _mm512_mul_ps(acc[d], inv));
    }
}

/* bf16 weights, tile layout [K/2][NB][16 channels][2 k]; x (MM rows, K) bf16; y float32. */
static inline __attribute__((always_inline)) void tile_bf16(
    const uint16_t *x, int64_t K, const uint16_t *w, float *y, int64_t N, int MM, int NB) {
    __m512 acc[4][4];
    for (int m = 0; m < MM; m++)
        for (int b = 0; b < NB; b++) acc[m][b] = _mm512_setzero_ps();
    for (int64_t k2 = 0; k2 < K / 2; k2++) {
        const uint16_t *wk = w + k2 * NB * 32;
        __m512bh wv[4];
        for (int b = 0; b < NB; b++) wv[b] = (__m512bh)_mm512_loadu_si512((const void *)(wk + b * 32));
        for (int m = 0; m < MM; m++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32(*(const int32_t *)(x + m * K + k2 * 2));
            for (int b = 0; b < NB; b++) acc[m][b] = _mm512_dpbf16_ps(acc[m][b], a, wv[b]);
        }
    }
    for (int m = 0; m < MM; m++)
        for (int b = 0; b < NB; b++) _mm512_storeu_ps(y + m * N + b * 16, acc[m][b]);
}

#define TILE_BF16_CASE(MM, NB) case (MM) * 8 + (NB): tile_bf16(xm, K, w, ym, N, MM, NB); break;

/* y (M, N) float32 = x (M, K) bf16 times the packed bf16 weight (vdpbf16ps, float32 accumulation). */
void bf16_linear(const uint16_t *x, int64_t M, int64_t K, const uint16_t *packed, int64_t N, float *y,
                 int n_threads) {
    int64_t n_blocks = N / 16, n_tiles = (n_blocks + 3) / 4;
    #pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t t = 0; t < n_tiles; t++) {
        int64_t b0 = t * 4;
        int nb = (int)(n_blocks - b0 < 4 ? n_blocks - b0 : 4);
        const uint16_t *w = packed + b0 * 16 * K;
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
            int mm = (int)(M - m0 < 4 ? M - m0 : 4);
            const uint16_t *xm = x + m0 * K;
            float *ym = y + m0 * N + b0 * 16;
            switch (mm * 8 + nb) {
                TILE_BF16_CASE(1, 1) TILE_BF16_CASE(1, 2) TILE_BF16_CASE(1, 3) TILE_BF16_CASE(1, 4)
                TILE_BF16_CASE(2, 1) TILE_BF16_CASE(2, 2) TILE_BF16_CASE(2, 3) TILE_BF16_CASE(2, 4)
                TILE_BF16_CASE(3, 1) TILE_BF16_CASE(3, 2) TILE_BF16_CASE(3, 3) TILE_BF16_CASE(3, 4)
                TILE_BF16_CASE(4, 1) TILE_BF16_CASE(4, 2) TILE_BF16_CASE(4, 3) TILE_BF16_CASE(4, 4)
            }
        }
    }
}

#define TILE_CASE(MM, NB) case (MM) * 8 + (NB): tile(u, K, w, qp, wscale, colsum, y, N, MM, NB); break;

static void run_tile(const uint8_t *u, int64_t K, const int8_t *w, const float *qp, const float *wscale,
                     const int32_t *colsum, float *y, int64_t N, int MM, int NB) {
    switch (MM * 8 + NB) {
        TILE_CASE(1, 1) TILE_CASE(1, 2) TILE_CASE(1, 3) TILE_CASE(1, 4)
        TILE_CASE(2, 1) TILE_CASE(2, 2) TILE_CASE(2, 3) TILE_CASE(2, 4)
        TILE_CASE(3, 1) TILE_CASE(3, 2) TILE_CASE(3, 3) TILE_CASE(3, 4)
        TILE_CASE(4, 1) TILE_CASE(4, 2) TILE_CASE(4, 3) TILE_CASE(4, 4)
    }
}

/* y (M, N) float32 = x (M, K) float32 times the packed int8 weight. ubuf: M*K bytes, qp: 2*M floats. */
void w8a8_linear(const float *x, int64_t M, int64_t K, const int8_t *packed, const float *wscale,
                 const int32_t *colsum, int64_t N, float *y, uint8_t *ubuf, float *qp, int n_threads) {
    for (int64_t m = 0; m < M; m++) quantize_row(x + m * K, K, ubuf + m * K, qp + 2 * m, qp + 2 * m + 1);
    int64_t n_blocks = N / 16, n_tiles = (n_blocks + 3) / 4;
    #pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t t = 0; t < n_tiles; t++) {
        int64_t b0 = t * 4;
        int nb = (int)(n_blocks - b0 < 4 ? n_blocks - b0 : 4);
        const int8_t *w = packed + b0 * 16 * K;
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
            int mm = (int)(M - m0 < 4 ? M - m0 : 4);
            run_tile(ubuf + m0 * K, K, w, qp + 2 * m0, wscale + b0 * 16, colsum + b0 * 16, y + m0 * N + b0 * 16,
                     N, mm, nb);
        }
    }
}
"""

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


def _kernel_dir() -> Path:
    return Path.home() / ".cache" / "motif" / "kernels"


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
    digest = hashlib.sha256((_SOURCE + " ".join(_FLAGS)).encode()).hexdigest()[:16]
    target = _kernel_dir() / f"w8a8-{digest}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        source = target.with_suffix(f".{os.getpid()}.c")
        source.write_text(_SOURCE)
        tmp = target.with_suffix(f".{os.getpid()}.so")
        try:
            subprocess.run([compiler, *_FLAGS, str(source), "-o", str(tmp), "-lm"], check=True,
                           capture_output=True, timeout=120)  # fmt: skip
            os.replace(tmp, target)  # atomic: a concurrent builder never sees half a library
        except subprocess.CalledProcessError as error:
            raise RuntimeError(f"gcc failed: {error.stderr.decode(errors='replace')[-500:]}") from error
        finally:
            source.unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)
    library = ctypes.CDLL(str(target))
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
    library.w8a8_linear.restype = None
    library.w8a8_linear.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    return library
