// The fused decode step of one Llama decoder layer, and the final RMSNorm, built from the products.
#pragma once

#include "products.h"

namespace {

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

// One row's KV cache in one layer, as blocks of `block` positions: block b's K and V are
// (kv_heads, block, head_dim) at k / v + b * kv_heads * block * head_dim, and the row's positions
// t live in block table[t / block] at t % block (a paged cache). A contiguous cache (kv_heads,
// cap, head_dim) is one block of `cap` positions, with no table. The row's new token is written at
// `pos` (it attends over positions 0..pos).
template <typename W>
struct RowCache {
  W* k;
  W* v;
  const int64_t* table;   // nullptr: one contiguous block
  int64_t block, Hk, D, pos;

  int64_t offset(int64_t g, int64_t t) const {     // of head g's position t, in elements
    const int64_t b = table == nullptr ? 0 : table[t / block];
    return ((b * Hk + g) * block + t % block) * D;
  }
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
        const int64_t at = rc[m].offset(hd, rc[m].pos);
        for (int64_t j = 0; j < D; ++j) {
          store(kh[j], rc[m].k + at + j);
          store(v[(m * Hk + hd) * D + j], rc[m].v + at + j);
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < M * Hq; ++i) {        // each query head over its K/V group's positions
      const int64_t m = i / Hq, gk = (i % Hq) / group, T = rc[m].pos + 1, B = rc[m].block;
      std::vector<float> score(T);
      const float* qh = q.data() + i * D;
      float top = -std::numeric_limits<float>::infinity();
      for (int64_t t0 = 0; t0 < T; t0 += B) {       // block by block (one block when contiguous)
        const W* keys = rc[m].k + rc[m].offset(gk, t0);
        for (int64_t t = t0; t < std::min(T, t0 + B); ++t) {
          score[t] = dot(qh, keys + (t - t0) * D, D) * float(L.scaling);
          top = std::max(top, score[t]);
        }
      }
      float total = 0;
#pragma omp simd reduction(+ : total)
      for (int64_t t = 0; t < T; ++t) {
        score[t] = std::exp(score[t] - top);
        total += score[t];
      }
      float* out = attended.data() + i * D;
      std::fill(out, out + D, 0.0f);
      for (int64_t t0 = 0; t0 < T; t0 += B) {
        const W* values = rc[m].v + rc[m].offset(gk, t0);
        for (int64_t t = t0; t < std::min(T, t0 + B); ++t) {
          const float p = score[t] / total;
          const W* row = values + (t - t0) * D;
          for (int64_t j = 0; j < D; ++j) out[j] += p * to_float(row[j]);
        }
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

}  // namespace
