/* One-token generation steps of the decoder on an x86-64 CPU: a matrix-vector product with float16 weights, and
   the whole step (every block, then the final norm) built on it.

   The product:

   y[n] = sum_k W[n, k] * x[k] (+ b[n])   W: float16 [N, K] row-major, K a multiple of 16; x, b, y: float32.

   Each float16 weight is widened to float32 in registers (F16C) and multiplied into float32 accumulators (FMA):
   the weights are read from memory once, at half the size of float32, which is what a one-row product on a CPU
   waits for. The summation order is fixed (two 8-lane accumulators per row, added lane-wise, then a fixed
   horizontal sum, then the bias), so a product gives the same floats on every CPU that runs it, on any thread.
   Built and loaded by tinystories/kernels.py; the flags below keep the compiler from reordering anything. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

int tinystories_cpu_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

/* Rows ahead to prefetch: a matrix rarely stays in this (shared, cloud) CPU's cache from one token to the next,
   and asking for the rows 16 ahead while multiplying these makes cold products ~2x faster here. */
#define PF_ROWS 16
#define TARGET __attribute__((target("avx2,fma,f16c")))

TARGET static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

TARGET static inline __m256 widen(const uint16_t *w) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w));
}

TARGET void tinystories_matvec_f16(const uint16_t *W, const float *x, const float *b, float *y, int64_t N, int64_t K) {
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) { /* four rows at a time: x is loaded once for them, eight independent sums */
        const uint16_t *w0 = W + n * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, c0 = a0, c1 = a0, c2 = a0, c3 = a0;
        const char *ahead = (const char *)(w0 + PF_ROWS * K);
        for (int64_t k = 0; k < K; k += 16) {
            if (n + PF_ROWS + 4 <= N) {
                _mm_prefetch(ahead + 8 * k, _MM_HINT_T0); /* the 4 rows 16 ahead: 128 bytes per 16 k */
                _mm_prefetch(ahead + 8 * k + 64, _MM_HINT_T0);
            }
            __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
            a0 = _mm256_fmadd_ps(widen(w0 + k), x0, a0);
            a1 = _mm256_fmadd_ps(widen(w1 + k), x0, a1);
            a2 = _mm256_fmadd_ps(widen(w2 + k), x0, a2);
            a3 = _mm256_fmadd_ps(widen(w3 + k), x0, a3);
            c0 = _mm256_fmadd_ps(widen(w0 + k + 8), x1, c0);
            c1 = _mm256_fmadd_ps(widen(w1 + k + 8), x1, c1);
            c2 = _mm256_fmadd_ps(widen(w2 + k + 8), x1, c2);
            c3 = _mm256_fmadd_ps(widen(w3 + k + 8), x1, c3);
        }
        y[n] = hsum(_mm256_add_ps(a0, c0));
        y[n + 1] = hsum(_mm256_add_ps(a1, c1));
        y[n + 2] = hsum(_mm256_add_ps(a2, c2));
        y[n + 3] = hsum(_mm256_add_ps(a3, c3));
    }
    for (; n < N; n++) { /* the last rows, one at a time, in the same order */
        const uint16_t *w0 = W + n * K;
        __m256 a0 = _mm256_setzero_ps(), c0 = a0;
        for (int64_t k = 0; k < K; k += 16) {
            a0 = _mm256_fmadd_ps(widen(w0 + k), _mm256_loadu_ps(x + k), a0);
            c0 = _mm256_fmadd_ps(widen(w0 + k + 8), _mm256_loadu_ps(x + k + 8), c0);
        }
        y[n] = hsum(_mm256_add_ps(a0, c0));
    }
    if (b)
        for (n = 0; n < N; n++) y[n] += b[n];
}

/* LayerNorm of x [d] into y: (x - mean) / sqrt(var + eps) * w + b, moments in double. */
static void layer_norm(const float *x, const float *w, const float *b, double eps, float *y, int64_t d) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < d; i++) mean += x[i];
    mean /= d;
    for (int64_t i = 0; i < d; i++) var += (x[i] - mean) * (x[i] - mean);
    float rstd = (float)(1.0 / sqrt(var / d + eps)), m = (float)mean;
    for (int64_t i = 0; i < d; i++) {
        float v = (x[i] - m) * rstd;
        y[i] = (w ? v * w[i] : v) + (b ? b[i] : 0.f);
    }
}

/* One token through the decoder, after `pos` cached tokens: Decoder._step's operations.

   x_in [d]: the token's embedding plus its position's. params: per block ln1.weight, ln1.bias, qkv W (float16)
   and bias, proj W and bias, ln2.weight, ln2.bias, fc W and bias, out W and bias (12 pointers), then ln_f.weight
   and ln_f.bias. eps: ln1, ln2 per block, then ln_f. cache: per block the keys, then the values [n_heads,
   context, d / n_heads] float32, where this token's are written at `pos`. scratch: 6 d + d_ff + context floats.
   out [d]: the final hidden state. */
TARGET void tinystories_decoder_step(int64_t n_layers, int64_t d, int64_t n_heads, int64_t d_ff, int64_t context,
                                     void *const *params, const double *eps, void *const *cache, int64_t pos,
                                     const float *x_in, float *out, float *scratch) {
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040); /* subnormals read and written as 0 (restored below): tiny attention weights
                                 exp(-90) and the like cost ~100x a normal float on x86 and change nothing here */
    const int64_t hd = d / n_heads;
    const float scale = (float)(1.0 / sqrt((double)hd));
    float *x = scratch, *h = x + d, *qkv = h + d, *y = qkv + 3 * d, *ff = y + d, *scores = ff + d_ff;
    for (int64_t i = 0; i < d; i++) x[i] = x_in[i];
    for (int64_t l = 0; l < n_layers; l++) {
        void *const *p = params + 12 * l;
        float *keys = cache[2 * l], *values = cache[2 * l + 1];
        /* attention: x += proj(softmax(q k^T / sqrt(hd)) v) over the cached tokens and this one */
        layer_norm(x, p[0], p[1], eps[2 * l], h, d);
        tinystories_matvec_f16(p[2], h, p[3], qkv, 3 * d, d);
        for (int64_t head = 0; head < n_heads; head++) {
            const float *q = qkv + head * hd;
            float *k = keys + (head * context) * hd, *v = values + (head * context) * hd, *o = y + head * hd;
            for (int64_t j = 0; j < hd; j++) {
                k[pos * hd + j] = qkv[d + head * hd + j];
                v[pos * hd + j] = qkv[2 * d + head * hd + j];
            }
            float top = -INFINITY, total = 0.f;
            for (int64_t t = 0; t <= pos; t++) {
                float s = 0.f;
                for (int64_t j = 0; j < hd; j++) s += q[j] * k[t * hd + j];
                scores[t] = s * scale;
                if (scores[t] > top) top = scores[t];
            }
            for (int64_t t = 0; t <= pos; t++) total += (scores[t] = expf(scores[t] - top));
            for (int64_t j = 0; j < hd; j++) o[j] = 0.f;
            for (int64_t t = 0; t <= pos; t++) {
                float a = scores[t] / total;
                for (int64_t j = 0; j < hd; j++) o[j] += a * v[t * hd + j];
            }
        }
        tinystories_matvec_f16(p[4], y, p[5], h, d, d);
        for (int64_t i = 0; i < d; i++) x[i] += h[i];
        /* MLP: x += out(gelu(fc(ln2(x)))), the exact (erf) GELU */
        layer_norm(x, p[6], p[7], eps[2 * l + 1], h, d);
        tinystories_matvec_f16(p[8], h, p[9], ff, d_ff, d);
        for (int64_t i = 0; i < d_ff; i++) ff[i] = 0.5f * ff[i] * (1.f + erff(ff[i] * (float)M_SQRT1_2));
        tinystories_matvec_f16(p[10], ff, p[11], h, d, d_ff);
        for (int64_t i = 0; i < d; i++) x[i] += h[i];
    }
    layer_norm(x, params[12 * n_layers], params[12 * n_layers + 1], eps[2 * n_layers], out, d);
    _mm_setcsr(csr);
}
