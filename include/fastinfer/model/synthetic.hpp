// Synthetic Llama models: seeded N(0, 0.02) matrices and unit norms, in the
// shapes of real checkpoints, for benchmarks and for a demo that needs no file.
//
//   synthetic:tiny   stories260K's shape (dim 64, hidden 172, 5 layers, 8/4 heads, vocab 512, len 512)
//   synthetic:15M    dim 288, hidden 768, 6 layers, 6 heads, vocab 32000, len 256
//   synthetic:110M   dim 768, hidden 2048, 12 layers, 12 heads, vocab 32000, len 1024
//   synthetic:1B     dim 2048, hidden 5632, 22 layers, 32/4 heads, vocab 32000, len 2048
//
// All share the classifier with the embedding (as the llama2.c models do) and
// use interleaved RoPE. Weights are generated directly in the requested dtype
// (1B in bf16 never exists in f32). The normals come from a counter-based
// stream: element blocks of kBlock values each get their own SplitMix64
// sequence keyed by (seed, tensor, block), so generation runs in parallel and
// the values do not depend on the thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/tensor.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/model/weight_convert.hpp"
#include "fastinfer/model/weights.hpp"

namespace fastinfer {

inline constexpr float kSyntheticStd = 0.02f;

// The config of synthetic:NAME (NAME without the prefix), or InvalidArgument.
inline LlamaConfig synthetic_config(std::string_view name) {
  LlamaConfig c;
  auto set = [&](int dim, int hidden, int layers, int heads, int kv_heads, int vocab, int len) {
    c.dim = dim, c.hidden_dim = hidden, c.n_layers = layers, c.n_heads = heads, c.n_kv_heads = kv_heads;
    c.vocab_size = vocab, c.max_seq_len = len, c.head_dim = dim / heads;
  };
  if (name == "tiny")
    set(64, 172, 5, 8, 4, 512, 512);
  else if (name == "15M")
    set(288, 768, 6, 6, 6, 32000, 256);
  else if (name == "110M")
    set(768, 2048, 12, 12, 12, 32000, 1024);
  else if (name == "1B")
    set(2048, 5632, 22, 32, 4, 32000, 2048);
  else
    throw_error<InvalidArgument>("unknown synthetic model '", name, "' (expected tiny, 15M, 110M or 1B)");
  c.shared_classifier = true;
  c.rope_style = RopeStyle::Interleaved;
  return c;
}

namespace detail {

inline std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

inline constexpr std::int64_t kSyntheticBlock = 4096;

// Fills block `block` (kSyntheticBlock values, fewer at the end) of tensor
// `tensor` with N(0, std) values, written through `store(index, value)`.
// Marsaglia's polar method: two normals per accepted pair, no sin/cos.
template <typename Store>
void synthetic_block(std::uint64_t seed, std::uint64_t tensor, std::int64_t block, std::int64_t count, float std_dev,
                     Store&& store) {
  std::uint64_t state = seed * 0x9e3779b97f4a7c15ull ^ (tensor << 40) ^ std::uint64_t(block);
  state = splitmix64(state);  // decorrelate neighbouring keys
  const std::int64_t begin = block * kSyntheticBlock;
  const std::int64_t end = std::min(begin + kSyntheticBlock, count);
  constexpr float kUnit = 1.0f / 8388608.0f;  // 2^-23: 24-bit uniforms in [-1, 1)
  for (std::int64_t i = begin; i < end;) {
    const std::uint64_t r = splitmix64(state);
    const float u = float(std::int32_t(r >> 40)) * kUnit - 1.0f;
    const float v = float(std::int32_t((r >> 16) & 0xffffffu)) * kUnit - 1.0f;
    const float s = u * u + v * v;
    if (s >= 1.0f || s == 0.0f) continue;
    const float f = std_dev * std::sqrt(-2.0f * std::log(s) / s);
    store(i++, u * f);
    if (i < end) store(i++, v * f);
  }
}

// A [rows][cols] matrix of N(0, std) values stored as `dtype`.
inline MatrixView synthetic_matrix(std::int64_t rows, std::int64_t cols, DType dtype, std::uint64_t seed,
                                   std::uint64_t tensor, std::vector<KeepAlive>& storage, int threads) {
  FASTINFER_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16, InvalidArgument,
                  "synthetic weights can be f32, f16 or bf16, not ", dtype_name(dtype));
  MatrixView m{dtype, nullptr, rows, cols};
  auto buffer = aligned_buffer(m.bytes());
  std::uint8_t* out = buffer.get();
  const std::int64_t count = rows * cols;
  const std::int64_t blocks = (count + kSyntheticBlock - 1) / kSyntheticBlock;
  (void)threads;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && blocks > 16)
#endif
  for (std::int64_t b = 0; b < blocks; ++b) {
    switch (dtype) {
      case DType::F32:
        synthetic_block(seed, tensor, b, count, kSyntheticStd,
                        [out](std::int64_t i, float x) { reinterpret_cast<float*>(out)[i] = x; });
        break;
      case DType::F16:
        synthetic_block(seed, tensor, b, count, kSyntheticStd,
                        [out](std::int64_t i, float x) { reinterpret_cast<std::uint16_t*>(out)[i] = f32_to_f16(x); });
        break;
      default:
        synthetic_block(seed, tensor, b, count, kSyntheticStd,
                        [out](std::int64_t i, float x) { reinterpret_cast<std::uint16_t*>(out)[i] = f32_to_bf16(x); });
        break;
    }
  }
  m.data = buffer.get();
  storage.push_back(std::move(buffer));
  return m;
}

}  // namespace detail

// Weights of any config, filled with seeded N(0, 0.02) matrices and unit
// norms, stored as `dtype`. Same (config, dtype, seed): same bits, whatever
// `threads`. A separate classifier is made when !config.shared_classifier.
inline LlamaWeights make_synthetic(const LlamaConfig& config, DType dtype = DType::F32, std::uint64_t seed = 0,
                                   int threads = 1) {
  config.validate();
  LlamaWeights w;
  w.config = config;
  const std::int64_t D = config.dim, H = config.hidden_dim, Q = config.q_dim(), KV = config.kv_dim();
  std::uint64_t tensor = 0;
  auto matrix = [&](std::int64_t rows, std::int64_t cols) {
    return detail::synthetic_matrix(rows, cols, dtype, seed, tensor++, w.storage, threads);
  };
  w.token_embedding = matrix(config.vocab_size, D);
  w.classifier = config.shared_classifier ? w.token_embedding : matrix(config.vocab_size, D);
  w.layers.resize(std::size_t(config.n_layers));
  for (auto& l : w.layers) {
    l.wq = matrix(Q, D);
    l.wk = matrix(KV, D);
    l.wv = matrix(KV, D);
    l.wo = matrix(D, Q);
    l.w_gate = matrix(H, D);
    l.w_down = matrix(D, H);
    l.w_up = matrix(H, D);
  }
  // Unit norms: one shared buffer of ones serves every norm.
  auto ones = detail::aligned_buffer(std::size_t(D) * sizeof(float));
  float* one = reinterpret_cast<float*>(ones.get());
  for (std::int64_t i = 0; i < D; ++i) one[i] = 1.0f;
  for (auto& l : w.layers) l.attn_norm = l.ffn_norm = one;
  w.final_norm = one;
  w.storage.push_back(std::move(ones));
  return w;
}

// "synthetic:NAME" (or just NAME) -> its weights.
inline LlamaWeights make_synthetic(std::string_view name, DType dtype = DType::F32, std::uint64_t seed = 0,
                                   int threads = 1) {
  constexpr std::string_view prefix = "synthetic:";
  if (name.substr(0, prefix.size()) == prefix) name.remove_prefix(prefix.size());
  return make_synthetic(synthetic_config(name), dtype, seed, threads);
}

}  // namespace fastinfer
