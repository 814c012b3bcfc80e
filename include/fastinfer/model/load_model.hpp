// One entry point for every model source: `load_model(spec, options)`.
//
//   "synthetic:NAME"   seeded random weights (model/synthetic.hpp)
//   "inflate:PATH:SIZE" PATH (any spec here) inflated to SIZE (model/inflate.hpp)
//   DIR                a Hugging Face Llama directory (model/hf_loader.hpp)
//   PATH.gguf          a GGUF "llama" file (model/gguf_loader.hpp)
//   PATH.bin / other   a llama2.c legacy checkpoint (model/llama2c_loader.hpp)
//
// Each further format adds one branch here (GGUF by extension, a Hugging Face
// checkpoint by directory).
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "fastinfer/model/gguf_loader.hpp"
#include "fastinfer/model/hf_loader.hpp"
#include "fastinfer/model/inflate.hpp"
#include "fastinfer/model/llama2c_loader.hpp"
#include "fastinfer/model/synthetic.hpp"
#include "fastinfer/model/weight_convert.hpp"
#include "fastinfer/model/weights.hpp"

namespace fastinfer {

inline LlamaWeights load_model(const std::string& spec, const LoadOptions& options = {}) {
  if (options.max_context != 0) {
    FASTINFER_CHECK(options.max_context > 0 && options.max_context <= kMaxContext, InvalidArgument, "context ",
                    options.max_context, " is outside [1, ", kMaxContext, "]");
    LoadOptions as_file = options;
    as_file.max_context = 0;
    LlamaWeights w = load_model(spec, as_file);
    w.config.max_seq_len = options.max_context;
    return w;
  }
  // q8_0 for any source: load as stored, then quantize with the reference
  // quantizer (weight_convert.hpp converts between f32/f16/bf16 only).
  if (options.weight_dtype == DType::Q8_0) {
    LoadOptions as_stored = options;
    as_stored.weight_dtype.reset();
    return quantize_weights_q8_0(load_model(spec, as_stored));
  }
  constexpr std::string_view synthetic_prefix = "synthetic:";
  if (std::string_view(spec).substr(0, synthetic_prefix.size()) == synthetic_prefix)
    return make_synthetic(std::string_view(spec).substr(synthetic_prefix.size()),
                          options.weight_dtype.value_or(DType::F32), options.seed, options.threads);
  constexpr std::string_view inflate_prefix = "inflate:";
  if (std::string_view(spec).substr(0, inflate_prefix.size()) == inflate_prefix) {
    // The original as stored: inflation writes every matrix in the target type itself.
    const auto [path, size] = split_inflate_spec(std::string_view(spec).substr(inflate_prefix.size()));
    LoadOptions as_stored = options;
    as_stored.weight_dtype.reset();
    const LlamaWeights original = load_model(path, as_stored);
    return inflate_weights(original, parse_inflate_shape(original.config, size), options);
  }
  if (std::filesystem::is_directory(spec)) return load_hf_weights(spec, options);
  if (spec.size() > 5 && spec.compare(spec.size() - 5, 5, ".gguf") == 0) {
    GgufLoadOptions gguf_options;
    gguf_options.weights = options.weight_dtype;
    return load_gguf_llama(spec, gguf_options);
  }
  return load_llama2c(spec, options);
}

}  // namespace fastinfer
