// Products of a few rows against float32 or bfloat16 weights, one weight row at a time.
#pragma once

#include "common.h"

namespace {

// y[m, n] = w[n, :] . x[m, :] for M rows of x and weight row n, in 32 float32 lanes (4 vectors)
// summed lane by lane at the end. M is a compile-time constant so the compiler can keep the M x 4
// accumulators in registers: 10-25% faster than a run-time M on the LM head's product here. From
// about 4 rows on the loop is bound by loading x and by the multiply-adds, not by memory.
template <typename W, int M>
inline void row_dot(const W* row, const float* x, float* y, int64_t K, int64_t N, int64_t n, int64_t ahead) {
  constexpr int kVecs = 4, kLanes = 8 * kVecs;
  f32x8 acc[M][kVecs] = {};
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    for (int line = 0; line < kLanes * int(sizeof(W)); line += 64)
      prefetch_ahead(reinterpret_cast<const char*>(row + k) + line, ahead);
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
                         int64_t N, int64_t n, int64_t ahead) {
  const int64_t whole = chunks * 32;
  __m512 acc0[M], acc1[M];
  for (int m = 0; m < M; ++m) acc0[m] = acc1[m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= whole; k += 64) {
    prefetch_ahead(row + k, ahead);
    prefetch_ahead(row + k + 32, ahead);
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
                   int64_t end, int64_t ahead) {
  const int64_t chunks = K / 32;
  const auto xb = narrowed(x, M, K);
  for (int64_t n = begin; n < end; ++n) {
    const uint16_t* row = w + n * K;             // still in L1 for the next block of rows
    for_row_blocks<kRowBlock>(M, [&](auto rows, int64_t m0) __attribute__((always_inline)) {
      row_dot_bf16<decltype(rows)::value>(row, xb.data() + m0 * chunks, chunks, x + m0 * K, y + m0 * N, K, N, n, ahead);
    });
  }
}
#endif

}  // namespace
