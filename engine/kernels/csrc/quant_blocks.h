// GGUF block formats read by our GEMMs (quant_linear.cpp, quant_panels.cpp): ggml's type
// ids, the bytes of one block of 32 weights, and the expansion of a block to float32,
// exactly as gguf-py computes it (d * q is exact in float32: an 11-bit mantissa times a 4- or
// 8-bit integer).
#pragma once

#include <c10/util/Half.h>
#include <cstdint>
#include <cstring>
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace tandem_quant {

constexpr int64_t kQ4_1 = 3, kQ8_0 = 8, kBlock = 32;

inline float half_at(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
#if defined(__F16C__)
  return _cvtsh_ss(bits);  // one instruction; c10::Half's portable conversion is ~20
#else
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
#endif
}

// The 32 weights of one block, as float32, into w[0..31].
template <int64_t QT>
inline void dequant_block(const uint8_t* blk, float* w) {
  const float d = half_at(blk);
  if constexpr (QT == kQ4_1) {
    const float m = half_at(blk + 2);
    const uint8_t* qs = blk + 4;
    for (int j = 0; j < 16; ++j) {
      w[j] = d * static_cast<float>(qs[j] & 15) + m;
      w[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
    }
  } else {
    const auto* qs = reinterpret_cast<const int8_t*>(blk + 2);
    for (int j = 0; j < 32; ++j) w[j] = d * static_cast<float>(qs[j]);
  }
}

template <int64_t QT>
constexpr int64_t block_bytes() {
  return QT == kQ4_1 ? 20 : 34;
}

#if defined(__AVX2__) && defined(__FMA__)
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// The block's 32 weights in four registers (weights 0-7, 8-15, 16-23, 24-31).
template <int64_t QT>
inline void dequant_block(const uint8_t* blk, __m256 w[4]) {
  const __m256 d = _mm256_set1_ps(half_at(blk));
  if constexpr (QT == kQ4_1) {
    const __m256 m = _mm256_set1_ps(half_at(blk + 2));
    const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 4));
    const __m128i mask = _mm_set1_epi8(15);
    const __m128i lo = _mm_and_si128(qs, mask), hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    // d * q is exact, so rounding d * q + m once (fused) equals gguf-py's multiply, then add
    for (int i = 0; i < 4; ++i)
      w[i] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[i])), m);
  } else {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
    const __m128i halves[2] = {_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)};
    for (int i = 0; i < 4; ++i) {
      const __m128i part = i % 2 ? _mm_srli_si128(halves[i / 2], 8) : halves[i / 2];
      w[i] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part)));
    }
  }
}

#endif  // __AVX2__ && __FMA__

// y = x @ dequant(w).T for many rows of x (more than kFewRows): quant_panels.cpp. Only
// built with AVX2 and FMA; quant_linear.cpp keeps its row-at-a-time path elsewhere.
constexpr int64_t kFewRows = 8;
void panel_linear(const float* x, int64_t rows, int64_t k, const uint8_t* w, int64_t row_bytes,
                  int64_t n_out, int64_t qtype, float* y);

}  // namespace tandem_quant
