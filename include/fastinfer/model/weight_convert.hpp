// Load-time conversion of a model's matrices to another storage type (f32 ->
// bf16 halves the bytes a decoded token streams), and the options every loader
// accepts. Norm vectors stay f32: they are tiny and sit on the precision-
// critical path of RMSNorm.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "fastinfer/core/aligned_buffer.hpp"
#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/tensor.hpp"
#include "fastinfer/model/weights.hpp"

namespace fastinfer {

// What every loader accepts (llama2.c, synthetic, GGUF, Hugging Face).
struct LoadOptions {
  std::optional<DType> weight_dtype;  // convert matrices to this at load; empty: keep the file's
  std::uint64_t seed = 0;             // synthetic models only
  int threads = 1;                    // threads that conversion / generation at load may use
  // > 0: the context (max_seq_len) to run with, replacing the file's (llama.cpp's
  // --ctx-size): converters write small ones, hostile files huge ones.
  // At most kMaxContext.
  int max_context = 0;
};

// Every type LoadOptions::weight_dtype may name, in the order programs list
// them: f32, bf16 and f16 convert element-wise in any loader; q8_0 is
// quantized by load_model. The one table behind parse_weight_dtype and the
// example programs' --weights choices, so neither can drift from the other.
inline constexpr DType kLoadWeightTypes[] = {DType::F32, DType::BF16, DType::F16, DType::Q8_0};

// A kLoadWeightTypes name (dtype_name) -> DType, or InvalidArgument naming
// the text and the names it could have been.
inline DType parse_weight_dtype(std::string_view name) {
  std::string expected;
  for (DType t : kLoadWeightTypes) {
    if (dtype_name(t) == name) return t;
    expected += (expected.empty() ? "" : ", ") + std::string(dtype_name(t));
  }
  throw_error<InvalidArgument>("unknown weight type '", name, "' (expected one of ", expected, ")");
}

namespace detail {

inline float load_scalar(DType dtype, const void* data, std::size_t i) {
  switch (dtype) {
    case DType::F32: return static_cast<const float*>(data)[i];
    case DType::F16: return f16_to_f32(static_cast<const std::uint16_t*>(data)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const std::uint16_t*>(data)[i]);
    case DType::Q8_0: break;
  }
  throw_error<InvalidArgument>("cannot convert from ", dtype_name(dtype), " element-wise");
}

// Converts one matrix into a new buffer appended to `storage`.
inline MatrixView convert_matrix(const MatrixView& src, DType target, std::vector<KeepAlive>& storage,
                                 int threads) {
  if (src.dtype == target) return src;
  FASTINFER_CHECK(src.dtype != DType::Q8_0, InvalidArgument,
                  "cannot convert q8_0 weights to ", dtype_name(target));
  FASTINFER_CHECK(target == DType::F32 || target == DType::F16 || target == DType::BF16,
                  InvalidArgument, "cannot convert weights to ", dtype_name(target), " at load");
  MatrixView dst = src;
  dst.dtype = target;
  auto buffer = aligned_buffer(dst.bytes());
  const std::int64_t n = src.rows * src.cols;
  const void* in = src.data;
  std::uint8_t* out = buffer.get();
  const DType from = src.dtype;
  (void)threads;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && n > (1 << 16))
#endif
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = load_scalar(from, in, std::size_t(i));
    switch (target) {
      case DType::F32: reinterpret_cast<float*>(out)[i] = v; break;
      case DType::F16: reinterpret_cast<std::uint16_t*>(out)[i] = f32_to_f16(v); break;
      case DType::BF16: reinterpret_cast<std::uint16_t*>(out)[i] = f32_to_bf16(v); break;
      case DType::Q8_0: break;  // rejected above
    }
  }
  dst.data = buffer.get();
  storage.push_back(std::move(buffer));
  return dst;
}

}  // namespace detail

// Returns `weights` with every matrix (embedding, projections, classifier)
// stored as `target`. A shared classifier stays shared. `weights` itself is
// left untouched, so a failure leaves nothing half converted; the result
// keeps `weights`' storage alive only if a matrix was already `target`.
inline LlamaWeights convert_weights(const LlamaWeights& weights, DType target, int threads = 1) {
  LlamaWeights out = weights;
  std::vector<KeepAlive> fresh;
  bool reads_source = false;
  for_each_matrix(out, [&](MatrixView& m) {
    const void* before = m.data;
    m = detail::convert_matrix(m, target, fresh, threads);
    reads_source |= m.data == before;
  });
  replace_storage(out, std::move(fresh), reads_source);
  return out;
}

// Applies `options.weight_dtype` when it is set.
inline LlamaWeights apply_load_options(LlamaWeights weights, const LoadOptions& options) {
  if (!options.weight_dtype) return weights;
  return convert_weights(weights, *options.weight_dtype, options.threads);
}

}  // namespace fastinfer
