// The decode kernel's inner walk for a bfloat16 cache on CPUs with AVX-512 BF16
// (paged_attention.cpp picks it where it is built; everywhere else the generic float32
// walk runs). The same blocks in the same order; what differs:
//
//   - q . k with vdpbf16ps on the bf16 rows in place: no widened copy of K, and q stays
//     in bf16 as the model made it (the scale multiplies the float32 score after, as
//     torch's CPU flash attention does);
//   - the 16 scores of a run of 16 tokens come out of one transpose-and-add tree
//     (hsum16) instead of one horizontal reduction per token;
//   - softmax a chunk of up to kChunkTokens at a time, in two passes over it: every
//     score of the chunk first, then one maximum, the exponentials and one sum per query
//     head, then p . V (vdpbf16ps, two tokens at a time, a head's accumulator in registers
//     over the whole chunk). Online over 16-token runs instead, each run paid two
//     horizontal reductions, a scalar exp and a rescale of the accumulators per head:
//     under perf, most of the walk's cycles on a Zen 4 (docs/benchmarks.md).
//
// Measured at batch 32, context 290 (SmolLM2's 30 layers, 2 threads, avx512_bf16 EPYC):
// see docs/benchmarks.md.
#pragma once

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define TANDEM_PAGED_BF16 1
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "simd_math.h"

namespace tandem_paged {

using tandem_simd::exp16;
using tandem_simd::lanes_below;

// r[i] = v[i]'s 16 lanes folded by `op` (add, max: associative and commutative), i < 16:
//   pairs within 128-bit lanes, then quads, then the four lanes transposed and folded.
template <typename Op>
inline __m512 fold16(const __m512* v, Op op) {
  __m512 t[8], u[4];
  for (int i = 0; i < 8; ++i)  // lane: [a0+a2, b0+b2, a1+a3, b1+b3]
    t[i] = op(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // lane L: this lane's part of vectors 4i .. 4i+3
    const __m512d a = _mm512_castps_pd(t[2 * i]), b = _mm512_castps_pd(t[2 * i + 1]);
    u[i] = op(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  const __m512 x01 = op(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(1, 0, 1, 0)),
                        _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 x23 = op(_mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(1, 0, 1, 0)),
                        _mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(3, 2, 3, 2)));
  return op(_mm512_shuffle_f32x4(x01, x23, _MM_SHUFFLE(2, 0, 2, 0)),
            _mm512_shuffle_f32x4(x01, x23, _MM_SHUFFLE(3, 1, 3, 1)));
}

inline __m512 hsum16(const __m512* v) {
  return fold16(v, [](__m512 a, __m512 b) { return _mm512_add_ps(a, b); });
}

inline __m512 hmax16(const __m512* v) {
  return fold16(v, [](__m512 a, __m512 b) { return _mm512_max_ps(a, b); });
}

// The PV product takes two tokens a vdpbf16ps: rows t and t+1 interleaved 16 bits at a
// time (unpacklo/hi_epi16, within 128-bit lanes), so a 32-dim load pair gives outputs for
// dims LO = {0-3, 8-11, 16-19, 24-27} and HI = {4-7, 12-15, 20-23, 28-31} of its chunk. The
// accumulator is held in that order over a run; these permutations go to it and back.
inline void to_interleaved(const float* acc, __m512& lo, __m512& hi) {
  const __m512 n0 = _mm512_loadu_ps(acc), n1 = _mm512_loadu_ps(acc + 16);
  lo = _mm512_permutex2var_ps(
      n0, _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27), n1);
  hi = _mm512_permutex2var_ps(
      n0, _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31), n1);
}

inline void from_interleaved(__m512 lo, __m512 hi, float* acc) {
  _mm512_storeu_ps(acc, _mm512_permutex2var_ps(
      lo, _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23), hi));
  _mm512_storeu_ps(acc + 16, _mm512_permutex2var_ps(
      lo, _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31), hi));
}

// A chunk's tokens: this many, rounded down to whole blocks (at least one). Its K and V
// (~96 KiB a kv head for SmolLM2) stay in L2 between the two passes.
constexpr int64_t kChunkTokens = 256;

// Scores of `heads` query heads (q: heads x DIM bf16 values) against a run of n <= 16
// tokens (K rows from k, `stride` elements apart): s[i * ld + t] = scale * q_i . k_t, t < n.
template <int DIM>
inline void scores_run(const uint16_t* q, int64_t heads, const uint16_t* k, int64_t stride,
                       int64_t n, float scale, float* s, int64_t ld) {
  static_assert(DIM % 32 == 0, "whole 32-value bf16 vectors");
  constexpr int QC = DIM / 32;
  for (int64_t i = 0; i < heads; ++i) {
    __m512bh qv[QC];
    for (int c = 0; c < QC; ++c) qv[c] = (__m512bh)_mm512_loadu_si512(q + i * DIM + 32 * c);
    __m512 d[16];
    for (int64_t t = 0; t < 16; ++t) {
      d[t] = _mm512_setzero_ps();
      if (t < n)
        for (int c = 0; c < QC; ++c)
          d[t] = _mm512_dpbf16_ps(d[t], qv[c], (__m512bh)_mm512_loadu_si512(k + t * stride + 32 * c));
    }
    _mm512_mask_storeu_ps(s + i * ld, lanes_below(n), _mm512_mul_ps(hsum16(d), _mm512_set1_ps(scale)));
  }
}

// One query head's n scores of a chunk (s) folded into its running max m and sum l: acc
// (DIM floats) rescaled to the new max, the probabilities written to p in bf16, as they
// enter the PV product (as in torch's CPU flash attention), zero from n up to the next 16.
template <int DIM>
inline void softmax_chunk(const float* s, int64_t n, float& m, float& l, float* acc, uint16_t* p) {
  __m512 mx = _mm512_set1_ps(m);
  for (int64_t t = 0; t < n; t += 16)
    mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, lanes_below(n - t), s + t));
  const float new_max = _mm512_reduce_max_ps(mx);
  if (new_max > m) {
    const float correction = std::exp(m - new_max);  // 0 for the first chunk (m = -inf)
    for (int d = 0; d < DIM; d += 16)
      _mm512_storeu_ps(acc + d, _mm512_mul_ps(_mm512_loadu_ps(acc + d), _mm512_set1_ps(correction)));
    l *= correction;
    m = new_max;
  }
  const __m512 b = _mm512_set1_ps(m);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t t = 0; t < n; t += 16) {
    const __mmask16 live = lanes_below(n - t);
    const __m512 e = _mm512_maskz_mov_ps(live, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, s + t), b)));
    sum = _mm512_add_ps(sum, e);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + t), (__m256i)_mm512_cvtneps_pbh(e));
  }
  l += _mm512_reduce_add_ps(sum);
}

// acc (G heads x DIM floats) += p . V over a chunk: `blocks` blocks of bs tokens (the last
// holds `n` - (blocks - 1) * bs), whose V rows of this kv head start at v[b], `stride`
// elements apart; p: the G heads' bf16 probabilities, `ld` apart.
template <int DIM, int G>
inline void values_chunk(const uint16_t* p, int64_t ld, const uint16_t* const* v, int64_t blocks,
                         int64_t bs, int64_t n, int64_t stride, float* acc) {
  constexpr int QC = DIM / 32;
  __m512 a[G][2 * QC];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < QC; ++c) to_interleaved(acc + g * DIM + 32 * c, a[g][2 * c], a[g][2 * c + 1]);
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t pos0 = b * bs, nb = std::min(bs, n - pos0);
    for (int64_t t = 0; t < nb; t += 2) {
      __m512bh pp[G];
      for (int g = 0; g < G; ++g) {
        uint32_t pair;  // (p[t], p[t+1]); past n, p is zero
        std::memcpy(&pair, p + g * ld + pos0 + t, sizeof pair);
        pp[g] = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
      }
      const uint16_t* v0 = v[b] + t * stride;
      for (int c = 0; c < QC; ++c) {
        const __m512i r0 = _mm512_loadu_si512(v0 + 32 * c);
        // an odd block's last token pairs with zeros (the row after it may not exist)
        const __m512i r1 = t + 1 < nb ? _mm512_loadu_si512(v0 + stride + 32 * c) : _mm512_setzero_si512();
        const __m512bh lo = (__m512bh)_mm512_unpacklo_epi16(r0, r1);
        const __m512bh hi = (__m512bh)_mm512_unpackhi_epi16(r0, r1);
        for (int g = 0; g < G; ++g) {
          a[g][2 * c] = _mm512_dpbf16_ps(a[g][2 * c], lo, pp[g]);
          a[g][2 * c + 1] = _mm512_dpbf16_ps(a[g][2 * c + 1], hi, pp[g]);
        }
      }
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < QC; ++c) from_interleaved(a[g][2 * c], a[g][2 * c + 1], acc + g * DIM + 32 * c);
}

// The most heads values_chunk takes at once: their accumulators (2 x DIM/32 registers a
// head) fit in half of AVX-512's 32 registers.
template <int DIM>
constexpr int kHeadsAtOnce = DIM / 16 >= 16 ? 1 : 16 / (DIM / 16);

// The last `rest` (< kHeadsAtOnce) heads of a group.
template <int DIM, int G>
inline void values_rest(int64_t rest, const uint16_t* p, int64_t ld, const uint16_t* const* v,
                        int64_t blocks, int64_t bs, int64_t n, int64_t stride, float* acc) {
  if constexpr (G > 0) {
    if (rest == G) return values_chunk<DIM, G>(p, ld, v, blocks, bs, n, stride, acc);
    values_rest<DIM, G - 1>(rest, p, ld, v, blocks, bs, n, stride, acc);
  }
}

// values_chunk for `heads` query heads (a kv head's group), kHeadsAtOnce at a time.
template <int DIM>
inline void values_heads(int64_t heads, const uint16_t* p, int64_t ld, const uint16_t* const* v,
                         int64_t blocks, int64_t bs, int64_t n, int64_t stride, float* acc) {
  constexpr int G = kHeadsAtOnce<DIM>;
  int64_t j = 0;
  for (; j + G <= heads; j += G)
    values_chunk<DIM, G>(p + j * ld, ld, v, blocks, bs, n, stride, acc + j * DIM);
  values_rest<DIM, G - 1>(heads - j, p + j * ld, ld, v, blocks, bs, n, stride, acc + j * DIM);
}

}  // namespace tandem_paged
#endif
