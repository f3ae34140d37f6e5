// What every part of the decode kernel shares: the includes, the layer weights Python fills, the row
// limit, float32 / bfloat16 loads and stores, the 8-float vector type, the kernel's
// tunable knobs.
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <omp.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

// A Llama decoder layer's weights and constants, by name (Python fills one per layer, once).
// The seven matrices are either in the activations' dtype (format 0) or in llama.cpp's blocks of
// 32 weights (uint8 tensors of shape (rows, K / 32 * block bytes)): format 1 = Q8_0, 2 = Q4_1.
struct LayerWeights {
  torch::Tensor norm1, wq, wk, wv, wo, norm2, wg, wu, wd;
  double eps1 = 0, eps2 = 0, scaling = 0;
  int64_t format = 0;
};

namespace {

// At most this many rows (sequences x new tokens) per call; Python reads it as MAX_ROWS.
constexpr int64_t kMaxRows = 32;
// Rows that share one pass over a weight row, their accumulators held in registers.
constexpr int kRowBlock = 8;

// Calls f(std::integral_constant<int, R>{}, m0) for rows m0 .. m0 + R - 1 of M, in blocks of up to
// Block rows: a block's row count is a compile-time constant, so its accumulators stay in registers.
template <int R, int Block, typename F>
__attribute__((always_inline)) inline void row_block(int64_t rows, int64_t m0, F& f) {
  if constexpr (R < Block) {
    if (rows == R) return f(std::integral_constant<int, R>{}, m0);
    row_block<R + 1, Block>(rows, m0, f);
  } else {
    f(std::integral_constant<int, Block>{}, m0);
  }
}

template <int Block, typename F>
__attribute__((always_inline)) inline void for_row_blocks(int64_t M, F&& f) {
  for (int64_t m0 = 0; m0 < M; m0 += Block) row_block<1, Block>(std::min<int64_t>(Block, M - m0), m0, f);
}

// The longest attention head the fused layer's rotary buffer holds.
constexpr int64_t kMaxHeadDim = 512;

inline float to_float(float v) { return v; }

inline float to_float(uint16_t bf16) {  // bfloat16 is the top half of a float32
  uint32_t bits = uint32_t(bf16) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline void store(float v, float* out) { *out = v; }

inline void store(float v, uint16_t* out) {  // round to nearest even, as PyTorch does
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if (std::isnan(v)) { *out = 0x7FC0; return; }
  bits += 0x7FFF + ((bits >> 16) & 1);
  *out = uint16_t(bits >> 16);
}

// The value PyTorch would hold after storing v as a W (what an eager op's output is rounded to).
template <typename W>
inline float rounded(float v) {
  W w;
  store(v, &w);
  return to_float(w);
}

// Eight floats in one vector register (AVX/AVX2 ymm; two NEON registers on ARM). Written with
// GCC's vector types rather than a plain 32-lane loop: for -march=x86-64-v3 GCC turned that loop
// into 16-byte copies of the weights read back 32 bytes at a time (a failed store-to-load forward
// on every load), which halved float32 decode on AVX2 CPUs.
typedef float f32x8 __attribute__((vector_size(32)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));

inline f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline f32x8 load8(const uint16_t* p) {  // eight bfloat16 values, widened to float32
#if defined(__AVX2__)
  // One widening load; GCC 12 splits __builtin_convertvector into four shuffles (0.75x the speed).
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return reinterpret_cast<f32x8>(_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
#else
  u16x8 half;
  std::memcpy(&half, p, sizeof half);
  const u32x8 bits = __builtin_convertvector(half, u32x8) << 16;
  f32x8 v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
#endif
}

// A variant of the kernel: the knobs that set its speed on a given CPU without changing one bit of
// what it computes (every output row is still summed by one thread, in the same order). Python's
// trial (inference/kernels/tuning.py) times them on the machine it runs on and sets the fastest, one
// per kind of weights (float32, bfloat16, Q8_0, Q4_1).
//  - prefetch: each weight stream asks for the bytes it will read this far ahead (0: none, the
//    hardware prefetchers alone). On a Xeon with two threads streaming their own rows, the hardware
//    prefetchers alone left the memory bus idle between requests (bfloat16 decode 17.0 -> 14.8 ms a
//    token at 2 KiB); the best distance is the machine's.
//  - chunk: how a product's rows are shared between threads: 0, one equal contiguous share each;
//    n > 0, pieces of n rows handed to whichever thread is free (a thread that lost its core to
//    another program does less of the work, instead of the others waiting at the barrier).
//  - unpack: how Q4_1's 4-bit values become floats (AVX-512): 0 widening conversions, 1 a table lookup.
struct Tuning {
  int64_t prefetch = 2048, chunk = 0, unpack = 0;
};
enum Kind : int64_t { kFloat32 = 0, kBFloat16 = 1, kKindQ8_0 = 2, kKindQ4_1 = 3 };
constexpr int64_t kKinds = 4;
Tuning g_tuning[kKinds];

inline void prefetch_ahead(const void* p, int64_t ahead) {
  if (ahead) __builtin_prefetch(static_cast<const char*>(p) + ahead, 0, 3);
}

}  // namespace
