// What the paged attention kernels (paged_attention.cpp: decode, paged_prefill.cpp:
// prefill chunks) share: the cache's element types read as float32, head sizes as template
// parameters, the cache's geometry, and the checks on their tensors.
//
// kv_cache: [num_blocks, num_layers, 2, block_size, kv_heads, head_dim], contiguous,
//           float32 or bfloat16 (the model's dtype). Math is float32 in registers.
#pragma once

#include <torch/extension.h>
#include <c10/util/BFloat16.h>

#include <cstring>
#include <type_traits>

namespace tandem_paged {

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) {
  // bfloat16 is the high half of a float32: a shift.
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline void from_float(float x, float* dst) { *dst = x; }
inline void from_float(float x, c10::BFloat16* dst) { *dst = c10::BFloat16(x); }

// DIM is the head size when it is one of the built sizes (loops of a fixed length, fully
// vectorised), or 0 for any other size, passed at run time as `dim`.
template <int DIM>
inline int64_t head_size(int64_t dim) {
  return DIM > 0 ? DIM : dim;
}

// One row of D values as float32: the row itself for float, a widened copy for bfloat16.
template <typename T, int DIM>
inline const float* row_as_float(const T* src, int64_t dim, float* scratch) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
    const auto* s = reinterpret_cast<const uint16_t*>(src);
    auto* d = reinterpret_cast<uint32_t*>(scratch);
#pragma omp simd
    for (int64_t i = 0; i < head_size<DIM>(dim); ++i) d[i] = static_cast<uint32_t>(s[i]) << 16;
    return scratch;
  }
}

// f(std::integral_constant<int, DIM>) with DIM = dim where it is a built head size (those
// of the model families we load), else DIM = 0 (run-time size).
template <typename F>
void with_head_size(int64_t dim, F&& f) {
  switch (dim) {
    case 64: return f(std::integral_constant<int, 64>{});
    case 80: return f(std::integral_constant<int, 80>{});
    case 96: return f(std::integral_constant<int, 96>{});
    case 128: return f(std::integral_constant<int, 128>{});
    case 256: return f(std::integral_constant<int, 256>{});
    default: return f(std::integral_constant<int, 0>{});
  }
}

// The cache's geometry as the kernels walk it. q: [N, heads, D]; kv_cache: [num_blocks,
// num_layers, 2, bs, kv_heads, D]; tables: [S, W] block ids.
struct Geometry {
  int64_t heads, kv_heads, group, dim, bs, row, half, block_stride, max_blocks;
};

inline Geometry geometry_of(const torch::Tensor& q, const torch::Tensor& kv_cache,
                            const torch::Tensor& tables) {
  Geometry g;
  g.heads = q.size(1);
  g.bs = kv_cache.size(3);
  g.kv_heads = kv_cache.size(4);
  g.group = g.heads / g.kv_heads;
  g.dim = q.size(2);
  g.row = g.kv_heads * g.dim;                      // one token's K (or V), all kv heads
  g.half = g.bs * g.row;                           // K or V of one block, one layer
  g.block_stride = kv_cache.size(1) * 2 * g.half;  // one block, all layers
  g.max_blocks = tables.size(1);
  return g;
}

inline void check(const torch::Tensor& kv_cache, const torch::Tensor& x, const char* what) {
  TORCH_CHECK(kv_cache.device().is_cpu() && x.device().is_cpu(), what, ": CPU tensors only");
  TORCH_CHECK(kv_cache.is_contiguous(), what, ": the KV cache must be contiguous");
  TORCH_CHECK(x.scalar_type() == kv_cache.scalar_type(), what,
              ": q/k/v and the KV cache must share a dtype");
  TORCH_CHECK(kv_cache.scalar_type() == torch::kFloat32 ||
                  kv_cache.scalar_type() == torch::kBFloat16,
              what, ": float32 or bfloat16 only");
}


}  // namespace tandem_paged
