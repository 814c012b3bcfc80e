// The shape and hyper-parameters of a Llama-family transformer, whatever file
// it came from.
#pragma once

#include <cstdint>
#include <string>

#include "fastinfer/core/error.hpp"

namespace fastinfer {

// How RoPE pairs the dimensions of a head.
//  Interleaved: (0,1), (2,3), ... — llama2.c, Meta's original, GGUF "llama".
//  HalfSplit:   (i, i + head_dim/2) — Hugging Face rotate_half (GPT-NeoX).
enum class RopeStyle : std::uint8_t { Interleaved, HalfSplit };

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
    FASTINFER_CHECK(max_seq_len > 0, InvalidArgument, "max_seq_len must be positive, got ", max_seq_len);
    FASTINFER_CHECK(head_dim > 0 && head_dim % 2 == 0, InvalidArgument,
                    "head_dim must be positive and even, got ", head_dim);
    FASTINFER_CHECK(n_heads % n_kv_heads == 0, InvalidArgument, "n_kv_heads (", n_kv_heads,
                    ") does not divide n_heads (", n_heads, ")");
  }
};

}  // namespace fastinfer
