// Matrix-vector products for decode on CPU, spread over all cores, and a fused decode step of a
// whole Llama decoder layer (one new token per row) built from them.
//
// PyTorch's single-row Linear (MKL sgemv, oneDNN for bf16) runs on one core here and reaches about
// a third of the memory bandwidth; decode is nothing but such products. These kernels split the
// weight rows across OpenMP threads (`gemv` through ATen's parallel_for, which is OpenMP in this
// torch build; the fused layer as one OpenMP parallel region) and stream each row once,
// accumulating in float32 in 32 independent lanes (so the compiler vectorizes the loop without
// reordering any lane's sum).
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

// Each weight stream asks for the bytes it will read 2 KiB from now: with two threads each
// streaming its own rows, the hardware prefetchers alone left the memory bus idle between
// requests (bfloat16 decode 17.0 -> 14.8 ms a token here; 1 and 4 KiB were slower than 2).
constexpr int kPrefetchBytes = 2048;

inline void prefetch_ahead(const void* p) { __builtin_prefetch(static_cast<const char*>(p) + kPrefetchBytes, 0, 3); }

// y[m, n] = w[n, :] . x[m, :] for M rows of x and weight row n, in 32 float32 lanes (4 vectors)
// summed lane by lane at the end. M is a compile-time constant so the compiler can keep the M x 4
// accumulators in registers: 10-25% faster than a run-time M on the LM head's product here. From
// about 4 rows on the loop is bound by loading x and by the multiply-adds, not by memory.
template <typename W, int M>
inline void row_dot(const W* row, const float* x, float* y, int64_t K, int64_t N, int64_t n) {
  constexpr int kVecs = 4, kLanes = 8 * kVecs;
  f32x8 acc[M][kVecs] = {};
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    for (int line = 0; line < kLanes * int(sizeof(W)); line += 64) prefetch_ahead(reinterpret_cast<const char*>(row + k) + line);
    f32x8 w[kVecs];
    for (int v = 0; v < kVecs; ++v) w[v] = load8(row + k + 8 * v);
    for (int m = 0; m < M; ++m)
      for (int v = 0; v < kVecs; ++v) acc[m][v] += w[v] * load8(x + m * K + k + 8 * v);
  }
  for (int m = 0; m < M; ++m) {
    f32x8 lanes = acc[m][0];
    for (int v = 1; v < kVecs; ++v) lanes += acc[m][v];
    float sum = 0;
    for (int l = 0; l < 8; ++l) sum += lanes[l];
    for (int64_t j = k; j < K; ++j) sum += to_float(row[j]) * x[m * K + j];
    y[m * N + n] = sum;
  }
}

#if defined(__AVX512BF16__)
// Rows of x against bfloat16 weights on a CPU with bfloat16 arithmetic (AVX512-BF16): one
// instruction multiplies 32 weight/input pairs and adds them into 16 float32 lanes, instead of
// widening every weight to float32 first (that widening made the loop compute-bound: 16 -> 19
// GB/s here for one row; for a shared step's 16 rows the float32 loop's multiply-adds, not memory,
// set the time: 57 ms a step, 3.5 ms more per row). x is narrowed to bfloat16 once per product
// (narrowing it again for every weight row cost 7% of the MLP's time here); its values are ones
// the eager path holds in bfloat16, so narrowing is exact, and each product of two bfloat16 values
// is exact in float32: only the order of the additions differs. Every row of x is summed in the
// same order whatever M is, so a sequence's results do not depend on who shares its step.
std::vector<__m512bh> narrowed(const float* x, int64_t M, int64_t K) {
  const int64_t chunks = K / 32;
  std::vector<__m512bh> xb(M * chunks);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < chunks; ++c)
      xb[m * chunks + c] = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + m * K + 32 * c + 16), _mm512_loadu_ps(x + m * K + 32 * c));
  return xb;
}

// y[m, n] for M rows of x (xb: narrowed, `chunks` vectors a row) against weight row n.
template <int M>
inline void row_dot_bf16(const uint16_t* row, const __m512bh* xb, int64_t chunks, const float* x, float* y, int64_t K,
                         int64_t N, int64_t n) {
  const int64_t whole = chunks * 32;
  __m512 acc0[M], acc1[M];
  for (int m = 0; m < M; ++m) acc0[m] = acc1[m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= whole; k += 64) {
    prefetch_ahead(row + k);
    prefetch_ahead(row + k + 32);
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(row + k), w1 = (__m512bh)_mm512_loadu_si512(row + k + 32);
    for (int m = 0; m < M; ++m) {
      acc0[m] = _mm512_dpbf16_ps(acc0[m], w0, xb[m * chunks + k / 32]);
      acc1[m] = _mm512_dpbf16_ps(acc1[m], w1, xb[m * chunks + k / 32 + 1]);
    }
  }
  if (k < whole) {                                   // one chunk of 32 left
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(row + k);
    for (int m = 0; m < M; ++m) acc0[m] = _mm512_dpbf16_ps(acc0[m], w0, xb[m * chunks + k / 32]);
    k += 32;
  }
  for (int m = 0; m < M; ++m) {
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0[m], acc1[m]));
    for (int64_t j = k; j < K; ++j) sum += to_float(row[j]) * x[m * K + j];
    y[m * N + n] = sum;
  }
}

void rows_dot_bf16(const uint16_t* w, const float* x, float* y, int64_t M, int64_t K, int64_t N, int64_t begin,
                   int64_t end) {
  const int64_t chunks = K / 32;
  const auto xb = narrowed(x, M, K);
  for (int64_t n = begin; n < end; ++n) {
    const uint16_t* row = w + n * K;             // still in L1 for the next block of rows
    for_row_blocks<kRowBlock>(M, [&](auto rows, int64_t m0) __attribute__((always_inline)) {
      row_dot_bf16<decltype(rows)::value>(row, xb.data() + m0 * chunks, chunks, x + m0 * K, y + m0 * N, K, N, n);
    });
  }
}
#endif

// llama.cpp's blocks of 32 weights, read as they are stored: decode streams 34 bytes (Q8_0: a
// float16 scale and 32 int8) or 20 bytes (Q4_1: a float16 scale d and minimum m, 32 4-bit q) per
// 32 weights, instead of 128 (float32). Weight j of a block is d * q[j] (Q8_0) or d * q[j] + m
// (Q4_1, q[j] in the low nibble of byte j for j < 16, the high nibble of byte j - 16 after).
enum Format : int64_t { kPlain = 0, kQ8_0 = 1, kQ4_1 = 2 };
constexpr int64_t kBlock = 32;

struct BlockQ8_0 {
  uint16_t d;
  int8_t q[kBlock];
};
struct BlockQ4_1 {
  uint16_t d, m;
  uint8_t q[kBlock / 2];
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_1) == 20, "llama.cpp's block layouts");

inline int64_t block_bytes(int64_t format) { return format == kQ8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_1); }

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

inline void block_q(const BlockQ4_1& b, f32x8* w) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.q)), nibble = _mm_set1_epi8(15);
  const __m128i lo = _mm_and_si128(raw, nibble), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), nibble);
  w[0] = widen8(lo, false);
  w[1] = widen8(_mm_srli_si128(lo, 8), false);
  w[2] = widen8(hi, false);
  w[3] = widen8(_mm_srli_si128(hi, 8), false);
}
#else
inline void block_q(const BlockQ8_0& b, f32x8* w) {
  for (int v = 0; v < 4; ++v) {
    i8x8 q;
    std::memcpy(&q, b.q + 8 * v, 8);
    w[v] = widen(q);
  }
}

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

// y[m, n] = sum over blocks b of d_b * (q_b . x_b) (+ m_b * sum(x_b) for Q4_1; `xsum` holds each
// row's block sums of x), each block's q . x in 16 float32 lanes (AVX-512) or 8.
#if defined(__AVX512F__)
inline void block_q16(const BlockQ8_0& b, __m512& w0, __m512& w1) {
  w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.q))));
  w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.q + 16))));
}

inline void block_q16(const BlockQ4_1& b, __m512& w0, __m512& w1) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.q)), nibble = _mm_set1_epi8(15);
  w0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(raw, nibble)));
  w1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(raw, 4), nibble)));
}

template <typename B, int M>
inline void block_row_dot(const B* row, const float* x, const float* xsum, float* y, int64_t K, int64_t N, int64_t n) {
  const int64_t blocks = K / kBlock;
  __m512 acc[M];
  float offset[M] = {};
  for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    __m512 w0, w1;
    prefetch_ahead(row + b);
    block_q16(row[b], w0, w1);
    const __m512 d = _mm512_set1_ps(half_to_float(row[b].d));
    for (int m = 0; m < M; ++m) {
      const float* xb = x + m * K + b * kBlock;
      const __m512 part = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(w0, _mm512_loadu_ps(xb)));
      acc[m] = _mm512_fmadd_ps(d, part, acc[m]);
      if constexpr (std::is_same_v<B, BlockQ4_1>) offset[m] += half_to_float(row[b].m) * xsum[m * blocks + b];
    }
  }
  for (int m = 0; m < M; ++m) y[m * N + n] = offset[m] + _mm512_reduce_add_ps(acc[m]);
}
#else
template <typename B, int M>
inline void block_row_dot(const B* row, const float* x, const float* xsum, float* y, int64_t K, int64_t N, int64_t n) {
  const int64_t blocks = K / kBlock;
  f32x8 acc[M] = {};
  float offset[M] = {};
  for (int64_t b = 0; b < blocks; ++b) {
    f32x8 w[4];
    prefetch_ahead(row + b);
    block_q(row[b], w);
    const float d = half_to_float(row[b].d);
    for (int m = 0; m < M; ++m) {
      const float* xb = x + m * K + b * kBlock;
      const f32x8 part = w[0] * load8(xb) + w[1] * load8(xb + 8) + w[2] * load8(xb + 16) + w[3] * load8(xb + 24);
      acc[m] += d * part;
      if constexpr (std::is_same_v<B, BlockQ4_1>) offset[m] += half_to_float(row[b].m) * xsum[m * blocks + b];
    }
  }
  for (int m = 0; m < M; ++m) {
    float sum = offset[m];
    for (int l = 0; l < 8; ++l) sum += acc[m][l];
    y[m * N + n] = sum;
  }
}
#endif

template <typename B>
void block_rows_dot(const B* w, const float* x, float* y, int64_t M, int64_t K, int64_t N, int64_t begin, int64_t end) {
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
      block_row_dot<B, decltype(rows)::value>(row, x + m0 * K, sb, y + m0 * N, K, N, n);
    });
  }
}

// Rows n in [begin, end) of y = x w^T for M <= kMaxRows rows of x: each weight row is read from
// memory once and used for every row of x (blocks of kRowBlock rows, the weight row still in L1
// for the second block), so a batch costs little more memory traffic than one sequence.
template <typename W>
void rows_dot(const W* w, const float* x, float* y, int64_t M, int64_t K, int64_t N, int64_t begin, int64_t end) {
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<W, uint16_t>) return rows_dot_bf16(w, x, y, M, K, N, begin, end);
#endif
  for (int64_t n = begin; n < end; ++n) {
    const W* row = w + n * K;
    for_row_blocks<kRowBlock>(M, [&](auto rows, int64_t m0) __attribute__((always_inline)) {
      row_dot<W, decltype(rows)::value>(row, x + m0 * K, y + m0 * N, K, N, n);
    });
  }
}

// a . b over n values, in 16 independent lanes so the compiler can vectorize it.
template <typename W>
inline float dot(const float* a, const W* b, int64_t n) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {0};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += a[j + l] * to_float(b[j + l]);
  float sum = 0;
  for (int l = 0; l < kLanes; ++l) sum += acc[l];
  for (; j < n; ++j) sum += a[j] * to_float(b[j]);
  return sum;
}

// Several weight matrices that share one input, in one parallel pass: fewer, larger pieces of
// work and one synchronisation instead of one per matrix.
template <typename W>
struct Product {
  const void* w;   // W values (format kPlain) or blocks
  int64_t rows;
  float* y;        // (M, rows)
  int64_t format = kPlain;
};

// Rows [begin, end) of one product, whatever its weights' format.
template <typename W>
void product_rows(const Product<W>& p, const float* x, int64_t M, int64_t K, int64_t begin, int64_t end) {
  switch (p.format) {
    case kQ8_0: block_rows_dot(static_cast<const BlockQ8_0*>(p.w), x, p.y, M, K, p.rows, begin, end); break;
    case kQ4_1: block_rows_dot(static_cast<const BlockQ4_1*>(p.w), x, p.y, M, K, p.rows, begin, end); break;
    default: rows_dot(static_cast<const W*>(p.w), x, p.y, M, K, p.rows, begin, end); break;
  }
}

template <typename W>
const W* data(const torch::Tensor& t) { return reinterpret_cast<const W*>(t.data_ptr()); }

template <typename W>
W* mutable_data(torch::Tensor& t) { return reinterpret_cast<W*>(t.data_ptr()); }

template <typename W>
std::vector<float> floats(const torch::Tensor& t) {
  std::vector<float> out(t.numel());
  const W* p = data<W>(t);
  for (size_t i = 0; i < out.size(); ++i) out[i] = to_float(p[i]);
  return out;
}

// Inside a parallel region: this thread's equal share of the rows of `ps` (no barrier).
template <typename W>
void share(const std::vector<Product<W>>& ps, const float* x, int64_t M, int64_t K) {
  int64_t total = 0;
  for (const auto& p : ps) total += p.rows;
  const int64_t threads = omp_get_num_threads(), chunk = (total + threads - 1) / threads;
  const int64_t b = std::min(total, omp_get_thread_num() * chunk), e = std::min(total, b + chunk);
  int64_t offset = 0;
  for (const auto& p : ps) {
    const int64_t lo = std::max(b, offset), hi = std::min(e, offset + p.rows);
    if (lo < hi) product_rows(p, x, M, K, lo - offset, hi - offset);
    offset += p.rows;
  }
}

// RMSNorm of M rows of K floats: w * round(x / sqrt(mean(x^2) + eps)), each result rounded to W.
template <typename W>
void norm_rows(const float* x, const W* w, float eps, int64_t M, int64_t K, float* out) {
  for (int64_t m = 0; m < M; ++m) {
    float squares = 0;
    for (int64_t k = 0; k < K; ++k) squares += x[m * K + k] * x[m * K + k];
    const float inverse = 1.0f / std::sqrt(squares / float(K) + eps);
    for (int64_t k = 0; k < K; ++k) out[m * K + k] = rounded<W>(to_float(w[k]) * rounded<W>(x[m * K + k] * inverse));
  }
}

// One row's KV cache in one layer: K and V buffers (kv_heads, cap, head_dim) and the position its
// new token is written at (it attends over positions 0..pos).
template <typename W>
struct RowCache {
  W* k;
  W* v;
  int64_t cap, pos;
};

// The clock Python's time.perf_counter() reads on Linux, in seconds, so these stamps and the
// layer hooks' stamps can be subtracted from each other.
double monotonic_seconds() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

// One decode step of a Llama decoder layer for M rows (one new token each), row m at position
// rc[m].pos of its own cache:
//   mid = x + o(attention(rotary(q, k, v)(rmsnorm1(x)))), out = mid + down(silu(gate(h)) * up(h)),
//   h = rmsnorm2(mid),
// with K and V written into each row's cache at its position. Every intermediate is rounded to W where eager
// PyTorch stores it in W, so the numbers follow the eager path. The whole layer is one parallel
// region: the threads share each product's rows and meet at barriers, rather than starting a
// new team for each of the five products (at this model's size a product takes ~10-50 us).
// Returns out and the stamps at which the attention and the MLP started and ended.
template <typename W>
std::tuple<torch::Tensor, double, double, double, double> layer_step(
    const torch::Tensor& x, const LayerWeights& L, const torch::Tensor& cos, const torch::Tensor& sin,
    const std::vector<RowCache<W>>& rc, int64_t Hk, int64_t D) {
  const int64_t M = x.size(0), K = x.size(1);
  const int64_t Hq = L.wq.size(0) / D, group = Hq / Hk, half = D / 2, I = L.wg.size(0);
  const std::vector<float> xf = floats<W>(x), cf = floats<W>(cos), sf = floats<W>(sin);
  std::vector<float> h(M * K), q(M * Hq * D), k(M * Hk * D), v(M * Hk * D), attended(M * Hq * D), o(M * K);
  std::vector<float> mid(M * K), h2(M * K), g(M * I), u(M * I), down(M * K);
  auto rotate = [&](float* r, const float* c, const float* s) {  // r * cos + rotate_half(r) * sin
    float tmp[kMaxHeadDim];
    for (int64_t j = 0; j < D; ++j) {
      const float other = j < half ? -r[j + half] : r[j - half];
      tmp[j] = rounded<W>(rounded<W>(r[j] * c[j]) + rounded<W>(other * s[j]));
    }
    std::memcpy(r, tmp, D * sizeof(float));
  };
  double stamps[4];
#pragma omp parallel num_threads(at::get_num_threads())
  {
    // The per-row work between products is shared out by rows (each row by one thread, as it is
    // alone): done by one thread while the other waited, it cost a shared step of 30 rows ~10 ms.
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) norm_rows<W>(xf.data() + m * K, data<W>(L.norm1), float(L.eps1), 1, K, h.data() + m * K);
#pragma omp master
    stamps[0] = monotonic_seconds();
    share<W>({{L.wq.data_ptr(), Hq * D, q.data(), L.format}, {L.wk.data_ptr(), Hk * D, k.data(), L.format},
              {L.wv.data_ptr(), Hk * D, v.data(), L.format}}, h.data(), M, K);
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {             // rotary, then K and V into the cache at `pos`
      const float* c = cf.data() + m * D;
      const float* s = sf.data() + m * D;
      for (int64_t i = 0; i < Hq * D; ++i) q[m * Hq * D + i] = rounded<W>(q[m * Hq * D + i]);
      for (int64_t hd = 0; hd < Hq; ++hd) rotate(q.data() + (m * Hq + hd) * D, c, s);
      for (int64_t hd = 0; hd < Hk; ++hd) {
        float* kh = k.data() + (m * Hk + hd) * D;
        for (int64_t j = 0; j < D; ++j) kh[j] = rounded<W>(kh[j]);
        rotate(kh, c, s);
        const int64_t at = (hd * rc[m].cap + rc[m].pos) * D;
        for (int64_t j = 0; j < D; ++j) {
          store(kh[j], rc[m].k + at + j);
          store(v[(m * Hk + hd) * D + j], rc[m].v + at + j);
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < M * Hq; ++i) {        // each query head over its K/V group's positions
      const int64_t m = i / Hq, gk = (i % Hq) / group, T = rc[m].pos + 1;
      std::vector<float> score(T);
      const float* qh = q.data() + i * D;
      const W* keys = rc[m].k + gk * rc[m].cap * D;
      const W* values = rc[m].v + gk * rc[m].cap * D;
      float top = -std::numeric_limits<float>::infinity();
      for (int64_t t = 0; t < T; ++t) {
        score[t] = dot(qh, keys + t * D, D) * float(L.scaling);
        top = std::max(top, score[t]);
      }
      float total = 0;
#pragma omp simd reduction(+ : total)
      for (int64_t t = 0; t < T; ++t) {
        score[t] = std::exp(score[t] - top);
        total += score[t];
      }
      float* out = attended.data() + i * D;
      std::fill(out, out + D, 0.0f);
      for (int64_t t = 0; t < T; ++t) {
        const float p = score[t] / total;
        const W* row = values + t * D;
        for (int64_t j = 0; j < D; ++j) out[j] += p * to_float(row[j]);
      }
      for (int64_t j = 0; j < D; ++j) out[j] = rounded<W>(out[j]);
    }
    share<W>({{L.wo.data_ptr(), K, o.data(), L.format}}, attended.data(), M, Hq * D);
#pragma omp barrier
#pragma omp master
    stamps[1] = monotonic_seconds();
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t i = m * K; i < (m + 1) * K; ++i) mid[i] = rounded<W>(xf[i] + rounded<W>(o[i]));
      norm_rows<W>(mid.data() + m * K, data<W>(L.norm2), float(L.eps2), 1, K, h2.data() + m * K);
    }
#pragma omp master
    stamps[2] = monotonic_seconds();
    share<W>({{L.wg.data_ptr(), I, g.data(), L.format}, {L.wu.data_ptr(), I, u.data(), L.format}}, h2.data(), M, K);
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t i = 0; i < M * I; ++i) {
      const float gate = rounded<W>(g[i]);
      g[i] = rounded<W>(rounded<W>(gate / (1.0f + std::exp(-gate))) * rounded<W>(u[i]));
    }
    share<W>({{L.wd.data_ptr(), K, down.data(), L.format}}, g.data(), M, I);
  }
  stamps[3] = monotonic_seconds();
  auto out = torch::empty({M, K}, x.options());
  W* op = mutable_data<W>(out);
  for (int64_t i = 0; i < M * K; ++i) store(mid[i] + rounded<W>(down[i]), op + i);
  return {out, stamps[0], stamps[1], stamps[2], stamps[3]};
}

// Llama's RMSNorm for a few rows (the model's final norm), with the fused layer's norm_rows.
template <typename W>
torch::Tensor rmsnorm_step(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  const int64_t M = x.size(0), K = x.size(1);
  std::vector<float> normed(M * K);
  norm_rows<W>(floats<W>(x).data(), data<W>(weight), float(eps), M, K, normed.data());
  auto out = torch::empty_like(x);
  W* op = mutable_data<W>(out);
  for (int64_t i = 0; i < M * K; ++i) store(normed[i], op + i);   // already a W value: exact
  return out;
}

void check_block(const torch::Tensor& x, std::initializer_list<torch::Tensor> weights) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu() && x.size(0) <= kMaxRows, "fused step: bad input");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16, "fused step: dtype");
  for (const auto& w : weights)
    TORCH_CHECK(w.is_contiguous() && w.scalar_type() == x.scalar_type() && w.device().is_cpu(), "fused step: weight");
}

// The seven matrices: in x's dtype, or uint8 blocks (whose row length the products check by K).
void check_matrices(const torch::Tensor& x, int64_t format, std::initializer_list<torch::Tensor> weights) {
  if (format == kPlain) return check_block(x, weights);
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && (format == kQ8_0 || format == kQ4_1), "fused step: blocks need "
              "float32 activations and format 1 (Q8_0) or 2 (Q4_1)");
  for (const auto& w : weights)
    TORCH_CHECK(w.is_contiguous() && w.scalar_type() == torch::kUInt8 && w.dim() == 2 && w.device().is_cpu() &&
                w.size(1) % block_bytes(format) == 0, "fused step: bad blocks");
}

}  // namespace

// The fused blocks take x as (..., K), as the modules receive it, and return (..., N): the
// leading dimensions are the rows (a batch of sequences, one new token each).
torch::Tensor as_rows(const torch::Tensor& x) { return x.reshape({-1, x.size(-1)}).contiguous(); }

torch::Tensor shaped_like(const torch::Tensor& y, const torch::Tensor& x) {
  auto sizes = x.sizes().vec();
  sizes.back() = y.size(1);
  return y.view(sizes);
}

torch::Tensor rmsnorm(torch::Tensor x, torch::Tensor weight, double eps) {
  const auto rows = as_rows(x);
  check_block(rows, {weight});
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == rows.size(1), "rmsnorm: bad weight");
  const auto y = rows.scalar_type() == torch::kFloat32 ? rmsnorm_step<float>(rows, weight, eps)
                                                       : rmsnorm_step<uint16_t>(rows, weight, eps);
  return shaped_like(y, x);
}

// Each row's cache in each layer, from groups of rows that share a (K, V) buffer pair: group g is
// (K, V) each (rows_g, kv_heads, cap_g, head_dim) with its new tokens at positions[g].
template <typename W>
std::vector<std::vector<RowCache<W>>> row_caches(
    const std::vector<std::vector<std::pair<torch::Tensor, torch::Tensor>>>& caches,
    const std::vector<int64_t>& positions, const torch::Tensor& rows, int64_t Hk, int64_t D) {
  std::vector<std::vector<RowCache<W>>> out(caches.size());
  for (size_t i = 0; i < caches.size(); ++i) {
    TORCH_CHECK(caches[i].size() == positions.size(), "layers: one (K, V) pair per group in every layer");
    for (size_t g = 0; g < caches[i].size(); ++g) {
      auto k = caches[i][g].first, v = caches[i][g].second;
      check_block(rows, {k, v});
      TORCH_CHECK(k.dim() == 4 && k.size(1) == Hk && k.size(3) == D && positions[g] >= 0 && positions[g] < k.size(2) &&
                  v.sizes() == k.sizes(), "layers: bad cache for group ", g);
      for (int64_t b = 0; b < k.size(0); ++b)
        out[i].push_back({mutable_data<W>(k) + b * Hk * k.size(2) * D, mutable_data<W>(v) + b * Hk * k.size(2) * D,
                          k.size(2), positions[g]});
    }
    TORCH_CHECK(int64_t(out[i].size()) == rows.size(0), "layers: the groups hold ", out[i].size(), " rows, x has ",
                rows.size(0));
  }
  return out;
}

template <typename W>
std::tuple<torch::Tensor, std::vector<double>> layers_step(
    torch::Tensor rows, const std::vector<LayerWeights>& weights, const torch::Tensor& c, const torch::Tensor& s,
    const std::vector<std::vector<std::pair<torch::Tensor, torch::Tensor>>>& caches,
    const std::vector<int64_t>& positions, int64_t Hk, int64_t D) {
  const auto rc = row_caches<W>(caches, positions, rows, Hk, D);
  std::vector<double> stamps;
  stamps.reserve(6 * weights.size());
  for (size_t i = 0; i < weights.size(); ++i) {
    const auto& L = weights[i];
    check_block(rows, {L.norm1, c, s, L.norm2});
    check_matrices(rows, L.format, {L.wq, L.wk, L.wv, L.wo, L.wg, L.wu, L.wd});
    const double start = monotonic_seconds();
    auto result = layer_step<W>(rows, L, c, s, rc[i], Hk, D);
    rows = std::get<0>(result);
    stamps.insert(stamps.end(), {start, std::get<1>(result), std::get<2>(result), std::get<3>(result),
                                 std::get<4>(result), monotonic_seconds()});
  }
  return {rows, stamps};
}

// One decode step of every Llama decoder layer for a few rows, one new token each: for each layer
//   mid = x + attention(rmsnorm1(x)), out = mid + mlp(rmsnorm2(mid)),
// with each row's K and V written into its own cache. x: (..., hidden), the rows of every group in
// order; cos, sin: (rows or 1, ..., head_dim) as the model's rotary embedding gives them;
// caches[layer][group] = (K, V), each (rows_g, kv_heads, cap_g, head_dim); positions[group] where
// the group's new tokens go. The groups may be different runs with caches of different lengths
// (continuous batching): each row attends over its own cache only, with no padding, while every
// weight is read once for all the rows. One call for the whole stack: between layers there is no
// Python (measured at 50-80 us a layer, a tenth of a decode step). Returns the last layer's out
// and, per layer, six perf_counter stamps: layer start, attention start and end, MLP start and
// end, layer end (no module or hook is called).
std::tuple<torch::Tensor, std::vector<double>> layers(
    torch::Tensor x, const std::vector<LayerWeights>& weights, torch::Tensor cos, torch::Tensor sin,
    const std::vector<std::vector<std::pair<torch::Tensor, torch::Tensor>>>& caches,
    const std::vector<int64_t>& positions) {
  auto rows = as_rows(x);
  const int64_t M = rows.size(0);
  TORCH_CHECK(!caches.empty() && caches.size() == weights.size() && !caches[0].empty(),
              "layers: one list of (K, V) groups per layer");
  const int64_t Hk = caches[0][0].first.size(1), D = caches[0][0].first.size(3);
  TORCH_CHECK(D <= kMaxHeadDim, "layers: head_dim ", D, " is above ", kMaxHeadDim);
  TORCH_CHECK(cos.size(-1) == D && sin.sizes() == cos.sizes() && (cos.numel() == D || cos.numel() == M * D),
              "layers: bad rotary");
  const auto c = cos.reshape({-1, D}).expand({M, D}).contiguous(), s = sin.reshape({-1, D}).expand({M, D}).contiguous();
  auto result = rows.scalar_type() == torch::kFloat32 ? layers_step<float>(rows, weights, c, s, caches, positions, Hk, D)
                                                      : layers_step<uint16_t>(rows, weights, c, s, caches, positions, Hk, D);
  return {shaped_like(std::get<0>(result), x), std::get<1>(result)};
}

// x: (M, K) float32 or bfloat16; w: (N, K) of the same dtype, contiguous -> (M, N) in x's dtype.
torch::Tensor gemv(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "gemv: shapes do not match");
  TORCH_CHECK(w.is_contiguous() && w.device().is_cpu(), "gemv: weight must be a contiguous CPU tensor");
  TORCH_CHECK(x.size(0) <= kMaxRows, "gemv: at most ", kMaxRows, " rows, got ", x.size(0));
  auto xf = x.to(torch::kFloat32).contiguous();
  const int64_t M = xf.size(0), K = xf.size(1), N = w.size(0);
  auto y = torch::empty({M, N}, xf.options());
  const float* xp = xf.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  if (w.scalar_type() == torch::kFloat32) {
    const float* wp = w.data_ptr<float>();
    at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) { rows_dot(wp, xp, yp, M, K, N, b, e); });
  } else {
    TORCH_CHECK(w.scalar_type() == torch::kBFloat16, "gemv: weight must be float32 or bfloat16");
    const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
    at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) { rows_dot(wp, xp, yp, M, K, N, b, e); });
  }
  return y.to(x.scalar_type());
}

// x: (M, K) float32; blocks: (N, K / 32 * block bytes) uint8 in `format` (1 = Q8_0, 2 = Q4_1) -> (M, N).
torch::Tensor gemv_blocks(torch::Tensor x, torch::Tensor blocks, int64_t format) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.size(0) <= kMaxRows, "gemv_blocks: bad x");
  TORCH_CHECK(format == kQ8_0 || format == kQ4_1, "gemv_blocks: format 1 (Q8_0) or 2 (Q4_1)");
  const int64_t M = x.size(0), K = x.size(1), N = blocks.size(0);
  TORCH_CHECK(K % kBlock == 0 && blocks.scalar_type() == torch::kUInt8 && blocks.is_contiguous() &&
              blocks.size(1) == K / kBlock * block_bytes(format), "gemv_blocks: blocks do not match x");
  auto xf = x.contiguous();
  auto y = torch::empty({M, N}, xf.options());
  const Product<float> p{blocks.data_ptr(), N, y.data_ptr<float>(), format};
  at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) { product_rows(p, xf.data_ptr<float>(), M, K, b, e); });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("MAX_ROWS") = kMaxRows;
  pybind11::class_<LayerWeights>(m, "LayerWeights")
      .def(pybind11::init<>())
      .def_readwrite("norm1", &LayerWeights::norm1)
      .def_readwrite("wq", &LayerWeights::wq)
      .def_readwrite("wk", &LayerWeights::wk)
      .def_readwrite("wv", &LayerWeights::wv)
      .def_readwrite("wo", &LayerWeights::wo)
      .def_readwrite("norm2", &LayerWeights::norm2)
      .def_readwrite("wg", &LayerWeights::wg)
      .def_readwrite("wu", &LayerWeights::wu)
      .def_readwrite("wd", &LayerWeights::wd)
      .def_readwrite("eps1", &LayerWeights::eps1)
      .def_readwrite("eps2", &LayerWeights::eps2)
      .def_readwrite("scaling", &LayerWeights::scaling)
      .def_readwrite("format", &LayerWeights::format);
  // Without the GIL: while a decode step runs, the server's other Python threads (each student's
  // page handler, the web server) can do their small jobs instead of queueing for it after.
  m.def("gemv", &gemv, "multi-core matrix-vector product", pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("layers", &layers, "one decode step of every Llama decoder layer, K and V written into the caches",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("gemv_blocks", &gemv_blocks, "multi-core matrix-vector product over Q8_0 or Q4_1 blocks",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("rmsnorm", &rmsnorm, "Llama's RMSNorm for a few rows");
}
