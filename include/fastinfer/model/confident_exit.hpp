// Confidence-gated early exit (CALM, Schuster et al. 2022; patience-based
// exit, Zhou et al. 2020): lossy, opt-in. Each decoded token runs the layers
// one at a time; from min_layer on, after each layer the final norm and the
// classifier read the hidden state, and the token exits there when
//   - the top-1 probability (softmax at temperature 1) reaches `threshold`, or
//   - the top-1 token has been the same after `patience` consecutive layers.
// The layers it skipped still get this token's keys and values, projected
// from the exit layer's hidden state (CALM's state propagation), so later
// tokens attend to a full-depth cache. The prompt runs at full depth.
//
// ConfidentExit wraps a LlamaModel as a model of its own (config, reset,
// forward_prefill, forward_decode): generate() runs it unchanged, with its
// stop rules and sampling. Each check costs one classifier product (vocab x
// dim): cheap against a layer only when the vocabulary is small next to the
// layer (the inflated stand-ins: 2048 x 768 against 7 M per layer); with a
// 32000-token vocabulary a check costs about 3.5 layers of the 110M shape, so
// check fewer layers (a higher min_layer).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/model/forward_batch.hpp"

namespace fastinfer {

struct ConfidentExitOptions {
  float threshold = 0.0f;  // top-1 probability that ends a token; 0: off
  int patience = 0;        // consecutive layers agreeing on the top-1; 0: off
  int min_layer = 1;       // the first depth (layers run) where a token may exit

  bool enabled() const { return threshold > 0.0f || patience > 0; }
};

// The largest softmax probability of logits[n] at temperature 1.
inline float top1_probability(const float* logits, int n) {
  const float m = *std::max_element(logits, logits + n);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - m);
  return float(1.0 / sum);
}

template <typename Model>
class ConfidentExit {
 public:
  ConfidentExit(Model& model, ConfidentExitOptions options) : m_(model), o_(options) {
    const int layers = model.config().n_layers;
    FASTINFER_CHECK(options.threshold >= 0.0f && options.threshold <= 1.0f, InvalidArgument,
                    "early-exit threshold must be in [0, 1], got ", options.threshold);
    FASTINFER_CHECK(options.patience >= 0, InvalidArgument, "early-exit patience must not be negative, got ",
                    options.patience);
    FASTINFER_CHECK(options.min_layer >= 1 && options.min_layer <= layers, InvalidArgument,
                    "early-exit min layer ", options.min_layer, " is outside [1, ", layers, "]");
    exits_.assign(std::size_t(layers) + 1, 0);
  }

  const LlamaConfig& config() const { return m_.config(); }
  const ConfidentExitOptions& options() const { return o_; }
  void reset() { m_.reset(); }
  int cached_length() const { return m_.cached_length(); }

  const float* forward_prefill(const std::int32_t* tokens, std::int64_t n, int start_pos) {
    return m_.forward_prefill(tokens, n, start_pos);
  }
  const float* forward_prefill(const std::vector<std::int32_t>& tokens, int start_pos) {
    return m_.forward_prefill(tokens, start_pos);
  }

  const float* forward_decode(std::int32_t token, int pos) {
    const int layers = m_.config().n_layers, vocab = m_.config().vocab_size;
    m_.begin_layers(&token, 1, pos, LogitsRows::Last);
    std::int32_t previous = -1;
    int streak = 0;
    for (int l = 1; l < layers; ++l) {
      m_.run_layers(l - 1, l);
      if (!o_.enabled() || l < o_.min_layer) continue;
      const float* logits = m_.exit_logits();
      const std::int32_t top = std::int32_t(std::max_element(logits, logits + vocab) - logits);
      streak = top == previous ? streak + 1 : 1;
      previous = top;
      if ((o_.patience > 0 && streak >= o_.patience) ||
          (o_.threshold > 0.0f && top1_probability(logits, vocab) >= o_.threshold)) {
        m_.fill_kv(l, layers);
        ++exits_[std::size_t(l)];
        return logits;
      }
    }
    m_.run_layers(layers - 1, layers);
    ++exits_[std::size_t(layers)];
    return m_.exit_logits();
  }

  // exits()[l]: decoded tokens that ran l layers (n_layers: no exit).
  const std::vector<std::int64_t>& exits() const { return exits_; }
  // Mean layers run per decoded token (n_layers without exits).
  double mean_layers() const {
    std::int64_t tokens = 0, layers = 0;
    for (std::size_t l = 0; l < exits_.size(); ++l) tokens += exits_[l], layers += std::int64_t(l) * exits_[l];
    return tokens > 0 ? double(layers) / double(tokens) : 0.0;
  }
  void clear_exits() { std::fill(exits_.begin(), exits_.end(), 0); }

 private:
  Model& m_;
  ConfidentExitOptions o_;
  std::vector<std::int64_t> exits_;
};

}  // namespace fastinfer
