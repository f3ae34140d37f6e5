// Products against llama.cpp's Q8_0 and Q4_1 blocks, read as they are stored.
#pragma once

#include "common.h"

namespace {

// llama.cpp's blocks of 32 weights, read as they are stored: decode streams 34 bytes (Q8_0: a
// float16 scale and 32 int8) or 20 bytes (Q4_1: a float16 scale d and minimum m, 32 4-bit q) per
// 32 weights, instead of 128 (float32). Weight j of a block is d * q[j] (Q8_0) or d * q[j] + m
// (Q4_1, q[j] in the low nibble of byte j for j < 16, the high nibble of byte j - 16 after).
// Python reads these three lines (inference/kernels/build.py: BLOCK, FORMAT_CODES, BLOCK_BYTES).
enum Format : int64_t { kPlain = 0, kQ8_0 = 1, kQ4_1 = 2 };
constexpr int64_t kBlock = 32;
constexpr int64_t kBlockBytes[] = {0, 34, 20};  // by format: the bytes of one block

struct BlockQ8_0 {
  uint16_t d;
  int8_t q[kBlock];
};
struct BlockQ4_1 {
  uint16_t d, m;
  uint8_t q[kBlock / 2];
};
static_assert(sizeof(BlockQ8_0) == kBlockBytes[kQ8_0] && sizeof(BlockQ4_1) == kBlockBytes[kQ4_1],
              "llama.cpp's block layouts");

inline int64_t block_bytes(int64_t format) { return kBlockBytes[format]; }

inline float half_to_float(uint16_t h) {  // IEEE binary16 -> float32, exactly
#if defined(__F16C__)
  return _cvtsh_ss(h);
#endif
  const uint32_t sign = uint32_t(h & 0x8000) << 16, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
  uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000 | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: value = mantissa * 2^-24
    float f = float(mantissa) * 5.9604644775390625e-08f;
    std::memcpy(&bits, &f, sizeof bits);
    bits |= sign;
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// offset + m * sum(x) as one explicit fused multiply-add. Left to the compiler (free to fuse or
// not), a Zen 4 build rounded it differently in the loop's copies for one row and for four: a
// row's bits then depended on how many rows shared its product.
inline float minimum_term(const BlockQ4_1& b, float xsum, float offset) {
  return __builtin_fmaf(half_to_float(b.m), xsum, offset);
}

typedef int8_t i8x8 __attribute__((vector_size(8)));
typedef uint8_t u8x8 __attribute__((vector_size(8)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));

inline f32x8 widen(i8x8 q) { return __builtin_convertvector(q, f32x8); }
inline f32x8 widen(u8x8 q) { return __builtin_convertvector(q, f32x8); }

// The four vectors of a block's q values, as floats. With AVX2, one widening instruction per eight
// values (GCC turned the portable conversions below into scalar code: 3x slower decode).
#if defined(__AVX2__)
inline f32x8 widen8(__m128i bytes, bool is_signed) {  // the low eight bytes -> eight floats
  const __m256i wide = is_signed ? _mm256_cvtepi8_epi32(bytes) : _mm256_cvtepu8_epi32(bytes);
  return reinterpret_cast<f32x8>(_mm256_cvtepi32_ps(wide));
}

inline void block_q(const BlockQ8_0& b, f32x8* w) {
  const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.q));
  const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.q + 16));
  w[0] = widen8(lo, true);
  w[1] = widen8(_mm_srli_si128(lo, 8), true);
  w[2] = widen8(hi, true);
  w[3] = widen8(_mm_srli_si128(hi, 8), true);
}

// Unpack 0 splits the nibbles in bytes, then widens each eight; 1 widens each eight bytes once and
// splits the nibbles in the wide registers (half the widenings, twice the integer work).
template <int Unpack = 0>
inline void block_q(const BlockQ4_1& b, f32x8* w) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.q));
  if constexpr (Unpack == 0) {
    const __m128i nibble = _mm_set1_epi8(15);
    const __m128i lo = _mm_and_si128(raw, nibble), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), nibble);
    w[0] = widen8(lo, false);
    w[1] = widen8(_mm_srli_si128(lo, 8), false);
    w[2] = widen8(hi, false);
    w[3] = widen8(_mm_srli_si128(hi, 8), false);
  } else {
    const __m256i nibble = _mm256_set1_epi32(15);
    const __m256i first = _mm256_cvtepu8_epi32(raw), second = _mm256_cvtepu8_epi32(_mm_srli_si128(raw, 8));
    w[0] = reinterpret_cast<f32x8>(_mm256_cvtepi32_ps(_mm256_and_si256(first, nibble)));
    w[1] = reinterpret_cast<f32x8>(_mm256_cvtepi32_ps(_mm256_and_si256(second, nibble)));
    w[2] = reinterpret_cast<f32x8>(_mm256_cvtepi32_ps(_mm256_srli_epi32(first, 4)));
    w[3] = reinterpret_cast<f32x8>(_mm256_cvtepi32_ps(_mm256_srli_epi32(second, 4)));
  }
}
#else
inline void block_q(const BlockQ8_0& b, f32x8* w) {
  for (int v = 0; v < 4; ++v) {
    i8x8 q;
    std::memcpy(&q, b.q + 8 * v, 8);
    w[v] = widen(q);
  }
}

template <int Unpack = 0>   // one way to unpack here
inline void block_q(const BlockQ4_1& b, f32x8* w) {
  u8x16 raw;
  std::memcpy(&raw, b.q, 16);
  const u8x16 lo = raw & 15, hi = raw >> 4;
  w[0] = widen(u8x8(__builtin_shufflevector(lo, lo, 0, 1, 2, 3, 4, 5, 6, 7)));
  w[1] = widen(u8x8(__builtin_shufflevector(lo, lo, 8, 9, 10, 11, 12, 13, 14, 15)));
  w[2] = widen(u8x8(__builtin_shufflevector(hi, hi, 0, 1, 2, 3, 4, 5, 6, 7)));
  w[3] = widen(u8x8(__builtin_shufflevector(hi, hi, 8, 9, 10, 11, 12, 13, 14, 15)));
}
#endif

// Whether block p is the first to start in its 64-byte line: the prefetch for a line is asked once
// (a block is 20 or 34 bytes: asking at every block spent more than it saved).
template <typename B>
inline bool starts_line(const B* p) {
  return (reinterpret_cast<uintptr_t>(p) >> 6) != (reinterpret_cast<uintptr_t>(p - 1) >> 6);
}

// y[m, n] = sum over blocks b of d_b * (q_b . x_b) (+ m_b * sum(x_b) for Q4_1; `xsum` holds each
// row's block sums of x), each block's q . x in 16 float32 lanes (AVX-512) or 8.
#if defined(__AVX512F__)
inline void block_q16(const BlockQ8_0& b, __m512& w0, __m512& w1) {
  w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.q))));
  w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.q + 16))));
}

// Unpack 0 splits the nibbles in bytes and widens each half; 1 widens the 16 bytes once and splits
// the nibbles in the wide register.
template <int Unpack = 0>
inline void block_q16(const BlockQ4_1& b, __m512& w0, __m512& w1) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.q));
  if constexpr (Unpack == 0) {
    const __m128i nibble = _mm_set1_epi8(15);
    w0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(raw, nibble)));
    w1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(raw, 4), nibble)));
  } else {
    const __m512i wide = _mm512_cvtepu8_epi32(raw);
    w0 = _mm512_cvtepi32_ps(_mm512_and_si512(wide, _mm512_set1_epi32(15)));
    w1 = _mm512_cvtepi32_ps(_mm512_srli_epi32(wide, 4));
  }
}

template <typename B, int M, int Unpack>
inline void block_row_dot(const B* row, const float* x, const float* xsum, float* y, int64_t K, int64_t N, int64_t n,
                          int64_t ahead) {
  const int64_t blocks = K / kBlock;
  __m512 acc[M];
  float offset[M] = {};
  for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    __m512 w0, w1;
    if (starts_line(row + b)) prefetch_ahead(row + b, ahead);
    if constexpr (std::is_same_v<B, BlockQ4_1>) block_q16<Unpack>(row[b], w0, w1); else block_q16(row[b], w0, w1);
    const __m512 d = _mm512_set1_ps(half_to_float(row[b].d));
    for (int m = 0; m < M; ++m) {
      const float* xb = x + m * K + b * kBlock;
      const __m512 part = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(w0, _mm512_loadu_ps(xb)));
      acc[m] = _mm512_fmadd_ps(d, part, acc[m]);
      if constexpr (std::is_same_v<B, BlockQ4_1>) offset[m] = minimum_term(row[b], xsum[m * blocks + b], offset[m]);
    }
  }
  for (int m = 0; m < M; ++m) y[m * N + n] = offset[m] + _mm512_reduce_add_ps(acc[m]);
}
#else
template <typename B, int M, int Unpack>
inline void block_row_dot(const B* row, const float* x, const float* xsum, float* y, int64_t K, int64_t N, int64_t n,
                          int64_t ahead) {
  const int64_t blocks = K / kBlock;
  f32x8 acc[M] = {};
  float offset[M] = {};
  for (int64_t b = 0; b < blocks; ++b) {
    f32x8 w[4];
    if (starts_line(row + b)) prefetch_ahead(row + b, ahead);
    if constexpr (std::is_same_v<B, BlockQ4_1>) block_q<Unpack>(row[b], w); else block_q(row[b], w);
    const float d = half_to_float(row[b].d);
    for (int m = 0; m < M; ++m) {
      const float* xb = x + m * K + b * kBlock;
      const f32x8 part = w[0] * load8(xb) + w[1] * load8(xb + 8) + w[2] * load8(xb + 16) + w[3] * load8(xb + 24);
      acc[m] += d * part;
      if constexpr (std::is_same_v<B, BlockQ4_1>) offset[m] = minimum_term(row[b], xsum[m * blocks + b], offset[m]);
    }
  }
  for (int m = 0; m < M; ++m) {
    float sum = offset[m];
    for (int l = 0; l < 8; ++l) sum += acc[m][l];
    y[m * N + n] = sum;
  }
}
#endif

template <typename B, int Unpack>
void block_rows_dot(const B* w, const float* x, float* y, int64_t M, int64_t K, int64_t N, int64_t begin, int64_t end,
                    int64_t ahead) {
  const int64_t blocks = K / kBlock;
  std::vector<float> xsum;
  if (std::is_same_v<B, BlockQ4_1>) {
    xsum.assign(M * blocks, 0.0f);
    for (int64_t i = 0; i < M * blocks; ++i)
      for (int64_t j = 0; j < kBlock; ++j) xsum[i] += x[i * kBlock + j];
  }
  for (int64_t n = begin; n < end; ++n) {
    const B* row = w + n * blocks;
    for_row_blocks<4>(M, [&](auto rows, int64_t m0) __attribute__((always_inline)) {
      const float* sb = xsum.empty() ? nullptr : xsum.data() + m0 * blocks;
      block_row_dot<B, decltype(rows)::value, Unpack>(row, x + m0 * K, sb, y + m0 * N, K, N, n, ahead);
    });
  }
}

}  // namespace
