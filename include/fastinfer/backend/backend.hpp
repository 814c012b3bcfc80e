// The compute-backend seam: what LlamaModel (and through it the engine and
// the speculative code) needs from a backend, checked at compile time.
//
// A backend owns memory and compute. The model holds its activations in the
// backend's buffers and hands the backend's kernels pointers into them; it
// never reads or writes those bytes itself. The KV cache's bytes belong to
// the KVStore the backend makes (kv/kv_store.hpp). Small host arrays that
// describe a step (token ids, positions, row indices) are passed as host
// pointers: a device backend copies them in.
//
// A backend B provides (all members non-static unless marked):
//
//   static constexpr std::string_view kName      "cpu", "cuda", ...
//   static constexpr bool kHostVisible            buffers are host memory the
//                                                 caller may read directly
//   template <class T> class Buffer               owning; data(), size(), movable
//   Buffer<T> allocate<T>(std::size_t n)          zero-filled
//   void to_host(const float* src, std::size_t n, float* host)
//   MatrixView upload(const MatrixView& w, std::vector<KeepAlive>& storage)
//                                                 a weight tensor where the kernels
//                                                 read it (its owner appended to
//                                                 storage); CpuBackend: w itself
//   void set_threads(int)                         most threads a kernel may use
//   void embed(const MatrixView& table, const std::int32_t* tokens,
//              std::int64_t n, float* out)        rows of the table, as f32
//   void linear(const MatrixView& w, const float* x, std::int64_t n, float* y)
//                                                 y[n][w.rows] = x[n][w.cols] W^T,
//                                                 any weight dtype
//   void rmsnorm(float* out, const float* x, const std::int32_t* rows,
//                std::int64_t n, const float* weight, int dim, float eps)
//                                                 out[i] = norm(x[rows[i]]) (rows
//                                                 nullptr: x[i])
//   void rope(float* x, std::int64_t n, int heads, int head_dim,
//             const std::int64_t* positions, float theta, RopeStyle style)
//   void swiglu(float* gate, const float* up, std::int64_t n)
//   void add(float* y, const float* x, std::int64_t n)
//   void copy_rows(float* dst, std::int64_t dst_stride, const float* src,
//                  std::int64_t src_stride, std::int64_t rows, int width)
//   std::unique_ptr<KVStore> make_kv_store(const KVOptions&, const kv::KVCacheConfig&)
//   void argmax_rows(const float* logits, std::int64_t vocab, const std::int32_t* rows,
//                    std::int64_t n, std::int32_t* tokens)
//                                                 tokens[i] = first maximum of logits
//                                                 row rows[i] (logits in the backend's
//                                                 memory, rows and tokens host arrays);
//                                                 NaN / +inf rows refused
//   void sample_rows(const float* logits, std::int64_t vocab, const std::int32_t* rows,
//                    std::int64_t n, const SamplingParams* params,
//                    const std::uint64_t* token_indices, std::int32_t* tokens)
//                                                 tokens[i] drawn from row rows[i] under
//                                                 params[i] with the coin Philox(seed,
//                                                 token_indices[i]) (core/sampling_params.hpp
//                                                 and backend/cpu/sampling.hpp give the
//                                                 contract; the CPU backend's tokens are
//                                                 its sampler's, bit for bit); temperature 0
//                                                 is argmax. A device backend samples
//                                                 where the logits are and returns ids
//                                                 (CudaBackend: the same tokens but
//                                                 within float rounding of a boundary
//                                                 between two tokens, cuda/sampling.cuh).
//
// Optional (the model uses each where present and no profiler runs, else the
// calls it replaces):
//
//   void linear_group(const MatrixView* ws, float* const* ys, int count,
//                     const float* x, std::int64_t n)
//                                                 ys[m] = x ws[m]^T for the count
//                                                 weights of one input (q, k, v;
//                                                 gate, up), each ys[m] as linear()
//                                                 gives it, bit for bit; CudaBackend:
//                                                 one launch for the group
//
//   void rope_pair(float* q, int q_heads, float* k, int k_heads, std::int64_t n,
//                  int head_dim, const std::int64_t* positions, float theta, RopeStyle)
//                                                 rope(q), rope(k) at the same positions
//   void add_rmsnorm(float* x, const float* delta, float* out, std::int64_t n,
//                    const float* weight, int dim, float eps)
//                                                 add(x, delta), then rmsnorm(out, x)
//                                                 (out may be delta)
//   void linear_swiglu(const MatrixView& gate, const MatrixView& up,
//                      const float* x, std::int64_t n, float* out)
//                                                 linear(gate) to out, linear(up),
//                                                 swiglu(out, up)
//                                                 Each as the calls it replaces gives
//                                                 it, bit for bit (the fusions that
//                                                 save a device backend launches).
//
//   void accept_rows(const float* logits, std::int64_t vocab, const std::int32_t* rows,
//                    std::int64_t n, const SamplingParams* params,
//                    const std::int32_t* drafts, const float* accept_coins,
//                    const float* residual_coins, std::int32_t* tokens)
//                                                 the exact rule's pick at a one-hot
//                                                 draft (core/rejection_sampling.hpp's
//                                                 exact_pick): tokens[i] = drafts[i] when
//                                                 accept_coins[i] < p(drafts[i]), p row
//                                                 rows[i]'s distribution under params[i],
//                                                 else a draw from p without drafts[i]
//                                                 with residual_coins[i]; drafts[i] < 0:
//                                                 a draw from p. The Engine verifies a
//                                                 deterministic drafter's chain under the
//                                                 exact rule with it where the rows are
//                                                 not host memory (without it they are
//                                                 copied out); CpuBackend: the host
//                                                 verifier's tokens, bit for bit
//
// check_backend<B>() names the first missing member in a static_assert;
// is_backend_v<B> says whether all are there. Adding a backend: implement
// these (backend/cpu/cpu_backend.hpp is the model), make a KVStore over
// kv::KVCache's bookkeeping with your own arena and attention, and
// instantiate LlamaModel<YourBackend>. docs/architecture.md has the table.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "fastinfer/core/rope_style.hpp"
#include "fastinfer/core/sampling_params.hpp"
#include "fastinfer/core/tensor.hpp"
#include "fastinfer/kv/kv_cache.hpp"
#include "fastinfer/kv/kv_store.hpp"

namespace fastinfer {
namespace backend_detail {

template <typename...>
using void_t = void;

#define FASTINFER_BACKEND_MEMBER_(NAME, EXPR)                       \
  template <typename B, typename = void>                            \
  struct has_##NAME : std::false_type {};                           \
  template <typename B>                                             \
  struct has_##NAME<B, void_t<decltype(EXPR)>> : std::true_type {};

FASTINFER_BACKEND_MEMBER_(name, std::string_view(B::kName))
FASTINFER_BACKEND_MEMBER_(host_visible, bool(B::kHostVisible))
FASTINFER_BACKEND_MEMBER_(buffer, std::declval<typename B::template Buffer<float>&>().data())
FASTINFER_BACKEND_MEMBER_(allocate,
                          std::declval<typename B::template Buffer<float>&>() =
                              std::declval<B&>().template allocate<float>(std::size_t{}))
FASTINFER_BACKEND_MEMBER_(to_host, std::declval<B&>().to_host(std::declval<const float*>(), std::size_t{},
                                                              std::declval<float*>()))
FASTINFER_BACKEND_MEMBER_(upload, std::declval<MatrixView&>() = std::declval<B&>().upload(
                                      std::declval<const MatrixView&>(), std::declval<std::vector<KeepAlive>&>()))
FASTINFER_BACKEND_MEMBER_(set_threads, std::declval<B&>().set_threads(1))
FASTINFER_BACKEND_MEMBER_(embed, std::declval<B&>().embed(std::declval<const MatrixView&>(),
                                                          std::declval<const std::int32_t*>(), std::int64_t{},
                                                          std::declval<float*>()))
FASTINFER_BACKEND_MEMBER_(linear, std::declval<B&>().linear(std::declval<const MatrixView&>(),
                                                            std::declval<const float*>(), std::int64_t{},
                                                            std::declval<float*>()))
FASTINFER_BACKEND_MEMBER_(rmsnorm, std::declval<B&>().rmsnorm(std::declval<float*>(), std::declval<const float*>(),
                                                              std::declval<const std::int32_t*>(), std::int64_t{},
                                                              std::declval<const float*>(), int{}, float{}))
FASTINFER_BACKEND_MEMBER_(rope, std::declval<B&>().rope(std::declval<float*>(), std::int64_t{}, int{}, int{},
                                                        std::declval<const std::int64_t*>(), float{},
                                                        RopeStyle{}))
FASTINFER_BACKEND_MEMBER_(swiglu, std::declval<B&>().swiglu(std::declval<float*>(), std::declval<const float*>(),
                                                            std::int64_t{}))
FASTINFER_BACKEND_MEMBER_(add, std::declval<B&>().add(std::declval<float*>(), std::declval<const float*>(),
                                                      std::int64_t{}))
FASTINFER_BACKEND_MEMBER_(copy_rows, std::declval<B&>().copy_rows(std::declval<float*>(), std::int64_t{},
                                                                  std::declval<const float*>(), std::int64_t{},
                                                                  std::int64_t{}, int{}))
FASTINFER_BACKEND_MEMBER_(make_kv_store,
                          std::declval<std::unique_ptr<KVStore>&>() = std::declval<B&>().make_kv_store(
                              std::declval<const KVOptions&>(), std::declval<const kv::KVCacheConfig&>()))

FASTINFER_BACKEND_MEMBER_(argmax_rows, std::declval<B&>().argmax_rows(std::declval<const float*>(), std::int64_t{},
                                                                      std::declval<const std::int32_t*>(),
                                                                      std::int64_t{}, std::declval<std::int32_t*>()))
FASTINFER_BACKEND_MEMBER_(sample_rows,
                          std::declval<B&>().sample_rows(std::declval<const float*>(), std::int64_t{},
                                                         std::declval<const std::int32_t*>(), std::int64_t{},
                                                         std::declval<const SamplingParams*>(),
                                                         std::declval<const std::uint64_t*>(),
                                                         std::declval<std::int32_t*>()))

FASTINFER_BACKEND_MEMBER_(linear_group, std::declval<B&>().linear_group(
                                          std::declval<const MatrixView*>(), std::declval<float* const*>(), int{},
                                          std::declval<const float*>(), std::int64_t{}))

FASTINFER_BACKEND_MEMBER_(rope_pair, std::declval<B&>().rope_pair(std::declval<float*>(), int{},
                                                                  std::declval<float*>(), int{}, std::int64_t{},
                                                                  int{}, std::declval<const std::int64_t*>(),
                                                                  float{}, RopeStyle{}))
FASTINFER_BACKEND_MEMBER_(add_rmsnorm, std::declval<B&>().add_rmsnorm(std::declval<float*>(),
                                                                      std::declval<const float*>(),
                                                                      std::declval<float*>(), std::int64_t{},
                                                                      std::declval<const float*>(), int{}, float{}))
FASTINFER_BACKEND_MEMBER_(linear_swiglu, std::declval<B&>().linear_swiglu(
                                             std::declval<const MatrixView&>(), std::declval<const MatrixView&>(),
                                             std::declval<const float*>(), std::int64_t{}, std::declval<float*>()))

FASTINFER_BACKEND_MEMBER_(accept_rows, std::declval<B&>().accept_rows(
                                           std::declval<const float*>(), std::int64_t{},
                                           std::declval<const std::int32_t*>(), std::int64_t{},
                                           std::declval<const SamplingParams*>(),
                                           std::declval<const std::int32_t*>(), std::declval<const float*>(),
                                           std::declval<const float*>(), std::declval<std::int32_t*>()))

#undef FASTINFER_BACKEND_MEMBER_

}  // namespace backend_detail

template <typename B>
inline constexpr bool is_backend_v =
    backend_detail::has_name<B>::value && backend_detail::has_host_visible<B>::value &&
    backend_detail::has_buffer<B>::value && backend_detail::has_allocate<B>::value &&
    backend_detail::has_to_host<B>::value && backend_detail::has_upload<B>::value &&
    backend_detail::has_set_threads<B>::value &&
    backend_detail::has_embed<B>::value && backend_detail::has_linear<B>::value &&
    backend_detail::has_rmsnorm<B>::value && backend_detail::has_rope<B>::value &&
    backend_detail::has_swiglu<B>::value && backend_detail::has_add<B>::value &&
    backend_detail::has_copy_rows<B>::value && backend_detail::has_make_kv_store<B>::value &&
    backend_detail::has_argmax_rows<B>::value && backend_detail::has_sample_rows<B>::value;

// Compile-time check with one message per missing member.
template <typename B>
constexpr bool check_backend() {
  using namespace backend_detail;
  static_assert(has_name<B>::value, "Backend: missing `static constexpr std::string_view kName`");
  static_assert(has_host_visible<B>::value, "Backend: missing `static constexpr bool kHostVisible`");
  static_assert(has_buffer<B>::value, "Backend: missing `template <class T> class Buffer` with data()");
  static_assert(has_allocate<B>::value, "Backend: missing `Buffer<T> allocate<T>(std::size_t)`");
  static_assert(has_to_host<B>::value, "Backend: missing `to_host(const float*, std::size_t, float*)`");
  static_assert(has_upload<B>::value, "Backend: missing `MatrixView upload(const MatrixView&, std::vector<KeepAlive>&)`");
  static_assert(has_set_threads<B>::value, "Backend: missing `set_threads(int)`");
  static_assert(has_embed<B>::value, "Backend: missing `embed(table, tokens, n, out)`");
  static_assert(has_linear<B>::value, "Backend: missing `linear(w, x, n, y)`");
  static_assert(has_rmsnorm<B>::value, "Backend: missing `rmsnorm(out, x, rows, n, weight, dim, eps)`");
  static_assert(has_rope<B>::value, "Backend: missing `rope(x, n, heads, head_dim, positions, theta, style)`");
  static_assert(has_swiglu<B>::value, "Backend: missing `swiglu(gate, up, n)`");
  static_assert(has_add<B>::value, "Backend: missing `add(y, x, n)`");
  static_assert(has_copy_rows<B>::value,
                "Backend: missing `copy_rows(dst, dst_stride, src, src_stride, rows, width)`");
  static_assert(has_make_kv_store<B>::value, "Backend: missing `make_kv_store(const KVOptions&, const kv::KVCacheConfig&)`");
  static_assert(has_argmax_rows<B>::value, "Backend: missing `argmax_rows(logits, vocab, rows, n, tokens)`");
  static_assert(has_sample_rows<B>::value,
                "Backend: missing `sample_rows(logits, vocab, rows, n, params, token_indices, tokens)`");
  return true;
}

}  // namespace fastinfer
