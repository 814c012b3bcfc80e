// How far an approximate forward pass (early exit, a compressed or quantized
// KV cache) strays from the exact one, row by row of logits: the mean KL
// divergence KL(p_ref || p_test) of the next-token distributions (softmax at
// temperature 1, in double) and the share of rows whose argmax agrees (first
// maximum, as greedy decoding picks). The measures llama.cpp and kvpress
// report; top-1 agreement alone hides how much probability moved.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace fastinfer {

class LogitsAgreement {
 public:
  void add(const float* ref, const float* test, int vocab) {
    log_softmax_(ref, vocab, lp_);
    log_softmax_(test, vocab, lq_);
    double kl = 0;
    for (int i = 0; i < vocab; ++i) kl += std::exp(lp_[std::size_t(i)]) * (lp_[std::size_t(i)] - lq_[std::size_t(i)]);
    kl_sum_ += std::max(0.0, kl);  // rounding can leave -1e-17 for equal rows
    agree_ += std::max_element(ref, ref + vocab) - ref == std::max_element(test, test + vocab) - test ? 1 : 0;
    ++rows_;
  }

  std::int64_t rows() const { return rows_; }
  double mean_kl() const { return rows_ > 0 ? kl_sum_ / double(rows_) : 0.0; }
  double top1_agreement() const { return rows_ > 0 ? double(agree_) / double(rows_) : 0.0; }

 private:
  static void log_softmax_(const float* logits, int n, std::vector<double>& out) {
    const double mx = *std::max_element(logits, logits + n);
    double sum = 0;
    for (int i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - mx);
    const double lse = mx + std::log(sum);
    out.resize(std::size_t(n));
    for (int i = 0; i < n; ++i) out[std::size_t(i)] = double(logits[i]) - lse;
  }

  std::vector<double> lp_, lq_;
  double kl_sum_ = 0;
  std::int64_t agree_ = 0, rows_ = 0;
};

}  // namespace fastinfer
