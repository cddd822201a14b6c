// The prefill kernel (paged_prefill.cpp) for a bfloat16 cache on CPUs with AVX-512 BF16:
// vdpbf16ps multiplies two bf16 pairs and adds both products to a float32 lane, 32
// multiply-adds an instruction where the float32 tiles (tile16.h) do 8.
//
//   scores:  S[i][t] = scale * q_i . k_t      q as pairs (q[2p], q[2p+1]), broadcast;
//                                             keys pair-transposed: kp[p][t] = (k_t[2p], k_t[2p+1])
//   values:  acc[i][d] += sum_t P[i][t] v_t[d] P as bf16 pairs (P[i][2u], P[i][2u+1]), broadcast;
//                                             values pair-interleaved: vp[u][d] = (v_2u[d], v_2u+1[d])
//
// A pair is one 32-bit value, low half first. Probabilities enter the product in bf16 (as
// in torch's CPU flash attention), their sums stay float32. Register tiles: 4 query
// vectors x 64 keys (scores) or x 64 dims (values), 16 accumulators.
//
// Two passes a call: every (sequence, kv head)'s context is packed into those operands once,
// 64 keys a chunk, then the items walk the packed chunks. Packing inside each item (as the
// float32 path loads its tiles) re-packed a key once for every query tile after it, 128
// times in a 2,048-token prompt. With that and the softmax in AVX-512 (it had been a
// scalar max and libm's vector expf), 30 layers of 4 x 256 tokens on 2 Zen 4 cores went
// 53-58 -> 43 ms, of 2,048 tokens 659-719 -> 496-500 ms (docs/benchmarks.md).
#pragma once

#include "paged_bf16.h"
#include "paged_prefill.h"

#ifdef TANDEM_PAGED_BF16
#include <memory>

namespace tandem_paged {

// R query vectors (q: R rows of DIM/2 pairs) against 64 keys.
template <int DIM, int R>
inline void scores_rows(const uint32_t* q, const uint32_t* kp, float scale, float* s) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int p = 0; p < DIM / 2; ++p) {
    __m512bh k[4];
    for (int c = 0; c < 4; ++c) k[c] = (__m512bh)_mm512_loadu_si512(kp + p * kKeys + 16 * c);
    for (int r = 0; r < R; ++r) {
      const __m512bh qq = (__m512bh)_mm512_set1_epi32(static_cast<int>(q[r * (DIM / 2) + p]));
      for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], qq, k[c]);
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c)
      _mm512_storeu_ps(s + r * kKeys + 16 * c, _mm512_mul_ps(acc[r][c], sc));
}

// acc[R rows][64 dims from d0] = acc * corr (a row's rescale to its new max) + P (pairs
// pp: R rows of 32) @ V (vp rows of DIM pairs).
template <int DIM, int R>
inline void values_rows(const uint32_t* pp, int64_t pairs, const uint32_t* vp, int64_t d0,
                        const float* corr, float* acc) {
  __m512 a[R][4];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c)
      a[r][c] = _mm512_mul_ps(_mm512_loadu_ps(acc + r * DIM + d0 + 16 * c), _mm512_set1_ps(corr[r]));
  for (int64_t u = 0; u < pairs; ++u) {
    __m512bh v[4];
    for (int c = 0; c < 4; ++c) v[c] = (__m512bh)_mm512_loadu_si512(vp + u * DIM + d0 + 16 * c);
    for (int r = 0; r < R; ++r) {
      const __m512bh p = (__m512bh)_mm512_set1_epi32(static_cast<int>(pp[r * (kKeys / 2) + u]));
      for (int c = 0; c < 4; ++c) a[r][c] = _mm512_dpbf16_ps(a[r][c], v[c], p);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(acc + r * DIM + d0 + 16 * c, a[r][c]);
}

// Every (sequence, kv head)'s context as the products' operands, kChunk words a 64-key chunk:
//   kp [DIM/2][64]   the keys, pair-transposed, zero past the context
//   vp [32][DIM]     the values, pair-interleaved (an odd context's last pair: zero above)
// A sequence's chunks: kv head 0's, then kv head 1's, ...
template <int DIM>
struct PackedContext {
  static constexpr int64_t kChunk = DIM / 2 * kKeys + kKeys / 2 * DIM;
  std::vector<int64_t> first, chunks;  // per sequence: its first chunk, its chunks a kv head
  std::unique_ptr<uint32_t[]> words;   // uninitialised: a vp pair past the context is never read

  const uint32_t* kp(int64_t s, int64_t h, int64_t c) const {
    return words.get() + (first[s] + h * chunks[s] + c) * kChunk;
  }
};

// Positions [p0, p0 + n) of kv head h, n <= 64, into one chunk's kp and vp. Past n: zeros,
// not the block's stale rows, so that a masked score's zero probability never meets a NaN.
template <int DIM>
void pack_chunk(const Geometry& g, const uint16_t* kv, const int64_t* table, int64_t p0, int64_t n,
                int64_t h, uint32_t* kp) {
  uint32_t* vp = kp + DIM / 2 * kKeys;
  for (int64_t t = 0; t < kKeys; ++t) {
    const auto* k = t < n ? reinterpret_cast<const uint32_t*>(kv_row(g, kv, table, p0 + t, h))
                          : nullptr;
    for (int64_t p = 0; p < DIM / 2; ++p) kp[p * kKeys + t] = k ? k[p] : 0u;
  }
  for (int64_t u = 0; u < (n + 1) / 2; ++u) {
    const uint16_t* v0 = kv_row(g, kv, table, p0 + 2 * u, h) + g.half;
    const uint16_t* v1 = 2 * u + 1 < n ? kv_row(g, kv, table, p0 + 2 * u + 1, h) + g.half : nullptr;
    uint32_t* out = vp + u * DIM;
#pragma omp simd
    for (int64_t d = 0; d < DIM; ++d) out[d] = uint32_t{v0[d]} | (v1 ? uint32_t{v1[d]} << 16 : 0u);
  }
}

template <int DIM>
PackedContext<DIM> pack_context(const Geometry& g, const uint16_t* kv, const int64_t* tables,
                                int64_t seqs, const int64_t* context_lens) {
  PackedContext<DIM> ctx;
  int64_t total = 0;
  for (int64_t s = 0; s < seqs; ++s) {
    ctx.first.push_back(total);
    ctx.chunks.push_back((context_lens[s] + kKeys - 1) / kKeys);
    total += g.kv_heads * ctx.chunks.back();
  }
  ctx.words.reset(new uint32_t[total * PackedContext<DIM>::kChunk]);
  at::parallel_for(0, total, 1, [&](int64_t begin, int64_t end) {
    int64_t s = std::upper_bound(ctx.first.begin(), ctx.first.end(), begin) - ctx.first.begin() - 1;
    for (int64_t w = begin; w < end; ++w) {
      while (s + 1 < seqs && w >= ctx.first[s + 1]) ++s;
      const int64_t h = (w - ctx.first[s]) / ctx.chunks[s], c = (w - ctx.first[s]) % ctx.chunks[s];
      const int64_t p0 = c * kKeys;
      pack_chunk<DIM>(g, kv, tables + s * g.max_blocks, p0,
                      std::min(kKeys, context_lens[s] - p0), h,
                      ctx.words.get() + w * PackedContext<DIM>::kChunk);
    }
  });
  return ctx;
}

// Query vectors [0, k) (k <= 16) of a chunk: their 64 scores each (s, 64 apart; the first
// visible[j] seen) folded into their running maxima m and sums l, the probabilities
// written to pp as 32 bf16 pairs each (zero past what a vector sees), and corr[j] set to
// the factor its output row takes to the new max (values_rows applies it). Sixteen at a
// time, the maxima and the sums each come out of one transpose tree and the rescales out
// of one exp16; a vector at a time (two horizontal reductions, a branch and a scalar exp
// each), the softmax was most of the quarter of the kernel's cycles outside its products
// (docs/benchmarks.md).
inline void softmax16(const float* s, const int64_t* visible, int k, float* m, float* l,
                      float* corr, uint32_t* pp) {
  const __mmask16 live = lanes_below(k);
  __m512 fold[16];
  for (int j = 0; j < 16; ++j) {
    fold[j] = _mm512_set1_ps(kNegInf);
    if (j >= k) continue;
    for (int c = 0; c < 4; ++c)
      fold[j] = _mm512_max_ps(fold[j], _mm512_mask_loadu_ps(_mm512_set1_ps(kNegInf),
                                                            lanes_below(visible[j] - 16 * c),
                                                            s + j * kKeys + 16 * c));
  }
  const __m512 old_max = _mm512_mask_loadu_ps(_mm512_set1_ps(kNegInf), live, m);
  const __m512 new_max = _mm512_max_ps(old_max, hmax16(fold));
  const __m512 rescale = exp16(_mm512_sub_ps(old_max, new_max));  // ~0 for a first chunk
  alignas(64) float b[16];
  _mm512_store_ps(b, new_max);
  for (int j = 0; j < 16; ++j) {
    fold[j] = _mm512_setzero_ps();
    if (j >= k) continue;
    __m512 p[4];
    for (int c = 0; c < 4; ++c) {
      const __mmask16 seen = lanes_below(visible[j] - 16 * c);
      p[c] = _mm512_maskz_mov_ps(
          seen, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(seen, s + j * kKeys + 16 * c),
                                    _mm512_set1_ps(b[j]))));
      fold[j] = _mm512_add_ps(fold[j], p[c]);
    }
    _mm512_storeu_si512(pp + j * (kKeys / 2), (__m512i)_mm512_cvtne2ps_pbh(p[1], p[0]));
    _mm512_storeu_si512(pp + j * (kKeys / 2) + 16, (__m512i)_mm512_cvtne2ps_pbh(p[3], p[2]));
  }
  const __m512 old_sum = _mm512_maskz_loadu_ps(live, l);
  _mm512_mask_storeu_ps(l, live, _mm512_fmadd_ps(old_sum, rescale, hsum16(fold)));
  _mm512_mask_storeu_ps(m, live, new_max);
  _mm512_mask_storeu_ps(corr, live, rescale);
}

// One thread's scratch for items of up to nq query vectors.
template <int DIM>
struct PairScratch {
  std::vector<uint32_t> qb, pp;  // [nq][DIM/2] the queries; [nq][32] probabilities
  // [nq][64] scores; [nq] max, sum, rescale; [nq][DIM] output
  std::vector<float> s, m, l, corr, acc;
  std::vector<int64_t> visible;  // [nq] the chunk's keys each query vector sees
  explicit PairScratch(int64_t nq)
      : qb(nq * DIM / 2), pp(nq * kKeys / 2), s(nq * kKeys), m(nq), l(nq), corr(nq),
        acc(nq * DIM), visible(nq) {}
};

// One item over its packed context: query vector i is position first_query + i / group of
// the sequence's chunk, query head kv_head * group + i % group; q stays in bf16 as the model
// made it and the scale multiplies the scores.
template <int DIM>
void attend_item_bf16(const Geometry& g, const Item& it, const uint16_t* qp,
                      const PackedContext<DIM>& ctx, int64_t start, int64_t query_len,
                      int64_t context_len, float scale, uint16_t* op, PairScratch<DIM>& st) {
  const int64_t group = g.group;
  const int64_t rows = std::min(kTile, query_len - it.first_query), nq = rows * group;
  const int64_t offset = context_len - query_len;  // positions before the chunk
  // Query vectors r * group .. (r + 1) * group - 1, the kv head's query heads at position
  // first_query + r, lie together in q and out: one copy a position, no division a vector.
  auto at = [&](int64_t r) {
    return ((start + it.first_query + r) * g.heads + it.kv_head * group) * DIM;
  };
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(&st.qb[r * group * (DIM / 2)], qp + at(r), group * DIM * sizeof(uint16_t));
  std::fill(st.m.begin(), st.m.begin() + nq, kNegInf);
  std::fill(st.l.begin(), st.l.begin() + nq, 0.f);
  std::fill(st.acc.begin(), st.acc.begin() + nq * DIM, 0.f);
  const int64_t end = offset + it.first_query + rows;  // positions the last row sees
  for (int64_t c = 0, p0 = 0; p0 < end; ++c, p0 += kKeys) {
    const int64_t n = std::min(kKeys, end - p0);
    const uint32_t* kp = ctx.kp(it.seq, it.kv_head, c);
    const uint32_t* vp = kp + DIM / 2 * kKeys;
    // only query vectors whose position reaches p0 take part (all but the diagonal's)
    const int64_t from = std::max<int64_t>(0, p0 - offset - it.first_query) * group;
    int64_t i = from;
    for (; i + 4 <= nq; i += 4)
      scores_rows<DIM, 4>(&st.qb[i * (DIM / 2)], kp, scale, &st.s[i * kKeys]);
    for (; i < nq; ++i) scores_rows<DIM, 1>(&st.qb[i * (DIM / 2)], kp, scale, &st.s[i * kKeys]);
    for (int64_t r = from / group; r < rows; ++r)
      std::fill_n(&st.visible[r * group], group, std::min(n, offset + it.first_query + r - p0 + 1));
    for (i = from; i < nq; i += 16)
      softmax16(&st.s[i * kKeys], &st.visible[i], static_cast<int>(std::min<int64_t>(16, nq - i)),
                &st.m[i], &st.l[i], &st.corr[i], &st.pp[i * (kKeys / 2)]);
    for (int64_t d0 = 0; d0 < DIM; d0 += 64) {
      for (i = from; i + 4 <= nq; i += 4)
        values_rows<DIM, 4>(&st.pp[i * (kKeys / 2)], (n + 1) / 2, vp, d0, &st.corr[i],
                            &st.acc[i * DIM]);
      for (; i < nq; ++i)
        values_rows<DIM, 1>(&st.pp[i * (kKeys / 2)], (n + 1) / 2, vp, d0, &st.corr[i],
                            &st.acc[i * DIM]);
    }
  }
  for (int64_t i = 0; i < nq; ++i) {
    const __m512 inv = _mm512_set1_ps(1.f / st.l[i]);
    uint16_t* out = op + at(i / group) + (i % group) * DIM;
    for (int64_t d = 0; d < DIM; d += 16) {
      const __m512 o = _mm512_mul_ps(_mm512_loadu_ps(&st.acc[i * DIM + d]), inv);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + d), (__m256i)_mm512_cvtneps_pbh(o));
    }
  }
}

// The kernel for a bf16 cache and q (DIM a multiple of 64): see paged_prefill.cpp.
template <int DIM>
void prefill_bf16(const Geometry& g, const uint16_t* q, const uint16_t* kv, const int64_t* tables,
                  int64_t seqs, const int64_t* starts, const int64_t* query_lens,
                  const int64_t* context_lens, float scale, uint16_t* out) {
  static_assert(DIM % 64 == 0, "whole 64-dim register tiles");
  const PackedContext<DIM> ctx = pack_context<DIM>(g, kv, tables, seqs, context_lens);
  for_items(
      make_items(g, seqs, query_lens), [&] { return PairScratch<DIM>(kTile * g.group); },
      [&](const Item& it, PairScratch<DIM>& st) {
        attend_item_bf16<DIM>(g, it, q, ctx, starts[it.seq], query_lens[it.seq],
                              context_lens[it.seq], scale, out, st);
      });
}

}  // namespace tandem_paged
#endif
