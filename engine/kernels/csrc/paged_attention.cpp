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
// A work item is one sequence with all its kv heads when the batch has enough sequences to
// keep every thread busy, else one (sequence, kv head), and where even those are too few (a
// batch of one), a run of one pair's blocks, the runs' softmax states merged after. An item
// walks its blocks in memory order (token by token, kv head by kv head), so the hardware
// prefetcher sees one stream and the next block is prefetched by hand; the query heads
// sharing a kv head are handled together, so every K/V row is read once; softmax is online,
// a block at a time. Nothing is gathered: K/V rows are read in place. Common head sizes are
// template parameters so the inner loops are fixed-length and fully vectorised (measured
// alone at batch 32, context 257, one thread: 3.5-4x faster than the per-(sequence, head)
// loop with a run-time size it replaced).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "paged_bf16.h"
#include "paged_common.h"
#include "paged_prefetch.h"

namespace {

using namespace tandem_paged;

template <int DIM>
inline float dot(const float* a, const float* b, int64_t dim) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < head_size<DIM>(dim); ++d) s += a[d] * b[d];
  return s;
}

// Scratch of one work item covering `nh` query heads.
struct Scratch {
  std::vector<float> buf;
  std::vector<uint16_t> qb;  // the bf16 walk's q: the heads' raw bf16 values, unscaled
  // the bf16 walk's chunk (sized by its first call): scores and their probabilities,
  // [nh][ld] each, and each block's first V row of a kv head
  std::vector<float> sc;
  std::vector<uint16_t> pb;
  std::vector<const uint16_t*> vrows;
  float *qf, *acc, *m, *l, *p, *kf;
  float scale = 1.f;
  Scratch(int64_t nh, int64_t dim, int64_t bs)
      : buf(2 * nh * dim + 2 * nh + nh * bs + dim), qb(nh * dim) {
    qf = buf.data();
    acc = qf + nh * dim;
    m = acc + nh * dim;
    l = m + nh;
    p = l + nh;
    kf = p + nh * bs;
  }
};

// The AVX-512 BF16 walk (paged_bf16.h) serves bf16 caches of head sizes it is built for.
template <typename T, int DIM>
constexpr bool bf16_walk() {
#ifdef TANDEM_PAGED_BF16
  return std::is_same_v<T, c10::BFloat16> && DIM > 0 && DIM % 32 == 0;
#else
  return false;
#endif
}

// Softmax of one block's scores for query head i, folded into the running max/sum/acc.
template <int DIM>
inline void online_softmax(float* pi, int64_t n, int64_t dim, float& m, float& l, float* a) {
  float bmax = m;
  for (int64_t t = 0; t < n; ++t) bmax = std::max(bmax, pi[t]);
  const float correction = std::exp(m - bmax);
#pragma omp simd
  for (int64_t d = 0; d < head_size<DIM>(dim); ++d) a[d] *= correction;
  float psum = 0.f;
#pragma omp simd reduction(+ : psum)
  for (int64_t t = 0; t < n; ++t) {
    pi[t] = std::exp(pi[t] - bmax);
    psum += pi[t];
  }
  m = bmax;
  l = l * correction + psum;
}

#ifdef TANDEM_PAGED_BF16
// attend_blocks for a bf16 cache, a chunk of blocks at a time (paged_bf16.h): the scores of
// every kv head's group of query heads, run by run (16 tokens of a block) as the blocks lie
// in memory; then each query head's softmax over the chunk; then p . V, a kv head at a time.
// The prefetch runs in the first pass and brings each block's K and V, so the second finds
// V in L2.
template <int DIM>
void attend_blocks_bf16(const Geometry& g, const uint16_t* kv, const int64_t* table,
                        int64_t len, int64_t blk0, int64_t blk1, int64_t h0, int64_t h1,
                        Scratch& s) {
  const BlockPrefetch ahead = prefetch_for(g, kv, table, blk1, h0, h1);
  ahead.begin(blk0);
  // a chunk: whole blocks, at least one; a scratch row: whole 16-lane vectors
  const int64_t per = std::max<int64_t>(1, kChunkTokens / g.bs), ld = (per * g.bs + 15) / 16 * 16;
  const int64_t nh = (h1 - h0) * g.group;
  s.sc.resize(nh * ld);
  s.pb.resize(nh * ld);
  s.vrows.resize(per);
  for (int64_t c0 = blk0; c0 < blk1; c0 += per) {
    const int64_t c1 = std::min(blk1, c0 + per), n = std::min(len, c1 * g.bs) - c0 * g.bs;
    for (int64_t blk = c0; blk < c1; ++blk) {
      const uint16_t* base = kv + table[blk] * g.block_stride;
      const int64_t nb = std::min(g.bs, len - blk * g.bs), runs = (nb + 15) / 16;
      for (int64_t t0 = 0; t0 < nb; t0 += 16)
        for (int64_t h = h0; h < h1; ++h) {
          ahead.slice(blk, t0 / 16 * (h1 - h0) + h - h0, runs * (h1 - h0));
          const int64_t j = (h - h0) * g.group;  // the kv head's first query head
          scores_run<DIM>(s.qb.data() + j * DIM, g.group, base + t0 * g.row + h * DIM, g.row,
                          std::min<int64_t>(16, nb - t0), s.scale,
                          s.sc.data() + j * ld + (blk - c0) * g.bs + t0, ld);
        }
    }
    for (int64_t i = 0; i < nh; ++i)
      softmax_chunk<DIM>(s.sc.data() + i * ld, n, s.m[i], s.l[i], s.acc + i * DIM,
                         s.pb.data() + i * ld);
    for (int64_t h = h0; h < h1; ++h) {
      for (int64_t blk = c0; blk < c1; ++blk)
        s.vrows[blk - c0] = kv + table[blk] * g.block_stride + g.half + h * DIM;
      const int64_t j = (h - h0) * g.group;
      values_heads<DIM>(g.group, s.pb.data() + j * ld, ld, s.vrows.data(), c1 - c0, g.bs, n,
                        g.row, s.acc + j * DIM);
    }
  }
}
#endif

// Blocks [blk0, blk1) of one sequence (block table `table`, context `len`), kv heads
// [h0, h1), folded into the running state of `s` (max m, sum l, unnormalised acc).
template <typename T, int DIM>
void attend_blocks(const Geometry& g, const T* kv, const int64_t* table, int64_t len,
                   int64_t blk0, int64_t blk1, int64_t h0, int64_t h1, Scratch& s) {
  const int64_t nh = (h1 - h0) * g.group, bs = g.bs, D = head_size<DIM>(g.dim);
#ifdef TANDEM_PAGED_BF16  // the walk exists only there (C++17 would look its name up anyway)
  if constexpr (bf16_walk<T, DIM>()) {
    attend_blocks_bf16<DIM>(g, reinterpret_cast<const uint16_t*>(kv), table, len, blk0, blk1,
                            h0, h1, s);
    return;
  }
#endif
  const BlockPrefetch ahead = prefetch_for(g, kv, table, blk1, h0, h1);
  ahead.begin(blk0);
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const T* base = kv + table[blk] * g.block_stride;
    const int64_t n = std::min(bs, len - blk * bs);
    ahead.slice(blk, 0, 2);
    for (int64_t t = 0; t < n; ++t)  // scores: each K row read once for its query heads
      for (int64_t h = h0; h < h1; ++h) {
        const float* k = row_as_float<T, DIM>(base + t * g.row + h * D, D, s.kf);
        const int64_t first = (h - h0) * g.group;
        for (int64_t j = first; j < first + g.group; ++j)
          s.p[j * bs + t] = dot<DIM>(s.qf + j * D, k, D);
      }
    for (int64_t i = 0; i < nh; ++i)
      online_softmax<DIM>(s.p + i * bs, n, D, s.m[i], s.l[i], s.acc + i * D);
    ahead.slice(blk, 1, 2);
    for (int64_t t = 0; t < n; ++t)  // values: each V row read once for its query heads
      for (int64_t h = h0; h < h1; ++h) {
        const float* v = row_as_float<T, DIM>(base + g.half + t * g.row + h * D, D, s.kf);
        const int64_t first = (h - h0) * g.group;
        for (int64_t j = first; j < first + g.group; ++j) {
          float* a = s.acc + j * D;
          const float pt = s.p[j * bs + t];
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) a[d] += pt * v[d];
        }
      }
  }
}

// The running state for `nh` query heads starting at q (scaled once, as float32; and as
// they are, for the bf16 walk).
template <typename T>
void start_state(const T* q, int64_t nh, int64_t dim, float scale, Scratch& s) {
  for (int64_t i = 0; i < nh * dim; ++i) s.qf[i] = to_float(q[i]) * scale;
  if constexpr (std::is_same_v<T, c10::BFloat16>)
    std::memcpy(s.qb.data(), q, nh * dim * sizeof(uint16_t));
  s.scale = scale;
  std::fill(s.acc, s.acc + nh * dim, 0.f);
  std::fill(s.m, s.m + nh, -std::numeric_limits<float>::infinity());
  std::fill(s.l, s.l + nh, 0.f);
}

template <typename T>
void write_out(const float* acc, const float* l, int64_t nh, int64_t dim, T* out) {
  for (int64_t i = 0; i < nh; ++i) {
    const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;  // len 0: a padding row, zeros
    for (int64_t d = 0; d < dim; ++d) from_float(acc[i * dim + d] * inv, out + i * dim + d);
  }
}

// Work items of whole sequences (or one kv head of one): each walks all its blocks.
template <typename T, int DIM>
void decode_whole(const Geometry& g, int64_t batch, int64_t per_item, const T* qp, const T* kvp,
                  const int64_t* tp, const int64_t* lp, float scale, T* op) {
  const int64_t splits = g.kv_heads / per_item, nh = per_item * g.group;
  at::parallel_for(0, batch * splits, 1, [&](int64_t begin, int64_t end) {
    Scratch s(nh, g.dim, g.bs);
    const auto blocks_of = [&](int64_t b) { return (lp[b] + g.bs - 1) / g.bs; };
    for (int64_t w = begin; w < end; ++w) {
      const int64_t b = w / splits, h0 = (w % splits) * per_item;
      if (w + 1 < end) {  // the next item's first blocks, while this one is walked
        const int64_t b1 = (w + 1) / splits, h1 = ((w + 1) % splits) * per_item;
        prefetch_for(g, kvp, tp + b1 * g.max_blocks, blocks_of(b1), h1, h1 + per_item).lead();
      }
      const int64_t first = (b * g.heads + h0 * g.group) * g.dim;
      start_state(qp + first, nh, g.dim, scale, s);
      const int64_t nblocks = blocks_of(b);
      attend_blocks<T, DIM>(g, kvp, tp + b * g.max_blocks, lp[b], 0, nblocks, h0, h0 + per_item, s);
      write_out(s.acc, s.l, nh, g.dim, op + first);
    }
  });
}

// Too few (sequence, kv head) pairs to keep the threads busy (a batch of one or two): each
// pair's blocks are split into `parts` runs attended in parallel, and the partial softmax
// states are merged (flash-decoding's split over the context).
template <typename T, int DIM>
void decode_split(const Geometry& g, int64_t batch, int64_t parts, const T* qp, const T* kvp,
                  const int64_t* tp, const int64_t* lp, float scale, T* op) {
  const int64_t dim = g.dim, group = g.group, state = group * (dim + 2);
  std::vector<float> partial(batch * g.kv_heads * parts * state);
  at::parallel_for(0, batch * g.kv_heads * parts, 1, [&](int64_t begin, int64_t end) {
    Scratch s(group, dim, g.bs);
    for (int64_t w = begin; w < end; ++w) {
      const int64_t part = w % parts, h = (w / parts) % g.kv_heads, b = w / parts / g.kv_heads;
      const int64_t nblocks = (lp[b] + g.bs - 1) / g.bs, per = (nblocks + parts - 1) / parts;
      start_state(qp + (b * g.heads + h * group) * dim, group, dim, scale, s);
      attend_blocks<T, DIM>(g, kvp, tp + b * g.max_blocks, lp[b], std::min(part * per, nblocks),
                            std::min((part + 1) * per, nblocks), h, h + 1, s);
      float* dst = partial.data() + w * state;  // [acc (group x dim), m (group), l (group)]
      std::copy(s.acc, s.acc + group * dim, dst);
      std::copy(s.m, s.m + group, dst + group * dim);
      std::copy(s.l, s.l + group, dst + group * (dim + 1));
    }
  });
  std::vector<float> acc(group * dim), l(group);
  for (int64_t bh = 0; bh < batch * g.kv_heads; ++bh) {  // merge: rescale to the largest max
    const float* first = partial.data() + bh * parts * state;
    for (int64_t j = 0; j < group; ++j) {
      float mmax = -std::numeric_limits<float>::infinity();
      for (int64_t p = 0; p < parts; ++p) mmax = std::max(mmax, first[p * state + group * dim + j]);
      l[j] = 0.f;
      std::fill(acc.begin() + j * dim, acc.begin() + (j + 1) * dim, 0.f);
      for (int64_t p = 0; p < parts; ++p) {
        const float* st = first + p * state;
        const float mp = st[group * dim + j];
        if (mp == -std::numeric_limits<float>::infinity()) continue;  // an empty run
        const float c = std::exp(mp - mmax);
        l[j] += st[group * (dim + 1) + j] * c;
        for (int64_t d = 0; d < dim; ++d) acc[j * dim + d] += st[j * dim + d] * c;
      }
    }
    const int64_t b = bh / g.kv_heads, h = bh % g.kv_heads;
    write_out(acc.data(), l.data(), group, dim, op + (b * g.heads + h * group) * dim);
  }
}

template <typename T, int DIM>
void paged_decode_impl(const torch::Tensor& q, const torch::Tensor& kv_cache, int64_t layer,
                       const torch::Tensor& tables, const torch::Tensor& lens, double scale,
                       torch::Tensor& out) {
  const Geometry g = geometry_of(q, kv_cache, tables);
  const int64_t batch = q.size(0), threads = at::get_num_threads();
  const T* qp = q.data_ptr<T>();
  const T* kvp = kv_cache.data_ptr<T>() + layer * 2 * g.half;
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  const float fscale = static_cast<float>(scale);
  const int64_t pairs = batch * g.kv_heads;
  if (batch >= 2 * threads)
    decode_whole<T, DIM>(g, batch, g.kv_heads, qp, kvp, tp, lp, fscale, op);
  else if (pairs >= 2 * threads || tables.size(1) < 2)
    decode_whole<T, DIM>(g, batch, 1, qp, kvp, tp, lp, fscale, op);
  else
    decode_split<T, DIM>(g, batch, std::min<int64_t>((2 * threads + pairs - 1) / pairs * 2,
                                                     tables.size(1)),
                         qp, kvp, tp, lp, fscale, op);
}

template <typename T>
void paged_decode_dim(const torch::Tensor& q, const torch::Tensor& kv_cache, int64_t layer,
                      const torch::Tensor& tables, const torch::Tensor& lens, double scale,
                      torch::Tensor& out) {
  with_head_size(q.size(2), [&](auto dim) {
    paged_decode_impl<T, decltype(dim)::value>(q, kv_cache, layer, tables, lens, scale, out);
  });
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
    paged_decode_dim<float>(q, kv_cache, layer, tables, lens, scale, out);
  else
    paged_decode_dim<c10::BFloat16>(q, kv_cache, layer, tables, lens, scale, out);
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
