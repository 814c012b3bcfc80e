// GGUF "llama" checkpoints <-> LlamaConfig / LlamaWeights.
//
// Matrices are zero-copy views into the memory-mapped file (F32, F16, BF16 or
// Q8_0, as stored); norm vectors become f32 (copied only when the file holds
// them in another type or misaligned). GGUF lists dims fastest-varying first,
// so a [rows][cols] weight appears as dims {cols, rows}.
//
// RoPE: llama.cpp's converters permute Hugging Face Q/K rows into the
// interleaved pair layout of Meta's original checkpoints (and llama2.c's), so
// GGUF "llama" always uses RopeStyle::Interleaved; the goldens confirm it.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "fastinfer/backend/cpu/q8_0.hpp"
#include "fastinfer/backend/cpu/reference.hpp"
#include "fastinfer/core/aligned_buffer.hpp"
#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/tensor.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/model/gguf.hpp"
#include "fastinfer/model/weights.hpp"
#include "fastinfer/tokenizer/sentencepiece_tokenizer.hpp"

namespace fastinfer {

struct GgufLoadOptions {
  // 0: llama.context_length from the file. Converters often write a small
  // context (llama.cpp's llama2.c converter writes 128 for stories260K, whose
  // llama2.c header says 512), so callers may raise it.
  int max_seq_len = 0;
  // Convert every matrix to this type at load (e.g. Q8_0 from an f32 file);
  // nullopt keeps the file's types and stays zero-copy.
  std::optional<DType> weights;
};

namespace gguf_detail {

inline int to_int(std::uint64_t v, const std::string& key, const std::string& path) {
  FASTINFER_CHECK(v <= std::uint64_t(std::numeric_limits<int>::max()), FormatError, path, ": ", key,
                  " = ", v, " is too large");
  return int(v);
}

inline void check_shape(const gguf::TensorInfo& t, std::vector<std::uint64_t> expected,
                        const std::string& path) {
  if (t.dims == expected) return;
  auto show = [](const std::vector<std::uint64_t>& d) {
    std::string s = "[";
    for (std::size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
    return s + "]";
  };
  throw_error<FormatError>(path, ": tensor '", t.name, "' has shape ", show(t.dims), ", expected ",
                           show(expected), " (GGUF order: columns first)");
}

// An f32 copy of a 1-D tensor, or a view when it already is f32 and aligned.
inline const float* norm_vector(const gguf::TensorInfo& t, std::vector<KeepAlive>& storage) {
  const MatrixView m = t.matrix();
  if (m.dtype == DType::F32 && reinterpret_cast<std::uintptr_t>(t.data) % alignof(float) == 0)
    return reinterpret_cast<const float*>(t.data);
  auto buf = std::make_shared<std::vector<float>>(std::size_t(m.cols));
  cpu::reference::load_row(m.dtype, m.data, buf->data(), m.cols);
  storage.push_back(buf);
  return buf->data();
}

// A copy of `m` converted to `target` (Q8_0 through the reference quantizer).
// Returns the view and the buffer that owns it.
inline std::pair<MatrixView, KeepAlive> convert_matrix(const MatrixView& m, DType target) {
  FASTINFER_CHECK(target != DType::Q8_0 || m.cols % 32 == 0, InvalidArgument,
                  "cannot convert a matrix with ", m.cols, " columns to q8_0 (needs a multiple of 32)");
  auto buf = detail::aligned_buffer(row_bytes(target, m.cols) * std::size_t(m.rows));
  std::vector<float> row(std::size_t(m.cols));
  for (std::int64_t r = 0; r < m.rows; ++r) {
    cpu::reference::load_row(m.dtype, m.row_ptr(r), row.data(), m.cols);
    std::uint8_t* dst = buf.get() + row_bytes(target, m.cols) * std::size_t(r);
    switch (target) {
      case DType::F32: std::memcpy(dst, row.data(), row.size() * 4); break;
      case DType::F16:
        for (std::int64_t c = 0; c < m.cols; ++c) {
          const std::uint16_t h = f32_to_f16(row[std::size_t(c)]);
          std::memcpy(dst + 2 * c, &h, 2);
        }
        break;
      case DType::BF16:
        for (std::int64_t c = 0; c < m.cols; ++c) {
          const std::uint16_t h = f32_to_bf16(row[std::size_t(c)]);
          std::memcpy(dst + 2 * c, &h, 2);
        }
        break;
      case DType::Q8_0: cpu::q8_0::quantize_row_reference(row.data(), dst, m.cols); break;
    }
  }
  MatrixView out{target, buf.get(), m.rows, m.cols};
  return {out, buf};
}

// Every matrix of `w` converted to `target` (norms stay f32). A shared
// classifier stays shared. Matrices already of type `target` are not copied
// (and then `w`'s storage stays alive with the result; else it is let go).
// (model/weight_convert.hpp does this for f32/f16/bf16; this one also
// quantizes to Q8_0 through the reference quantizer.)
inline LlamaWeights convert_weights(const LlamaWeights& w, DType target) {
  LlamaWeights out = w;
  std::vector<KeepAlive> fresh;
  bool reads_source = false;
  for_each_matrix(out, [&](MatrixView& m) {
    if (m.dtype == target) {
      reads_source = true;
      return;
    }
    auto [view, keep] = convert_matrix(m, target);
    m = view;
    fresh.push_back(std::move(keep));
  });
  replace_storage(out, std::move(fresh), reads_source);
  return out;
}

}  // namespace gguf_detail

// Every matrix quantized to Q8_0 by the reference quantizer (what
// `--weights q8_0` does at load). Throws InvalidArgument when a matrix's row
// length is not a multiple of 32.
inline LlamaWeights quantize_weights_q8_0(const LlamaWeights& w) {
  return gguf_detail::convert_weights(w, DType::Q8_0);
}

// Reads the llama.* hyper-parameters. Throws FormatError naming the key.
inline LlamaConfig llama_config_from_gguf(const gguf::GgufFile& f, int max_seq_len = 0) {
  const std::string& p = f.path();
  const std::string arch = f.get_string("general.architecture");
  FASTINFER_CHECK(arch == "llama", FormatError, p, ": general.architecture is '", arch,
                  "', only 'llama' is supported");
  using gguf_detail::to_int;
  LlamaConfig c;
  c.dim = to_int(f.get_uint("llama.embedding_length"), "llama.embedding_length", p);
  c.hidden_dim = to_int(f.get_uint("llama.feed_forward_length"), "llama.feed_forward_length", p);
  c.n_layers = to_int(f.get_uint("llama.block_count"), "llama.block_count", p);
  c.n_heads = to_int(f.get_uint("llama.attention.head_count"), "llama.attention.head_count", p);
  c.n_kv_heads = to_int(f.get_uint("llama.attention.head_count_kv", std::uint64_t(c.n_heads)),
                        "llama.attention.head_count_kv", p);
  c.max_seq_len = max_seq_len > 0 ? max_seq_len
                                  : to_int(f.get_uint("llama.context_length"), "llama.context_length", p);
  FASTINFER_CHECK(c.n_heads > 0, FormatError, p, ": llama.attention.head_count is 0");
  c.head_dim = to_int(f.get_uint("llama.attention.key_length", std::uint64_t(c.dim / c.n_heads)),
                      "llama.attention.key_length", p);
  const auto rope_dims = f.get_uint("llama.rope.dimension_count", std::uint64_t(c.head_dim));
  FASTINFER_CHECK(rope_dims == std::uint64_t(c.head_dim), FormatError, p, ": llama.rope.dimension_count ",
                  rope_dims, " differs from the head size ", c.head_dim, " (partial RoPE is not supported)");
  c.rope_theta = float(f.get_float("llama.rope.freq_base", 10000.0));
  c.norm_eps = float(f.get_float("llama.attention.layer_norm_rms_epsilon", 1e-5));
  c.rope_style = RopeStyle::Interleaved;
  const gguf::TensorInfo& embd = f.tensor("token_embd.weight");
  FASTINFER_CHECK(embd.dims.size() == 2, FormatError, p, ": token_embd.weight has ", embd.dims.size(),
                  " dimensions, expected 2");
  c.vocab_size = to_int(embd.dims[1], "token_embd.weight rows", p);
  c.bos_id = to_int(f.get_uint("tokenizer.ggml.bos_token_id", 1), "tokenizer.ggml.bos_token_id", p);
  c.eos_id = f.has("tokenizer.ggml.eos_token_id")
                 ? to_int(f.get_uint("tokenizer.ggml.eos_token_id"), "tokenizer.ggml.eos_token_id", p)
                 : -1;
  c.shared_classifier = f.find_tensor("output.weight") == nullptr;
  try {
    c.validate();
  } catch (const InvalidArgument& e) {
    throw_error<FormatError>(p, ": ", e.what());
  }
  return c;
}

inline LlamaWeights load_gguf_llama(std::shared_ptr<const gguf::GgufFile> file,
                                    const GgufLoadOptions& options = {}) {
  const gguf::GgufFile& f = *file;
  const std::string& p = f.path();
  LlamaWeights w;
  w.config = llama_config_from_gguf(f, options.max_seq_len);
  const LlamaConfig& c = w.config;
  const auto dim = std::uint64_t(c.dim), hidden = std::uint64_t(c.hidden_dim),
             q = std::uint64_t(c.q_dim()), kv = std::uint64_t(c.kv_dim()), vocab = std::uint64_t(c.vocab_size);
  w.storage.push_back(file);

  auto matrix = [&](const std::string& name, std::uint64_t cols, std::uint64_t rows) {
    const gguf::TensorInfo& t = f.tensor(name);
    gguf_detail::check_shape(t, {cols, rows}, p);
    return t.matrix();
  };
  auto norm = [&](const std::string& name) {
    const gguf::TensorInfo& t = f.tensor(name);
    gguf_detail::check_shape(t, {dim}, p);
    return gguf_detail::norm_vector(t, w.storage);
  };

  // Every layer has 9 tensors: a block_count beyond what the file holds is
  // rejected before it sizes any allocation.
  FASTINFER_CHECK(std::uint64_t(c.n_layers) * 9 <= f.tensors().size(), FormatError, p, ": llama.block_count ",
                  c.n_layers, " needs ", std::uint64_t(c.n_layers) * 9, " tensors, the file has ",
                  f.tensors().size());
  w.token_embedding = matrix("token_embd.weight", dim, vocab);
  w.layers.resize(std::size_t(c.n_layers));
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    LlamaLayerWeights& l = w.layers[std::size_t(i)];
    l.attn_norm = norm(b + "attn_norm.weight");
    l.wq = matrix(b + "attn_q.weight", dim, q);
    l.wk = matrix(b + "attn_k.weight", dim, kv);
    l.wv = matrix(b + "attn_v.weight", dim, kv);
    l.wo = matrix(b + "attn_output.weight", q, dim);
    l.ffn_norm = norm(b + "ffn_norm.weight");
    l.w_gate = matrix(b + "ffn_gate.weight", dim, hidden);
    l.w_down = matrix(b + "ffn_down.weight", hidden, dim);
    l.w_up = matrix(b + "ffn_up.weight", dim, hidden);
  }
  w.final_norm = norm("output_norm.weight");
  w.classifier = c.shared_classifier ? w.token_embedding : matrix("output.weight", dim, vocab);
  if (options.weights) return gguf_detail::convert_weights(w, *options.weights);
  return w;
}

inline LlamaWeights load_gguf_llama(const std::string& path, const GgufLoadOptions& options = {}) {
  return load_gguf_llama(gguf::GgufFile::open(path), options);
}

struct GgufSaveOptions {
  std::optional<DType> type;  // convert matrices on the way out; nullopt: as they are
  std::string name = "fastinfer";
  // Vocabulary (tokenizer.ggml.*, model "llama"); written when non-empty.
  // Pieces use SentencePiece's U+2581 for spaces, as GGUF does.
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<std::int32_t> token_types;  // 1 normal, 2 unknown, 3 control, 6 byte
};

// Fills options' vocabulary from a SentencePiece tokenizer. GGUF spells spaces
// U+2581 and names the special pieces plainly (llama2.c stores BOS/EOS as
// "\n<s>\n" / "\n</s>\n").
inline void set_gguf_vocabulary(const SentencePieceTokenizer& tok, GgufSaveOptions& out) {
  using T = SentencePieceTokenizer;
  out.tokens.clear();
  out.scores.clear();
  out.token_types.clear();
  for (std::int32_t id = 0; id < tok.vocab_size(); ++id) {
    std::string piece;
    for (char c : tok.piece(id)) piece += c == ' ' ? std::string("\xE2\x96\x81") : std::string(1, c);
    std::int32_t type = tok.token_types()[std::size_t(id)];
    if (id == tok.bos_id()) piece = "<s>", type = T::Control;
    else if (id == tok.eos_id()) piece = "</s>", type = T::Control;
    else if (id == tok.unk_id()) type = T::Unknown;
    out.tokens.push_back(piece);
    out.scores.push_back(tok.score(id));
    out.token_types.push_back(type);
  }
}

// The vocabulary of `path` (a llama2.c tokenizer.bin, or a .gguf holding
// tokenizer.ggml.* arrays; a .gguf without them leaves `out` as it is).
inline void set_gguf_vocabulary(const std::string& path, GgufSaveOptions& out) {
  if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".gguf") == 0) {
    auto f = gguf::GgufFile::open(path);
    if (f->has("tokenizer.ggml.tokens")) set_gguf_vocabulary(*SentencePieceTokenizer::from_gguf(*f), out);
  } else {
    set_gguf_vocabulary(*SentencePieceTokenizer::from_llama2c(path), out);
  }
}

// Writes `w` as a GGUF "llama" file that load_gguf_llama reads back.
inline void save_gguf_llama(const LlamaWeights& weights, const std::string& path,
                            const GgufSaveOptions& options = {}) {
  const LlamaWeights w = options.type ? gguf_detail::convert_weights(weights, *options.type) : weights;
  const LlamaConfig& c = w.config;
  c.validate();
  FASTINFER_CHECK(c.rope_style == RopeStyle::Interleaved, InvalidArgument,
                  "GGUF 'llama' expects interleaved RoPE; permute HalfSplit Q/K rows before saving");
  gguf::GgufWriter out;
  out.set_string("general.architecture", "llama");
  out.set_string("general.name", options.name);
  out.set_uint32("llama.context_length", std::uint32_t(c.max_seq_len));
  out.set_uint32("llama.embedding_length", std::uint32_t(c.dim));
  out.set_uint32("llama.feed_forward_length", std::uint32_t(c.hidden_dim));
  out.set_uint32("llama.block_count", std::uint32_t(c.n_layers));
  out.set_uint32("llama.attention.head_count", std::uint32_t(c.n_heads));
  out.set_uint32("llama.attention.head_count_kv", std::uint32_t(c.n_kv_heads));
  out.set_uint32("llama.attention.key_length", std::uint32_t(c.head_dim));
  out.set_uint32("llama.attention.value_length", std::uint32_t(c.head_dim));
  out.set_uint32("llama.rope.dimension_count", std::uint32_t(c.head_dim));
  out.set_float32("llama.rope.freq_base", c.rope_theta);
  out.set_float32("llama.attention.layer_norm_rms_epsilon", c.norm_eps);
  out.set_uint32("tokenizer.ggml.bos_token_id", std::uint32_t(c.bos_id));
  if (c.eos_id >= 0) out.set_uint32("tokenizer.ggml.eos_token_id", std::uint32_t(c.eos_id));
  if (!options.tokens.empty()) {
    FASTINFER_CHECK(options.scores.empty() || options.scores.size() == options.tokens.size(),
                    InvalidArgument, "GGUF vocabulary has ", options.tokens.size(), " tokens but ",
                    options.scores.size(), " scores");
    FASTINFER_CHECK(options.token_types.empty() || options.token_types.size() == options.tokens.size(),
                    InvalidArgument, "GGUF vocabulary has ", options.tokens.size(), " tokens but ",
                    options.token_types.size(), " token types");
    out.set_string("tokenizer.ggml.model", "llama");
    out.set_string_array("tokenizer.ggml.tokens", options.tokens);
    if (!options.scores.empty()) out.set_float32_array("tokenizer.ggml.scores", options.scores);
    if (!options.token_types.empty()) out.set_int32_array("tokenizer.ggml.token_type", options.token_types);
  }

  out.add_tensor("token_embd.weight", w.token_embedding);
  const std::uint64_t dim = std::uint64_t(c.dim);
  out.add_tensor("output_norm.weight", gguf::TensorType::F32, {dim}, w.final_norm);
  const bool shared = w.classifier.data == w.token_embedding.data;
  if (!shared) out.add_tensor("output.weight", w.classifier);
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    const LlamaLayerWeights& l = w.layers[std::size_t(i)];
    out.add_tensor(b + "attn_norm.weight", gguf::TensorType::F32, {dim}, l.attn_norm);
    out.add_tensor(b + "attn_q.weight", l.wq);
    out.add_tensor(b + "attn_k.weight", l.wk);
    out.add_tensor(b + "attn_v.weight", l.wv);
    out.add_tensor(b + "attn_output.weight", l.wo);
    out.add_tensor(b + "ffn_norm.weight", gguf::TensorType::F32, {dim}, l.ffn_norm);
    out.add_tensor(b + "ffn_gate.weight", l.w_gate);
    out.add_tensor(b + "ffn_down.weight", l.w_down);
    out.add_tensor(b + "ffn_up.weight", l.w_up);
  }
  out.write(path);
}

}  // namespace fastinfer
