// The decode kernel's inner walk for a bfloat16 cache on CPUs with AVX-512 BF16
// (paged_attention.cpp picks it where it is built; everywhere else the generic float32
// walk runs). Same online softmax, same block order; what differs:
//
//   - q . k with vdpbf16ps on the bf16 rows in place: no widened copy of K, and q stays
//     in bf16 as the model made it (the scale multiplies the float32 score after, as
//     torch's CPU flash attention does);
//   - the 16 scores of a run of 16 tokens come out of one transpose-and-add tree
//     (hsum16) instead of one horizontal reduction per token;
//   - the run's exponentials in one vector (exp16); p . V with vdpbf16ps too, two tokens
//     at a time, the query head's accumulator in registers over the run.
//
// Measured at batch 32, context 257 (SmolLM2's 30 layers, 2 threads, avx512_bf16 EPYC):
// see docs/benchmarks.md.
#pragma once

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define TANDEM_PAGED_BF16 1
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace tandem_paged {

// r[i] = the sum of v[i]'s 16 lanes, for i < 16:
//   pairs within 128-bit lanes, then quads, then the four lanes transposed and added.
inline __m512 hsum16(const __m512* v) {
  __m512 t[8], u[4];
  for (int i = 0; i < 8; ++i)  // lane: [a0+a2, b0+b2, a1+a3, b1+b3]
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // lane L: this lane's part of vectors 4i .. 4i+3
    const __m512d a = _mm512_castps_pd(t[2 * i]), b = _mm512_castps_pd(t[2 * i + 1]);
    u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  const __m512 x01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 x23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(x01, x23, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(x01, x23, _MM_SHUFFLE(3, 1, 3, 1)));
}

// exp(x) for x <= 0 (scores less their maximum): 2^n * e^r, r in [-ln2/2, ln2/2], with
// Cephes' expf polynomial (~1 ulp in float32).
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
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

// G query heads of one kv head over a run of n <= 16 tokens: k and v point at the run's
// first K and V rows of that head, `stride` elements apart. q: G x DIM bf16 values; m, l,
// acc: the heads' running maxima, sums and unnormalised outputs (G x DIM floats). The
// probabilities enter the PV product in bf16, as in torch's CPU flash attention; their sum
// stays float32. Each head's arithmetic is what it would be alone; the heads go together
// so that their softmax chains overlap and each V row pair, loaded and interleaved once,
// feeds all G (one head at a time, the walk waited on its own latencies: ~12% of the
// machine's bf16 rate, hot in cache).
template <int DIM, int G>
inline void attend_runs(const uint16_t* q, const uint16_t* k, const uint16_t* v, int64_t stride,
                        int64_t n, float scale, float* m, float* l, float* acc) {
  static_assert(DIM % 32 == 0, "whole 32-value bf16 vectors");
  constexpr int QC = DIM / 32;
  const __mmask16 live = static_cast<__mmask16>((1u << n) - 1u);
  __m512 corr[G];
  alignas(64) uint32_t pairs[G][8];  // (p[2i], p[2i+1]) as bf16, low half first
  for (int g = 0; g < G; ++g) {
    __m512bh qv[QC];
    for (int c = 0; c < QC; ++c) qv[c] = (__m512bh)_mm512_loadu_si512(q + g * DIM + 32 * c);
    __m512 d[16];
    for (int64_t t = 0; t < 16; ++t) {
      d[t] = _mm512_setzero_ps();
      if (t < n)
        for (int c = 0; c < QC; ++c)
          d[t] = _mm512_dpbf16_ps(d[t], qv[c], (__m512bh)_mm512_loadu_si512(k + t * stride + 32 * c));
    }
    const __m512 scores = _mm512_mul_ps(hsum16(d), _mm512_set1_ps(scale));
    const float new_max = std::max(m[g], _mm512_mask_reduce_max_ps(live, scores));
    const float correction = std::exp(m[g] - new_max);  // 0 for the first run (m = -inf)
    const __m512 p =
        _mm512_maskz_mov_ps(live, exp16(_mm512_sub_ps(scores, _mm512_set1_ps(new_max))));
    m[g] = new_max;
    l[g] = l[g] * correction + _mm512_reduce_add_ps(p);
    corr[g] = _mm512_set1_ps(correction);
    _mm256_store_si256(reinterpret_cast<__m256i*>(pairs[g]), (__m256i)_mm512_cvtneps_pbh(p));
  }
  __m512 a[G][2 * QC];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < QC; ++c) {
      to_interleaved(acc + g * DIM + 32 * c, a[g][2 * c], a[g][2 * c + 1]);
      a[g][2 * c] = _mm512_mul_ps(a[g][2 * c], corr[g]);
      a[g][2 * c + 1] = _mm512_mul_ps(a[g][2 * c + 1], corr[g]);
    }
  for (int64_t t = 0; t < n; t += 2) {
    __m512bh pp[G];
    for (int g = 0; g < G; ++g) pp[g] = (__m512bh)_mm512_set1_epi32(static_cast<int>(pairs[g][t / 2]));
    const uint16_t* v0 = v + t * stride;
    for (int c = 0; c < QC; ++c) {
      const __m512i r0 = _mm512_loadu_si512(v0 + 32 * c);
      // an odd run's last token pairs with zeros (the row after it may not exist)
      const __m512i r1 = t + 1 < n ? _mm512_loadu_si512(v0 + stride + 32 * c) : _mm512_setzero_si512();
      const __m512bh lo = (__m512bh)_mm512_unpacklo_epi16(r0, r1);
      const __m512bh hi = (__m512bh)_mm512_unpackhi_epi16(r0, r1);
      for (int g = 0; g < G; ++g) {
        a[g][2 * c] = _mm512_dpbf16_ps(a[g][2 * c], lo, pp[g]);
        a[g][2 * c + 1] = _mm512_dpbf16_ps(a[g][2 * c + 1], hi, pp[g]);
      }
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < QC; ++c) from_interleaved(a[g][2 * c], a[g][2 * c + 1], acc + g * DIM + 32 * c);
}

// The most heads attend_runs takes at once: their PV accumulators (2 x DIM/32 registers a
// head) fit in half of AVX-512's 32 registers.
template <int DIM>
constexpr int kHeadsAtOnce = DIM / 16 >= 16 ? 1 : 16 / (DIM / 16);

// The last `rest` (< kHeadsAtOnce) heads of a group.
template <int DIM, int G>
inline void attend_rest(int64_t rest, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                        int64_t stride, int64_t n, float scale, float* m, float* l, float* acc) {
  if constexpr (G > 0) {
    if (rest == G) return attend_runs<DIM, G>(q, k, v, stride, n, scale, m, l, acc);
    attend_rest<DIM, G - 1>(rest, q, k, v, stride, n, scale, m, l, acc);
  }
}

// `heads` query heads (a kv head's group; q, m, l and acc as attend_runs takes them) over
// one run, kHeadsAtOnce at a time.
template <int DIM>
inline void attend_heads(int64_t heads, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                         int64_t stride, int64_t n, float scale, float* m, float* l, float* acc) {
  constexpr int G = kHeadsAtOnce<DIM>;
  int64_t j = 0;
  for (; j + G <= heads; j += G)
    attend_runs<DIM, G>(q + j * DIM, k, v, stride, n, scale, m + j, l + j, acc + j * DIM);
  attend_rest<DIM, G - 1>(heads - j, q + j * DIM, k, v, stride, n, scale, m + j, l + j,
                          acc + j * DIM);
}

}  // namespace tandem_paged
#endif
