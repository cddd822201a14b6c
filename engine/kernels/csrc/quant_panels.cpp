// y = x @ dequant(w).T from GGUF blocks when x has many rows (a decode step's batch, a
// prefill chunk): the path quant_linear takes past kFewRows rows.
//
// Why a second path: quant_linear's row path expands each block again for every 8 rows of x
// and feeds one FMA per load of x, so at 32 rows it ran at ~40 GFLOP/s on two Zen 3 cores,
// slower than oneDNN on float32 weights (~50), both far from the ~180 the FMA units allow.
// Here the output's columns go in panels of 16: a panel's blocks are expanded once into a
// small buffer laid out [k][16] (the 16 columns' weights for one input position side by
// side, in L1), and tiles of up to 6 rows of x run against it (tile16.h). The
// buffer holds exactly gguf-py's values, so, as on the row path, only the order of the sums
// differs from a float32 GEMM over the dequantized weights.
#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>

#include "quant_blocks.h"
#include "tile16.h"

namespace tandem_quant {

#if defined(__AVX2__) && defined(__FMA__)
namespace {

constexpr int64_t kPanel = 16;  // output columns per panel: tile16's two registers
constexpr int64_t kChunk = 128;  // input positions expanded at a time (a multiple of 32)

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
        tandem_tile::transpose8(sq[i]);
        float* dst = buf + (b * kBlock + i * 8) * kPanel + half;
        for (int j = 0; j < 8; ++j) _mm256_store_ps(dst + j * kPanel, sq[i][j]);
      }
    }
  }
}

// Every row of x (ld k) against a chunk of a panel (`len` input positions from `k0`), into
// out [rows][16]: set by the first chunk, added to by the others.
void chunk_rows(const float* x, int64_t rows, int64_t k, int64_t k0, int64_t len,
                const float* panel, float* out) {
  if (k0 == 0)
    tandem_tile::rows16<false>(rows, x, k, panel, kPanel, len, out, kPanel);
  else
    tandem_tile::rows16<true>(rows, x + k0, k, panel, kPanel, len, out, kPanel);
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
