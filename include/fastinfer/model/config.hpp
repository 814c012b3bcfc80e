// The shape and hyper-parameters of a Llama-family transformer, whatever file
// it came from.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "fastinfer/core/error.hpp"
#include "fastinfer/core/rope_style.hpp"  // RopeStyle, re-exported: LlamaConfig::rope_style

namespace fastinfer {

// The longest context any loader accepts from a file or a caller (16M
// tokens, past every released Llama): a larger field is corruption, and would
// size a KV reservation or a power-of-two block past 32 bits.
inline constexpr int kMaxContext = 1 << 24;

// The widest projection (n_heads x head_dim) any loader accepts: 2^24, far
// past every released model, so row x width products stay well inside 64 bits.
inline constexpr std::int64_t kMaxWidth = std::int64_t(1) << 24;

struct LlamaConfig {
  int dim = 0;          // hidden size (residual stream width)
  int hidden_dim = 0;   // SwiGLU intermediate size
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int vocab_size = 0;
  int max_seq_len = 0;
  int head_dim = 0;     // usually dim / n_heads
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  RopeStyle rope_style = RopeStyle::Interleaved;
  int bos_id = 1;
  int eos_id = -1;      // -1: none (llama2.c stops on BOS instead)
  bool shared_classifier = true;

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }

  // Throws InvalidArgument naming the first inconsistent field.
  void validate() const {
    FASTINFER_CHECK(dim > 0, InvalidArgument, "dim must be positive, got ", dim);
    FASTINFER_CHECK(hidden_dim > 0, InvalidArgument, "hidden_dim must be positive, got ", hidden_dim);
    FASTINFER_CHECK(n_layers > 0, InvalidArgument, "n_layers must be positive, got ", n_layers);
    FASTINFER_CHECK(n_heads > 0, InvalidArgument, "n_heads must be positive, got ", n_heads);
    FASTINFER_CHECK(n_kv_heads > 0, InvalidArgument, "n_kv_heads must be positive, got ", n_kv_heads);
    FASTINFER_CHECK(vocab_size > 0, InvalidArgument, "vocab_size must be positive, got ", vocab_size);
    FASTINFER_CHECK(max_seq_len > 0 && max_seq_len <= kMaxContext, InvalidArgument, "max_seq_len ", max_seq_len,
                    " is outside [1, ", kMaxContext, "]");
    FASTINFER_CHECK(head_dim > 0 && head_dim % 2 == 0, InvalidArgument,
                    "head_dim must be positive and even, got ", head_dim);
    FASTINFER_CHECK(n_heads % n_kv_heads == 0, InvalidArgument, "n_kv_heads (", n_kv_heads,
                    ") does not divide n_heads (", n_heads, ")");
    // q_dim() and kv_dim() are ints that size activations and weight views:
    // a head count times head_dim past 2^31 is corruption, not a model.
    FASTINFER_CHECK(std::int64_t(n_heads) * head_dim <= kMaxWidth, InvalidArgument, "n_heads (", n_heads,
                    ") x head_dim (", head_dim, ") exceeds the width limit ", kMaxWidth);
    // A NaN, infinite or non-positive value here makes every logit NaN or 0:
    // refused by name instead of generating token 0 forever.
    FASTINFER_CHECK(std::isfinite(norm_eps) && norm_eps > 0.0f, InvalidArgument,
                    "norm_eps (rms_norm_eps) must be finite and positive, got ", norm_eps);
    FASTINFER_CHECK(std::isfinite(rope_theta) && rope_theta > 0.0f, InvalidArgument,
                    "rope_theta must be finite and positive, got ", rope_theta);
    FASTINFER_CHECK(bos_id >= -1 && bos_id < vocab_size, InvalidArgument, "bos_id ", bos_id,
                    " is outside the vocabulary of ", vocab_size);
    FASTINFER_CHECK(eos_id >= -1 && eos_id < vocab_size, InvalidArgument, "eos_id ", eos_id,
                    " is outside the vocabulary of ", vocab_size);
  }
};

}  // namespace fastinfer
