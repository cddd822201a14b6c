// y = x @ dequant(w).T from GGUF blocks when x has many rows (a decode step's batch, a
// prefill chunk): the path quant_linear takes past kFewRows rows.
//
// Why a second path: quant_linear's row path expands each block again for every 8 rows of x
// and feeds one FMA per load of x, so at 32 rows it ran at ~40 GFLOP/s on two Zen 3 cores,
// slower than oneDNN on float32 weights (~50), both far from the ~180 the FMA units allow.
// Here the output's columns go in panels of 16: a panel's blocks are expanded once into a
// small buffer laid out [k][16] (the 16 columns' weights for one input position side by
// side, in L1/L2), and each tile of 6 rows of x runs against it with 12 accumulators, one
// x value broadcast per pair of FMAs (the register blocking of BLIS's AVX2 kernels). The
// buffer holds exactly gguf-py's values, so, as on the row path, only the order of the sums
// differs from a float32 GEMM over the dequantized weights.
#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>

#include "quant_blocks.h"

namespace tandem_quant {

#if defined(__AVX2__) && defined(__FMA__)
namespace {

constexpr int64_t kPanel = 16;  // output columns per panel: two registers
constexpr int kTileRows = 6;    // rows of x per tile: 12 accumulators, 2 weights, 1 broadcast
constexpr int64_t kChunk = 128;  // input positions expanded at a time (a multiple of 32)

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

// The first `cols` (<= 16) rows of blocks at w (row_bytes apart), k input positions, as
// float32 into buf [k][16]; columns past `cols` are zero (their sums are computed and
// dropped).
template <int64_t QT>
void expand_panel(const uint8_t* w, int64_t row_bytes, int64_t cols, int64_t k, float* buf) {
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t b = 0; b < k / kBlock; ++b) {
    // 8 columns at a time: their blocks at position b, 4 registers each, transposed in
    // 8x8 squares into the buffer's rows b*32 .. b*32+31.
    for (int64_t half = 0; half < kPanel; half += 8) {
      __m256 sq[4][8];
      for (int64_t c = 0; c < 8; ++c) {
        __m256 v[4];
        if (half + c < cols) {
          dequant_block<QT>(w + (half + c) * row_bytes + b * block_bytes<QT>(), v);
        } else {
          v[0] = v[1] = v[2] = v[3] = zero;
        }
        for (int i = 0; i < 4; ++i) sq[i][c] = v[i];
      }
      for (int i = 0; i < 4; ++i) {
        transpose8(sq[i]);
        float* dst = buf + (b * kBlock + i * 8) * kPanel + half;
        for (int j = 0; j < 8; ++j) _mm256_store_ps(dst + j * kPanel, sq[i][j]);
      }
    }
  }
}

// y[MR rows, 16 columns] (+)= x[MR rows, k] @ panel[k][16]; x rows at stride ldx, y's at
// 16. Named accumulators, not an array: GCC keeps an array of 12 __m256 on the stack.
template <int MR, bool ACC>
inline void tile(const float* x, int64_t ldx, const float* panel, int64_t k, float* y) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
         c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#define TANDEM_LOAD(R)                                  \
  if constexpr (ACC && MR > R) {                        \
    c##R##0 = _mm256_load_ps(y + R * kPanel);           \
    c##R##1 = _mm256_load_ps(y + R * kPanel + 8);       \
  }
  TANDEM_LOAD(0) TANDEM_LOAD(1) TANDEM_LOAD(2) TANDEM_LOAD(3) TANDEM_LOAD(4) TANDEM_LOAD(5)
#undef TANDEM_LOAD
  const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx,
              *x4 = x + 4 * ldx, *x5 = x + 5 * ldx;
#define TANDEM_ROW(R)                                   \
  if constexpr (MR > R) {                               \
    const __m256 xv = _mm256_broadcast_ss(x##R + j);    \
    c##R##0 = _mm256_fmadd_ps(xv, w0, c##R##0);         \
    c##R##1 = _mm256_fmadd_ps(xv, w1, c##R##1);         \
  }
  for (int64_t j = 0; j < k; ++j) {
    const __m256 w0 = _mm256_load_ps(panel + j * kPanel);
    const __m256 w1 = _mm256_load_ps(panel + j * kPanel + 8);
    TANDEM_ROW(0) TANDEM_ROW(1) TANDEM_ROW(2) TANDEM_ROW(3) TANDEM_ROW(4) TANDEM_ROW(5)
  }
#undef TANDEM_ROW
#define TANDEM_STORE(R)                                 \
  if constexpr (MR > R) {                               \
    _mm256_store_ps(y + R * kPanel, c##R##0);           \
    _mm256_store_ps(y + R * kPanel + 8, c##R##1);       \
  }
  TANDEM_STORE(0) TANDEM_STORE(1) TANDEM_STORE(2) TANDEM_STORE(3) TANDEM_STORE(4) TANDEM_STORE(5)
#undef TANDEM_STORE
}

template <bool ACC>
void tile_rows(int64_t mr, const float* x, int64_t ldx, const float* panel, int64_t k, float* y) {
  switch (mr) {
    case 6: return tile<6, ACC>(x, ldx, panel, k, y);
    case 5: return tile<5, ACC>(x, ldx, panel, k, y);
    case 4: return tile<4, ACC>(x, ldx, panel, k, y);
    case 3: return tile<3, ACC>(x, ldx, panel, k, y);
    case 2: return tile<2, ACC>(x, ldx, panel, k, y);
    default: return tile<1, ACC>(x, ldx, panel, k, y);
  }
}

// Every row of x (ld k) against a chunk of a panel (`len` input positions from `k0`), into
// out [rows][16]: set by the first chunk, added to by the others. Tiles of as even a size
// as 6-row tiles allow (32 rows: 6,6,5,5,5,5, not 6,6,6,6,6,2: a 2-row tile has too few
// accumulators to hide the FMA latency).
void chunk_rows(const float* x, int64_t rows, int64_t k, int64_t k0, int64_t len,
                const float* panel, float* out) {
  const int64_t tiles = (rows + kTileRows - 1) / kTileRows;
  for (int64_t t = 0, r = 0; t < tiles; ++t) {
    const int64_t mr = (rows - r) / (tiles - t) + ((rows - r) % (tiles - t) != 0);
    if (k0 == 0)
      tile_rows<false>(mr, x + r * k, k, panel, len, out + r * kPanel);
    else
      tile_rows<true>(mr, x + r * k + k0, k, panel, len, out + r * kPanel);
    r += mr;
  }
}

// One chunk's blocks of a full panel (16 rows, row_bytes apart) into cache.
template <int64_t QT>
inline void prefetch_chunk(const uint8_t* blocks, int64_t row_bytes) {
  constexpr int64_t bytes = kChunk / kBlock * block_bytes<QT>();
  for (int64_t c = 0; c < kPanel; ++c)
    for (int64_t off = 0; off < bytes; off += 64)
      _mm_prefetch(reinterpret_cast<const char*>(blocks + c * row_bytes + off), _MM_HINT_T0);
}

template <typename T>
using Buffer = std::unique_ptr<T[], decltype(&std::free)>;

inline Buffer<float> aligned_floats(int64_t n) {
  return {static_cast<float*>(std::aligned_alloc(32, n * sizeof(float))), &std::free};
}

// A panel is expanded and used in chunks of kChunk input positions (16 x 128 floats: 8 KB,
// in L1 with the rows of x it meets); expanding all of k at once left it in L2, and the
// tiles waited on it.
template <int64_t QT>
void panels(const float* x, int64_t rows, int64_t k, const uint8_t* w, int64_t row_bytes,
            int64_t n_out, float* y) {
  const int64_t n_panels = (n_out + kPanel - 1) / kPanel;
  at::parallel_for(0, n_panels, 1, [&](int64_t begin, int64_t end) {
    Buffer<float> chunk = aligned_floats(kChunk * kPanel), out = aligned_floats(rows * kPanel);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n0 = p * kPanel, cols = std::min<int64_t>(kPanel, n_out - n0);
      for (int64_t k0 = 0; k0 < k; k0 += kChunk) {
        const int64_t len = std::min(kChunk, k - k0);
        const uint8_t* blocks = w + n0 * row_bytes + k0 / kBlock * block_bytes<QT>();
        // the next chunk's blocks (this panel's, or the next panel's first) are fetched
        // while this one computes: 16 rows far apart defeat the hardware prefetcher
        const uint8_t* next = k0 + kChunk < k ? blocks + kChunk / kBlock * block_bytes<QT>()
                                              : w + (n0 + kPanel) * row_bytes;
        if (next + kPanel * row_bytes <= w + n_out * row_bytes) prefetch_chunk<QT>(next, row_bytes);
        expand_panel<QT>(blocks, row_bytes, cols, len, chunk.get());
        chunk_rows(x, rows, k, k0, len, chunk.get(), out.get());
      }
      for (int64_t r = 0; r < rows; ++r)
        std::copy_n(out.get() + r * kPanel, cols, y + r * n_out + n0);
    }
  });
}

}  // namespace

void panel_linear(const float* x, int64_t rows, int64_t k, const uint8_t* w, int64_t row_bytes,
                  int64_t n_out, int64_t qtype, float* y) {
  if (qtype == kQ4_1)
    panels<kQ4_1>(x, rows, k, w, row_bytes, n_out, y);
  else
    panels<kQ8_0>(x, rows, k, w, row_bytes, n_out, y);
}
#endif  // __AVX2__ && __FMA__

}  // namespace tandem_quant
