// Paged decode attention on CPU: one query per sequence, K/V read in place from the
// block-major cache (no gather copy), one pass with an online softmax per block.
//
// kv_cache: [num_blocks, num_layers, 2, block_size, kv_heads, head_dim] float32, contiguous
// q, out:   [batch, heads, head_dim]; block_tables: [batch, max_blocks]; context_lens: [batch]
//
// Work is split over (sequence, kv head); the query heads that share a kv head are
// processed together so every K/V row is read from memory once.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

torch::Tensor paged_decode(torch::Tensor q, torch::Tensor kv_cache, int64_t layer,
                           torch::Tensor block_tables, torch::Tensor context_lens, double scale) {
  TORCH_CHECK(q.scalar_type() == torch::kFloat32 && kv_cache.scalar_type() == torch::kFloat32,
              "paged_decode: float32 only");
  TORCH_CHECK(kv_cache.is_contiguous() && block_tables.is_contiguous() && context_lens.is_contiguous(),
              "paged_decode: contiguous inputs expected");
  q = q.contiguous();
  const int64_t batch = q.size(0), heads = q.size(1), dim = q.size(2);
  const int64_t layers = kv_cache.size(1), bs = kv_cache.size(3), kv_heads = kv_cache.size(4);
  const int64_t group = heads / kv_heads, max_blocks = block_tables.size(1);
  const int64_t row = kv_heads * dim;                 // one token's K (or V) for all kv heads
  const int64_t half = bs * row;                      // K or V of one block, one layer
  const int64_t block_stride = layers * 2 * half;     // one block, all layers
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kvp = kv_cache.data_ptr<float>() + layer * 2 * half;
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const float fscale = static_cast<float>(scale);

  at::parallel_for(0, batch * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(group * dim), m(group), l(group), s(group * bs);
    for (int64_t w = begin; w < end; ++w) {
      const int64_t b = w / kv_heads, h = w % kv_heads;
      const float* qg = qp + (b * heads + h * group) * dim;
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.f);
      const int64_t len = lens[b];
      for (int64_t blk = 0; blk * bs < len; ++blk) {
        const float* base = kvp + tables[b * max_blocks + blk] * block_stride + h * dim;
        const int64_t n = std::min(bs, len - blk * bs);
        for (int64_t g = 0; g < group; ++g) {
          float bmax = m[g];
          for (int64_t t = 0; t < n; ++t) {
            const float* k = base + t * row;
            const float* qv = qg + g * dim;
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < dim; ++d) dot += qv[d] * k[d];
            s[g * bs + t] = dot * fscale;
            bmax = std::max(bmax, s[g * bs + t]);
          }
          const float correction = std::exp(m[g] - bmax);  // rescale what came before
          float* a = acc.data() + g * dim;
          for (int64_t d = 0; d < dim; ++d) a[d] *= correction;
          m[g] = bmax;
          float* p = s.data() + g * bs;
          float psum = 0.f;
#pragma omp simd reduction(+ : psum)
          for (int64_t t = 0; t < n; ++t) {  // vectorised exp (libmvec) under -ffast-math
            p[t] = std::exp(p[t] - bmax);
            psum += p[t];
          }
          l[g] = l[g] * correction + psum;
          for (int64_t t = 0; t < n; ++t) {
            const float* v = base + half + t * row;
            const float pt = p[t];
#pragma omp simd
            for (int64_t d = 0; d < dim; ++d) a[d] += pt * v[d];
          }
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        float* o = op + (b * heads + h * group + g) * dim;
        const float inv = 1.f / l[g];
        for (int64_t d = 0; d < dim; ++d) o[d] = acc[g * dim + d] * inv;
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("paged_decode", &paged_decode, "paged decode attention (CPU, float32)");
}
