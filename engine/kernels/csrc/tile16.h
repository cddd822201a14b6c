// The register-blocked product our CPU kernels share (quant_panels.cpp: GEMM panels;
// paged_prefill.cpp: scores and values of prefill attention):
//
//   c[rows, 16] (+)= a[rows, k] @ b[k, 16]      rows <= 6; a rows at stride lda, b rows
//                                                at ldb, c rows at ldc; float32
//
// 12 accumulators (6 rows x 2 registers), b's two registers loaded once per k and each a
// value broadcast against them: the register blocking of BLIS's AVX2 kernels (~70% of the
// FMA units' peak measured on Zen 3 with b in L1). Built with AVX2 and FMA only.
#pragma once

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include <cstdint>

namespace tandem_tile {

constexpr int kMaxRows = 6;

// Named accumulators, not an array: GCC keeps an array of 12 __m256 on the stack.
template <int MR, bool ACC>
inline void tile16(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t k, float* c,
                   int64_t ldc) {
  static_assert(MR >= 1 && MR <= kMaxRows);
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
         c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#define TANDEM_LOAD(R)                              \
  if constexpr (ACC && MR > R) {                    \
    c##R##0 = _mm256_loadu_ps(c + R * ldc);         \
    c##R##1 = _mm256_loadu_ps(c + R * ldc + 8);     \
  }
  TANDEM_LOAD(0) TANDEM_LOAD(1) TANDEM_LOAD(2) TANDEM_LOAD(3) TANDEM_LOAD(4) TANDEM_LOAD(5)
#undef TANDEM_LOAD
  const float *a0 = a, *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda, *a4 = a + 4 * lda,
              *a5 = a + 5 * lda;
#define TANDEM_ROW(R)                               \
  if constexpr (MR > R) {                           \
    const __m256 av = _mm256_broadcast_ss(a##R + j); \
    c##R##0 = _mm256_fmadd_ps(av, b0, c##R##0);     \
    c##R##1 = _mm256_fmadd_ps(av, b1, c##R##1);     \
  }
  for (int64_t j = 0; j < k; ++j) {
    const __m256 b0 = _mm256_loadu_ps(b + j * ldb);
    const __m256 b1 = _mm256_loadu_ps(b + j * ldb + 8);
    TANDEM_ROW(0) TANDEM_ROW(1) TANDEM_ROW(2) TANDEM_ROW(3) TANDEM_ROW(4) TANDEM_ROW(5)
  }
#undef TANDEM_ROW
#define TANDEM_STORE(R)                             \
  if constexpr (MR > R) {                           \
    _mm256_storeu_ps(c + R * ldc, c##R##0);         \
    _mm256_storeu_ps(c + R * ldc + 8, c##R##1);     \
  }
  TANDEM_STORE(0) TANDEM_STORE(1) TANDEM_STORE(2) TANDEM_STORE(3) TANDEM_STORE(4) TANDEM_STORE(5)
#undef TANDEM_STORE
}

// The 8x8 floats in r[0..7] transposed in place (r[i][j] <- r[j][i]).
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// tile16 with a run-time row count (1..6).
template <bool ACC>
inline void tile16_rows(int64_t rows, const float* a, int64_t lda, const float* b, int64_t ldb,
                        int64_t k, float* c, int64_t ldc) {
  switch (rows) {
    case 6: return tile16<6, ACC>(a, lda, b, ldb, k, c, ldc);
    case 5: return tile16<5, ACC>(a, lda, b, ldb, k, c, ldc);
    case 4: return tile16<4, ACC>(a, lda, b, ldb, k, c, ldc);
    case 3: return tile16<3, ACC>(a, lda, b, ldb, k, c, ldc);
    case 2: return tile16<2, ACC>(a, lda, b, ldb, k, c, ldc);
    default: return tile16<1, ACC>(a, lda, b, ldb, k, c, ldc);
  }
}

// c[rows, 16] (+)= a @ b for any number of rows, in tiles as even as 6-row tiles allow (32
// rows: 6,6,5,5,5,5, not 6,6,6,6,6,2: a 2-row tile has too few accumulators to hide the
// FMA latency).
template <bool ACC>
inline void rows16(int64_t rows, const float* a, int64_t lda, const float* b, int64_t ldb,
                   int64_t k, float* c, int64_t ldc) {
  const int64_t tiles = (rows + kMaxRows - 1) / kMaxRows;
  for (int64_t t = 0, r = 0; t < tiles; ++t) {
    const int64_t mr = (rows - r) / (tiles - t) + ((rows - r) % (tiles - t) != 0);
    tile16_rows<ACC>(mr, a + r * lda, lda, b, ldb, k, c + r * ldc, ldc);
    r += mr;
  }
}

}  // namespace tandem_tile
#endif  // __AVX2__ && __FMA__
