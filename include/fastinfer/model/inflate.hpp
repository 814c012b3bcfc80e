// Inflation: a checkpoint made as large as we like while it computes exactly
// the same function, so that a tiny real model (real stories, real acceptance
// rates for speculative decoding) costs what a memory-bound one costs.
//
// Widen (dim, hidden_dim, heads): every matrix gets zero rows and columns.
// The residual stream keeps the original coordinates first and new ones, which
// stay exactly zero, after them. RMSNorm divides by sqrt(sum x^2 / d + eps);
// with the sum unchanged, d -> d_new and eps -> eps * d_old / d_new, the
// divisor is sqrt(d_old / d_new) times the original, so every norm weight is
// multiplied by sqrt(d_old / d_new) and the original coordinates come out as
// before. Head size is kept (RoPE frequencies and the 1/sqrt(head_dim)
// attention scale depend on it).
//
// GQA layout: original KV head k stays KV head k; with g = n_heads/n_kv_heads
// before and g' after (g' >= g), original query head h becomes query head
//     (h / g) * g' + h % g
// so that it still reads KV head h / g. The other query heads and KV heads are
// new: their rows of wq/wk/wv and columns of wo are zero.
//
// Deepen: inserted layers have zero wo and w_down (so they add exactly 0 to
// the residual stream) and seeded N(0, 0.02) wq, wk, wv, w_gate, w_up (so they
// compute, store KV and stream their weights like a real layer). Original
// layer i sits at position floor(i * n_layers_new / n_layers_old), so identity
// layers are spread between the real ones rather than stacked at the end.
//
// Vocabulary, context length, RoPE style and theta, BOS/EOS are unchanged.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fastinfer/backend/cpu/reference.hpp"
#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/tensor.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/model/gguf_loader.hpp"
#include "fastinfer/model/synthetic.hpp"
#include "fastinfer/model/weight_convert.hpp"
#include "fastinfer/model/weights.hpp"

namespace fastinfer {

// The shape an inflated model grows to. Head size is the original's, so
// n_heads * head_dim need not equal dim (it does for the named sizes).
struct InflateShape {
  int dim = 0;
  int hidden_dim = 0;
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
};

// The named sizes for an original config. Head counts follow from the
// original head size: n_heads = dim / head_dim.
//   "110M": dim 768, hidden 2048, 12 layers, KV heads keep the original group
//           size (tinystories-656k: 48 q / 24 kv heads of 16)
//   "1B":   dim 2048, hidden 5632, 22 layers, 4 query heads per KV head
//           (tinystories-656k: 128 q / 32 kv heads of 16)
inline InflateShape named_inflate_shape(const LlamaConfig& original, std::string_view size) {
  original.validate();
  InflateShape s;
  int group = 0;
  if (size == "110M") {
    s.dim = 768, s.hidden_dim = 2048, s.n_layers = 12;
    group = original.n_heads / original.n_kv_heads;
  } else if (size == "1B") {
    s.dim = 2048, s.hidden_dim = 5632, s.n_layers = 22;
    group = 4;
  } else {
    throw_error<InvalidArgument>("unknown inflation size '", size,
                                 "' (expected 110M, 1B or dim=D,hidden=H,layers=L,heads=N,kv_heads=K)");
  }
  FASTINFER_CHECK(s.dim % original.head_dim == 0, InvalidArgument, "inflation size ", size, ": dim ", s.dim,
                  " is not a multiple of the original head size ", original.head_dim);
  s.n_heads = s.dim / original.head_dim;
  FASTINFER_CHECK(s.n_heads % group == 0, InvalidArgument, "inflation size ", size, ": ", s.n_heads,
                  " query heads do not split into groups of ", group);
  s.n_kv_heads = s.n_heads / group;
  return s;
}

// "110M" | "1B" | "dim=256,hidden=768,layers=4,heads=16,kv_heads=8" (a field
// left out keeps the original's value) -> the shape, or InvalidArgument.
inline InflateShape parse_inflate_shape(const LlamaConfig& original, std::string_view text) {
  if (text.find('=') == std::string_view::npos) return named_inflate_shape(original, text);
  InflateShape s{original.dim, original.hidden_dim, original.n_layers, original.n_heads, original.n_kv_heads};
  while (!text.empty()) {
    const std::size_t comma = text.find(',');
    const std::string_view item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    const std::size_t eq = item.find('=');
    FASTINFER_CHECK(eq != std::string_view::npos, InvalidArgument, "inflation shape item '", item,
                    "' is not key=value");
    const std::string key(item.substr(0, eq)), value(item.substr(eq + 1));
    char* end = nullptr;
    const long v = std::strtol(value.c_str(), &end, 10);
    FASTINFER_CHECK(!value.empty() && *end == '\0' && v > 0 && v <= (1 << 24), InvalidArgument,
                    "inflation shape: '", value, "' is not a positive integer for ", key);
    if (key == "dim") s.dim = int(v);
    else if (key == "hidden") s.hidden_dim = int(v);
    else if (key == "layers") s.n_layers = int(v);
    else if (key == "heads") s.n_heads = int(v);
    else if (key == "kv_heads") s.n_kv_heads = int(v);
    else
      throw_error<InvalidArgument>("inflation shape: unknown key '", key,
                                   "' (expected dim, hidden, layers, heads, kv_heads)");
  }
  return s;
}

// The config of `original` inflated to `shape`, or InvalidArgument naming the
// field that cannot grow that way.
inline LlamaConfig inflated_config(const LlamaConfig& original, const InflateShape& shape) {
  original.validate();
  auto grows = [](int now, int then, const char* name) {
    FASTINFER_CHECK(now >= then, InvalidArgument, "inflation cannot shrink ", name, " from ", then, " to ", now);
  };
  grows(shape.dim, original.dim, "dim");
  grows(shape.hidden_dim, original.hidden_dim, "hidden_dim");
  grows(shape.n_layers, original.n_layers, "n_layers");
  grows(shape.n_heads, original.n_heads, "n_heads");
  grows(shape.n_kv_heads, original.n_kv_heads, "n_kv_heads");
  FASTINFER_CHECK(shape.n_heads % shape.n_kv_heads == 0, InvalidArgument, "inflated n_kv_heads ", shape.n_kv_heads,
                  " does not divide n_heads ", shape.n_heads);
  const int group = original.n_heads / original.n_kv_heads, new_group = shape.n_heads / shape.n_kv_heads;
  FASTINFER_CHECK(new_group >= group, InvalidArgument, "inflated GQA group ", new_group, " (", shape.n_heads, "/",
                  shape.n_kv_heads, ") is smaller than the original's ", group,
                  ": original query heads would no longer share their KV head");
  LlamaConfig c = original;
  c.dim = shape.dim;
  c.hidden_dim = shape.hidden_dim;
  c.n_layers = shape.n_layers;
  c.n_heads = shape.n_heads;
  c.n_kv_heads = shape.n_kv_heads;
  c.norm_eps = float(double(original.norm_eps) * double(original.dim) / double(shape.dim));
  c.validate();
  return c;
}

// Where original query head h lands (see the header comment).
inline int inflated_query_head(int h, int group, int new_group) { return (h / group) * new_group + h % group; }

// Where original layer i lands.
inline int inflated_layer_index(int i, int n_layers, int new_n_layers) {
  return int(std::int64_t(i) * new_n_layers / n_layers);
}

namespace detail {

inline void inflate_store_row(const float* src, DType dtype, void* dst, std::int64_t n) {
  switch (dtype) {
    case DType::F32: std::memcpy(dst, src, std::size_t(n) * 4); return;
    case DType::F16:
      for (std::int64_t i = 0; i < n; ++i) static_cast<std::uint16_t*>(dst)[i] = f32_to_f16(src[i]);
      return;
    case DType::BF16:
      for (std::int64_t i = 0; i < n; ++i) static_cast<std::uint16_t*>(dst)[i] = f32_to_bf16(src[i]);
      return;
    case DType::Q8_0: break;
  }
  throw_error<InvalidArgument>("inflation writes f32, f16 or bf16 rows, not ", dtype_name(dtype));
}

// A [rows][cols] matrix of `dtype`: row r is src row row_src[r] with column c
// taken from src column col_src[c]; -1 (or r/c past the map) means zero.
inline MatrixView inflate_matrix(const MatrixView& src, std::int64_t rows, std::int64_t cols,
                                 const std::vector<std::int64_t>& row_src, const std::vector<std::int64_t>& col_src,
                                 DType dtype, std::vector<KeepAlive>& storage, int threads) {
  MatrixView m{dtype, nullptr, rows, cols};
  auto buffer = aligned_buffer(m.bytes());
  std::uint8_t* out = buffer.get();
  const std::size_t out_row = row_bytes(dtype, cols);
  (void)threads;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1 && rows * cols > (1 << 18))
#endif
  {
    std::vector<float> in(static_cast<std::size_t>(src.cols)), row(static_cast<std::size_t>(cols));
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
    for (std::int64_t r = 0; r < rows; ++r) {
      std::uint8_t* dst = out + out_row * std::size_t(r);
      const std::int64_t s = r < std::int64_t(row_src.size()) ? row_src[std::size_t(r)] : -1;
      if (s < 0) {
        std::memset(dst, 0, out_row);  // +0.0 in f32, f16 and bf16
        continue;
      }
      cpu::reference::load_row(src.dtype, src.row_ptr(s), in.data(), src.cols);
      for (std::int64_t c = 0; c < cols; ++c) {
        const std::int64_t sc = c < std::int64_t(col_src.size()) ? col_src[std::size_t(c)] : -1;
        row[std::size_t(c)] = sc < 0 ? 0.0f : in[std::size_t(sc)];
      }
      inflate_store_row(row.data(), dtype, dst, cols);
    }
  }
  m.data = out;
  storage.push_back(std::move(buffer));
  return m;
}

// A zero [rows][cols] matrix with its own storage: an identity layer must
// stream as many bytes as a real one.
inline MatrixView inflate_zero_matrix(std::int64_t rows, std::int64_t cols, DType dtype,
                                      std::vector<KeepAlive>& storage, int threads) {
  MatrixView m{dtype, nullptr, rows, cols};
  auto buffer = aligned_buffer(m.bytes());
  std::uint8_t* out = buffer.get();
  const std::size_t row = row_bytes(dtype, cols);
  (void)threads;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows > 64)
#endif
  for (std::int64_t r = 0; r < rows; ++r) std::memset(out + row * std::size_t(r), 0, row);
  m.data = out;
  storage.push_back(std::move(buffer));
  return m;
}

inline std::vector<std::int64_t> inflate_prefix_map(std::int64_t n) {
  std::vector<std::int64_t> map(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) map[std::size_t(i)] = i;
  return map;
}

inline const float* inflate_norm(const float* src, int dim, int new_dim, float scale,
                                 std::vector<KeepAlive>& storage) {
  auto buffer = aligned_buffer(std::size_t(new_dim) * sizeof(float));
  float* out = reinterpret_cast<float*>(buffer.get());
  for (int i = 0; i < new_dim; ++i) out[i] = i < dim ? src[i] * scale : 0.0f;
  storage.push_back(std::move(buffer));
  return out;
}

}  // namespace detail

// `original` inflated to `shape`. Matrices are written as options.weight_dtype
// (f32, f16 or bf16; q8_0 quantizes the result with the reference quantizer),
// or, when that is empty, as the original embedding's type (f32 for a q8_0
// original). options.seed keys the random matrices of inserted layers (same
// seed: same bits, whatever options.threads); options.threads parallelises
// the copies and the generation. `original` is left untouched.
inline LlamaWeights inflate_weights(const LlamaWeights& original, const InflateShape& shape,
                                    const LoadOptions& options = {}) {
  const LlamaConfig& o = original.config;
  const LlamaConfig c = inflated_config(o, shape);
  FASTINFER_CHECK(int(original.layers.size()) == o.n_layers, InvalidArgument, "weights hold ",
                  original.layers.size(), " layers, config says ", o.n_layers);
  FASTINFER_CHECK(options.threads >= 1, InvalidArgument, "threads must be at least 1, got ", options.threads);
  DType dtype = options.weight_dtype.value_or(original.token_embedding.dtype == DType::Q8_0
                                                  ? DType::F32
                                                  : original.token_embedding.dtype);
  if (dtype == DType::Q8_0) {
    LoadOptions f32 = options;
    f32.weight_dtype = DType::F32;
    return quantize_weights_q8_0(inflate_weights(original, shape, f32));
  }
  const int threads = options.threads;

  LlamaWeights w;
  w.config = c;
  const std::int64_t D0 = o.dim, D = c.dim, H0 = o.hidden_dim, H = c.hidden_dim, hd = o.head_dim;
  const std::int64_t Q = c.q_dim(), KV = c.kv_dim(), V = c.vocab_size;
  const int group = o.n_heads / o.n_kv_heads, new_group = c.n_heads / c.n_kv_heads;

  const auto dim_map = detail::inflate_prefix_map(D0);
  const auto hidden_map = detail::inflate_prefix_map(H0);
  const auto kv_map = detail::inflate_prefix_map(o.kv_dim());
  const auto vocab_map = detail::inflate_prefix_map(V);
  // New query feature -> original query feature (or -1).
  std::vector<std::int64_t> q_map(std::size_t(Q), -1);
  for (int h = 0; h < o.n_heads; ++h) {
    const std::int64_t to = inflated_query_head(h, group, new_group);
    for (std::int64_t d = 0; d < hd; ++d) q_map[std::size_t(to * hd + d)] = std::int64_t(h) * hd + d;
  }

  auto widen = [&](const MatrixView& m, std::int64_t rows, std::int64_t cols, const std::vector<std::int64_t>& rmap,
                   const std::vector<std::int64_t>& cmap) {
    return detail::inflate_matrix(m, rows, cols, rmap, cmap, dtype, w.storage, threads);
  };
  w.token_embedding = widen(original.token_embedding, V, D, vocab_map, dim_map);
  const bool shared = original.classifier.data == original.token_embedding.data;
  w.classifier = shared ? w.token_embedding : widen(original.classifier, V, D, vocab_map, dim_map);
  const float scale = float(std::sqrt(double(D0) / double(D)));
  w.final_norm = detail::inflate_norm(original.final_norm, o.dim, c.dim, scale, w.storage);

  w.layers.resize(std::size_t(c.n_layers));
  std::vector<int> source(std::size_t(c.n_layers), -1);  // new layer -> original layer, -1 inserted
  for (int i = 0; i < o.n_layers; ++i) source[std::size_t(inflated_layer_index(i, o.n_layers, c.n_layers))] = i;

  // Inserted layers read unit norms (their output is zeroed anyway).
  auto ones = detail::aligned_buffer(std::size_t(D) * sizeof(float));
  float* one = reinterpret_cast<float*>(ones.get());
  std::fill(one, one + D, 1.0f);
  w.storage.push_back(std::move(ones));

  std::uint64_t tensor = 0;  // random-stream key of each generated matrix, in layer order
  for (int l = 0; l < c.n_layers; ++l) {
    LlamaLayerWeights& L = w.layers[std::size_t(l)];
    const int s = source[std::size_t(l)];
    if (s >= 0) {
      const LlamaLayerWeights& S = original.layers[std::size_t(s)];
      L.attn_norm = detail::inflate_norm(S.attn_norm, o.dim, c.dim, scale, w.storage);
      L.ffn_norm = detail::inflate_norm(S.ffn_norm, o.dim, c.dim, scale, w.storage);
      L.wq = widen(S.wq, Q, D, q_map, dim_map);
      L.wk = widen(S.wk, KV, D, kv_map, dim_map);
      L.wv = widen(S.wv, KV, D, kv_map, dim_map);
      L.wo = widen(S.wo, D, Q, dim_map, q_map);  // columns follow the query heads
      L.w_gate = widen(S.w_gate, H, D, hidden_map, dim_map);
      L.w_up = widen(S.w_up, H, D, hidden_map, dim_map);
      L.w_down = widen(S.w_down, D, H, dim_map, hidden_map);
    } else {
      auto random = [&](std::int64_t rows, std::int64_t cols) {
        return detail::synthetic_matrix(rows, cols, dtype, options.seed, tensor++, w.storage, threads);
      };
      L.attn_norm = L.ffn_norm = one;
      L.wq = random(Q, D);
      L.wk = random(KV, D);
      L.wv = random(KV, D);
      L.wo = detail::inflate_zero_matrix(D, Q, dtype, w.storage, threads);
      L.w_gate = random(H, D);
      L.w_up = random(H, D);
      L.w_down = detail::inflate_zero_matrix(D, H, dtype, w.storage, threads);
    }
  }
  return w;
}

// Q and K rows of every layer reordered for another RoPE pairing: interleaved
// pairs (2i, 2i+1) <-> half-split pairs (i, i + head_dim/2). Attention scores
// are unchanged (q and k are permuted alike); nothing else moves. Needed to
// write a Hugging Face model (half split) as GGUF (interleaved) and back.
inline LlamaWeights with_rope_style(const LlamaWeights& weights, RopeStyle style) {
  LlamaWeights w = weights;
  if (weights.config.rope_style == style) return w;
  const int hd = weights.config.head_dim, half = hd / 2;
  auto permute = [&](const MatrixView& m) {
    const std::size_t row = row_bytes(m.dtype, m.cols);
    auto buffer = detail::aligned_buffer(m.bytes());
    for (std::int64_t r = 0; r < m.rows; ++r) {
      const std::int64_t head = r / hd, j = r % hd;
      // to interleaved: row 2i <- i, 2i+1 <- i+half; to half split: the inverse.
      const std::int64_t from = style == RopeStyle::Interleaved ? (j % 2 == 0 ? j / 2 : half + j / 2)
                                                                : (j < half ? 2 * j : 2 * (j - half) + 1);
      std::memcpy(buffer.get() + row * std::size_t(r), m.row_ptr(head * hd + from), row);
    }
    MatrixView out = m;
    out.data = buffer.get();
    w.storage.push_back(std::move(buffer));
    return out;
  };
  for (auto& l : w.layers) {
    l.wq = permute(l.wq);
    l.wk = permute(l.wk);
  }
  w.config.rope_style = style;
  return w;
}

// "PATH:SIZE" (what follows "inflate:") -> {PATH, SIZE}, split at the last ':'
// so that PATH may hold colons; InvalidArgument when either part is empty.
inline std::pair<std::string, std::string> split_inflate_spec(std::string_view rest) {
  const std::size_t colon = rest.rfind(':');
  FASTINFER_CHECK(colon != std::string_view::npos && colon > 0 && colon + 1 < rest.size(), InvalidArgument,
                  "model spec 'inflate:", rest, "' must be inflate:PATH:SIZE (SIZE 110M, 1B or dim=..,hidden=..)");
  return {std::string(rest.substr(0, colon)), std::string(rest.substr(colon + 1))};
}

}  // namespace fastinfer
