// The reference Llama-family transformer: RMSNorm, RoPE (interleaved or half
// split), grouped-query attention, SwiGLU, shared or separate classifier.
//
// One code path serves prefill and decode: `forward_batch_` pushes n tokens
// through every layer at once, so a prompt is one matrix-matrix product per
// weight (cpu::matmul) and a decoded token is one matrix-vector product
// (cpu::matvec). Every buffer is sized at construction for `max_batch` tokens;
// nothing is allocated per token. Longer prompts are cut into batches of
// `max_batch` tokens.
//
// KV cache (a plain contiguous one until KVCache<Layout, Quant> replaces it):
// two f32 arrays, keys and values, each [layer][kv_head][pos][head_dim], with
// room for max_seq_len positions. Keys are stored after RoPE. Head-major, so
// that one query head's attention streams one contiguous run of keys. Only
// `attend_` reads the cache, and only `store_kv_` writes it.
//
// Positions are the caller's, as in llama2.c: forward at start_pos overwrites
// whatever the cache held from start_pos on (rollback is free), and may not
// skip ahead of what has been computed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/tensor.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/model/weights.hpp"

namespace fastinfer {

// Backend tag: which kernel set the model calls. Only the CPU exists so far.
struct CpuBackend {};

struct ModelOptions {
  int threads = 1;    // most threads any kernel may use
  int max_batch = 0;  // most tokens in one forward pass; 0: min(max_seq_len, 512)
};

template <typename Backend = CpuBackend>
class LlamaModel {
  static_assert(std::is_same_v<Backend, CpuBackend>,
                "LlamaModel<Backend>: only CpuBackend is implemented; a new backend adds its kernels here");

 public:
  explicit LlamaModel(LlamaWeights weights, ModelOptions options = {})
      : w_(std::move(weights)), c_(w_.config) {
    c_.validate();
    FASTINFER_CHECK(options.threads >= 1, InvalidArgument, "threads must be at least 1, got ", options.threads);
    FASTINFER_CHECK(options.max_batch >= 0, InvalidArgument, "max_batch must not be negative, got ",
                    options.max_batch);
    FASTINFER_CHECK(int(w_.layers.size()) == c_.n_layers, InvalidArgument, "weights hold ", w_.layers.size(),
                    " layers, config says ", c_.n_layers);
    check_weights_();
    threads_ = options.threads;
    max_batch_ = options.max_batch > 0 ? std::min(options.max_batch, c_.max_seq_len)
                                       : std::min(c_.max_seq_len, 512);
    const std::size_t B = std::size_t(max_batch_);
    const std::size_t wide = std::size_t(std::max(c_.dim, c_.q_dim()));
    x_.assign(B * std::size_t(c_.dim), 0.0f);
    xb_.assign(B * wide, 0.0f);
    q_.assign(B * std::size_t(c_.q_dim()), 0.0f);
    k_.assign(B * std::size_t(c_.kv_dim()), 0.0f);
    v_.assign(B * std::size_t(c_.kv_dim()), 0.0f);
    att_out_.assign(B * std::size_t(c_.q_dim()), 0.0f);
    hb_.assign(B * std::size_t(c_.hidden_dim), 0.0f);
    hb2_.assign(B * std::size_t(c_.hidden_dim), 0.0f);
    scores_.assign(std::size_t(c_.n_heads) * std::size_t(c_.max_seq_len), 0.0f);
    logits_.assign(std::size_t(c_.vocab_size), 0.0f);
    const std::size_t cache = std::size_t(c_.n_layers) * std::size_t(c_.n_kv_heads) *
                              std::size_t(c_.max_seq_len) * std::size_t(c_.head_dim);
    key_cache_.assign(cache, 0.0f);
    value_cache_.assign(cache, 0.0f);
  }

  const LlamaConfig& config() const { return c_; }
  const LlamaWeights& weights() const { return w_; }
  int threads() const { return threads_; }
  void set_threads(int threads) {
    FASTINFER_CHECK(threads >= 1, InvalidArgument, "threads must be at least 1, got ", threads);
    threads_ = threads;
  }
  int max_batch() const { return max_batch_; }
  // Positions whose keys and values the cache holds (the next position to feed).
  int cached_length() const { return length_; }

  // Bytes of distinct weight storage (a shared classifier counted once): what
  // one decoded token streams from memory, give or take one embedding row.
  std::size_t weights_bytes() const {
    std::size_t bytes = w_.token_embedding.bytes();
    if (w_.classifier.data != w_.token_embedding.data) bytes += w_.classifier.bytes();
    for (const auto& l : w_.layers)
      bytes += l.wq.bytes() + l.wk.bytes() + l.wv.bytes() + l.wo.bytes() + l.w_gate.bytes() +
               l.w_down.bytes() + l.w_up.bytes();
    bytes += (2 * std::size_t(c_.n_layers) + 1) * std::size_t(c_.dim) * sizeof(float);
    return bytes;
  }
  std::size_t kv_bytes() const { return (key_cache_.size() + value_cache_.size()) * sizeof(float); }

  // Forgets every cached position.
  void reset() { length_ = 0; }

  // Feeds tokens[0..n) at positions start_pos.. and returns the logits after
  // the last one ([vocab], valid until the next forward call).
  const float* forward_prefill(const std::int32_t* tokens, std::int64_t n, int start_pos) {
    check_input_(tokens, n, start_pos);
    for (std::int64_t done = 0; done < n;) {
      const int chunk = int(std::min<std::int64_t>(max_batch_, n - done));
      forward_batch_(tokens + done, chunk, start_pos + int(done), done + chunk == n ? Logits::Last : Logits::None,
                     nullptr);
      done += chunk;
    }
    return logits_.data();
  }
  const float* forward_prefill(const std::vector<std::int32_t>& tokens, int start_pos) {
    return forward_prefill(tokens.data(), std::int64_t(tokens.size()), start_pos);
  }

  // As forward_prefill, but writes the logits of every position to
  // out[n][vocab] (speculative verification needs them all).
  void forward_prefill_all(const std::int32_t* tokens, std::int64_t n, int start_pos, float* out) {
    check_input_(tokens, n, start_pos);
    for (std::int64_t done = 0; done < n;) {
      const int chunk = int(std::min<std::int64_t>(max_batch_, n - done));
      forward_batch_(tokens + done, chunk, start_pos + int(done), Logits::All,
                     out + std::size_t(done) * std::size_t(c_.vocab_size));
      done += chunk;
    }
  }

  // Feeds one token at `pos` and returns the logits after it.
  const float* forward_decode(std::int32_t token, int pos) { return forward_prefill(&token, 1, pos); }

 private:
  enum class Logits { None, Last, All };

  void check_weights_() const {
    auto shape = [&](const MatrixView& m, std::int64_t rows, std::int64_t cols, const char* name, int layer) {
      FASTINFER_CHECK(m.data != nullptr && m.rows == rows && m.cols == cols, InvalidArgument, "weight ", name,
                      layer >= 0 ? " of layer " : "", layer >= 0 ? std::to_string(layer) : std::string(),
                      " is [", m.rows, "][", m.cols, "], expected [", rows, "][", cols, "]");
    };
    shape(w_.token_embedding, c_.vocab_size, c_.dim, "token_embedding", -1);
    shape(w_.classifier, c_.vocab_size, c_.dim, "classifier", -1);
    FASTINFER_CHECK(w_.final_norm != nullptr, InvalidArgument, "final_norm is missing");
    for (int l = 0; l < c_.n_layers; ++l) {
      const auto& lw = w_.layers[std::size_t(l)];
      shape(lw.wq, c_.q_dim(), c_.dim, "wq", l);
      shape(lw.wk, c_.kv_dim(), c_.dim, "wk", l);
      shape(lw.wv, c_.kv_dim(), c_.dim, "wv", l);
      shape(lw.wo, c_.dim, c_.q_dim(), "wo", l);
      shape(lw.w_gate, c_.hidden_dim, c_.dim, "w_gate", l);
      shape(lw.w_up, c_.hidden_dim, c_.dim, "w_up", l);
      shape(lw.w_down, c_.dim, c_.hidden_dim, "w_down", l);
      FASTINFER_CHECK(lw.attn_norm != nullptr && lw.ffn_norm != nullptr, InvalidArgument,
                      "a norm of layer ", l, " is missing");
    }
  }

  // All checks before any state changes: a rejected call leaves the model as it was.
  void check_input_(const std::int32_t* tokens, std::int64_t n, int start_pos) const {
    FASTINFER_CHECK(n >= 1, InvalidArgument, "a forward pass needs at least one token, got ", n);
    FASTINFER_CHECK(start_pos >= 0 && start_pos <= length_, InvalidArgument, "start position ", start_pos,
                    " is outside the cached range [0, ", length_, "]");
    FASTINFER_CHECK(std::int64_t(start_pos) + n <= c_.max_seq_len, InvalidArgument, "positions ", start_pos,
                    "..", std::int64_t(start_pos) + n - 1, " exceed the maximum sequence length ", c_.max_seq_len);
    for (std::int64_t i = 0; i < n; ++i)
      FASTINFER_CHECK(tokens[i] >= 0 && tokens[i] < c_.vocab_size, InvalidArgument, "token id ", tokens[i],
                      " at index ", i, " is outside the vocabulary [0, ", c_.vocab_size, ")");
  }

  // y[n][w.rows] = x[n][w.cols] W^T: one matrix-vector product for a single
  // token, one matrix-matrix product for a batch.
  void linear_(const MatrixView& w, const float* x, int n, float* y) const {
    if (n == 1)
      cpu::matvec(w, x, y, threads_);
    else
      cpu::matmul(w, x, n, y, threads_);
  }

  float* key_cache_at_(int layer, int kv_head) {
    return key_cache_.data() +
           ((std::size_t(layer) * std::size_t(c_.n_kv_heads) + std::size_t(kv_head)) * std::size_t(c_.max_seq_len)) *
               std::size_t(c_.head_dim);
  }
  float* value_cache_at_(int layer, int kv_head) {
    return value_cache_.data() + (key_cache_at_(layer, kv_head) - key_cache_.data());
  }

  void store_kv_(int layer, int n, int pos0) {
    const std::size_t hd = std::size_t(c_.head_dim);
    for (int t = 0; t < n; ++t)
      for (int h = 0; h < c_.n_kv_heads; ++h) {
        const std::size_t src = std::size_t(t) * std::size_t(c_.kv_dim()) + std::size_t(h) * hd;
        const std::size_t dst = std::size_t(pos0 + t) * hd;
        std::memcpy(key_cache_at_(layer, h) + dst, k_.data() + src, hd * sizeof(float));
        std::memcpy(value_cache_at_(layer, h) + dst, v_.data() + src, hd * sizeof(float));
      }
  }

  // Causal grouped-query attention of the n queries in q_ (positions pos0..)
  // over the cache, into att_out_. Query head h reads KV head h / group. Each
  // head is one work item, so a thread owns its row of scores_.
  void attend_(int layer, int n, int pos0) {
    const int hd = c_.head_dim;
    const int group = c_.n_heads / c_.n_kv_heads;
    const float scale = 1.0f / std::sqrt(float(hd));
    const std::int64_t work = std::int64_t(c_.n_heads) * n * (pos0 + n) * hd;
    const int threads = work >= (1 << 15) ? std::min(threads_, c_.n_heads) : 1;
    (void)threads;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
#endif
    for (int h = 0; h < c_.n_heads; ++h) {
      const float* keys = key_cache_at_(layer, h / group);
      const float* values = value_cache_at_(layer, h / group);
      float* scores = scores_.data() + std::size_t(h) * std::size_t(c_.max_seq_len);
      for (int t = 0; t < n; ++t) {
        const int len = pos0 + t + 1;
        const float* q = q_.data() + std::size_t(t) * std::size_t(c_.q_dim()) + std::size_t(h) * std::size_t(hd);
        cpu::matvec(MatrixView{DType::F32, keys, len, hd}, q, scores, 1);
        for (int p = 0; p < len; ++p) scores[p] *= scale;
        cpu::softmax(scores, len);
        float* out = att_out_.data() + std::size_t(t) * std::size_t(c_.q_dim()) + std::size_t(h) * std::size_t(hd);
        std::fill(out, out + hd, 0.0f);
        for (int p = 0; p < len; ++p) {
          const float a = scores[p];
          const float* v = values + std::size_t(p) * std::size_t(hd);
          for (int d = 0; d < hd; ++d) out[d] += a * v[d];
        }
      }
    }
  }

  void forward_batch_(const std::int32_t* tokens, int n, int pos0, Logits mode, float* all_out) {
    const std::size_t dim = std::size_t(c_.dim);
    const std::size_t qd = std::size_t(c_.q_dim()), kvd = std::size_t(c_.kv_dim());
    const std::size_t hid = std::size_t(c_.hidden_dim);
    float* x = x_.data();
    for (int t = 0; t < n; ++t)
      cpu::load_row(w_.token_embedding.dtype, w_.token_embedding.row_ptr(tokens[t]), x + std::size_t(t) * dim,
                    c_.dim);

    for (int l = 0; l < c_.n_layers; ++l) {
      const LlamaLayerWeights& lw = w_.layers[std::size_t(l)];
      for (int t = 0; t < n; ++t)
        cpu::rmsnorm(xb_.data() + std::size_t(t) * dim, x + std::size_t(t) * dim, lw.attn_norm, c_.dim, c_.norm_eps);
      linear_(lw.wq, xb_.data(), n, q_.data());
      linear_(lw.wk, xb_.data(), n, k_.data());
      linear_(lw.wv, xb_.data(), n, v_.data());
      for (int t = 0; t < n; ++t) {
        cpu::rope(q_.data() + std::size_t(t) * qd, c_.n_heads, c_.head_dim, pos0 + t, c_.rope_theta, c_.rope_style);
        cpu::rope(k_.data() + std::size_t(t) * kvd, c_.n_kv_heads, c_.head_dim, pos0 + t, c_.rope_theta,
                  c_.rope_style);
      }
      store_kv_(l, n, pos0);
      attend_(l, n, pos0);
      linear_(lw.wo, att_out_.data(), n, xb_.data());
      cpu::add(x, xb_.data(), std::int64_t(n) * c_.dim);

      for (int t = 0; t < n; ++t)
        cpu::rmsnorm(xb_.data() + std::size_t(t) * dim, x + std::size_t(t) * dim, lw.ffn_norm, c_.dim, c_.norm_eps);
      linear_(lw.w_gate, xb_.data(), n, hb_.data());
      linear_(lw.w_up, xb_.data(), n, hb2_.data());
      cpu::swiglu(hb_.data(), hb2_.data(), std::int64_t(n) * c_.hidden_dim);
      (void)hid;
      linear_(lw.w_down, hb_.data(), n, xb_.data());
      cpu::add(x, xb_.data(), std::int64_t(n) * c_.dim);
    }
    length_ = pos0 + n;

    if (mode == Logits::Last) {
      cpu::rmsnorm(xb_.data(), x + std::size_t(n - 1) * dim, w_.final_norm, c_.dim, c_.norm_eps);
      cpu::matvec(w_.classifier, xb_.data(), logits_.data(), threads_);
    } else if (mode == Logits::All) {
      for (int t = 0; t < n; ++t)
        cpu::rmsnorm(xb_.data() + std::size_t(t) * dim, x + std::size_t(t) * dim, w_.final_norm, c_.dim, c_.norm_eps);
      linear_(w_.classifier, xb_.data(), n, all_out);
    }
  }

  LlamaWeights w_;
  LlamaConfig c_;
  int threads_ = 1;
  int max_batch_ = 1;
  int length_ = 0;
  // Activations for up to max_batch_ tokens, row-major [token][feature].
  std::vector<float> x_, xb_, q_, k_, v_, att_out_, hb_, hb2_;
  std::vector<float> scores_;  // [n_heads][max_seq_len]
  std::vector<float> logits_;  // [vocab]
  std::vector<float> key_cache_, value_cache_;  // [layer][kv_head][pos][head_dim]
};

}  // namespace fastinfer
