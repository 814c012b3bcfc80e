// The weights of a Llama-family transformer as views, whatever loader made
// them. Norm weights are always f32; matrices may be f32, f16, bf16 or q8_0.
#pragma once

#include <algorithm>
#include <memory>
#include <utility>
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

// Calls f(MatrixView&) on every matrix of `w`: the embedding, the classifier
// (when it is not the embedding's data: then it is set to the embedding's
// new view), and each layer's seven projections. The one walk behind every
// conversion and upload, so none can miss a matrix or split a shared one.
template <class F>
inline void for_each_matrix(LlamaWeights& w, F&& f) {
  const bool shared = w.classifier.data == w.token_embedding.data;
  f(w.token_embedding);
  if (shared)
    w.classifier = w.token_embedding;
  else
    f(w.classifier);
  for (LlamaLayerWeights& l : w.layers)
    for (MatrixView* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_down, &l.w_up}) f(*m);
}

// Gives `w` the storage `fresh` (the buffers its matrices were just written
// to) and keeps what it had only while a matrix still reads it
// (`reads_source`: one was left as it was). The norm vectors, which point
// into the old storage, are copied into one small heap buffer first. So
// weights converted or regrouped at load do not keep their source alive
// beside them (a 1B model quantized to Q8_0 from f32 held 4.4 GB of f32 and
// 1.1 GB of Q8_0 beside the 1.1 GB it reads).
inline void replace_storage(LlamaWeights& w, std::vector<KeepAlive> fresh, bool reads_source) {
  const std::size_t dim = std::size_t(std::max(w.config.dim, 0));
  const std::size_t vectors = w.layers.size() * 2 + (w.final_norm ? 1 : 0);
  auto norms = std::make_shared<std::vector<float>>(vectors * dim);
  float* next = norms->data();
  auto copy = [&](const float*& v) {
    if (!v) return;
    std::copy(v, v + dim, next);
    v = next;
    next += dim;
  };
  copy(w.final_norm);
  for (LlamaLayerWeights& l : w.layers) {
    copy(l.attn_norm);
    copy(l.ffn_norm);
  }
  fresh.push_back(std::move(norms));
  if (reads_source) fresh.insert(fresh.end(), w.storage.begin(), w.storage.end());
  w.storage = std::move(fresh);
}

}  // namespace fastinfer
