/* What Motif's two decode-step kernel libraries share: included by kernels.c (AVX-512 VNNI) and by
   kernels_avx2.c (AVX2 + FMA), which motif.engine.kernels compiles one at a time. Here: the structs
   motif.engine.fused fills (one layout for both), the entry points' glue and how each stage is shared out
   over the threads; each kernel file defines the vector routines declared below, the only code that
   differs between them. Nothing here rounds a float but dequantize_f32's one multiply per weight (IEEE single
   precision, the same on every ISA): all other rounding happens in those routines. */
#ifndef MOTIF_KERNELS_COMMON_H
#define MOTIF_KERNELS_COMMON_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

enum { STORE = 0, ACCUMULATE = 1, GELU = 2 }; /* what a projection does with its output */

typedef struct { const int8_t *w; const float *scales; int64_t K, G, N; } Proj; /* an int8 projection */
typedef struct { const float *weight, *bias; float eps; } Norm;
typedef struct { Norm ln1, ln_cross, ln2; Proj qkv, out, cross_q, cross_out, fc1, fc2; } Layer;

typedef struct {
    int64_t R, H, D, ffn;                     /* rows, heads, head_dim, fc1 width */
    const int64_t *pos;                       /* (R,) the position each row writes its key and value at */
    const uint8_t *ok; int64_t ok_stride;     /* (R, >= span) keys each row may attend to */
    int64_t span;                             /* keys 0..span-1 are candidates */
    int64_t slot_stride, head_stride;         /* of the self-attention caches (slots, H, capacity, D) */
    int64_t n_cross;                          /* cross-attention keys; 0: no cross-attention (melody) */
    const uint8_t *cross_ok; int64_t cross_ok_stride;
    int64_t cross_slot_stride, cross_head_stride;
    float scale;                              /* softmax scale, 1/sqrt(D) */
    float *x;                                 /* (R, H*D) the residual stream, updated in place */
    float *tmp, *att, *buf;                   /* (R, H*D), (R, H*D), (R, max(3 H*D, ffn)) workspace */
    int16_t *qbuf; float *xscale;             /* (R, max(H*D, ffn)), (R,) workspace */
} Step;

/* ------------------------------------------------------- defined by each kernel file, for its ISA */

/* Row of K floats (K a multiple of 16) -> K int16 with x ~= scale * q, symmetric, rounded to nearest even
   and saturated. Returns scale. */
static float quantize_row16(const float *x, int64_t K, int16_t *q);

/* The tiles of one projection, shared out over the threads of an enclosing parallel region.
   y (M, N) float32 gets (x (M, K) as xq * xscale) times the packed weight, as `mode` says. */
static void linear_tiles(const int16_t *qbuf, const float *xscale, int64_t M, int64_t K, int64_t G,
                         const int8_t *packed, const float *scales, int64_t N, float *y, int mode);

/* One query q (D floats) against keys/values kp, vp (positions, D) bf16, keys j < span where okr[j]; the
   softmax-weighted sum of values into out (D floats). Keys past span are never read. */
static void attend(const float *qp, const uint16_t *kp, const uint16_t *vp, const uint8_t *okr, int64_t span,
                   int64_t D, float scale, float *out);

/* LayerNorm of each row (float32, biased variance, as torch) quantised to int16 for the next projection,
   shared out over the threads of an enclosing parallel region. */
static void norm_rows(const float *x, int64_t M, int64_t E, const Norm *n, float *tmp, int16_t *qbuf,
                      float *xscale);

/* float32 -> bf16 rounding to nearest even, as torch's .to(bfloat16) does. Values here are never NaN. */
static void store_bf16(const float *x, int64_t D, uint16_t *dst);

/* ------------------------------------------------------------------------------ int8 projections */

/* Rows of x (M, K) -> qbuf and xscale, shared out over the threads of an enclosing parallel region. */
static void quantize_rows(const float *x, int64_t M, int64_t K, int16_t *qbuf, float *xscale) {
    #pragma omp for schedule(static)
    for (int64_t m = 0; m < M; m++) xscale[m] = quantize_row16(x + m * K, K, qbuf + m * K);
}

/* y (M, N) float32 = x (M, K) float32 times the packed int8 weight with a scale per channel and G inputs
   (G even, at most 128, dividing K; K a multiple of 16). qbuf: M*K int16 of workspace; xscale: M floats. */
void w8a16_linear(const float *x, int64_t M, int64_t K, int64_t G, const int8_t *packed, const float *scales,
                  int64_t N, float *y, int16_t *qbuf, float *xscale, int n_threads) {
    #pragma omp parallel num_threads(n_threads)
    {
        quantize_rows(x, M, K, qbuf, xscale); /* ends in a barrier: every row is ready for the tiles */
        linear_tiles(qbuf, xscale, M, K, G, packed, scales, N, y, STORE);
    }
}

/* --------------------------------------------------------------------------------- prefill weights */

/* A packed int8 weight (tiles of 4 blocks of 16 channels, each [K/2][blocks][16][2], scales [K/G][blocks][16])
   back to a plain (N, K) float32 matrix, w = q * scale: a long prefill runs one float32 matmul per projection
   on CPUs without native bf16 (kernels.c has the bf16 twin). One output row at a time, written in order: rows
   are K floats apart, so writing many at once would thrash the L1 sets they all map to; the tile's packed
   weight (64 KB at K = 1024), read once per row at a stride, stays in L2. */
void dequantize_f32(const int8_t *packed, const float *scales, int64_t N, int64_t K, int64_t G, float *w,
                    int n_threads) {
    int64_t n_blocks = N / 16, n_tiles = (n_blocks + 3) / 4;
    #pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t t = 0; t < n_tiles; t++) {
        int64_t b0 = t * 4, nb = n_blocks - b0 < 4 ? n_blocks - b0 : 4;
        const int8_t *q = packed + b0 * 16 * K;
        const float *s = scales + b0 * 16 * (K / G);
        for (int64_t b = 0; b < nb; b++)
            for (int64_t c = 0; c < 16; c++) {
                float *out = w + ((b0 + b) * 16 + c) * K;
                for (int64_t g = 0; g < K / G; g++) {
                    float scale = s[(g * nb + b) * 16 + c];
                    for (int64_t k2 = g * G / 2; k2 < (g + 1) * G / 2; k2++) { /* G is even */
                        const int8_t *p = q + (k2 * nb + b) * 32 + 2 * c;
                        out[2 * k2] = (float)p[0] * scale;
                        out[2 * k2 + 1] = (float)p[1] * scale;
                    }
                }
            }
    }
}

/* ------------------------------------------------------------------------------------- attention */

/* q (R, H, D) float32; caches (slots, H, capacity, D) bf16; ok (R, ok_stride) bytes; out (R, H, D). */
void decode_attention(const float *q, int64_t R, int64_t H, int64_t D, const uint16_t *kc, const uint16_t *vc,
                      int64_t slot_stride, int64_t head_stride, const uint8_t *ok, int64_t ok_stride, int64_t span,
                      float scale, float *out, int n_threads) {
    #pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t p = 0; p < R * H; p++) {
        int64_t r = p / H, h = p % H;
        attend(q + p * D, kc + r * slot_stride + h * head_stride, vc + r * slot_stride + h * head_stride,
               ok + r * ok_stride, span, D, scale, out + p * D);
    }
}

/* ------------------------------------------------------------------------- the whole decode step */

static void project(const Step *s, const Proj *p, float *y, int mode) {
    linear_tiles(s->qbuf, s->xscale, s->R, p->K, p->G, p->w, p->scales, p->N, y, mode);
}

static void self_attention(const Step *s, uint16_t *kc, uint16_t *vc) {
    int64_t E = s->H * s->D;
    #pragma omp for schedule(static)
    for (int64_t p = 0; p < s->R * s->H; p++) {
        int64_t r = p / s->H, h = p % s->H;
        const float *qkv = s->buf + r * 3 * E + h * s->D;
        uint16_t *kp = kc + r * s->slot_stride + h * s->head_stride, *vp = vc + r * s->slot_stride + h * s->head_stride;
        store_bf16(qkv + E, s->D, kp + s->pos[r] * s->D);
        store_bf16(qkv + 2 * E, s->D, vp + s->pos[r] * s->D);
        attend(qkv, kp, vp, s->ok + r * s->ok_stride, s->span, s->D, s->scale, s->att + r * E + h * s->D);
    }
}

static void cross_attention(const Step *s, const uint16_t *kc, const uint16_t *vc) {
    int64_t E = s->H * s->D;
    #pragma omp for schedule(static)
    for (int64_t p = 0; p < s->R * s->H; p++) {
        int64_t r = p / s->H, h = p % s->H;
        attend(s->buf + r * E + h * s->D, kc + r * s->cross_slot_stride + h * s->cross_head_stride,
               vc + r * s->cross_slot_stride + h * s->cross_head_stride, s->cross_ok + r * s->cross_ok_stride,
               s->n_cross, s->D, s->scale, s->att + r * E + h * s->D);
    }
}

/* Every decoder layer for one new position per row, in one parallel region (a barrier between stages
   instead of a torch op, a ctypes call and a thread wake-up each). Same arithmetic as the layer-by-layer
   path with Int8Linear projections, up to float rounding in the norms and GELU (about 1e-7). */
void decoder_step(const Layer *layers, int64_t n_layers, uint16_t *const *k, uint16_t *const *v,
                  const uint16_t *const *cross_k, const uint16_t *const *cross_v, const Step *s, int n_threads) {
    int64_t E = s->H * s->D;
    #pragma omp parallel num_threads(n_threads)
    for (int64_t l = 0; l < n_layers; l++) {
        const Layer *L = layers + l;
        norm_rows(s->x, s->R, E, &L->ln1, s->tmp, s->qbuf, s->xscale);
        project(s, &L->qkv, s->buf, STORE);
        self_attention(s, k[l], v[l]);
        quantize_rows(s->att, s->R, E, s->qbuf, s->xscale);
        project(s, &L->out, s->x, ACCUMULATE);
        if (s->n_cross > 0) {
            norm_rows(s->x, s->R, E, &L->ln_cross, s->tmp, s->qbuf, s->xscale);
            project(s, &L->cross_q, s->buf, STORE);
            cross_attention(s, cross_k[l], cross_v[l]);
            quantize_rows(s->att, s->R, E, s->qbuf, s->xscale);
            project(s, &L->cross_out, s->x, ACCUMULATE);
        }
        norm_rows(s->x, s->R, E, &L->ln2, s->tmp, s->qbuf, s->xscale);
        project(s, &L->fc1, s->buf, GELU);
        quantize_rows(s->buf, s->R, s->ffn, s->qbuf, s->xscale);
        project(s, &L->fc2, s->x, ACCUMULATE);
    }
}

#endif /* MOTIF_KERNELS_COMMON_H */
