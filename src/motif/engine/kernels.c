/* Motif's decode-step CPU kernels (AVX-512 VNNI and BF16). Built and loaded by motif.engine.kernels, which
   says what each entry point is for; motif.engine.cpuops and motif.engine.fused call them.

   Every kernel computes each row on its own (no reduction ever mixes rows), so a row's result is bit-identical
   whatever else shares its batch. Only bf16_linear and dequantize_bf16 use AVX512-BF16 instructions (callers
   check the CPU has them); everything else needs AVX512 F/BW/VL and VNNI alone, so it runs on Cascade Lake too. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "kernels_common.h" /* the structs, entry points and threading kernels_avx2.c shares */

/* ------------------------------------------------------------------------------------------- helpers */

static float quantize_row16(const float *x, int64_t K, int16_t *q) {
    __m512 vmax = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
    float scale = _mm512_reduce_max_ps(vmax) / 32767.0f;
    if (!(scale > 0.0f)) scale = 1.0f; /* all-zero row: every q is 0 */
    __m512 vinv = _mm512_set1_ps(1.0f / scale);
    for (int64_t k = 0; k < K; k += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + k), vinv);
        __m512i r = _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_storeu_si256((__m256i *)(q + k), _mm512_cvtsepi32_epi16(r));
    }
    return scale;
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

/* GELU with the exact erf form, 0.5 x (1 + erf(x / sqrt 2)); erf by Abramowitz & Stegun 7.1.26, whose
   absolute error is below 1.5e-7. */
static inline __m512 gelu(__m512 x) {
    __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f));
    __m512 az = _mm512_abs_ps(z), one = _mm512_set1_ps(1.0f);
    __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), az, one));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    p = _mm512_mul_ps(p, t);
    __m512 erf_abs = _mm512_fnmadd_ps(p, exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(az, az))), one);
    __m512i sign = _mm512_and_si512(_mm512_castps_si512(z), _mm512_set1_epi32((int)0x80000000));
    __m512 erf = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(erf_abs), sign));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(one, erf));
}

static inline __m512 widen_bf16(const uint16_t *p) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

/* ------------------------------------------------------------------------------ int8 projections */

/* MM rows x NB blocks of 16 channels. A tile's weights are [K/2][NB][16 channels][2 k] int8 and its scales
   [K/G][NB][16] float. Each group of G k (G <= 128) is summed exactly in int32 (vpdpwssd on int16 activations
   and sign-extended weights: |sum| <= 128 * 32767 * 127 < 2^31), then scaled into float32 accumulators. */
static inline __attribute__((always_inline)) void tile16(
    const int16_t *xq, int64_t K, int64_t G, const int8_t *w, const float *ws, const float *xs, float *y,
    int64_t N, int mode, int MM, int NB) {
    __m512 facc[4][4];
    for (int m = 0; m < MM; m++)
        for (int b = 0; b < NB; b++) facc[m][b] = _mm512_setzero_ps();
    for (int64_t g = 0; g < K / G; g++) {
        __m512i acc[4][4];
        for (int m = 0; m < MM; m++)
            for (int b = 0; b < NB; b++) acc[m][b] = _mm512_setzero_si512();
        for (int64_t k2 = g * (G / 2); k2 < (g + 1) * (G / 2); k2++) {
            const int8_t *wk = w + k2 * NB * 32;
            __m512i wv[4];
            for (int b = 0; b < NB; b++) wv[b] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(wk + b * 32)));
            for (int m = 0; m < MM; m++) {
                __m512i a = _mm512_set1_epi32(*(const int32_t *)(xq + m * K + k2 * 2));
                for (int b = 0; b < NB; b++) acc[m][b] = _mm512_dpwssd_epi32(acc[m][b], a, wv[b]);
            }
        }
        const float *wsg = ws + g * NB * 16;
        for (int b = 0; b < NB; b++) {
            __m512 s = _mm512_loadu_ps(wsg + b * 16);
            for (int m = 0; m < MM; m++) facc[m][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[m][b]), s, facc[m][b]);
        }
    }
    for (int m = 0; m < MM; m++)
        for (int b = 0; b < NB; b++) {
            float *dst = y + m * N + b * 16;
            __m512 v = _mm512_mul_ps(facc[m][b], _mm512_set1_ps(xs[m]));
            if (mode == ACCUMULATE) v = _mm512_add_ps(_mm512_loadu_ps(dst), v);
            else if (mode == GELU) v = gelu(v);
            _mm512_storeu_ps(dst, v);
        }
}

/* Every tile shape, MM (1-4) rows x NB (1-4) blocks, as the cases of a switch on MM * 8 + NB: each case is
   a tile16 or tile_bf16 compiled for that shape, with its loops fully unrolled. */
#define TILE_SHAPES(CASE) CASE(1, 1) CASE(1, 2) CASE(1, 3) CASE(1, 4) CASE(2, 1) CASE(2, 2) CASE(2, 3) CASE(2, 4) \
                          CASE(3, 1) CASE(3, 2) CASE(3, 3) CASE(3, 4) CASE(4, 1) CASE(4, 2) CASE(4, 3) CASE(4, 4)
#define TILE16_CASE(MM, NB) case (MM) * 8 + (NB): tile16(xq, K, G, w, ws, xs, ym, N, mode, MM, NB); break;

/* Each thread takes whole tiles of 4 blocks (the last may hold fewer) and runs them over 4 rows at a time. */
static void linear_tiles(const int16_t *qbuf, const float *xscale, int64_t M, int64_t K, int64_t G,
                         const int8_t *packed, const float *scales, int64_t N, float *y, int mode) {
    int64_t n_blocks = N / 16, n_tiles = (n_blocks + 3) / 4;
    #pragma omp for schedule(static)
    for (int64_t t = 0; t < n_tiles; t++) {
        int64_t b0 = t * 4;
        int nb = (int)(n_blocks - b0 < 4 ? n_blocks - b0 : 4);
        const int8_t *w = packed + b0 * 16 * K;
        const float *ws = scales + b0 * 16 * (K / G);
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
            int mm = (int)(M - m0 < 4 ? M - m0 : 4);
            const int16_t *xq = qbuf + m0 * K;
            const float *xs = xscale + m0;
            float *ym = y + m0 * N + b0 * 16;
            switch (mm * 8 + nb) { TILE_SHAPES(TILE16_CASE) }
        }
    }
}

/* ------------------------------------------------------------------------------- bf16 projections */

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
            switch (mm * 8 + nb) { TILE_SHAPES(TILE_BF16_CASE) }
        }
    }
}

/* ----------------------------------------------------------------------------- prefill weights */

/* A w8a16_linear weight (packed int8 and scales) -> w (N, K) bf16 row-major, w = q * scale rounded once to
   nearest even. A prefill has hundreds of rows: there a bf16 matmul (AMX where the CPU has it) beats streaming
   int8, and one pass over the weight costs a few milliseconds per layer. Uses AVX512-BF16 (callers check).
   Each packed vector holds 16 channels x 2 inputs; 16 of them are scattered into a 1 KB block of 16 rows x
   32 inputs, which then goes out in whole cache lines (scattering straight into w, whose rows are K apart,
   thrashes the L1 sets). */
void dequantize_bf16(const int8_t *packed, const float *scales, int64_t N, int64_t K, int64_t G, uint16_t *w,
                     int n_threads) {
    int64_t n_blocks = N / 16, n_tiles = (n_blocks + 3) / 4;
    const __m512i lo_lanes = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    const __m512i hi_lanes = _mm512_add_epi32(lo_lanes, _mm512_set1_epi32(8));
    const __m512i block_rows = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(16));
    #pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t t = 0; t < n_tiles; t++) {
        int64_t b0 = t * 4;
        int nb = (int)(n_blocks - b0 < 4 ? n_blocks - b0 : 4);
        const int8_t *q = packed + b0 * 16 * K;
        const float *s = scales + b0 * 16 * (K / G);
        uint32_t block[16 * 16]; /* 16 channels x 16 input pairs */
        for (int b = 0; b < nb; b++) {
            uint16_t *out = w + (b0 + b) * 16 * K;
            for (int64_t j0 = 0; j0 < K / 2; j0 += 16) {
                int n_pairs = (int)(K / 2 - j0 < 16 ? K / 2 - j0 : 16);
                for (int j = 0; j < n_pairs; j++) {
                    int64_t k2 = j0 + j;
                    const int8_t *p = q + (k2 * nb + b) * 32;
                    __m512 scale = _mm512_loadu_ps(s + ((2 * k2 / G) * nb + b) * 16);
                    __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
                    __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 16))));
                    lo = _mm512_mul_ps(lo, _mm512_permutexvar_ps(lo_lanes, scale));
                    hi = _mm512_mul_ps(hi, _mm512_permutexvar_ps(hi_lanes, scale));
                    __m512i pairs = (__m512i)_mm512_cvtne2ps_pbh(hi, lo); /* lane c: channel c, inputs 2k2, 2k2+1 */
                    _mm512_i32scatter_epi32(block + j, block_rows, pairs, 4);
                }
                for (int c = 0; c < 16; c++) {
                    uint16_t *dst = out + c * K + 2 * j0;
                    if (n_pairs == 16) _mm512_storeu_si512((void *)dst, _mm512_loadu_si512(block + c * 16));
                    else for (int j = 0; j < n_pairs; j++) ((uint32_t *)dst)[j] = block[c * 16 + j];
                }
            }
        }
    }
}

/* ------------------------------------------------------------------------------------- attention */

/* Sixteen vectors -> one whose lane t is the sum of v[t]'s lanes: a transpose-and-add tree, about a
   fifth of the instructions of sixteen separate horizontal sums. */
static inline __m512 sum16(__m512 v[16]) {
    __m512 x[8], z[4];
    for (int i = 0; i < 8; i++)
        x[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        z[i] = _mm512_add_ps(_mm512_shuffle_ps(x[2 * i], x[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(x[2 * i], x[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(z[0], z[1], _MM_SHUFFLE(3, 1, 3, 1)));
    __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(z[2], z[3], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(z[2], z[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* Scores are computed sixteen keys at a time (keys past span are never read); masked keys contribute
   exact zeros, and sums run over 16-key blocks from position 0, so the result does not depend on span
   beyond the row's own keys. */
static void attend(const float *qp, const uint16_t *kp, const uint16_t *vp, const uint8_t *okr, int64_t span,
                   int64_t D, float scale, float *out) {
    int64_t padded = (span + 15) / 16 * 16;
    float s[padded];
    __m512 q[8];
    for (int64_t d = 0; d < D / 16; d++) q[d] = _mm512_loadu_ps(qp + d * 16);
    __m512 vmax = _mm512_set1_ps(-INFINITY), vscale = _mm512_set1_ps(scale);
    for (int64_t j0 = 0; j0 < padded; j0 += 16) {
        __m512 prod[16];
        for (int t = 0; t < 16; t++) {
            int64_t j = j0 + t;
            if (j >= span) { prod[t] = _mm512_setzero_ps(); continue; }
            __m512 acc = _mm512_mul_ps(q[0], widen_bf16(kp + j * D));
            for (int64_t d = 1; d < D / 16; d++) acc = _mm512_fmadd_ps(q[d], widen_bf16(kp + j * D + d * 16), acc);
            prod[t] = acc;
        }
        __mmask16 live = 0;
        for (int t = 0; t < 16; t++) live |= (__mmask16)((j0 + t < span && okr[j0 + t]) ? 1u << t : 0u);
        __m512 x = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), live, _mm512_mul_ps(vscale, sum16(prod)));
        _mm512_storeu_ps(s + j0, x);
        vmax = _mm512_max_ps(vmax, x);
    }
    __m512 vtop = _mm512_set1_ps(_mm512_reduce_max_ps(vmax)), sums = _mm512_setzero_ps();
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
        for (int64_t d = 0; d < D / 16; d++) acc[d] = _mm512_fmadd_ps(ev, widen_bf16(vp + j * D + d * 16), acc[d]);
    }
    __m512 inv = _mm512_set1_ps(1.0f / total);
    for (int64_t d = 0; d < D / 16; d++) _mm512_storeu_ps(out + d * 16, _mm512_mul_ps(acc[d], inv));
}

/* -------------------------------------------------------------- norms and the key/value cache */

static void norm_rows(const float *x, int64_t M, int64_t E, const Norm *n, float *tmp, int16_t *qbuf, float *xscale) {
    #pragma omp for schedule(static)
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * E;
        float *out = tmp + m * E;
        __m512 sum = _mm512_setzero_ps();
        for (int64_t k = 0; k < E; k += 16) sum = _mm512_add_ps(sum, _mm512_loadu_ps(row + k));
        __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / (float)E);
        __m512 sq = _mm512_setzero_ps();
        for (int64_t k = 0; k < E; k += 16) {
            __m512 d = _mm512_sub_ps(_mm512_loadu_ps(row + k), mean);
            sq = _mm512_fmadd_ps(d, d, sq);
        }
        __m512 inv = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(sq) / (float)E + n->eps));
        for (int64_t k = 0; k < E; k += 16) {
            __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(row + k), mean), inv);
            _mm512_storeu_ps(out + k, _mm512_fmadd_ps(d, _mm512_loadu_ps(n->weight + k), _mm512_loadu_ps(n->bias + k)));
        }
        xscale[m] = quantize_row16(out, E, qbuf + m * E);
    }
}

/* In integer AVX-512F (no BF16 instruction, so the fused step runs on VNNI CPUs without AVX512-BF16). */
static void store_bf16(const float *x, int64_t D, uint16_t *dst) {
    for (int64_t d = 0; d < D; d += 16) {
        __m512i bits = _mm512_castps_si512(_mm512_loadu_ps(x + d));
        __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
        bits = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
        _mm256_storeu_si256((__m256i *)(dst + d), _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
    }
}
