// How a product is shared out: rows of weights between threads, rows of x in register blocks.
#pragma once

#include "dense.h"
#include "blocks.h"

namespace {

// Rows n in [begin, end) of y = x w^T for M <= kMaxRows rows of x: each weight row is read from
// memory once and used for every row of x (blocks of kRowBlock rows, the weight row still in L1
// for the second block), so a batch costs little more memory traffic than one sequence.
template <typename W>
void rows_dot(const W* w, const float* x, float* y, int64_t M, int64_t K, int64_t N, int64_t begin, int64_t end,
              int64_t ahead) {
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<W, uint16_t>) return rows_dot_bf16(w, x, y, M, K, N, begin, end, ahead);
#endif
  for (int64_t n = begin; n < end; ++n) {
    const W* row = w + n * K;
    for_row_blocks<kRowBlock>(M, [&](auto rows, int64_t m0) __attribute__((always_inline)) {
      row_dot<W, decltype(rows)::value>(row, x + m0 * K, y + m0 * N, K, N, n, ahead);
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

// Which of g_tuning a product reads: by its weights' format, and for plain weights by their dtype.
template <typename W>
int64_t kind_of(int64_t format) {
  if (format == kQ8_0) return kKindQ8_0;
  if (format == kQ4_1) return kKindQ4_1;
  return std::is_same_v<W, float> ? kFloat32 : kBFloat16;
}

// Rows [begin, end) of one product, whatever its weights' format, in its kind's variant.
template <typename W>
void product_rows(const Product<W>& p, const float* x, int64_t M, int64_t K, int64_t begin, int64_t end) {
  const Tuning& t = g_tuning[kind_of<W>(p.format)];
  switch (p.format) {
    case kQ8_0: block_rows_dot<BlockQ8_0, 0>(static_cast<const BlockQ8_0*>(p.w), x, p.y, M, K, p.rows, begin, end,
                                             t.prefetch); break;
    case kQ4_1:
      if (t.unpack == 1)
        block_rows_dot<BlockQ4_1, 1>(static_cast<const BlockQ4_1*>(p.w), x, p.y, M, K, p.rows, begin, end, t.prefetch);
      else
        block_rows_dot<BlockQ4_1, 0>(static_cast<const BlockQ4_1*>(p.w), x, p.y, M, K, p.rows, begin, end, t.prefetch);
      break;
    default: rows_dot(static_cast<const W*>(p.w), x, p.y, M, K, p.rows, begin, end, t.prefetch); break;
  }
}

// Rows [lo, hi) of the products `ps` laid end to end.
template <typename W>
void span_rows(const std::vector<Product<W>>& ps, const float* x, int64_t M, int64_t K, int64_t lo, int64_t hi) {
  int64_t offset = 0;
  for (const auto& p : ps) {
    const int64_t b = std::max(lo, offset), e = std::min(hi, offset + p.rows);
    if (b < e) product_rows(p, x, M, K, b - offset, e - offset);
    offset += p.rows;
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

// Inside a parallel region, called by every thread: the rows of `ps` shared as the first product's
// kind's variant says (an equal contiguous share each, or pieces to whichever thread is free); no
// barrier after.
template <typename W>
void share(const std::vector<Product<W>>& ps, const float* x, int64_t M, int64_t K) {
  int64_t total = 0;
  for (const auto& p : ps) total += p.rows;
  const int64_t piece = g_tuning[kind_of<W>(ps[0].format)].chunk;
  if (piece > 0) {
    const int64_t pieces = (total + piece - 1) / piece;
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t i = 0; i < pieces; ++i) span_rows(ps, x, M, K, i * piece, std::min(total, (i + 1) * piece));
    return;
  }
  const int64_t threads = omp_get_num_threads(), chunk = (total + threads - 1) / threads;
  const int64_t b = std::min(total, omp_get_thread_num() * chunk), e = std::min(total, b + chunk);
  span_rows(ps, x, M, K, b, e);
}

}  // namespace
