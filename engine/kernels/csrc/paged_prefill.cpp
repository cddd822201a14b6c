// Attention of prefill chunks on CPU, reading K/V in place from the paged cache:
//
//   paged_prefill(q, kv_cache, layer, tables, starts, query_lens, context_lens, scale) -> out
//       q, out: [N, heads, D], the step's rows; only the listed sequences' rows of out are
//       written. tables: [S, W] int64 block ids; starts, query_lens, context_lens: [S] int64.
//       Sequence s's queries are rows starts[s] .. starts[s] + query_lens[s] - 1 of q, its
//       last query_lens[s] positions of context_lens[s] (their K/V already written to the
//       cache); query i sees positions <= context_lens[s] - query_lens[s] + i (causal).
//       D must be a multiple of 16.
//
// Why: one SDPA call per sequence, each behind a gather of the cached prefix's blocks
// (a copy of the whole context per layer per chunk), spent ~12% of a 1,024-token prefill
// step at ~44 GFLOP/s on two Zen 3 cores.
//
// A work item (paged_prefill.h) is one sequence's tile of up to kTile query positions for
// one kv head: all the query heads that share the kv head (the GQA group), group * kTile
// query vectors, walk the visible context kKeys positions at a time. Here, in float32, each
// step's keys are transposed to [D][kKeys]; scores = Q @ K^T and out += P @ V are both
// tile16 products (tile16.h); softmax is online per query vector. A bf16 cache on an
// AVX-512 BF16 CPU takes the same steps with vdpbf16ps products over a context packed once
// a call (paged_prefill_bf16.h).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "paged_common.h"
#include "paged_prefill.h"
#include "paged_prefill_bf16.h"
#include "tile16.h"

namespace {

using namespace tandem_paged;

#if defined(__AVX2__) && defined(__FMA__)
// Scratch of one thread: the item's queries, scores, running softmax state and output.
struct State {
  std::vector<float> buf;
  float *q, *kt, *v, *s, *m, *l, *acc;
  State(int64_t nq, int64_t dim)
      : buf(nq * dim + dim * kKeys + kKeys * dim + nq * kKeys + 2 * nq + nq * dim) {
    q = buf.data();
    kt = q + nq * dim;     // [dim][kKeys] the step's keys, transposed
    v = kt + dim * kKeys;  // [kKeys][dim] the step's values
    s = v + kKeys * dim;   // [nq][kKeys] scores, then probabilities
    m = s + nq * kKeys;
    l = m + nq;
    acc = l + nq;  // [nq][dim]
  }
};

// Positions [p0, p0 + n) of kv head h: keys transposed into st.kt, values into st.v, as
// float32; keys past n are zero (their scores are masked; their values are never read).
template <typename T, int DIM>
void load_keys(const Geometry& g, const T* kv, const int64_t* table, int64_t p0, int64_t n,
               int64_t h, State& st) {
  const int64_t D = head_size<DIM>(g.dim);
  if (n < kKeys) std::fill(st.kt, st.kt + D * kKeys, 0.f);
  for (int64_t t = 0; t < n; ++t) {  // values: row by row, as float32
    const T* v = kv_row(g, kv, table, p0 + t, h) + g.half;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) st.v[t * D + d] = to_float(v[d]);
  }
  int64_t t = 0;
  if constexpr (std::is_same_v<T, float>) {  // keys: 8x8 squares transposed in registers
    for (; t + 8 <= n; t += 8)
      for (int64_t d = 0; d < D; d += 8) {
        __m256 sq[8];
        for (int j = 0; j < 8; ++j) sq[j] = _mm256_loadu_ps(kv_row(g, kv, table, p0 + t + j, h) + d);
        tandem_tile::transpose8(sq);
        for (int j = 0; j < 8; ++j) _mm256_storeu_ps(st.kt + (d + j) * kKeys + t, sq[j]);
      }
  }
  for (; t < n; ++t) {  // the rest (and bfloat16) one at a time
    const T* k = kv_row(g, kv, table, p0 + t, h);
    for (int64_t d = 0; d < D; ++d) st.kt[d * kKeys + t] = to_float(k[d]);
  }
}

// Scores of query vector i (query position `pos`) at positions p0.. masked past pos, then
// folded into its running max and sum: scores become probabilities, acc is rescaled.
// exp never sees a masked score or an argument below kMinExp: libm's expf takes a slow
// path (errno, scalar fallback from the vector form) for results that underflow, and that
// had cost a quarter of the kernel's time.
template <int DIM>
void softmax_step(State& st, int64_t i, int64_t pos, int64_t p0, int64_t n, int64_t dim) {
  constexpr float kMinExp = -80.f;  // exp(-80) ~ 2e-35: still a normal float
  float* si = st.s + i * kKeys;
  const int64_t visible = std::min(n, pos - p0 + 1);  // >= 1: p0 <= pos for every step
  float bmax = st.m[i];
  for (int64_t t = 0; t < visible; ++t) bmax = std::max(bmax, si[t]);
  const float correction = st.m[i] == kNegInf ? 0.f : std::exp(std::max(st.m[i] - bmax, kMinExp));
  float* a = st.acc + i * head_size<DIM>(dim);
#pragma omp simd
  for (int64_t d = 0; d < head_size<DIM>(dim); ++d) a[d] *= correction;
  float psum = 0.f;
#pragma omp simd reduction(+ : psum)
  for (int64_t t = 0; t < visible; ++t) {
    si[t] = std::exp(std::max(si[t] - bmax, kMinExp));
    psum += si[t];
  }
  std::fill(si + visible, si + kKeys, 0.f);
  st.m[i] = bmax;
  st.l[i] = st.l[i] * correction + psum;
}

// One item: query positions [first_query, first_query + rows) of a sequence, kv head h.
// Query vector i is position first_query + i / group, query head h * group + i % group.
template <typename T, int DIM>
void attend_item(const Geometry& g, const Item& it, const T* qp, const T* kv, const int64_t* table,
                 int64_t start, int64_t query_len, int64_t context_len, float scale, T* op,
                 State& st) {
  const int64_t D = head_size<DIM>(g.dim), group = g.group;
  const int64_t rows = std::min(kTile, query_len - it.first_query), nq = rows * group;
  const int64_t offset = context_len - query_len;  // positions before the chunk
  for (int64_t i = 0; i < nq; ++i) {
    const T* q = qp + ((start + it.first_query + i / group) * g.heads + it.kv_head * group +
                       i % group) * D;
    for (int64_t d = 0; d < D; ++d) st.q[i * D + d] = to_float(q[d]) * scale;
  }
  std::fill(st.m, st.m + nq, kNegInf);
  std::fill(st.l, st.l + nq, 0.f);
  std::fill(st.acc, st.acc + nq * D, 0.f);
  const int64_t end = offset + it.first_query + rows;  // positions the last row sees
  for (int64_t p0 = 0; p0 < end; p0 += kKeys) {
    const int64_t n = std::min(kKeys, end - p0);
    load_keys<T, DIM>(g, kv, table, p0, n, it.kv_head, st);
    // only query vectors whose position reaches p0 take part (all but the diagonal's)
    const int64_t from = std::max<int64_t>(0, p0 - offset - it.first_query) * group;
    for (int64_t c = 0; c < n; c += 16)  // scores[:, c:c+16] = Q @ K^T[:, c:c+16]
      tandem_tile::rows16<false>(nq - from, st.q + from * D, D, st.kt + c, kKeys, D,
                                 st.s + from * kKeys + c, kKeys);
    for (int64_t i = from; i < nq; ++i)
      softmax_step<DIM>(st, i, offset + it.first_query + i / group, p0, n, D);
    for (int64_t c = 0; c < D; c += 16)  // out[:, c:c+16] += P[:, :n] @ V[:n, c:c+16]
      tandem_tile::rows16<true>(nq - from, st.s + from * kKeys, kKeys, st.v + c, D, n,
                                st.acc + from * D + c, D);
  }
  for (int64_t i = 0; i < nq; ++i) {
    T* o = op + ((start + it.first_query + i / group) * g.heads + it.kv_head * group +
                 i % group) * D;
    const float inv = 1.f / st.l[i];
    for (int64_t d = 0; d < D; ++d) from_float(st.acc[i * D + d] * inv, o + d);
  }
}

template <typename T, int DIM>
void prefill_impl(const torch::Tensor& q, const torch::Tensor& kv_cache, int64_t layer,
                  const torch::Tensor& tables, const torch::Tensor& starts,
                  const torch::Tensor& query_lens, const torch::Tensor& context_lens,
                  float scale, torch::Tensor& out) {
  const Geometry g = geometry_of(q, kv_cache, tables);
  const int64_t seqs = starts.size(0);
  const int64_t* sp = starts.data_ptr<int64_t>();
  const int64_t* qlp = query_lens.data_ptr<int64_t>();
  const int64_t* clp = context_lens.data_ptr<int64_t>();
  const T* qp = q.data_ptr<T>();
  const T* kv = kv_cache.data_ptr<T>() + layer * 2 * g.half;
  const int64_t* tp = tables.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
#ifdef TANDEM_PAGED_BF16
  if constexpr (std::is_same_v<T, c10::BFloat16> && DIM > 0 && DIM % 64 == 0) {
    auto bits = [](const c10::BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); };
    return prefill_bf16<DIM>(g, bits(qp), bits(kv), tp, seqs, sp, qlp, clp, scale,
                             reinterpret_cast<uint16_t*>(op));
  }
#endif
  for_items(
      make_items(g, seqs, qlp), [&] { return State(kTile * g.group, g.dim); },
      [&](const Item& it, State& st) {
        attend_item<T, DIM>(g, it, qp, kv, tp + it.seq * g.max_blocks, sp[it.seq], qlp[it.seq],
                            clp[it.seq], scale, op, st);
      });
}
#endif  // __AVX2__ && __FMA__

// Every sequence's rows inside q, its context inside its block table row: a bad call is an
// error, not a read out of bounds.
void check_sequences(const torch::Tensor& q, const torch::Tensor& kv_cache,
                     const torch::Tensor& tables, const torch::Tensor& starts,
                     const torch::Tensor& query_lens, const torch::Tensor& context_lens) {
  const int64_t n = starts.size(0), bs = kv_cache.size(3);
  TORCH_CHECK(q.size(1) % kv_cache.size(4) == 0, "paged_prefill: ", q.size(1),
              " query heads do not share ", kv_cache.size(4), " kv heads evenly");
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) == n && query_lens.size(0) == n &&
                  context_lens.size(0) == n,
              "paged_prefill: block_tables [S, W], starts, query_lens, context_lens [S] disagree");
  const int64_t *sp = starts.data_ptr<int64_t>(), *qlp = query_lens.data_ptr<int64_t>(),
                *clp = context_lens.data_ptr<int64_t>();
  for (int64_t s = 0; s < n; ++s) {
    TORCH_CHECK(qlp[s] >= 1 && sp[s] >= 0 && sp[s] + qlp[s] <= q.size(0),
                "paged_prefill: sequence ", s, "'s rows [", sp[s], ", ", sp[s] + qlp[s],
                ") are not inside q's ", q.size(0));
    TORCH_CHECK(clp[s] >= qlp[s] && (clp[s] + bs - 1) / bs <= tables.size(1),
                "paged_prefill: sequence ", s, "'s context of ", clp[s],
                " does not hold its queries or its block table");
  }
}

}  // namespace

torch::Tensor paged_prefill(const torch::Tensor& q_in, const torch::Tensor& kv_cache,
                            int64_t layer, const torch::Tensor& tables_in,
                            const torch::Tensor& starts_in, const torch::Tensor& query_lens_in,
                            const torch::Tensor& context_lens_in, double scale) {
  check(kv_cache, q_in, "paged_prefill");
  TORCH_CHECK(q_in.dim() == 3 && q_in.size(2) % 16 == 0,
              "paged_prefill: q must be [N, heads, D] with D a multiple of 16");
  auto q = q_in.contiguous();
  auto tables = tables_in.to(torch::kLong).contiguous();
  auto starts = starts_in.to(torch::kLong).contiguous();
  auto query_lens = query_lens_in.to(torch::kLong).contiguous();
  auto context_lens = context_lens_in.to(torch::kLong).contiguous();
  check_sequences(q, kv_cache, tables, starts, query_lens, context_lens);
  auto out = torch::empty_like(q);
#if defined(__AVX2__) && defined(__FMA__)
  with_head_size(q.size(2), [&](auto dim) {
    constexpr int DIM = decltype(dim)::value;
    if (q.scalar_type() == torch::kFloat32)
      prefill_impl<float, DIM>(q, kv_cache, layer, tables, starts, query_lens, context_lens,
                               static_cast<float>(scale), out);
    else
      prefill_impl<c10::BFloat16, DIM>(q, kv_cache, layer, tables, starts, query_lens,
                                       context_lens, static_cast<float>(scale), out);
  });
#else
  TORCH_CHECK(false, "paged_prefill: built without AVX2 and FMA");
#endif
  return out;
}

TORCH_LIBRARY_FRAGMENT(tandem, m) {
  m.def("paged_prefill(Tensor q, Tensor kv_cache, int layer, Tensor block_tables, "
        "Tensor starts, Tensor query_lens, Tensor context_lens, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(tandem, CPU, m) { m.impl("paged_prefill", &paged_prefill); }
