// Matrix-vector products for decode on CPU, spread over all cores, and a fused decode step of a
// whole Llama decoder layer (one new token per row) built from them.
//
// PyTorch's single-row Linear (MKL sgemv, oneDNN for bf16) runs on one core here and reaches about
// a third of the memory bandwidth; decode is nothing but such products. These kernels split the
// weight rows across OpenMP threads (`gemv` through ATen's parallel_for, which is OpenMP in this
// torch build; the fused layer as one OpenMP parallel region) and stream each row once,
// accumulating in float32 in 32 independent lanes (so the compiler vectorizes the loop without
// reordering any lane's sum).
//
// The parts, by job, are in inference/kernels/cpp/: common.h, dense.h, blocks.h, products.h, layer.h;
// this file holds the argument checks and the Python bindings. The build hashes every one of them.
#include "layer.h"

namespace {

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
                          nullptr, k.size(2), Hk, D, positions[g]});
    }
    TORCH_CHECK(int64_t(out[i].size()) == rows.size(0), "layers: the groups hold ", out[i].size(), " rows, x has ",
                rows.size(0));
  }
  return out;
}

// Each row's cache in each layer from a paged cache: pools[layer] = (K, V), each (blocks,
// kv_heads, block, head_dim); tables[row] the row's block ids (int64), positions[row] where its
// new token goes (its table must reach that position).
template <typename W>
std::vector<std::vector<RowCache<W>>> paged_caches(
    const std::vector<std::pair<torch::Tensor, torch::Tensor>>& pools, const std::vector<torch::Tensor>& tables,
    const std::vector<int64_t>& positions, const torch::Tensor& rows, int64_t Hk, int64_t D) {
  TORCH_CHECK(int64_t(tables.size()) == rows.size(0) && positions.size() == tables.size(),
              "layers_paged: one block table and one position per row");
  std::vector<std::vector<RowCache<W>>> out(pools.size());
  for (size_t i = 0; i < pools.size(); ++i) {
    auto k = pools[i].first, v = pools[i].second;
    check_block(rows, {k, v});
    TORCH_CHECK(k.dim() == 4 && k.size(1) == Hk && k.size(3) == D && v.sizes() == k.sizes(), "layers_paged: bad pool");
    for (size_t r = 0; r < tables.size(); ++r) {
      const auto& table = tables[r];
      TORCH_CHECK(table.dim() == 1 && table.scalar_type() == torch::kInt64 && table.is_contiguous() && table.is_cpu() &&
                  positions[r] >= 0 && positions[r] < table.size(0) * k.size(2), "layers_paged: bad table for row ", r);
      const int64_t* ids = table.data_ptr<int64_t>();
      for (int64_t b = 0; b <= positions[r] / k.size(2); ++b)
        TORCH_CHECK(ids[b] >= 0 && ids[b] < k.size(0), "layers_paged: row ", r, " names block ", ids[b]);
      out[i].push_back({mutable_data<W>(k), mutable_data<W>(v), ids, k.size(2), Hk, D, positions[r]});
    }
  }
  return out;
}

template <typename W>
std::tuple<torch::Tensor, std::vector<double>> layers_step(
    torch::Tensor rows, const std::vector<LayerWeights>& weights, const torch::Tensor& c, const torch::Tensor& s,
    const std::vector<std::vector<RowCache<W>>>& rc, int64_t D) {
  const int64_t Hk = rc[0][0].Hk;
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
  auto result = rows.scalar_type() == torch::kFloat32
                    ? layers_step<float>(rows, weights, c, s, row_caches<float>(caches, positions, rows, Hk, D), D)
                    : layers_step<uint16_t>(rows, weights, c, s, row_caches<uint16_t>(caches, positions, rows, Hk, D), D);
  return {shaped_like(std::get<0>(result), x), std::get<1>(result)};
}

// `layers` over a paged KV cache (the shared server's block pool): pools[layer] = (K, V), each
// (blocks, kv_heads, block, head_dim), shared by every row; tables[row]: the row's block ids in
// order (int64); positions[row]: where its new token goes. The same arithmetic as `layers`, block
// by block, so a row gives the same bits from either cache.
std::tuple<torch::Tensor, std::vector<double>> layers_paged(
    torch::Tensor x, const std::vector<LayerWeights>& weights, torch::Tensor cos, torch::Tensor sin,
    const std::vector<std::pair<torch::Tensor, torch::Tensor>>& pools, const std::vector<torch::Tensor>& tables,
    const std::vector<int64_t>& positions) {
  auto rows = as_rows(x);
  const int64_t M = rows.size(0);
  TORCH_CHECK(!pools.empty() && pools.size() == weights.size(), "layers_paged: one (K, V) pool per layer");
  const int64_t Hk = pools[0].first.size(1), D = pools[0].first.size(3);
  TORCH_CHECK(D <= kMaxHeadDim, "layers_paged: head_dim ", D, " is above ", kMaxHeadDim);
  TORCH_CHECK(cos.size(-1) == D && sin.sizes() == cos.sizes() && (cos.numel() == D || cos.numel() == M * D),
              "layers_paged: bad rotary");
  const auto c = cos.reshape({-1, D}).expand({M, D}).contiguous(), s = sin.reshape({-1, D}).expand({M, D}).contiguous();
  auto result = rows.scalar_type() == torch::kFloat32
                    ? layers_step<float>(rows, weights, c, s, paged_caches<float>(pools, tables, positions, rows, Hk, D), D)
                    : layers_step<uint16_t>(rows, weights, c, s, paged_caches<uint16_t>(pools, tables, positions, rows, Hk, D), D);
  return {shaped_like(std::get<0>(result), x), std::get<1>(result)};
}

// Rows [0, N) of one product over all threads, shared as `kind`'s variant says (see Tuning).
template <typename F>
void parallel_rows(int64_t N, int64_t kind, const F& f) {
  const int64_t piece = g_tuning[kind].chunk;
  if (piece <= 0) return at::parallel_for(0, N, 64, f);
  const int64_t pieces = (N + piece - 1) / piece;
#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads())
  for (int64_t i = 0; i < pieces; ++i) f(i * piece, std::min(N, (i + 1) * piece));
}

// The variant (see Tuning) that products over `kind`'s weights run from now on, in every thread.
void set_tuning(int64_t kind, int64_t prefetch, int64_t chunk, int64_t unpack) {
  TORCH_CHECK(kind >= 0 && kind < kKinds, "set_tuning: kind 0..", kKinds - 1);
  TORCH_CHECK(prefetch >= 0 && prefetch <= 65536 && chunk >= 0 && (unpack == 0 || unpack == 1), "set_tuning: bad knob");
  g_tuning[kind] = {prefetch, chunk, unpack};
}

std::tuple<int64_t, int64_t, int64_t> tuning(int64_t kind) {
  TORCH_CHECK(kind >= 0 && kind < kKinds, "tuning: kind 0..", kKinds - 1);
  const Tuning& t = g_tuning[kind];
  return {t.prefetch, t.chunk, t.unpack};
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
    const Product<float> p{w.data_ptr(), N, yp, kPlain};
    parallel_rows(N, kFloat32, [&](int64_t b, int64_t e) { product_rows(p, xp, M, K, b, e); });
  } else {
    TORCH_CHECK(w.scalar_type() == torch::kBFloat16, "gemv: weight must be float32 or bfloat16");
    const Product<uint16_t> p{w.data_ptr(), N, yp, kPlain};
    parallel_rows(N, kBFloat16, [&](int64_t b, int64_t e) { product_rows(p, xp, M, K, b, e); });
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
  parallel_rows(N, kind_of<float>(format), [&](int64_t b, int64_t e) { product_rows(p, xf.data_ptr<float>(), M, K, b, e); });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("MAX_ROWS") = kMaxRows;
  // The block formats as compiled (tests hold inference/kernels/build.py's reading of the source to them).
  m.attr("BLOCK") = kBlock;
  pybind11::dict formats, sizes;
  formats["Q8_0"] = int64_t(kQ8_0);
  formats["Q4_1"] = int64_t(kQ4_1);
  sizes[pybind11::int_(int64_t(kQ8_0))] = sizeof(BlockQ8_0);
  sizes[pybind11::int_(int64_t(kQ4_1))] = sizeof(BlockQ4_1);
  m.attr("FORMAT_CODES") = formats;
  pybind11::dict kinds;
  kinds["float32"] = int64_t(kFloat32);
  kinds["bfloat16"] = int64_t(kBFloat16);
  kinds["int8"] = int64_t(kKindQ8_0);
  kinds["q4_1"] = int64_t(kKindQ4_1);
  m.attr("KINDS") = kinds;     // the kinds of weights each with its own variant (set_tuning)
  m.attr("BLOCK_BYTES") = sizes;
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
  m.def("layers_paged", &layers_paged, "`layers` over a paged KV cache: block pools and a block table per row",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("gemv_blocks", &gemv_blocks, "multi-core matrix-vector product over Q8_0 or Q4_1 blocks",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("rmsnorm", &rmsnorm, "Llama's RMSNorm for a few rows");
  m.def("set_tuning", &set_tuning, "the variant (prefetch bytes, rows per piece or 0, Q4_1 unpacking) for a kind");
  m.def("tuning", &tuning, "a kind's variant: (prefetch bytes, rows per piece or 0, Q4_1 unpacking)");
}
