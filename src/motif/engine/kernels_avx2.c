/* Motif's int8 decode-step kernels for AVX2 + FMA CPUs (most laptops, every x86-64 CPU since 2015), built with
   -mavx2 -mfma only, so nothing in it needs AVX-512. Same entry points, data layouts and structs as kernels.c
   (motif.engine.kernels loads one or the other), minus bf16_linear: the codebook heads stay a float32 matmul.

   The int8 projections sum each group of inputs exactly in int32 as kernels.c does (vpmaddwd on int16
   activations and sign-extended weights, then vpaddd, where AVX-512 VNNI has one vpdpwssd), so their sums are
   the AVX-512 kernel's; norms, softmax and GELU reduce over 8 lanes instead of 16 and round a little
   differently. Every row is computed on its own: a row's result never depends on what shares its batch. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "kernels_common.h" /* the structs, entry points and threading kernels.c shares */

/* ------------------------------------------------------------------------------------------- helpers */

static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static inline __m256 abs8(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

/* Same rounding (to nearest even) and saturation as kernels.c, so both libraries quantise a row to the same
   int16. */
static float quantize_row16(const float *x, int64_t K, int16_t *q) {
    __m256 vmax = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) vmax = _mm256_max_ps(vmax, abs8(_mm256_loadu_ps(x + k)));
    float scale = hmax8(vmax) / 32767.0f;
    if (!(scale > 0.0f)) scale = 1.0f; /* all-zero row: every q is 0 */
    __m256 vinv = _mm256_set1_ps(1.0f / scale);
    for (int64_t k = 0; k < K; k += 16) {
        __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), vinv));
        __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8), vinv));
        __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8); /* undo the per-lane pack */
        _mm256_storeu_si256((__m256i *)(q + k), packed);
    }
    return scale;
}


/* exp(x) for x <= 0 (cephes expf: range reduction by ln 2, degree-5 polynomial); about 1 ulp. */
static inline __m256 exp_nonpositive(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* 2^n for n in [-126, 0] straight into the exponent field (AVX-512 has vscalefps for this) */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* GELU with the exact erf form, 0.5 x (1 + erf(x / sqrt 2)); erf by Abramowitz & Stegun 7.1.26 (|error| <
   1.5e-7), as kernels.c. */
static inline __m256 gelu(__m256 x) {
    __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));
    __m256 az = abs8(z), one = _mm256_set1_ps(1.0f);
    __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), az, one));
    __m256 p = _mm256_set1_ps(1.061405429f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
    p = _mm256_mul_ps(p, t);
    __m256 erf_abs = _mm256_fnmadd_ps(p, exp_nonpositive(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(az, az))), one);
    __m256 erf = _mm256_or_ps(erf_abs, _mm256_and_ps(z, _mm256_set1_ps(-0.0f)));
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(one, erf));
}

static inline __m256 widen_bf16(const uint16_t *p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

/* ------------------------------------------------------------------------------ int8 projections */

/* MM (1-2) rows x NB (1-2) blocks of 16 channels, one group of G inputs, added into facc (MM, NB*16) floats.
   wk points at the group's first k-pair of block b0 in a tile of nb blocks laid out [K/2][nb][16][2] int8.
   8 int32 accumulators + 4 weight vectors + a broadcast fit AVX2's 16 registers; the tile's group of weights
   (at most 8 KB) stays in L1 for the next pair of rows or blocks. */
static inline __attribute__((always_inline)) void group_sums(
    const int16_t *xq, int64_t K, int64_t k2_start, int64_t G, const int8_t *wk, int64_t nb, const float *wsg,
    float *facc, int MM, int NB) {
    __m256i acc[2][2][2];
    for (int m = 0; m < MM; m++)
        for (int b = 0; b < NB; b++) acc[m][b][0] = acc[m][b][1] = _mm256_setzero_si256();
    for (int64_t i = 0; i < G / 2; i++) {
        const int8_t *w = wk + i * nb * 32;
        __m256i wv[2][2];
        for (int b = 0; b < NB; b++) {
            wv[b][0] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + b * 32)));
            wv[b][1] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + b * 32 + 16)));
        }
        for (int m = 0; m < MM; m++) {
            __m256i a = _mm256_set1_epi32(*(const int32_t *)(xq + m * K + (k2_start + i) * 2));
            for (int b = 0; b < NB; b++) {
                acc[m][b][0] = _mm256_add_epi32(acc[m][b][0], _mm256_madd_epi16(a, wv[b][0]));
                acc[m][b][1] = _mm256_add_epi32(acc[m][b][1], _mm256_madd_epi16(a, wv[b][1]));
            }
        }
    }
    for (int b = 0; b < NB; b++)
        for (int h = 0; h < 2; h++) {
            __m256 s = _mm256_loadu_ps(wsg + b * 16 + h * 8);
            for (int m = 0; m < MM; m++) {
                float *f = facc + m * 64 + b * 16 + h * 8;
                _mm256_storeu_ps(f, _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[m][b][h]), s, _mm256_loadu_ps(f)));
            }
        }
}

#define GROUP_CASE(MM, NB) case (MM) * 4 + (NB): group_sums(xq, K, g * (G / 2), G, wk, nb, wsg, facc, MM, NB); break;

/* Rows m0..m0+mm-1 (mm <= 2) against blocks b..b+nbb-1 (nbb <= 2) of one tile: every group, then the output. */
static void tile_part(const int16_t *xq, const float *xs, int64_t K, int64_t G, const int8_t *w, const float *ws,
                      int64_t nb, int64_t b, int mm, int nbb, float *y, int64_t N, int mode) {
    float facc[2 * 64] __attribute__((aligned(32)));
    for (int i = 0; i < 2 * 64; i++) facc[i] = 0.0f;
    for (int64_t g = 0; g < K / G; g++) {
        const int8_t *wk = w + g * (G / 2) * nb * 32 + b * 32;
        const float *wsg = ws + g * nb * 16 + b * 16;
        switch (mm * 4 + nbb) { GROUP_CASE(1, 1) GROUP_CASE(1, 2) GROUP_CASE(2, 1) GROUP_CASE(2, 2) }
    }
    for (int m = 0; m < mm; m++)
        for (int i = 0; i < nbb * 16; i += 8) {
            float *dst = y + m * N + b * 16 + i;
            __m256 v = _mm256_mul_ps(_mm256_loadu_ps(facc + m * 64 + i), _mm256_set1_ps(xs[m]));
            if (mode == ACCUMULATE) v = _mm256_add_ps(_mm256_loadu_ps(dst), v);
            else if (mode == GELU) v = gelu(v);
            _mm256_storeu_ps(dst, v);
        }
}

/* Each thread takes whole tiles of 4 blocks and runs them over pairs of rows and pairs of blocks. */
static void linear_tiles(const int16_t *qbuf, const float *xscale, int64_t M, int64_t K, int64_t G,
                         const int8_t *packed, const float *scales, int64_t N, float *y, int mode) {
    int64_t n_blocks = N / 16, n_tiles = (n_blocks + 3) / 4;
    #pragma omp for schedule(static)
    for (int64_t t = 0; t < n_tiles; t++) {
        int64_t b0 = t * 4, nb = n_blocks - b0 < 4 ? n_blocks - b0 : 4;
        const int8_t *w = packed + b0 * 16 * K;
        const float *ws = scales + b0 * 16 * (K / G);
        for (int64_t m0 = 0; m0 < M; m0 += 2) {
            int mm = (int)(M - m0 < 2 ? M - m0 : 2);
            for (int64_t b = 0; b < nb; b += 2) {
                int nbb = (int)(nb - b < 2 ? nb - b : 2);
                tile_part(qbuf + m0 * K, xscale + m0, K, G, w, ws, nb, b, mm, nbb, y + m0 * N + b0 * 16, N, mode);
            }
        }
    }
}


/* ------------------------------------------------------------------------------------- attention */

/* Eight vectors -> one whose lane t is the sum of v[t]'s lanes. */
static inline __m256 sum8(const __m256 v[8]) {
    __m256 a = _mm256_hadd_ps(v[0], v[1]), b = _mm256_hadd_ps(v[2], v[3]);
    __m256 c = _mm256_hadd_ps(v[4], v[5]), d = _mm256_hadd_ps(v[6], v[7]);
    __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    return _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
}

/* D a multiple of 16 up to 128. Masked keys contribute exact zeros. */
static void attend(const float *qp, const uint16_t *kp, const uint16_t *vp, const uint8_t *okr, int64_t span,
                   int64_t D, float scale, float *out) {
    int64_t padded = (span + 7) / 8 * 8;
    float s[padded];
    __m256 q[16];
    for (int64_t d = 0; d < D / 8; d++) q[d] = _mm256_loadu_ps(qp + d * 8);
    float top = -INFINITY;
    for (int64_t j0 = 0; j0 < padded; j0 += 8) {
        __m256 prod[8];
        for (int t = 0; t < 8; t++) {
            int64_t j = j0 + t;
            if (j >= span) { prod[t] = _mm256_setzero_ps(); continue; }
            __m256 acc = _mm256_mul_ps(q[0], widen_bf16(kp + j * D));
            for (int64_t d = 1; d < D / 8; d++) acc = _mm256_fmadd_ps(q[d], widen_bf16(kp + j * D + d * 8), acc);
            prod[t] = acc;
        }
        _mm256_storeu_ps(s + j0, _mm256_mul_ps(_mm256_set1_ps(scale), sum8(prod)));
        for (int t = 0; t < 8; t++) {
            int64_t j = j0 + t;
            if (j >= span || !okr[j]) s[j] = -INFINITY;
            else if (s[j] > top) top = s[j];
        }
    }
    __m256 vtop = _mm256_set1_ps(top), sums = _mm256_setzero_ps(), ninf = _mm256_set1_ps(-INFINITY);
    for (int64_t j = 0; j < padded; j += 8) {
        __m256 x = _mm256_loadu_ps(s + j);
        __m256 e = _mm256_and_ps(_mm256_cmp_ps(x, ninf, _CMP_NEQ_OQ), exp_nonpositive(_mm256_sub_ps(x, vtop)));
        _mm256_storeu_ps(s + j, e);
        sums = _mm256_add_ps(sums, e);
    }
    float total = hsum8(sums);
    __m256 acc[16];
    for (int64_t d = 0; d < D / 8; d++) acc[d] = _mm256_setzero_ps();
    for (int64_t j = 0; j < span; j++) {
        if (s[j] == 0.0f) continue; /* masked (or underflowed to nothing) */
        __m256 ev = _mm256_set1_ps(s[j]);
        for (int64_t d = 0; d < D / 8; d++) acc[d] = _mm256_fmadd_ps(ev, widen_bf16(vp + j * D + d * 8), acc[d]);
    }
    __m256 inv = _mm256_set1_ps(1.0f / total);
    for (int64_t d = 0; d < D / 8; d++) _mm256_storeu_ps(out + d * 8, _mm256_mul_ps(acc[d], inv));
}

/* -------------------------------------------------------------- norms and the key/value cache */

static void norm_rows(const float *x, int64_t M, int64_t E, const Norm *n, float *tmp, int16_t *qbuf, float *xscale) {
    #pragma omp for schedule(static)
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * E;
        float *out = tmp + m * E;
        __m256 sum = _mm256_setzero_ps();
        for (int64_t k = 0; k < E; k += 8) sum = _mm256_add_ps(sum, _mm256_loadu_ps(row + k));
        __m256 mean = _mm256_set1_ps(hsum8(sum) / (float)E);
        __m256 sq = _mm256_setzero_ps();
        for (int64_t k = 0; k < E; k += 8) {
            __m256 d = _mm256_sub_ps(_mm256_loadu_ps(row + k), mean);
            sq = _mm256_fmadd_ps(d, d, sq);
        }
        __m256 inv = _mm256_set1_ps(1.0f / sqrtf(hsum8(sq) / (float)E + n->eps));
        for (int64_t k = 0; k < E; k += 8) {
            __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(row + k), mean), inv);
            _mm256_storeu_ps(out + k, _mm256_fmadd_ps(d, _mm256_loadu_ps(n->weight + k), _mm256_loadu_ps(n->bias + k)));
        }
        xscale[m] = quantize_row16(out, E, qbuf + m * E);
    }
}

static void store_bf16(const float *x, int64_t D, uint16_t *dst) {
    __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7FFF);
    for (int64_t d = 0; d < D; d += 16) {
        __m256i half[2];
        for (int h = 0; h < 2; h++) {
            __m256i bits = _mm256_castps_si256(_mm256_loadu_ps(x + d + 8 * h));
            __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), one);
            half[h] = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(odd, bias)), 16);
        }
        __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(half[0], half[1]), 0xD8);
        _mm256_storeu_si256((__m256i *)(dst + d), packed);
    }
}

