// The CUDA backend against the CPU backend on the same inputs: every kernel
// (argmax against the host's first_argmax; sampling: test_cuda_sampling.cu),
// the KV store (append, decode / extend / tree attention, copy-on-write,
// swaps), and LlamaModel<CudaBackend> on the stories260K goldens. Without a
// CUDA device every case prints "FASTINFER_SKIP: skipped: no CUDA device"
// and CTest reports it skipped (label cuda).
//
// Tolerances (values of order 1 unless said):
//   embed, add, copy_rows, KV read and swap bytes   exact (same bits)
//   rope                       1e-5 abs (same angle table; the CPU build may fuse a product)
//   rmsnorm, swiglu            2e-6 relative to the largest output (summation order, expf)
//   linear, gemv (n <= 32) and f32 cuBLAS         1e-5 x sum_k |w_k x_k| (f32 accumulation)
//   linear, Q8_0 (any n)       1e-5 x sum_k |w_k x_k| against the f32 product of the dequantized
//                              weights (the gemv sums a block's 16 products, then scales)
//   linear, f16 / bf16 cuBLAS (n > 32)            1e-3 / 8e-3 x sum_k |w_k x_k|: x is rounded to
//                                                 the weights' type first (2^-11 / 2^-8 per value)
//   attention, f32 and f16 KV  2e-5 abs (identical stored values; f32 vs f32 summation order)
//   model logits, f32 weights  2e-4 abs; golden tokens exact
//   model logits, Q8_0 weights 2e-4 abs against the CPU's f32 model of the dequantized weights
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda_store_pair.cuh"
#include "fastinfer/backend/cpu/cpu_backend.hpp"
#include "fastinfer/backend/cpu/q8_0_reference.hpp"
#include "fastinfer/backend/cuda/cuda_backend.cuh"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/gguf_loader.hpp"
#include "fastinfer/model/llama2c_loader.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/synthetic.hpp"
#include "golden.hpp"
#include "model_scenarios.hpp"
#include "shared_dir.hpp"

using namespace fastinfer;
using fastinfer::testing::max_abs_diff;
using fastinfer::testing::StorePair;
using fastinfer::testing::to_device;
using fastinfer::testing::to_host;

namespace {

std::vector<float> randoms(std::size_t n, std::uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

double max_abs(const std::vector<float>& a) {
  double m = 0.0;
  for (float x : a) m = std::max(m, std::fabs(double(x)));
  return m;
}

// Weights of `dtype` from f32 values (row-major), kept alive by `keep`
// (Q8_0 through the reference quantizer: cols a multiple of 32).
MatrixView host_matrix(DType dtype, const std::vector<float>& v, std::int64_t rows, std::int64_t cols,
                       std::vector<std::vector<std::uint16_t>>& keep) {
  if (dtype == DType::F32) return MatrixView{DType::F32, v.data(), rows, cols};
  if (dtype == DType::Q8_0) {
    const std::size_t stride = row_bytes(DType::Q8_0, cols);
    keep.emplace_back(stride * std::size_t(rows) / 2);
    auto* bytes = reinterpret_cast<std::uint8_t*>(keep.back().data());
    for (std::int64_t r = 0; r < rows; ++r)
      cpu::q8_0::quantize_row_reference(v.data() + r * cols, bytes + stride * std::size_t(r), cols);
    return MatrixView{DType::Q8_0, bytes, rows, cols};
  }
  keep.emplace_back(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) keep.back()[i] = dtype == DType::F16 ? f32_to_f16(v[i]) : f32_to_bf16(v[i]);
  return MatrixView{dtype, keep.back().data(), rows, cols};
}

// The f32 values a host matrix of any dtype stores, row-major.
std::vector<float> stored_values(const MatrixView& h) {
  std::vector<float> out(std::size_t(h.rows * h.cols));
  for (std::int64_t r = 0; r < h.rows; ++r)
    cpu::load_row(h.dtype, h.row_ptr(r), out.data() + r * h.cols, h.cols);
  return out;
}

}  // namespace

TEST_CASE("cuda: CudaBackend satisfies the backend concept and refuses what it lacks with one line", "[cuda]") {
  STATIC_REQUIRE(is_backend_v<CudaBackend>);
  STATIC_REQUIRE_FALSE(CudaBackend::kHostVisible);
  FASTINFER_REQUIRE_CUDA();
  CudaBackend gpu;
  std::vector<KeepAlive> keep;
  std::vector<std::uint8_t> q8(34 * 2);
  CHECK_THROWS_WITH(gpu.upload(MatrixView{DType::Q8_0, q8.data(), 2, 40}, keep),
                    Catch::Contains("cuda: a Q8_0 matrix of 40 columns"));
  CHECK(keep.empty());
  // Q8_0 blocks as the host stores them: the kernels cannot read them.
  auto x = gpu.allocate<float>(32), y = gpu.allocate<float>(2);
  CHECK_THROWS_WITH(gpu.linear(MatrixView{DType::Q8_0, q8.data(), 2, 32}, x.data(), 1, y.data()),
                    Catch::Contains("not uploaded by CudaBackend::upload"));
  kv::KVCacheConfig cfg;
  cfg.n_layers = 1, cfg.n_kv_heads = 1, cfg.head_dim = 8, cfg.num_blocks = 4, cfg.block_size = 16;
  KVOptions o;
  o.quant = kv::QuantKind::F32;
  o.layout = KVLayoutKind::Window;
  CHECK_THROWS_WITH(gpu.make_kv_store(o, cfg), Catch::Contains("'window' is not yet supported on cuda"));
}

TEST_CASE("cuda: embed rmsnorm rope swiglu add copy_rows match the CPU backend", "[cuda]") {
  FASTINFER_REQUIRE_CUDA();
  CudaBackend gpu;
  CpuBackend cpu;
  std::vector<KeepAlive> owners;

  SECTION("embed, every weight dtype: exact") {
    const std::int64_t V = 50, C = 37;
    const auto table = randoms(std::size_t(V * C), 1);
    const std::vector<std::int32_t> tokens = {3, 0, 49, 7, 3};
    for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
      INFO(dtype_name(dt));
      std::vector<std::vector<std::uint16_t>> keep;
      const MatrixView h = host_matrix(dt, table, V, C, keep);
      const MatrixView d = gpu.upload(h, owners);
      std::vector<float> ref(tokens.size() * std::size_t(C));
      cpu.embed(h, tokens.data(), std::int64_t(tokens.size()), ref.data());
      auto out = gpu.allocate<float>(ref.size());
      gpu.embed(d, tokens.data(), std::int64_t(tokens.size()), out.data());
      CHECK(to_host(gpu, out, ref.size()) == ref);
    }
  }

  SECTION("rmsnorm, all rows and picked rows") {
    const int dim = 67;
    const auto x = randoms(5 * dim, 2, -3.0f, 3.0f), w = randoms(dim, 3);
    const std::vector<std::int32_t> rows = {4, 0, 2};
    auto dx = to_device(gpu, x), dw = to_device(gpu, w);
    for (const std::int32_t* r : {static_cast<const std::int32_t*>(nullptr), rows.data()}) {
      const std::int64_t n = r ? 3 : 5;
      std::vector<float> ref(std::size_t(n * dim));
      cpu.rmsnorm(ref.data(), x.data(), r, n, w.data(), dim, 1e-5f);
      auto out = gpu.allocate<float>(ref.size());
      gpu.rmsnorm(out.data(), dx.data(), r, n, dw.data(), dim, 1e-5f);
      CHECK(max_abs_diff(to_host(gpu, out, ref.size()), ref) <= 2e-6 * max_abs(ref));
    }
  }

  SECTION("rope, both styles, a position per row") {
    const int heads = 3, hd = 10;
    const std::vector<std::int64_t> pos = {0, 7, 513, 2};
    const auto x = randoms(pos.size() * heads * hd, 4);
    for (RopeStyle style : {RopeStyle::Interleaved, RopeStyle::HalfSplit}) {
      std::vector<float> ref = x;
      cpu.rope(ref.data(), std::int64_t(pos.size()), heads, hd, pos.data(), 10000.0f, style);
      auto dx = to_device(gpu, x);
      gpu.rope(dx.data(), std::int64_t(pos.size()), heads, hd, pos.data(), 10000.0f, style);
      CHECK(max_abs_diff(to_host(gpu, dx, x.size()), ref) <= 1e-5);
    }
  }

  SECTION("swiglu, add, copy_rows") {
    const std::size_t n = 1000;
    const auto g = randoms(n, 5, -8.0f, 8.0f), u = randoms(n, 6);
    std::vector<float> ref = g;
    cpu.swiglu(ref.data(), u.data(), std::int64_t(n));
    auto dg = to_device(gpu, g), du = to_device(gpu, u);
    gpu.swiglu(dg.data(), du.data(), std::int64_t(n));
    CHECK(max_abs_diff(to_host(gpu, dg, n), ref) <= 2e-6 * max_abs(ref));

    std::vector<float> sum = g;
    cpu.add(sum.data(), u.data(), std::int64_t(n));
    auto ds = to_device(gpu, g);
    gpu.add(ds.data(), du.data(), std::int64_t(n));
    CHECK(to_host(gpu, ds, n) == sum);

    // 7 rows of 6 from a stride of 9 to a stride of 8 (the model's head padding).
    std::vector<float> dst(7 * 8, 0.0f);
    cpu.copy_rows(dst.data(), 8, g.data(), 9, 7, 6);
    auto dd = gpu.allocate<float>(dst.size());
    auto src = to_device(gpu, g);
    gpu.copy_rows(dd.data(), 8, src.data(), 9, 7, 6);
    CHECK(to_host(gpu, dd, dst.size()) == dst);
  }
}

TEST_CASE("cuda: linear matches the CPU backend for f32 f16 bf16 weights, gemv and cuBLAS rows, batch invariant up to 32 rows",
          "[cuda]") {
  FASTINFER_REQUIRE_CUDA();
  CudaBackend gpu;
  CpuBackend cpu;
  std::vector<KeepAlive> owners;
  struct Shape {
    std::int64_t rows, cols;
  };
  // Rows of several slices (linear.cuh's gemv_shape: 1024 f16/bf16 or 512
  // f32 columns a warp): 2600 columns are 3 slices, the last partial; 4616
  // f32 columns 10 slices over kMaxRowWarps 8 warps (two take a second);
  // 1030 is not a multiple of the vector width (one value per lane).
  for (const Shape s : {Shape{40, 64}, Shape{33, 172}, Shape{130, 256}, Shape{24, 2600}, Shape{9, 4616},
                        Shape{17, 1030}}) {
    const auto wv = randoms(std::size_t(s.rows * s.cols), 7);
    for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
      std::vector<std::vector<std::uint16_t>> keep;
      const MatrixView h = host_matrix(dt, wv, s.rows, s.cols, keep);
      const MatrixView d = gpu.upload(h, owners);
      for (std::int64_t n : {1, 2, 3, 9, 17, 32, 33}) {
        INFO(dtype_name(dt) << " [" << s.rows << "][" << s.cols << "], " << n << " rows");
        const auto x = randoms(std::size_t(n * s.cols), 8);
        std::vector<float> ref(std::size_t(n * s.rows));
        cpu.linear(h, x.data(), n, ref.data());
        auto dx = to_device(gpu, x);
        auto dy = gpu.allocate<float>(ref.size());
        gpu.linear(d, dx.data(), n, dy.data());
        const auto got = to_host(gpu, dy, ref.size());
        if (n <= cuda::kGemvRows) {
          // Batch invariance: the first row alone gives the same bits.
          auto y1 = gpu.allocate<float>(std::size_t(s.rows));
          gpu.linear(d, dx.data(), 1, y1.data());
          CHECK(to_host(gpu, y1, std::size_t(s.rows)) == std::vector<float>(got.begin(), got.begin() + s.rows));
        }
        // The scale of each output: sum_k |w_k x_k|, with the weights as stored.
        const std::vector<float> wf = stored_values(h);
        const bool rounded = n > cuda::kGemvRows && dt != DType::F32;
        const double rel = !rounded ? 1e-5 : dt == DType::F16 ? 1e-3 : 8e-3;
        for (std::int64_t i = 0; i < n; ++i)
          for (std::int64_t r = 0; r < s.rows; ++r) {
            double scale = 0.0;
            for (std::int64_t k = 0; k < s.cols; ++k)
              scale += std::fabs(double(wf[std::size_t(r * s.cols + k)]) * double(x[std::size_t(i * s.cols + k)]));
            const std::size_t at = std::size_t(i * s.rows + r);
            REQUIRE(std::fabs(double(got[at]) - double(ref[at])) <= rel * scale + 1e-7);
          }
      }
    }
  }
}

// Q8_0 runs the gemv at every pass size (32 rows of x at a time past 32):
// against the f32 product of the dequantized weights in double, and a row's
// bits are the same alone or in a pass of any size. 256 columns: 16-byte
// rows, the vector path; 96 and 2080: one value a lane.
TEST_CASE("cuda: Q8_0 weights: linear at every pass size and embed match the dequantized weights", "[cuda]") {
  FASTINFER_REQUIRE_CUDA();
  CudaBackend gpu;
  std::vector<KeepAlive> owners;
  struct Shape {
    std::int64_t rows, cols;
  };
  for (const Shape s : {Shape{37, 256}, Shape{64, 96}, Shape{19, 2048}, Shape{9, 2080}, Shape{130, 4096}}) {
    std::vector<std::vector<std::uint16_t>> keep;
    const MatrixView h =
        host_matrix(DType::Q8_0, randoms(std::size_t(s.rows * s.cols), 31), s.rows, s.cols, keep);
    const std::vector<float> wf = stored_values(h);
    const MatrixView d = gpu.upload(h, owners);
    CHECK(d.layout == MatrixLayout::q8_0_split_rows);
    CHECK(d.bytes() == h.bytes());
    {
      INFO("embed [" << s.rows << "][" << s.cols << "]: exact");
      const std::vector<std::int32_t> tokens = {3, 0, std::int32_t(s.rows - 1), 3};
      std::vector<float> ref;
      for (std::int32_t t : tokens)
        ref.insert(ref.end(), wf.begin() + t * s.cols, wf.begin() + (t + 1) * s.cols);
      auto out = gpu.allocate<float>(ref.size());
      gpu.embed(d, tokens.data(), std::int64_t(tokens.size()), out.data());
      CHECK(to_host(gpu, out, ref.size()) == ref);
    }
    auto y1 = gpu.allocate<float>(std::size_t(s.rows));
    for (std::int64_t n : {1, 2, 5, 32, 33, 70}) {
      INFO("q8_0 [" << s.rows << "][" << s.cols << "], " << n << " rows");
      const auto x = randoms(std::size_t(n * s.cols), 32, -2.0f, 2.0f);
      auto dx = to_device(gpu, x);
      auto dy = gpu.allocate<float>(std::size_t(n * s.rows));
      gpu.linear(d, dx.data(), n, dy.data());
      const auto got = to_host(gpu, dy, std::size_t(n * s.rows));
      for (std::int64_t i = 0; i < n; ++i) {
        gpu.linear(d, dx.data() + i * s.cols, 1, y1.data());
        REQUIRE(to_host(gpu, y1, std::size_t(s.rows)) ==
                std::vector<float>(got.begin() + i * s.rows, got.begin() + (i + 1) * s.rows));
        for (std::int64_t r = 0; r < s.rows; ++r) {
          double sum = 0.0, scale = 0.0;
          for (std::int64_t k = 0; k < s.cols; ++k) {
            const double p = double(wf[std::size_t(r * s.cols + k)]) * double(x[std::size_t(i * s.cols + k)]);
            sum += p, scale += std::fabs(p);
          }
          REQUIRE(std::fabs(double(got[std::size_t(i * s.rows + r)]) - sum) <= 1e-5 * scale + 1e-7);
        }
      }
    }
  }
}

// The fused verbs (backend.hpp's optional linear_group, rope_pair,
// add_rmsnorm, linear_swiglu) against the calls they replace on the same
// device: the same bits, which is what lets the model use them without
// moving a golden token.
TEST_CASE("cuda: the fused verbs give the bits of the calls they replace", "[cuda]") {
  FASTINFER_REQUIRE_CUDA();
  CudaBackend gpu;
  std::vector<KeepAlive> owners;
  for (DType dt : {DType::F32, DType::BF16, DType::Q8_0}) {
    for (const std::int64_t cols : {64, 172, 2048, 2600}) {
      if (dt == DType::Q8_0 && cols % 32 != 0) continue;
      const std::int64_t rows = 96;
      std::vector<std::vector<std::uint16_t>> keep;
      const MatrixView gate = gpu.upload(host_matrix(dt, randoms(std::size_t(rows * cols), 21), rows, cols, keep), owners);
      const MatrixView up = gpu.upload(host_matrix(dt, randoms(std::size_t(rows * cols), 22), rows, cols, keep), owners);
      const MatrixView third =
          gpu.upload(host_matrix(dt, randoms(std::size_t(40 * cols), 23), 40, cols, keep), owners);
      for (std::int64_t n : {1, 3, 17, 32, 33}) {
        INFO(dtype_name(dt) << ", cols " << cols << ", " << n << " rows");
        auto x = to_device(gpu, randoms(std::size_t(n * cols), 24, -2.0f, 2.0f));
        const std::size_t out = std::size_t(n * rows);
        auto g1 = gpu.allocate<float>(out), u1 = gpu.allocate<float>(out), t1 = gpu.allocate<float>(std::size_t(n * 40));
        gpu.linear(gate, x.data(), n, g1.data());
        gpu.linear(up, x.data(), n, u1.data());
        gpu.linear(third, x.data(), n, t1.data());
        // linear_group: three weights (one of another height), one launch.
        auto g2 = gpu.allocate<float>(out), u2 = gpu.allocate<float>(out), t2 = gpu.allocate<float>(std::size_t(n * 40));
        const MatrixView ws[3] = {gate, up, third};
        float* const ys[3] = {g2.data(), u2.data(), t2.data()};
        gpu.linear_group(ws, ys, 3, x.data(), n);
        CHECK(to_host(gpu, g2, out) == to_host(gpu, g1, out));
        CHECK(to_host(gpu, u2, out) == to_host(gpu, u1, out));
        CHECK(to_host(gpu, t2, std::size_t(n * 40)) == to_host(gpu, t1, std::size_t(n * 40)));
        // linear_swiglu = linear(gate), linear(up), swiglu.
        gpu.swiglu(g1.data(), u1.data(), std::int64_t(out));
        auto fused = gpu.allocate<float>(out);
        gpu.linear_swiglu(gate, up, x.data(), n, fused.data());
        CHECK(to_host(gpu, fused, out) == to_host(gpu, g1, out));
      }
    }
  }
  // rope_pair = rope(q), rope(k); add_rmsnorm = add, rmsnorm (out aliasing delta).
  for (const RopeStyle style : {RopeStyle::Interleaved, RopeStyle::HalfSplit}) {
    const std::int64_t n = 5;
    const int qh = 6, kh = 2, hd = 24;
    const std::vector<std::int64_t> pos{0, 3, 7, 100, 4095};
    const auto q = randoms(std::size_t(n * qh * hd), 31), k = randoms(std::size_t(n * kh * hd), 32);
    auto q1 = to_device(gpu, q), k1 = to_device(gpu, k), q2 = to_device(gpu, q), k2 = to_device(gpu, k);
    gpu.rope(q1.data(), n, qh, hd, pos.data(), 10000.0f, style);
    gpu.rope(k1.data(), n, kh, hd, pos.data(), 10000.0f, style);
    gpu.rope_pair(q2.data(), qh, k2.data(), kh, n, hd, pos.data(), 10000.0f, style);
    CHECK(to_host(gpu, q2, q.size()) == to_host(gpu, q1, q.size()));
    CHECK(to_host(gpu, k2, k.size()) == to_host(gpu, k1, k.size()));
  }
  for (const int dim : {64, 2048, 5000}) {  // 5000: the two-pass long-row path
    INFO("dim " << dim);
    const std::int64_t n = 3;
    const auto x = randoms(std::size_t(n * dim), 41), delta = randoms(std::size_t(n * dim), 42);
    auto w = to_device(gpu, randoms(std::size_t(dim), 43));
    auto x1 = to_device(gpu, x), d1 = to_device(gpu, delta), x2 = to_device(gpu, x), d2 = to_device(gpu, delta);
    gpu.add(x1.data(), d1.data(), n * dim);
    gpu.rmsnorm(d1.data(), x1.data(), nullptr, n, w.data(), dim, 1e-5f);
    gpu.add_rmsnorm(x2.data(), d2.data(), d2.data(), n, w.data(), dim, 1e-5f);
    CHECK(to_host(gpu, x2, x.size()) == to_host(gpu, x1, x.size()));
    CHECK(to_host(gpu, d2, x.size()) == to_host(gpu, d1, x.size()));
  }
}

TEST_CASE("cuda: argmax_rows and greedy sample_rows pick the CPU's first maximum", "[cuda]") {
  FASTINFER_REQUIRE_CUDA();
  CudaBackend gpu;
  // Vocabularies below, at and across the block's 256 threads and a real
  // one; each row's maximum is placed to test the first-index rule across
  // threads and warps (ties at i and i + 256, at i and i + 1).
  for (const std::int64_t vocab : {1, 7, 255, 256, 257, 1000, 32000, 50001}) {
    CAPTURE(vocab);
    const std::int64_t n_rows = 6;
    std::vector<float> host = randoms(std::size_t(n_rows * vocab), std::uint32_t(vocab));
    auto at = [&](std::int64_t r, std::int64_t i) -> float& { return host[std::size_t(r * vocab + i % vocab)]; };
    at(1, vocab - 1) = 5.0f;                        // maximum at the last index
    at(2, 3) = 4.0f, at(2, 3 + 256) = 4.0f;         // a tie across threads: the first wins
    at(2, 3 + 512) = 4.0f;                          // ... and across the sampler's id tiles
    at(3, vocab / 2 + 1) = 3.0f, at(3, vocab / 2) = 3.0f;  // a tie in neighbouring threads
    for (std::int64_t i = 1; i < vocab; i += 3) at(4, i) = -INFINITY;  // -inf among the values
    at(5, 0) = 2.0f;                                // maximum at index 0
    cuda::DeviceBuffer<float> d = to_device(gpu, host);
    const std::vector<std::int32_t> rows = {5, 0, 2, 3, 4, 1, 2};  // any order, repeats allowed
    std::vector<std::int32_t> tokens(rows.size(), -1);
    gpu.argmax_rows(d.data(), vocab, rows.data(), std::int64_t(rows.size()), tokens.data());
    for (std::size_t i = 0; i < rows.size(); ++i)
      CHECK(tokens[i] == first_argmax(host.data() + std::int64_t(rows[i]) * vocab, vocab));
    // Greedy rows of sample_rows: the same first maximum through the
    // sampling kernel (cuda/sampling.cuh), whose id tiles are 512 wide.
    const std::vector<SamplingParams> greedy(rows.size());
    const std::vector<std::uint64_t> indices(rows.size(), 0);
    std::vector<std::int32_t> sampled(rows.size(), -1);
    gpu.sample_rows(d.data(), vocab, rows.data(), std::int64_t(rows.size()), greedy.data(), indices.data(),
                    sampled.data());
    CHECK(sampled == tokens);
  }
  // The CPU's refusals, by name, before any token is written.
  const std::int64_t vocab = 300;
  const std::int32_t rows[2] = {0, 1};
  for (const float bad : {NAN, INFINITY}) {
    std::vector<float> host = randoms(std::size_t(2 * vocab), 5);
    host[std::size_t(vocab + 299)] = bad;
    cuda::DeviceBuffer<float> d = to_device(gpu, host);
    std::int32_t tokens[2] = {-1, -1};
    CHECK_THROWS_WITH(gpu.argmax_rows(d.data(), vocab, rows, 2, tokens),
                      Catch::Contains(std::isnan(bad) ? "logits contain NaN" : "logits contain +inf"));
    CHECK((tokens[0] == -1 && tokens[1] == -1));
  }
  std::vector<float> host(std::size_t(vocab), -INFINITY);
  cuda::DeviceBuffer<float> d = to_device(gpu, host);
  std::int32_t token = -1;
  CHECK_THROWS_WITH(gpu.argmax_rows(d.data(), vocab, rows, 1, &token), Catch::Contains("every logit is -inf"));
}

TEST_CASE("cuda: the paged KV store's attention, copies and swaps match the CPU store", "[cuda]") {
  FASTINFER_REQUIRE_CUDA();
  CudaBackend gpu;
  for (kv::QuantKind quant : {kv::QuantKind::F32, kv::QuantKind::F16})
    for (int d : {8, 24, 128})
      for (int bs : {1, 16}) {
        INFO(kv::quant_name(quant) << ", head_dim " << d << ", block size " << bs);
        kv::KVCacheConfig cfg;
        cfg.n_layers = 2, cfg.n_kv_heads = 2, cfg.head_dim = d, cfg.block_size = bs;
        cfg.num_blocks = 1400 / bs + 64;
        KVOptions o;
        o.layout = KVLayoutKind::Paged;
        o.quant = quant;
        o.block_size = bs;
        StorePair p{cpu::make_kv_store(o, cfg), gpu.make_kv_store(o, cfg), &gpu, 2, 2, 6, d};
        CHECK(p.gpu->bytes_per_token() == p.cpu->bytes_per_token());
        CHECK(p.gpu->host_block_bytes() == p.cpu->host_block_bytes());
        p.attention_scenario();
        // Stored rows decode to the same values.
        std::vector<float> ck(std::size_t(2 * d)), cv(ck.size()), gk(ck.size()), gv(ck.size());
        for (std::int64_t pos : {0, 6, 8}) {
          p.cpu->read(1, 4, pos, ck.data(), cv.data());
          p.gpu->read(1, 4, pos, gk.data(), gv.data());
          CHECK(ck == gk);
          CHECK(cv == gv);
        }
        // Swap a block out and into a free block, then copy it: the same bytes as the CPU's.
        const BlockId b = p.cpu->allocator().block_table(3).front();
        const std::size_t hb = p.cpu->host_block_bytes();
        std::vector<std::uint8_t> hc(hb), hg(hb);
        p.cpu->swap_out(b, hc.data());
        p.gpu->swap_out(b, hg.data());
        CHECK(hc == hg);
        const BlockId spare = *p.cpu->allocator().allocate();
        REQUIRE(*p.gpu->allocator().allocate() == spare);
        p.gpu->swap_in(hg.data(), spare);
        std::vector<std::uint8_t> back(hb);
        p.gpu->swap_out(spare, back.data());
        CHECK(back == hc);
        const BlockId spare2 = *p.gpu->allocator().allocate();
        p.gpu->copy_blocks({BlockCopy{spare, spare2, 0}});
        p.gpu->swap_out(spare2, back.data());
        CHECK(back == hc);
      }
}

namespace {

ModelOptions paged_options(kv::QuantKind quant = kv::QuantKind::F32) {
  ModelOptions o;
  o.kv.layout = KVLayoutKind::Paged;
  o.kv.block_size = 16;
  o.kv.quant = quant;
  o.kv.max_sequences = 4;
  return o;
}

}  // namespace

TEST_CASE("cuda: LlamaModel on CudaBackend reproduces the stories260K goldens with f32 weights and f32 KV",
          "[cuda][golden]") {
  FASTINFER_REQUIRE_CUDA();
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(cases_dir, "golden/cases");
  const auto cases = testing::read_golden_cases(cases_dir);
  REQUIRE(cases.size() >= 4);
  LlamaModel<CudaBackend> model(load_llama2c(model_path.string()), paged_options());
  for (const auto& c : cases) {
    INFO("case " << c.name);
    GenerationParams p;
    p.max_new_tokens = c.max_new_tokens;
    CHECK(generate(model, c.prompt, p).tokens == c.continuation);
  }
}

namespace {

// A prefill of n random tokens (every row's logits), then 6 decode steps,
// each fed the CPU model's argmax, on both models: logits within 2e-4 at
// every step. Returns the prompt.
std::vector<std::int32_t> compare_prefill_and_decode(LlamaModel<>& ref, LlamaModel<CudaBackend>& dev, int n,
                                                     std::uint32_t seed) {
  const std::int64_t V = ref.config().vocab_size;
  std::mt19937 rng(seed);
  std::vector<std::int32_t> prompt(static_cast<std::size_t>(n));
  for (auto& t : prompt) t = std::int32_t(rng() % std::uint32_t(V));
  std::vector<float> a(prompt.size() * std::size_t(V)), b(a.size());
  ref.forward_prefill_all(prompt.data(), n, 0, a.data());
  dev.forward_prefill_all(prompt.data(), n, 0, b.data());
  CHECK(max_abs_diff(a, b) <= 2e-4);
  std::int32_t t = first_argmax(a.data() + (n - 1) * V, V);
  for (int pos = n; pos < n + 6; ++pos) {
    const float* la = ref.forward_decode(t, pos);
    const float* lb = dev.forward_decode(t, pos);
    CHECK(max_abs_diff(std::vector<float>(la, la + V), std::vector<float>(lb, lb + V)) <= 2e-4);
    t = first_argmax(la, V);
  }
  return prompt;
}

}  // namespace

// Q8_0 weights on the device against the CPU's f32 model of the same
// weights dequantized (the CPU's own Q8_0 path rounds the activations to
// int8 too, so it is not the oracle): a prefill past 32 rows (the gemv in
// chunks), then decode steps.
TEST_CASE("cuda: LlamaModel with Q8_0 weights matches the CPU's f32 model of the dequantized weights",
          "[cuda]") {
  FASTINFER_REQUIRE_CUDA();
  LlamaConfig c = synthetic_config("tiny");
  c.dim = 64, c.hidden_dim = 256, c.n_heads = 8, c.n_kv_heads = 4, c.head_dim = 8, c.n_layers = 3;
  const LlamaWeights q8 = quantize_weights_q8_0(make_synthetic(c, DType::F32, 5));
  LlamaModel<> ref(gguf_detail::convert_weights(q8, DType::F32), paged_options());
  LlamaModel<CudaBackend> dev(q8, paged_options());
  compare_prefill_and_decode(ref, dev, 45, 11);
}

TEST_CASE("cuda: LlamaModel logits match the CPU's on a padded head, a ragged batch, a tree and a fork",
          "[cuda]") {
  FASTINFER_REQUIRE_CUDA();
  LlamaConfig c = synthetic_config("tiny");
  c.dim = 48, c.n_heads = 8, c.n_kv_heads = 4, c.head_dim = 6, c.n_layers = 3;  // head 6: padded to 8
  const LlamaWeights w = make_synthetic(c, DType::F32, 3);
  LlamaModel<> ref(w, paged_options());
  LlamaModel<CudaBackend> dev(w, paged_options());
  const std::vector<std::int32_t> prompt = compare_prefill_and_decode(ref, dev, 40, 9);
  auto require = [](bool ok) { REQUIRE(ok); };
  CHECK(max_abs_diff(testing::ragged_tree_fork_logits(ref, prompt, require),
                     testing::ragged_tree_fork_logits(dev, prompt, require)) <= 2e-4);
}
