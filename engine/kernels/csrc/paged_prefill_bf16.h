// The products of the prefill kernel (paged_prefill.cpp) for a bfloat16 cache on CPUs with
// AVX-512 BF16: vdpbf16ps multiplies two bf16 pairs and adds both products to a float32
// lane, 32 multiply-adds an instruction where the float32 tiles (tile16.h) do 8.
//
//   scores:  S[i][t] = scale * q_i . k_t      q as pairs (q[2p], q[2p+1]), broadcast;
//                                             keys pair-transposed: kp[p][t] = (k_t[2p], k_t[2p+1])
//   values:  acc[i][d] += sum_t P[i][t] v_t[d] P as bf16 pairs (P[i][2u], P[i][2u+1]), broadcast;
//                                             values pair-interleaved: vp[u][d] = (v_2u[d], v_2u+1[d])
//
// A pair is one 32-bit value, low half first. Probabilities enter the product in bf16 (as
// in torch's CPU flash attention), their sums stay float32. Register tiles: 4 query
// vectors x 64 keys (scores) or x 64 dims (values), 16 accumulators.
#pragma once

#include "paged_bf16.h"

#ifdef TANDEM_PAGED_BF16
namespace tandem_paged {

constexpr int64_t kPairKeys = 64;  // keys per step: 4 vectors of 16 scores

// R query vectors (q: R rows of DIM/2 pairs) against 64 keys.
template <int DIM, int R>
inline void scores_rows(const uint32_t* q, const uint32_t* kp, float scale, float* s,
                        int64_t ld_s) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int p = 0; p < DIM / 2; ++p) {
    __m512bh k[4];
    for (int c = 0; c < 4; ++c) k[c] = (__m512bh)_mm512_loadu_si512(kp + p * kPairKeys + 16 * c);
    for (int r = 0; r < R; ++r) {
      const __m512bh qq = (__m512bh)_mm512_set1_epi32(static_cast<int>(q[r * (DIM / 2) + p]));
      for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], qq, k[c]);
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(s + r * ld_s + 16 * c, _mm512_mul_ps(acc[r][c], sc));
}

// s[i][0..64) for nq query vectors: rows of DIM/2 pairs at q, scores ld_s apart.
template <int DIM>
void scores_bf16(const uint32_t* q, int64_t nq, const uint32_t* kp, float scale, float* s,
                 int64_t ld_s) {
  int64_t i = 0;
  for (; i + 4 <= nq; i += 4) scores_rows<DIM, 4>(q + i * (DIM / 2), kp, scale, s + i * ld_s, ld_s);
  for (; i < nq; ++i) scores_rows<DIM, 1>(q + i * (DIM / 2), kp, scale, s + i * ld_s, ld_s);
}

// acc[R rows][64 dims from d0] += P (pairs pp: R rows of 32) @ V (vp rows of DIM pairs).
template <int DIM, int R>
inline void values_rows(const uint32_t* pp, int64_t pairs, const uint32_t* vp, int64_t d0,
                        float* acc) {
  __m512 a[R][4];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) a[r][c] = _mm512_loadu_ps(acc + r * DIM + d0 + 16 * c);
  for (int64_t u = 0; u < pairs; ++u) {
    __m512bh v[4];
    for (int c = 0; c < 4; ++c) v[c] = (__m512bh)_mm512_loadu_si512(vp + u * DIM + d0 + 16 * c);
    for (int r = 0; r < R; ++r) {
      const __m512bh p = (__m512bh)_mm512_set1_epi32(static_cast<int>(pp[r * (kPairKeys / 2) + u]));
      for (int c = 0; c < 4; ++c) a[r][c] = _mm512_dpbf16_ps(a[r][c], v[c], p);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(acc + r * DIM + d0 + 16 * c, a[r][c]);
}

// acc[i] += P[i] @ V for nq query vectors: probabilities p (float, rows ld_p apart, zero
// past the visible keys), the first `pairs` key pairs of vp.
template <int DIM>
void values_bf16(const float* p, int64_t ld_p, int64_t nq, int64_t pairs, const uint32_t* vp,
                 float* acc) {
  static_assert(DIM % 64 == 0, "whole 64-dim register tiles");
  alignas(64) uint32_t pp[4 * (kPairKeys / 2)];
  for (int64_t i = 0; i < nq; i += 4) {
    const int64_t rows = std::min<int64_t>(4, nq - i);
    for (int64_t r = 0; r < rows; ++r)  // 64 probabilities -> 32 bf16 pairs
      for (int h = 0; h < 2; ++h) {
        const float* src = p + (i + r) * ld_p + 32 * h;
        const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 16), _mm512_loadu_ps(src));
        _mm512_storeu_si512(pp + r * (kPairKeys / 2) + 16 * h, (__m512i)b);
      }
    for (int64_t d0 = 0; d0 < DIM; d0 += 64) {
      float* a = acc + i * DIM;
      if (rows == 4)
        values_rows<DIM, 4>(pp, pairs, vp, d0, a);
      else
        for (int64_t r = 0; r < rows; ++r)
          values_rows<DIM, 1>(pp + r * (kPairKeys / 2), pairs, vp, d0, a + r * DIM);
    }
  }
}

}  // namespace tandem_paged
#endif
