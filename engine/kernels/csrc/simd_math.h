// Vector math the kernels share, on CPUs with AVX-512 (16 float32 lanes).
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>

#include <cstdint>

namespace tandem_simd {

// The first n of 16 lanes (none for n <= 0, all for n >= 16).
inline __mmask16 lanes_below(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}

// exp(x), lane by lane: 2^n * e^r, r in [-ln2/2, ln2/2], with Cephes' expf polynomial
// (~1 ulp in float32). x is clamped to [-87, 88]: below, the result is ~1e-38 instead of
// a denormal or 0; above, e^88 instead of inf (silu's exp(-gate) then gives a finite
// gate / (1 + e^88), ~0 as it should be, not 0 * inf).
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.f)), _mm512_set1_ps(88.f));
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

#if defined(__AVX512BF16__)
// 16 bfloat16 values (their bits) widened to float32; float32 rounded to bfloat16 (to
// nearest even, as c10 rounds), as bits and as float32 again (HF's rounding between its
// eager ops in bfloat16).
inline __m512 bf16_to_f32(__m256i bits) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
inline __m256i f32_to_bf16(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }
inline __m512 round_bf16(__m512 v) { return bf16_to_f32(f32_to_bf16(v)); }
#endif

}  // namespace tandem_simd
#endif
