// Loader for llama2.c's legacy checkpoints (Karpathy's run.c "version 0"):
//
//   int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//   then f32 arrays, in this order:
//     token_embedding [vocab][dim]
//     rms_att [L][dim]
//     wq [L][dim][dim]  wk [L][kv_dim][dim]  wv [L][kv_dim][dim]  wo [L][dim][dim]
//     rms_ffn [L][dim]
//     w1 [L][hidden][dim]  w2 [L][dim][hidden]  w3 [L][hidden][dim]
//     rms_final [dim]
//     freq_cis_real, freq_cis_imag [seq_len][head_dim/2] each (unused: RoPE is recomputed)
//     wcls [vocab][dim]  only when vocab_size was negative in the header
//
// The file is memory-mapped and the f32 views point into the map (zero copy).
// Every header field is checked, and the file size must equal what the header
// implies exactly, before any view is made: a bad file is one FormatError
// naming the path and the offending value, never a crash or a half-built model.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "fastinfer/core/error.hpp"
#include "fastinfer/core/mapped_file.hpp"
#include "fastinfer/core/tensor.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/model/weight_convert.hpp"
#include "fastinfer/model/weights.hpp"

namespace fastinfer {

struct Llama2cHeader {
  std::int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

// The config a llama2.c header describes, or a FormatError naming `path` and
// the first bad field. `file_bytes` is checked against the size it implies.
inline LlamaConfig llama2c_config(const Llama2cHeader& h, std::uint64_t file_bytes, const std::string& path) {
  auto positive = [&](std::int64_t v, const char* name) {
    FASTINFER_CHECK(v > 0, FormatError, path, ": llama2.c header field ", name, " must be positive, got ", v);
  };
  positive(h.dim, "dim");
  positive(h.hidden_dim, "hidden_dim");
  positive(h.n_layers, "n_layers");
  positive(h.n_heads, "n_heads");
  positive(h.n_kv_heads, "n_kv_heads");
  FASTINFER_CHECK(h.vocab_size != 0 && h.vocab_size != INT32_MIN, FormatError, path,
                  ": llama2.c header field vocab_size must be non-zero, got ", h.vocab_size);
  positive(h.seq_len, "seq_len");
  FASTINFER_CHECK(h.dim % h.n_heads == 0, FormatError, path, ": n_heads (", h.n_heads,
                  ") does not divide dim (", h.dim, ")");
  FASTINFER_CHECK(h.n_heads % h.n_kv_heads == 0, FormatError, path, ": n_kv_heads (", h.n_kv_heads,
                  ") does not divide n_heads (", h.n_heads, ")");
  const std::int32_t head_dim = h.dim / h.n_heads;
  FASTINFER_CHECK(head_dim % 2 == 0, FormatError, path, ": head_dim (", head_dim,
                  ") must be even for RoPE");

  LlamaConfig c;
  c.dim = h.dim;
  c.hidden_dim = h.hidden_dim;
  c.n_layers = h.n_layers;
  c.n_heads = h.n_heads;
  c.n_kv_heads = h.n_kv_heads;
  c.vocab_size = h.vocab_size < 0 ? -h.vocab_size : h.vocab_size;
  c.shared_classifier = h.vocab_size > 0;
  c.max_seq_len = h.seq_len;
  c.head_dim = head_dim;
  c.rope_style = RopeStyle::Interleaved;
  c.rope_theta = 10000.0f;
  c.norm_eps = 1e-5f;
  c.bos_id = 1;
  c.eos_id = -1;

  // Products of three header fields overflow 64 bits for absurd headers, so
  // the expected size is computed in 128 bits before it is compared.
  using u128 = unsigned __int128;
  const u128 L = u128(c.n_layers), D = u128(c.dim), H = u128(c.hidden_dim), V = u128(c.vocab_size);
  const u128 KV = u128(c.kv_dim());
  u128 floats = V * D + L * D * 2 + L * D * D * 2 + L * KV * D * 2 + L * H * D * 3 + D +
                u128(c.max_seq_len) * u128(head_dim);  // freq_cis real + imag
  if (!c.shared_classifier) floats += V * D;
  const u128 expected = u128(sizeof(Llama2cHeader)) + floats * 4;
  if (expected != u128(file_bytes)) {
    // Report what fits in 64 bits; beyond that the header is nonsense anyway.
    const bool huge = expected > u128(UINT64_MAX);
    throw_error<FormatError>(path, ": file size ", file_bytes, " bytes does not match the header (dim ", h.dim,
                             ", hidden_dim ", h.hidden_dim, ", n_layers ", h.n_layers, ", n_heads ", h.n_heads,
                             ", n_kv_heads ", h.n_kv_heads, ", vocab_size ", h.vocab_size, ", seq_len ",
                             h.seq_len, "), which needs ",
                             huge ? std::string("more than 2^64") : std::to_string(std::uint64_t(expected)),
                             " bytes");
  }
  return c;
}

// Memory-maps and validates a llama2.c checkpoint. Matrices are f32 views into
// the map unless options.weight_dtype asks for a conversion.
inline LlamaWeights load_llama2c(const std::string& path, const LoadOptions& options = {}) {
  auto file = MappedFile::open(path);
  Llama2cHeader h{};
  std::memcpy(&h, file->at(0, sizeof h, "llama2.c header"), sizeof h);
  const LlamaConfig c = llama2c_config(h, file->size(), path);

  std::uint64_t offset = sizeof h;
  auto take = [&](std::int64_t rows, std::int64_t cols, const char* what) {
    const std::uint64_t bytes = std::uint64_t(rows) * std::uint64_t(cols) * 4;
    const std::uint8_t* p = file->at(offset, bytes, what);
    offset += bytes;
    return MatrixView{DType::F32, p, rows, cols};
  };
  auto take_per_layer = [&](std::int64_t rows, std::int64_t cols, const char* what, auto member) {
    MatrixView all = take(std::int64_t(c.n_layers) * rows, cols, what);
    return [=](LlamaLayerWeights& lw, int l) {
      MatrixView m{DType::F32, all.row_ptr(std::int64_t(l) * rows), rows, cols};
      member(lw, m);
    };
  };

  LlamaWeights w;
  w.config = c;
  w.layers.resize(std::size_t(c.n_layers));
  w.token_embedding = take(c.vocab_size, c.dim, "token_embedding");
  const auto set_att = take_per_layer(1, c.dim, "rms_att", [](LlamaLayerWeights& lw, const MatrixView& m) {
    lw.attn_norm = static_cast<const float*>(m.data);
  });
  const auto set_wq = take_per_layer(c.q_dim(), c.dim, "wq", [](LlamaLayerWeights& lw, const MatrixView& m) { lw.wq = m; });
  const auto set_wk = take_per_layer(c.kv_dim(), c.dim, "wk", [](LlamaLayerWeights& lw, const MatrixView& m) { lw.wk = m; });
  const auto set_wv = take_per_layer(c.kv_dim(), c.dim, "wv", [](LlamaLayerWeights& lw, const MatrixView& m) { lw.wv = m; });
  const auto set_wo = take_per_layer(c.dim, c.q_dim(), "wo", [](LlamaLayerWeights& lw, const MatrixView& m) { lw.wo = m; });
  const auto set_ffn = take_per_layer(1, c.dim, "rms_ffn", [](LlamaLayerWeights& lw, const MatrixView& m) {
    lw.ffn_norm = static_cast<const float*>(m.data);
  });
  const auto set_w1 = take_per_layer(c.hidden_dim, c.dim, "w1", [](LlamaLayerWeights& lw, const MatrixView& m) { lw.w_gate = m; });
  const auto set_w2 = take_per_layer(c.dim, c.hidden_dim, "w2", [](LlamaLayerWeights& lw, const MatrixView& m) { lw.w_down = m; });
  const auto set_w3 = take_per_layer(c.hidden_dim, c.dim, "w3", [](LlamaLayerWeights& lw, const MatrixView& m) { lw.w_up = m; });
  for (int l = 0; l < c.n_layers; ++l) {
    LlamaLayerWeights& lw = w.layers[std::size_t(l)];
    set_att(lw, l);
    set_wq(lw, l);
    set_wk(lw, l);
    set_wv(lw, l);
    set_wo(lw, l);
    set_ffn(lw, l);
    set_w1(lw, l);
    set_w2(lw, l);
    set_w3(lw, l);
  }
  w.final_norm = static_cast<const float*>(take(1, c.dim, "rms_final").data);
  take(c.max_seq_len, c.head_dim, "freq_cis");  // real and imaginary halves, skipped
  w.classifier = c.shared_classifier ? w.token_embedding : take(c.vocab_size, c.dim, "wcls");
  w.storage.push_back(file);
  return apply_load_options(std::move(w), options);
}

}  // namespace fastinfer
