// Linear layers straight from GGUF-quantized weights, registered as torch.ops.tandem.*:
//
//   quant_linear(x, qweight, qtype) -> y      x: [M, K] float32; qweight: [N, K / 32 * B]
//                                              uint8, the GGUF blocks of each output row;
//                                              y: [M, N] float32 = x @ dequant(qweight).T
//
// qtype is ggml's type id: 3 = Q4_1 (B = 20: fp16 d, fp16 m, 16 bytes; weight j of a block
// is d * (qs[j] & 15) + m, weight j + 16 is d * (qs[j] >> 4) + m), 8 = Q8_0 (B = 34: fp16
// d, 32 int8; weight = d * q).
//
// Why: a decode step at small batch is bound by reading the weights; a Q4_1 weight is 0.625
// bytes against float32's 4. Up to kFewRows rows (this file), each block is expanded to
// float32 in registers and used for up to 8 rows of x at once; past that, quant_panels.cpp
// expands a panel of columns once and runs register-blocked tiles of x against it. The
// dequantized values are exactly gguf-py's (quant_blocks.h), so the result differs from
// x @ W.T over the dequantized float32 W only in the order of the sums.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "quant_blocks.h"

namespace {

using namespace tandem_quant;

#if defined(__AVX2__) && defined(__FMA__)
// y[r, n] for rows r < MT of x and one output row n (its blocks at `wrow`).
template <int64_t QT, int MT>
inline void dot_rows(const float* x, int64_t ldx, const uint8_t* wrow, int64_t nblocks, float* y,
                     int64_t ldy) {
  // With few rows, one accumulator per row would chain every FMA of a block on the one
  // before (4 cycles each): A independent accumulators per row keep the FMA units busy.
  constexpr int A = MT >= 4 ? 1 : 4 / MT;
  __m256 acc[MT][A];
  for (int r = 0; r < MT; ++r)
    for (int a = 0; a < A; ++a) acc[r][a] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nblocks; ++b) {
    __m256 w[4];
    dequant_block<QT>(wrow + b * block_bytes<QT>(), w);
    const float* xb = x + b * kBlock;
    for (int r = 0; r < MT; ++r)
      for (int i = 0; i < 4; ++i)
        acc[r][i % A] = _mm256_fmadd_ps(w[i], _mm256_loadu_ps(xb + r * ldx + 8 * i), acc[r][i % A]);
  }
  for (int r = 0; r < MT; ++r) {
    for (int a = 1; a < A; ++a) acc[r][0] = _mm256_add_ps(acc[r][0], acc[r][a]);
    y[r * ldy] = hsum(acc[r][0]);
  }
}
#else
template <int64_t QT, int MT>
inline void dot_rows(const float* x, int64_t ldx, const uint8_t* wrow, int64_t nblocks, float* y,
                     int64_t ldy) {
  float acc[MT] = {};
  float w[kBlock];
  for (int64_t b = 0; b < nblocks; ++b) {
    dequant_block<QT>(wrow + b * block_bytes<QT>(), w);
    for (int r = 0; r < MT; ++r)
      for (int j = 0; j < kBlock; ++j) acc[r] += w[j] * x[r * ldx + b * kBlock + j];
  }
  for (int r = 0; r < MT; ++r) y[r * ldy] = acc[r];
}
#endif

// Rows of x in tiles of 8 (8 accumulators, 4 weight registers: within AVX2's 16).
template <int64_t QT>
void output_row(const float* x, int64_t rows, int64_t k, const uint8_t* wrow, float* y,
                int64_t n_out) {
  const int64_t nblocks = k / kBlock;
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8) dot_rows<QT, 8>(x + r * k, k, wrow, nblocks, y + r * n_out, n_out);
  const float* xr = x + r * k;
  float* yr = y + r * n_out;
  switch (rows - r) {
    case 7: return dot_rows<QT, 7>(xr, k, wrow, nblocks, yr, n_out);
    case 6: return dot_rows<QT, 6>(xr, k, wrow, nblocks, yr, n_out);
    case 5: return dot_rows<QT, 5>(xr, k, wrow, nblocks, yr, n_out);
    case 4: return dot_rows<QT, 4>(xr, k, wrow, nblocks, yr, n_out);
    case 3: return dot_rows<QT, 3>(xr, k, wrow, nblocks, yr, n_out);
    case 2: return dot_rows<QT, 2>(xr, k, wrow, nblocks, yr, n_out);
    case 1: return dot_rows<QT, 1>(xr, k, wrow, nblocks, yr, n_out);
    default: return;
  }
}

template <int64_t QT>
void quant_linear_impl(const torch::Tensor& x, const torch::Tensor& qw, torch::Tensor& y) {
  const int64_t rows = x.size(0), k = x.size(1), n_out = qw.size(0);
  const float* xp = x.data_ptr<float>();
  const uint8_t* wp = qw.data_ptr<uint8_t>();
  const int64_t row_bytes = qw.size(1);
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, n_out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      output_row<QT>(xp, rows, k, wp + n * row_bytes, yp + n, n_out);
  });
}

}  // namespace

torch::Tensor quant_linear(const torch::Tensor& x_in, const torch::Tensor& qweight,
                           int64_t qtype) {
  TORCH_CHECK(x_in.device().is_cpu() && qweight.device().is_cpu(), "quant_linear: CPU only");
  TORCH_CHECK(x_in.scalar_type() == torch::kFloat32, "quant_linear: x must be float32");
  TORCH_CHECK(qweight.scalar_type() == torch::kUInt8 && qweight.dim() == 2 &&
                  qweight.is_contiguous(),
              "quant_linear: qweight must be contiguous uint8 [out_features, row bytes]");
  TORCH_CHECK(qtype == kQ4_1 || qtype == kQ8_0, "quant_linear: qtype ", qtype,
              " is not one of Q4_1 (3) and Q8_0 (8)");
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) % kBlock == 0, "quant_linear: x must be [M, K]",
              " with K a multiple of 32");
  const int64_t bytes = qtype == kQ4_1 ? block_bytes<kQ4_1>() : block_bytes<kQ8_0>();
  TORCH_CHECK(qweight.size(1) == x_in.size(1) / kBlock * bytes, "quant_linear: qweight has ",
              qweight.size(1), " bytes a row, x's K=", x_in.size(1), " needs ",
              x_in.size(1) / kBlock * bytes);
  auto x = x_in.contiguous();
  auto y = torch::empty({x.size(0), qweight.size(0)}, x.options());
#if defined(__AVX2__) && defined(__FMA__)
  if (x.size(0) > kFewRows) {
    panel_linear(x.data_ptr<float>(), x.size(0), x.size(1), qweight.data_ptr<uint8_t>(),
                 qweight.size(1), qweight.size(0), qtype, y.data_ptr<float>());
    return y;
  }
#endif
  if (qtype == kQ4_1)
    quant_linear_impl<kQ4_1>(x, qweight, y);
  else
    quant_linear_impl<kQ8_0>(x, qweight, y);
  return y;
}

TORCH_LIBRARY_FRAGMENT(tandem, m) {
  m.def("quant_linear(Tensor x, Tensor qweight, int qtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(tandem, CPU, m) { m.impl("quant_linear", &quant_linear); }
