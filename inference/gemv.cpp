// Matrix-vector products for decode on CPU, spread over all cores.
//
// PyTorch's single-row Linear (MKL sgemv, oneDNN for bf16) runs on one core here and reaches about
// a third of the memory bandwidth; decode is nothing but such products. This kernel splits the
// weight rows across ATen's thread pool and streams each row once, accumulating in float32 in 32
// independent lanes (so the compiler vectorizes the loop without reordering any lane's sum).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>

namespace {

inline float to_float(float v) { return v; }

inline float to_float(uint16_t bf16) {  // bfloat16 is the top half of a float32
  uint32_t bits = uint32_t(bf16) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// y[m, n] = w[n, :] . x[m, :] for rows n in [begin, end): each weight row is read once and used
// for all M inputs (a batch costs little more memory traffic than one sequence).
template <typename W>
void rows_dot(const W* w, const float* x, float* y, int64_t M, int64_t K, int64_t N, int64_t begin, int64_t end) {
  constexpr int kLanes = 32;
  constexpr int kMaxRows = 8;
  for (int64_t n = begin; n < end; ++n) {
    const W* row = w + n * K;
    float acc[kMaxRows][kLanes] = {{0}};
    int64_t k = 0;
    for (; k + kLanes <= K; k += kLanes) {
      float wf[kLanes];
      for (int l = 0; l < kLanes; ++l) wf[l] = to_float(row[k + l]);
      for (int64_t m = 0; m < M; ++m)
        for (int l = 0; l < kLanes; ++l) acc[m][l] += wf[l] * x[m * K + k + l];
    }
    for (int64_t m = 0; m < M; ++m) {
      float sum = 0;
      for (int l = 0; l < kLanes; ++l) sum += acc[m][l];
      for (int64_t j = k; j < K; ++j) sum += to_float(row[j]) * x[m * K + j];
      y[m * N + n] = sum;
    }
  }
}

}  // namespace

// x: (M, K) float32 or bfloat16; w: (N, K) of the same dtype, contiguous -> (M, N) in x's dtype.
torch::Tensor gemv(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "gemv: shapes do not match");
  TORCH_CHECK(w.is_contiguous() && w.device().is_cpu(), "gemv: weight must be a contiguous CPU tensor");
  TORCH_CHECK(x.size(0) <= 8, "gemv: at most 8 rows, got ", x.size(0));
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("gemv", &gemv, "multi-core matrix-vector product"); }
