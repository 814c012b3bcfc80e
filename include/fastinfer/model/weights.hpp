// The weights of a Llama-family transformer as views, whatever loader made
// them. Norm weights are always f32; matrices may be f32, f16, bf16 or q8_0.
#pragma once

#include <vector>

#include "fastinfer/core/tensor.hpp"
#include "fastinfer/model/config.hpp"

namespace fastinfer {

struct LlamaLayerWeights {
  const float* attn_norm = nullptr;  // [dim]
  MatrixView wq;                     // [n_heads*head_dim][dim]
  MatrixView wk;                     // [n_kv_heads*head_dim][dim]
  MatrixView wv;                     // [n_kv_heads*head_dim][dim]
  MatrixView wo;                     // [dim][n_heads*head_dim]
  const float* ffn_norm = nullptr;   // [dim]
  MatrixView w_gate;                 // [hidden_dim][dim]   (llama2.c w1)
  MatrixView w_down;                 // [dim][hidden_dim]   (llama2.c w2)
  MatrixView w_up;                   // [hidden_dim][dim]   (llama2.c w3)
};

struct LlamaWeights {
  LlamaConfig config;
  MatrixView token_embedding;        // [vocab][dim]
  std::vector<LlamaLayerWeights> layers;
  const float* final_norm = nullptr; // [dim]
  MatrixView classifier;             // [vocab][dim]; same data as token_embedding when shared
  // Whatever owns the memory above: mmaps, heap buffers. Views stay valid
  // while any copy of this vector is alive.
  std::vector<KeepAlive> storage;
};

}  // namespace fastinfer
