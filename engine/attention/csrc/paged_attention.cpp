// Paged attention on CPU, registered as torch operators (torch.ops.tandem.*) so that a
// compiled decode step (torch.compile) calls them as opaque kernels inside its graph.
//
// kv_cache: [num_blocks, num_layers, 2, block_size, kv_heads, head_dim], contiguous,
//           float32 or bfloat16 (the model's dtype). Math is float32 in registers.
//
//   write_kv(kv_cache!, layer, k, v, slots)       k, v: [N, kv_heads, D]; slots: [N] int64,
//                                                  block * block_size + offset; < 0 = skip
//   paged_decode(q, kv_cache, layer, tables, lens, scale) -> out
//                                                  q, out: [B, heads, D]; tables: [B, W]
//                                                  int64 block ids; lens: [B] context
//                                                  lengths (0 = padding row: out is 0)
//
// Decode work is split over (sequence, kv head); the query heads sharing a kv head are
// handled together so every K/V row is read from memory once, with an online softmax per
// block. Nothing is gathered: K/V rows are read in place.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) {
  // bfloat16 is the high half of a float32: a shift, which the compiler vectorises.
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline void from_float(float x, float* dst) { *dst = x; }
inline void from_float(float x, c10::BFloat16* dst) { *dst = c10::BFloat16(x); }

// Load one row of `dim` values as float32 (a no-op copy avoided for float).
template <typename T>
inline const float* row_as_float(const T* src, int64_t dim, float* scratch) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) scratch[d] = to_float(src[d]);
    return scratch;
  }
}

struct Shape {
  int64_t batch, heads, dim, bs, kv_heads, group, max_blocks, row, half, block_stride;
};

Shape shape_of(const torch::Tensor& q, const torch::Tensor& kv_cache,
               const torch::Tensor& tables) {
  Shape s;
  s.batch = q.size(0);
  s.heads = q.size(1);
  s.dim = q.size(2);
  s.bs = kv_cache.size(3);
  s.kv_heads = kv_cache.size(4);
  s.group = s.heads / s.kv_heads;
  s.max_blocks = tables.size(1);
  s.row = s.kv_heads * s.dim;               // one token's K (or V), all kv heads
  s.half = s.bs * s.row;                    // K or V of one block, one layer
  s.block_stride = kv_cache.size(1) * 2 * s.half;  // one block, all layers
  return s;
}

template <typename T>
void decode_one(const Shape& s, const T* q, const T* kv, const int64_t* table, int64_t len,
                int64_t h, float scale, T* out, std::vector<float>& acc, std::vector<float>& m,
                std::vector<float>& l, std::vector<float>& p, std::vector<float>& qf,
                std::vector<float>& kf) {
  const int64_t group = s.group, dim = s.dim, bs = s.bs;
  for (int64_t g = 0; g < group; ++g)
    for (int64_t d = 0; d < dim; ++d) qf[g * dim + d] = to_float(q[g * dim + d]) * scale;
  std::fill(acc.begin(), acc.end(), 0.f);
  std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
  std::fill(l.begin(), l.end(), 0.f);
  for (int64_t blk = 0; blk * bs < len; ++blk) {
    const T* base = kv + table[blk] * s.block_stride + h * dim;
    const int64_t n = std::min(bs, len - blk * bs);
    for (int64_t t = 0; t < n; ++t) {  // scores: each K row read once for the whole group
      const float* k = row_as_float(base + t * s.row, dim, kf.data());
      for (int64_t g = 0; g < group; ++g) {
        const float* qg = qf.data() + g * dim;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t d = 0; d < dim; ++d) dot += qg[d] * k[d];
        p[g * bs + t] = dot;
      }
    }
    for (int64_t g = 0; g < group; ++g) {  // online softmax: rescale what came before
      float* pg = p.data() + g * bs;
      float bmax = m[g];
      for (int64_t t = 0; t < n; ++t) bmax = std::max(bmax, pg[t]);
      const float correction = std::exp(m[g] - bmax);
      float* a = acc.data() + g * dim;
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) a[d] *= correction;
      float psum = 0.f;
#pragma omp simd reduction(+ : psum)
      for (int64_t t = 0; t < n; ++t) {
        pg[t] = std::exp(pg[t] - bmax);
        psum += pg[t];
      }
      m[g] = bmax;
      l[g] = l[g] * correction + psum;
    }
    for (int64_t t = 0; t < n; ++t) {  // values: each V row read once for the whole group
      const float* v = row_as_float(base + s.half + t * s.row, dim, kf.data());
      for (int64_t g = 0; g < group; ++g) {
        float* a = acc.data() + g * dim;
        const float pt = p[g * bs + t];
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) a[d] += pt * v[d];
      }
    }
  }
  for (int64_t g = 0; g < group; ++g) {
    const float inv = l[g] > 0.f ? 1.f / l[g] : 0.f;  // len 0: a padding row, zeros
    for (int64_t d = 0; d < dim; ++d) from_float(acc[g * dim + d] * inv, out + g * dim + d);
  }
}

template <typename T>
void paged_decode_impl(const torch::Tensor& q, const torch::Tensor& kv_cache, int64_t layer,
                       const torch::Tensor& tables, const torch::Tensor& lens, double scale,
                       torch::Tensor& out) {
  const Shape s = shape_of(q, kv_cache, tables);
  const T* qp = q.data_ptr<T>();
  const T* kvp = kv_cache.data_ptr<T>() + layer * 2 * s.half;
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  const float fscale = static_cast<float>(scale);
  at::parallel_for(0, s.batch * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(s.group * s.dim), m(s.group), l(s.group), p(s.group * s.bs),
        qf(s.group * s.dim), kf(s.dim);
    for (int64_t w = begin; w < end; ++w) {
      const int64_t b = w / s.kv_heads, h = w % s.kv_heads;
      const int64_t first = (b * s.heads + h * s.group) * s.dim;
      decode_one<T>(s, qp + first, kvp, tp + b * s.max_blocks, lp[b], h, fscale, op + first,
                    acc, m, l, p, qf, kf);
    }
  });
}

void check(const torch::Tensor& kv_cache, const torch::Tensor& x, const char* what) {
  TORCH_CHECK(kv_cache.device().is_cpu() && x.device().is_cpu(), what, ": CPU tensors only");
  TORCH_CHECK(kv_cache.is_contiguous(), what, ": the KV cache must be contiguous");
  TORCH_CHECK(x.scalar_type() == kv_cache.scalar_type(), what,
              ": q/k/v and the KV cache must share a dtype");
  TORCH_CHECK(kv_cache.scalar_type() == torch::kFloat32 ||
                  kv_cache.scalar_type() == torch::kBFloat16,
              what, ": float32 or bfloat16 only");
}

}  // namespace

torch::Tensor paged_decode(const torch::Tensor& q_in, const torch::Tensor& kv_cache,
                           int64_t layer, const torch::Tensor& tables_in,
                           const torch::Tensor& lens_in, double scale) {
  check(kv_cache, q_in, "paged_decode");
  auto q = q_in.contiguous();
  auto tables = tables_in.to(torch::kLong).contiguous();
  auto lens = lens_in.to(torch::kLong).contiguous();
  auto out = torch::empty_like(q);
  if (q.scalar_type() == torch::kFloat32)
    paged_decode_impl<float>(q, kv_cache, layer, tables, lens, scale, out);
  else
    paged_decode_impl<c10::BFloat16>(q, kv_cache, layer, tables, lens, scale, out);
  return out;
}

void write_kv(torch::Tensor& kv_cache, int64_t layer, const torch::Tensor& k_in,
              const torch::Tensor& v_in, const torch::Tensor& slots_in) {
  check(kv_cache, k_in, "write_kv");
  auto k = k_in.contiguous();
  auto v = v_in.contiguous();
  auto slots = slots_in.to(torch::kLong).contiguous();
  const int64_t n = k.size(0), bs = kv_cache.size(3);
  const int64_t row = kv_cache.size(4) * kv_cache.size(5);
  const int64_t half = bs * row, block_stride = kv_cache.size(1) * 2 * half;
  const int64_t bytes = row * k.element_size();
  auto* base = static_cast<char*>(kv_cache.data_ptr());
  const auto* kp = static_cast<const char*>(k.data_ptr());
  const auto* vp = static_cast<const char*>(v.data_ptr());
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t es = kv_cache.element_size();
  for (int64_t i = 0; i < n; ++i) {
    if (sp[i] < 0) continue;  // a padding row of a captured batch size
    const int64_t off = (sp[i] / bs) * block_stride + layer * 2 * half + (sp[i] % bs) * row;
    std::memcpy(base + off * es, kp + i * bytes, bytes);
    std::memcpy(base + (off + half) * es, vp + i * bytes, bytes);
  }
}

TORCH_LIBRARY(tandem, m) {
  m.def("paged_decode(Tensor q, Tensor kv_cache, int layer, Tensor block_tables, "
        "Tensor context_lens, float scale) -> Tensor");
  m.def("write_kv(Tensor(a!) kv_cache, int layer, Tensor k, Tensor v, Tensor slots) -> ()");
}

TORCH_LIBRARY_IMPL(tandem, CPU, m) {
  m.impl("paged_decode", &paged_decode);
  m.impl("write_kv", &write_kv);
}
