// How a product is shared out: rows of weights between threads, rows of x in register blocks.
#pragma once

#include "dense.h"
#include "blocks.h"

namespace {

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

}  // namespace
