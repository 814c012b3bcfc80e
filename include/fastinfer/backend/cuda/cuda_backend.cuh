// CudaBackend: the Backend (backend/backend.hpp) on an NVIDIA GPU.
// Activations live in device buffers (kHostVisible = false: the model reads
// logits and hidden rows back through to_host), weights are copied to the
// device once by upload(), every kernel runs on one stream of a CudaContext
// shared with the KV stores the backend makes (cuda/kv_store.cuh). Small
// host arrays that describe a step (token ids, positions, row indices) are
// staged into device scratch buffers, grown on demand and kept.
//
// Status: the cuda tests pass on an H200 (sm_90, 2026-12-04); what came
// after (Q8_0 weights, sampling on the device, int4 KV at head sizes 40 / 72
// / 80) is compiled, not run. CI compiles sm_80 and sm_90 without a GPU
// (docs/backend-cuda.md).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string_view>
#include <vector>

#include <cuda_runtime.h>

#include "fastinfer/backend/backend.hpp"
#include "fastinfer/backend/cuda/argmax.cuh"
#include "fastinfer/backend/cuda/cuda_check.cuh"
#include "fastinfer/backend/cuda/cuda_context.cuh"
#include "fastinfer/backend/cuda/device_buffer.cuh"
#include "fastinfer/backend/cuda/dtype.cuh"
#include "fastinfer/backend/cuda/elementwise.cuh"
#include "fastinfer/backend/cuda/kv_store.cuh"
#include "fastinfer/backend/cuda/linear.cuh"
#include "fastinfer/backend/cuda/sampling.cuh"
#include "fastinfer/core/argmax.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/philox.hpp"
#include "fastinfer/core/rope_style.hpp"
#include "fastinfer/core/sampling_params.hpp"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer {

class CudaBackend {
 public:
  static constexpr std::string_view kName = "cuda";
  static constexpr bool kHostVisible = false;

  template <typename T>
  using Buffer = cuda::DeviceBuffer<T>;

  // Throws Error when no CUDA device is present.
  explicit CudaBackend(int device = 0) : ctx_(std::make_shared<cuda::CudaContext>(device)), s_(new Scratch) {}
  // A copy shares the device context (device, stream, cuBLAS handle), so
  // its kernels run in order with the original's, and has scratch of its
  // own: what a second model on the same device needs (the Engine's draft
  // model takes a copy of the target's backend).
  CudaBackend(const CudaBackend& other) : ctx_(other.ctx_), s_(new Scratch) {}
  CudaBackend& operator=(const CudaBackend& other) {
    if (this != &other) ctx_ = other.ctx_, s_ = std::make_unique<Scratch>();
    return *this;
  }
  CudaBackend(CudaBackend&&) noexcept = default;
  CudaBackend& operator=(CudaBackend&&) noexcept = default;
  ~CudaBackend() = default;

  cuda::CudaContext& context() { return *ctx_; }
  cudaStream_t stream() const { return ctx_->stream(); }

  template <typename T>
  Buffer<T> allocate(std::size_t n) {
    return Buffer<T>(n);
  }
  // Waits for the stream: the host sees every kernel queued before.
  void to_host(const float* src, std::size_t n, float* host) { cuda::copy_to_host(host, src, n, stream()); }

  // Tensors are copied to the device once (Q8_0 into its device rows,
  // cuda/dtype.cuh); the device copy's owner joins `storage` (freed with
  // the weights).
  MatrixView upload(const MatrixView& w, std::vector<KeepAlive>& storage) {
    MatrixView d = w;
    std::vector<std::uint8_t> split;
    if (w.dtype == DType::Q8_0) {
      split = cuda::q8_0_split_rows(w);
      d.layout = MatrixLayout::q8_0_split_rows;
    }
    const std::size_t bytes = w.bytes();
    void* p = nullptr;
    FASTINFER_CUDA_CHECK(cudaMalloc(&p, bytes));
    KeepAlive owner(p, [](const void* q) { (void)cudaFree(const_cast<void*>(q)); });
    FASTINFER_CUDA_CHECK(cudaMemcpy(p, split.empty() ? w.data : split.data(), bytes, cudaMemcpyHostToDevice));
    storage.push_back(owner);
    d.data = p;
    return d;
  }

  // Kernels run on one stream in order; the thread count is the CPU's knob.
  void set_threads(int threads) {
    FASTINFER_CHECK(threads >= 1, InvalidArgument, "threads must be at least 1, got ", threads);
  }

  void embed(const MatrixView& table, const std::int32_t* tokens, std::int64_t n, float* out) {
    cuda::check_device_weight(table);
    const std::int32_t* d = cuda::stage(s_->tokens, tokens, std::size_t(n), stream());
    cuda::embed(table.dtype, table.data, table.cols, d, n, out, stream());
  }

  void linear(const MatrixView& w, const float* x, std::int64_t n, float* y) {
    cuda::linear(w, x, n, y, ctx_->blas(), s_->act16, stream());
  }
  // One GEMV launch for weights that read the same x (backend.hpp's optional verb).
  void linear_group(const MatrixView* ws, float* const* ys, int count, const float* x, std::int64_t n) {
    cuda::linear_group(ws, ys, count, x, n, ctx_->blas(), s_->act16, stream());
  }
  // silu(x gate^T) * (x up^T) in one GEMV launch (backend.hpp's optional verb).
  void linear_swiglu(const MatrixView& gate, const MatrixView& up, const float* x, std::int64_t n, float* out) {
    cuda::linear_swiglu(gate, up, x, n, out, s_->up, ctx_->blas(), s_->act16, stream());
  }

  void rmsnorm(float* out, const float* x, const std::int32_t* rows, std::int64_t n, const float* weight, int dim,
               float eps) {
    const std::int32_t* d = rows ? cuda::stage(s_->rows, rows, std::size_t(n), stream()) : nullptr;
    cuda::rmsnorm(out, x, d, n, weight, dim, eps, stream());
  }
  // x += delta, then out = rmsnorm(x), one launch (backend.hpp's optional verb).
  void add_rmsnorm(float* x, const float* delta, float* out, std::int64_t n, const float* weight, int dim,
                   float eps) {
    cuda::add_rmsnorm(x, delta, out, n, weight, dim, eps, stream());
  }

  void rope(float* x, std::int64_t n, int heads, int head_dim, const std::int64_t* positions, float theta,
            RopeStyle style) {
    rope_pair(x, heads, nullptr, 0, n, head_dim, positions, theta, style);
  }
  // q and k at the same positions in one launch (backend.hpp's optional verb).
  void rope_pair(float* q, int q_heads, float* k, int k_heads, std::int64_t n, int head_dim,
                 const std::int64_t* positions, float theta, RopeStyle style) {
    FASTINFER_CHECK(head_dim > 0 && head_dim % 2 == 0, InvalidArgument,
                    "rope: head_dim must be positive and even, got ", head_dim);
    if (n <= 0) return;
    s_->pos_host.resize(std::size_t(n));
    std::int64_t highest = 0;
    for (std::int64_t t = 0; t < n; ++t) {
      FASTINFER_CHECK(positions[t] >= 0 && positions[t] < (std::int64_t(1) << 30), InvalidArgument,
                      "rope: position ", positions[t], " outside [0, 2^30)");
      s_->pos_host[std::size_t(t)] = std::int32_t(positions[t]);
      highest = std::max(highest, positions[t]);
    }
    rope_table_(head_dim, theta, highest);
    // The same positions as the last call (q then k, layer after layer of
    // one pass) are on the device already: no copy.
    if (s_->pos_host != s_->pos_staged) {
      cuda::stage(s_->positions, s_->pos_host.data(), std::size_t(n), stream());
      s_->pos_staged = s_->pos_host;
    }
    const std::int32_t* d = s_->positions.data();
    cuda::rope(q, n, q_heads, head_dim, d, s_->cos.data(), s_->sin.data(), style, stream(), k, k_heads);
  }

  void swiglu(float* gate, const float* up, std::int64_t n) { cuda::swiglu(gate, up, n, stream()); }
  void add(float* y, const float* x, std::int64_t n) { cuda::add(y, x, n, stream()); }
  void copy_rows(float* dst, std::int64_t dst_stride, const float* src, std::int64_t src_stride, std::int64_t rows,
                 int width) {
    cuda::copy_rows(dst, dst_stride, src, src_stride, rows, width, stream());
  }

  std::unique_ptr<KVStore> make_kv_store(const KVOptions& options, const kv::KVCacheConfig& config) {
    return cuda::make_kv_store(ctx_, options, config);
  }

  // Greedy on the device (cuda/argmax.cuh): 12 bytes per row come back, not
  // the row; the same token as the CPU's first maximum, and the same
  // refusals (NaN, +inf, every logit -inf), checked for every row before any
  // token is written.
  void argmax_rows(const float* logits, std::int64_t vocab, const std::int32_t* rows, std::int64_t n,
                   std::int32_t* tokens) {
    if (n <= 0) return;
    detail::check_logits_size(vocab);
    const std::int32_t* d = cuda::stage(s_->rows, rows, std::size_t(n), stream());
    s_->argmax.reserve_discard(std::size_t(n));
    cuda::argmax_rows(logits, vocab, d, n, s_->argmax.data(), stream());
    s_->argmax_host.resize(std::size_t(n));
    cuda::copy_to_host(s_->argmax_host.data(), s_->argmax.data(), std::size_t(n), stream());
    for (const cuda::RowArgmax& r : s_->argmax_host)
      detail::check_max(r.has_nan ? std::numeric_limits<float>::quiet_NaN() : r.value);
    for (std::int64_t i = 0; i < n; ++i) tokens[i] = s_->argmax_host[std::size_t(i)].index;
  }
  // Every row in one launch (cuda/sampling.cuh): greedy rows take the first
  // maximum, sampled ones are drawn on the device with the Philox coin the
  // CPU draws with, so only a token per row comes back. The token equals the
  // CPU backend's except within float rounding of a boundary between two
  // tokens (sampling.cuh says where). Every row is checked before any token
  // is written.
  void sample_rows(const float* logits, std::int64_t vocab, const std::int32_t* rows, std::int64_t n,
                   const SamplingParams* params, const std::uint64_t* token_indices, std::int32_t* tokens) {
    if (n <= 0) return;
    std::vector<cuda::SampleRequest>& requests = s_->sample_requests;
    requests.resize(std::size_t(n));
    for (std::int64_t i = 0; i < n; ++i)
      requests[std::size_t(i)] = sample_request_(
          rows[i], params[i], uniform_float(params[i].seed, RandomStream::Sampling, token_indices[i]));
    pick_rows_(logits, vocab, tokens);
  }
  // The exact rule's pick at a one-hot draft per row (backend.hpp's optional
  // verb) in the same launch as sample_rows: the CPU backend's tokens but
  // where a coin falls within float rounding of p(draft) or of a boundary.
  void accept_rows(const float* logits, std::int64_t vocab, const std::int32_t* rows, std::int64_t n,
                   const SamplingParams* params, const std::int32_t* drafts, const float* accept_coins,
                   const float* residual_coins, std::int32_t* tokens) {
    if (n <= 0) return;
    std::vector<cuda::SampleRequest>& requests = s_->sample_requests;
    requests.resize(std::size_t(n));
    for (std::int64_t i = 0; i < n; ++i) {
      FASTINFER_CHECK(drafts[i] < vocab, InvalidArgument, "accept_rows: draft token ", drafts[i],
                      " is outside the vocabulary [0, ", vocab, ")");
      detail::check_coin(accept_coins[i]);
      cuda::SampleRequest& r = requests[std::size_t(i)];
      r = sample_request_(rows[i], params[i], residual_coins[i]);
      r.draft = drafts[i] < 0 ? -1 : drafts[i];
      r.accept_coin = accept_coins[i];
    }
    pick_rows_(logits, vocab, tokens);
  }

 private:
  static cuda::SampleRequest sample_request_(std::int32_t row, const SamplingParams& p, float coin) {
    validate(p);
    detail::check_coin(coin);
    // validate refuses a T whose inverse overflows: inv_t is finite.
    const float inv_t = p.temperature == 0.0f ? 0.0f : 1.0f / p.temperature;
    return cuda::SampleRequest{row, inv_t, p.top_k, p.top_p, coin};
  }
  // s_->sample_requests (n of them) in one launch; tokens written once every
  // row has passed the host's checks.
  void pick_rows_(const float* logits, std::int64_t vocab, std::int32_t* tokens) {
    detail::check_logits_size(vocab);
    const std::vector<cuda::SampleRequest>& requests = s_->sample_requests;
    const std::size_t n = requests.size();
    const cuda::SampleRequest* d = cuda::stage(s_->requests, requests.data(), n, stream());
    s_->samples.reserve_discard(n);
    cuda::sample_rows(logits, vocab, d, std::int64_t(n), s_->samples.data(), stream());
    s_->samples_host.resize(n);
    cuda::copy_to_host(s_->samples_host.data(), s_->samples.data(), n, stream());
    for (const cuda::RowSample& r : s_->samples_host) {
      detail::check_max(r.has_nan ? std::numeric_limits<float>::quiet_NaN() : r.max);
      FASTINFER_CHECK(r.token >= 0 && r.token < vocab, Error, "cuda sample_rows: no token drawn (got ",
                      r.token, ")");
    }
    for (std::size_t i = 0; i < n; ++i) tokens[i] = s_->samples_host[i].token;
  }

  // RoPE angles for positions 0..highest, computed on the host as cpu::rope's
  // table is (core's rope_angle, then f32 std::cos and std::sin) so both
  // backends rotate by the same bits; rebuilt when the shape changes, doubled when
  // a position passes the end.
  void rope_table_(int head_dim, float theta, std::int64_t highest) {
    Scratch& s = *s_;
    if (s.rope_dim == head_dim && s.rope_theta == theta && highest < s.rope_positions) return;
    const int half = head_dim / 2;
    const std::int64_t positions = std::max<std::int64_t>({highest + 1, 1024, s.rope_dim == head_dim &&
                                                                                   s.rope_theta == theta
                                                                               ? 2 * s.rope_positions
                                                                               : 0});
    std::vector<float> c(std::size_t(positions) * std::size_t(half)), sn(c.size());
    for (std::int64_t p = 0; p < positions; ++p)
      for (int i = 0; i < half; ++i) {
        const float angle = rope_angle(int(p), i, head_dim, theta);
        c[std::size_t(p) * std::size_t(half) + std::size_t(i)] = std::cos(angle);
        sn[std::size_t(p) * std::size_t(half) + std::size_t(i)] = std::sin(angle);
      }
    s.cos = Buffer<float>(c.size());
    s.sin = Buffer<float>(sn.size());
    cuda::copy_to_device(s.cos.data(), c.data(), c.size(), stream());
    cuda::copy_to_device(s.sin.data(), sn.data(), sn.size(), stream());
    s.rope_dim = head_dim, s.rope_theta = theta, s.rope_positions = positions;
  }

  // Device scratch kept across calls (behind a pointer: the backend moves).
  struct Scratch {
    Buffer<std::int32_t> tokens, rows, positions;
    Buffer<std::uint16_t> act16;  // activations rounded for a 16-bit GemmEx
    Buffer<float> up;             // linear_swiglu's x up^T above 32 rows
    Buffer<float> cos, sin;       // [position][head_dim / 2]
    int rope_dim = 0;
    float rope_theta = 0.0f;
    std::int64_t rope_positions = 0;
    std::vector<std::int32_t> pos_host;
    std::vector<std::int32_t> pos_staged;  // what `positions` holds
    Buffer<cuda::RowArgmax> argmax;     // argmax_rows: one result per row
    std::vector<cuda::RowArgmax> argmax_host;
    Buffer<cuda::SampleRequest> requests;  // sample_rows: one request and one result per row
    Buffer<cuda::RowSample> samples;
    std::vector<cuda::SampleRequest> sample_requests;
    std::vector<cuda::RowSample> samples_host;
  };

  std::shared_ptr<cuda::CudaContext> ctx_;
  std::unique_ptr<Scratch> s_;
};

static_assert(check_backend<CudaBackend>());

}  // namespace fastinfer
