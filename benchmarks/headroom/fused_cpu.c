/* Measurement only, not part of colbert-retriever (the library runs on torch alone): how fast PLAID's two
 * token-level CPU stages run as fused loops (AVX2, OpenMP), to size what a compiled CPU kernel would buy.
 * Built and called by benchmarks/fused_cpu_headroom.py. Scores equal plaid.centroid_interaction /
 * plaid.exact_scores up to float rounding (checked there).
 *
 * Query-side tables have QV * 8 float columns (the query tokens, zero-padded: a padded column scores 0 for
 * every token, so it adds 0 to a document's sum). Documents are read straight from the index arrays: token rows
 * off[d] .. off[d + 1] - 1 of codes (uint16 centroid ids), residuals (P bytes per row) and inverse norms. */
#include <float.h>
#include <immintrin.h>
#include <stdint.h>

/* a document's score: its per-column maxima (qv vectors of 8) summed in column order */
static inline float column_sum(const __m256 *best, int qv) {
    float tmp[32], sum = 0.f;
    for (int v = 0; v < qv; v++) _mm256_storeu_ps(tmp + 8 * v, best[v]);
    for (int k = 0; k < qv * 8; k++) sum += tmp[k];
    return sum;
}

/* exact MaxSim: per token, (Sc[code] + sum over bytes j of lut[j * 256 + byte]) * inverse norm; max per column
 * over the document's tokens; sum over columns */
#define EXACT(QV)                                                                                              \
    static void exact##QV(const uint16_t *codes, const uint8_t *res, const float *inv, const int64_t *off,     \
                          const int64_t *pids, int64_t n, const float *Sc, const float *lut, int P, float *out) { \
        _Pragma("omp parallel for schedule(dynamic, 8)") for (int64_t i = 0; i < n; i++) {                    \
            int64_t d = pids[i];                                                                               \
            __m256 best[QV], acc[QV];                                                                          \
            for (int v = 0; v < QV; v++) best[v] = _mm256_set1_ps(-FLT_MAX);                                   \
            for (int64_t t = off[d]; t < off[d + 1]; t++) {                                                    \
                const float *s = Sc + (int64_t)codes[t] * (QV * 8);                                            \
                for (int v = 0; v < QV; v++) acc[v] = _mm256_loadu_ps(s + 8 * v);                              \
                const uint8_t *b = res + t * P;                                                                \
                for (int j = 0; j < P; j++) {                                                                  \
                    const float *row = lut + ((int64_t)j * 256 + b[j]) * (QV * 8);                             \
                    for (int v = 0; v < QV; v++) acc[v] = _mm256_add_ps(acc[v], _mm256_loadu_ps(row + 8 * v)); \
                }                                                                                              \
                __m256 w = _mm256_set1_ps(inv[t]);                                                             \
                for (int v = 0; v < QV; v++) best[v] = _mm256_max_ps(best[v], _mm256_mul_ps(acc[v], w));       \
            }                                                                                                  \
            out[i] = off[d + 1] > off[d] ? column_sum(best, QV) : 0.f;                                         \
        }                                                                                                      \
    }

/* full centroid interaction: per column, the best centroid score over the document's tokens; summed */
#define CENTROID(QV)                                                                                           \
    static void centroid##QV(const uint16_t *codes, const int64_t *off, const int64_t *pids, int64_t n,        \
                             const float *Sc, float *out) {                                                    \
        _Pragma("omp parallel for schedule(dynamic, 16)") for (int64_t i = 0; i < n; i++) {                   \
            int64_t d = pids[i];                                                                               \
            __m256 best[QV];                                                                                   \
            for (int v = 0; v < QV; v++) best[v] = _mm256_set1_ps(-FLT_MAX);                                   \
            for (int64_t t = off[d]; t < off[d + 1]; t++) {                                                    \
                const float *s = Sc + (int64_t)codes[t] * (QV * 8);                                            \
                for (int v = 0; v < QV; v++) best[v] = _mm256_max_ps(best[v], _mm256_loadu_ps(s + 8 * v));     \
            }                                                                                                  \
            out[i] = off[d + 1] > off[d] ? column_sum(best, QV) : 0.f;                                         \
        }                                                                                                      \
    }

EXACT(1) EXACT(2) EXACT(3) EXACT(4)
CENTROID(1) CENTROID(2) CENTROID(3) CENTROID(4)

/* qv: column groups of 8 (query tokens padded up to 8, 16, 24 or 32) */
void fused_exact(const uint16_t *codes, const uint8_t *res, const float *inv, const int64_t *off,
                 const int64_t *pids, int64_t n, const float *Sc, const float *lut, int qv, int P, float *out) {
    switch (qv) {
    case 1: exact1(codes, res, inv, off, pids, n, Sc, lut, P, out); break;
    case 2: exact2(codes, res, inv, off, pids, n, Sc, lut, P, out); break;
    case 3: exact3(codes, res, inv, off, pids, n, Sc, lut, P, out); break;
    default: exact4(codes, res, inv, off, pids, n, Sc, lut, P, out);
    }
}

void fused_centroid(const uint16_t *codes, const int64_t *off, const int64_t *pids, int64_t n, const float *Sc,
                    int qv, float *out) {
    switch (qv) {
    case 1: centroid1(codes, off, pids, n, Sc, out); break;
    case 2: centroid2(codes, off, pids, n, Sc, out); break;
    case 3: centroid3(codes, off, pids, n, Sc, out); break;
    default: centroid4(codes, off, pids, n, Sc, out);
    }
}
