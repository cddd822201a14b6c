// bfloat16 GEMMs for a decode batch's rows (a few to a few dozen), on CPUs with AVX-512
// BF16, registered as torch operators:
//
//   pack_bf16_panels(w) -> packed        w: [N, K] bf16, N % 16 == 0, K even; packed has
//                                        w's shape and bytes in the panel layout below
//   bf16_panel_linear(x, packed, prefetch) -> y
//                                        x: [M, K] bf16; y = x @ w.T: [M, N] bf16
//
// Why not oneDNN: at 16-32 rows its bf16 GEMMs on packed weights reach ~300-470 GFLOP/s
// over a decode step's weights on a 2-core Zen 5 EPYC, where the machine's bf16 peak is
// ~900; this kernel, 1.2-1.3x that (docs/benchmarks.md).
//
// Layout: the weight's rows in panels of 48 (the last may be 16 or 32 wide); a panel
// holds, for each pair of k, its rows' two values side by side:
//
//   panel p: [K/2][48][2]   element (k, n) at ((k/2) * 48 + n) * 2 + k % 2
//
// so one 64-byte load is 16 outputs' (k, k+1) pairs: the operand vdpbf16ps takes against
// a broadcast of one input row's (k, k+1). A tile of 8 rows x 48 outputs keeps its 24
// float32 sums in registers over the whole of K; a panel's 8-row tiles walk it in turn
// (it stays in L2), and with `prefetch`, while the first walks it the next panel is
// prefetched by hand. Whether that pays is the machine's to say (engine/model/panels.py
// measures both at start-up): AMD CPUs take every prefetch hint into L1, and on a 2-core
// Zen 4 EPYC the hand prefetch made a step's GEMMs 1.3-1.5x slower at 8-32 rows than the
// hardware's prefetchers alone. Sums are float32, rounded once to bf16 at the end (round
// to nearest even, as oneDNN rounds).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define TANDEM_BF16_PANELS 1
#endif

namespace {

constexpr int64_t kPanel = 48;

void check_weight(const torch::Tensor& w, const char* op) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == torch::kBFloat16 && w.device().is_cpu(),
              op, ": expects a 2-D bfloat16 CPU weight");
  TORCH_CHECK(w.size(0) % 16 == 0 && w.size(1) % 2 == 0, op,
              ": needs rows in multiples of 16 and an even row length, got ", w.sizes());
}

torch::Tensor pack_bf16_panels(const torch::Tensor& w_in) {
  check_weight(w_in, "pack_bf16_panels");
  const auto w = w_in.contiguous();
  const int64_t N = w.size(0), K = w.size(1);
  auto out = torch::empty_like(w);
  const auto* src = reinterpret_cast<const uint16_t*>(w.data_ptr());
  auto* dst = reinterpret_cast<uint16_t*>(out.data_ptr());
  for (int64_t n0 = 0; n0 < N; n0 += kPanel) {
    const int64_t nb = std::min(kPanel, N - n0);
    uint16_t* p = dst + n0 * K;
    for (int64_t k = 0; k < K; k += 2)
      for (int64_t j = 0; j < nb; ++j) {
        p[((k / 2) * nb + j) * 2] = src[(n0 + j) * K + k];
        p[((k / 2) * nb + j) * 2 + 1] = src[(n0 + j) * K + k + 1];
      }
  }
  return out;
}

#ifdef TANDEM_BF16_PANELS

inline void prefetch_l2(const char* p) { asm volatile("prefetcht1 %0" : : "m"(*p)); }

// MR rows of x (a, `lda` apart) times one panel of NV x 16 outputs (b), over K, into c
// (bf16, `ldc` apart). With PREFETCH, the panel after this one (`next`, as wide) is
// brought into L2 alongside, one line per 64 bytes of this panel read.
template <int NV, int MR, bool PREFETCH>
inline void tile(const uint16_t* a, int64_t lda, const uint16_t* b, int64_t K, uint16_t* c,
                 int64_t ldc, const char* next) {
  __m512 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 2) {
    const uint16_t* bk = b + k * NV * 16;  // (k/2) * NV*16 pairs of 2
    if constexpr (PREFETCH)
      for (int v = 0; v < NV; ++v) prefetch_l2(next + (k * NV * 16 + v * 32) * 2);
    __m512bh bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(bk + v * 32);
    for (int i = 0; i < MR; ++i) {
      int32_t pair;
      std::memcpy(&pair, a + i * lda + k, sizeof pair);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, bv[v]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + i * ldc + v * 16),
                          (__m256i)_mm512_cvtneps_pbh(acc[i][v]));
}

template <int NV, int MR>
inline void tile_rows(const uint16_t* a, int64_t K, const uint16_t* b, uint16_t* c, int64_t ldc,
                      const char* next) {
  if (next)
    tile<NV, MR, true>(a, K, b, K, c, ldc, next);
  else
    tile<NV, MR, false>(a, K, b, K, c, ldc, nullptr);
}

// All M rows of x against one panel; `next` (or null) is prefetched during the first tile.
template <int NV>
void panel(const uint16_t* a, int64_t M, int64_t K, const uint16_t* b, uint16_t* c, int64_t ldc,
           const char* next) {
  int64_t m = 0;
  for (; m + 8 <= M; m += 8, next = nullptr) tile_rows<NV, 8>(a + m * K, K, b, c + m * ldc, ldc, next);
  a += m * K, c += m * ldc;
  switch (M - m) {
    case 7: tile_rows<NV, 7>(a, K, b, c, ldc, next); break;
    case 6: tile_rows<NV, 6>(a, K, b, c, ldc, next); break;
    case 5: tile_rows<NV, 5>(a, K, b, c, ldc, next); break;
    case 4: tile_rows<NV, 4>(a, K, b, c, ldc, next); break;
    case 3: tile_rows<NV, 3>(a, K, b, c, ldc, next); break;
    case 2: tile_rows<NV, 2>(a, K, b, c, ldc, next); break;
    case 1: tile_rows<NV, 1>(a, K, b, c, ldc, next); break;
    default: break;
  }
}

void panel_gemm(const uint16_t* a, int64_t M, int64_t K, const uint16_t* b, int64_t N,
                uint16_t* c, bool prefetch) {
  const int64_t panels = (N + kPanel - 1) / kPanel;
  // each thread a contiguous run of panels: one stream of weight memory
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * kPanel, nb = std::min(kPanel, N - n0);
      const uint16_t* bp = b + n0 * K;
      const bool full_next = prefetch && p + 1 < p1 && n0 + 2 * kPanel <= N;
      const char* next = full_next ? reinterpret_cast<const char*>(bp + kPanel * K) : nullptr;
      if (nb == kPanel)
        panel<3>(a, M, K, bp, c + n0, N, next);
      else if (nb == 32)
        panel<2>(a, M, K, bp, c + n0, N, nullptr);
      else
        panel<1>(a, M, K, bp, c + n0, N, nullptr);
    }
  });
}

#endif

torch::Tensor bf16_panel_linear(const torch::Tensor& x_in, const torch::Tensor& packed,
                                bool prefetch) {
  check_weight(packed, "bf16_panel_linear");
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == torch::kBFloat16 &&
                  x_in.size(1) == packed.size(1),
              "bf16_panel_linear: expects x [M, ", packed.size(1), "] bfloat16, got ",
              x_in.sizes(), " ", x_in.scalar_type());
#ifdef TANDEM_BF16_PANELS
  const auto x = x_in.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = packed.size(0);
  auto y = torch::empty({M, N}, x.options());
  panel_gemm(reinterpret_cast<const uint16_t*>(x.data_ptr()), M, K,
             reinterpret_cast<const uint16_t*>(packed.data_ptr()), N,
             reinterpret_cast<uint16_t*>(y.data_ptr()), prefetch);
  return y;
#else
  TORCH_CHECK(false, "bf16_panel_linear: built without AVX-512 BF16 (this CPU lacks it)");
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tandem, m) {
  m.def("pack_bf16_panels(Tensor weight) -> Tensor");
  m.def("bf16_panel_linear(Tensor x, Tensor packed, bool prefetch=True) -> Tensor");
}

TORCH_LIBRARY_IMPL(tandem, CPU, m) {
  m.impl("pack_bf16_panels", &pack_bf16_panels);
  m.impl("bf16_panel_linear", &bf16_panel_linear);
}
