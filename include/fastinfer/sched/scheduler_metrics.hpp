// Host-side latency and utilisation bookkeeping of the scheduler. Time comes
// from an injectable clock (seconds as a double) so tests can drive it; the
// default is std::chrono::steady_clock.
//
// Per request: arrival, first token, finish, and the time of every output
// token (the commit() that produced it). Aggregates over finished,
// non-cancelled requests:
//   ttft  = first token - arrival
//   itl   = gaps between consecutive output tokens of one request (tokens
//           accepted together in one step count a gap of 0)
//   e2e   = finish - arrival
//   throughput = (prompt + generated tokens) / (last finish - first arrival),
//           the way llama.cpp's batched-bench counts; output_tok_s counts
//           generated tokens only
//   kv utilisation = used / total pool blocks after each step (mean, peak)
//   prefix hit rate = cached tokens / tokens to prefill, over admissions
// Percentiles are nearest-rank: the smallest sample with at least p of the
// samples at or below it.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "fastinfer/core/error.hpp"

namespace fastinfer::sched {

using SchedulerClock = std::function<double()>;

inline SchedulerClock steady_seconds_clock() {
  const auto start = std::chrono::steady_clock::now();
  return [start] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
}

// Nearest-rank percentile, p in [0, 1]; 0 for no samples.
inline double percentile(std::vector<double> samples, double p) {
  FASTINFER_CHECK(p >= 0.0 && p <= 1.0, InvalidArgument, "percentile: p must be in [0, 1], got ", p);
  if (samples.empty()) return 0.0;
  std::size_t rank = std::size_t(std::ceil(p * double(samples.size())));
  rank = rank == 0 ? 0 : rank - 1;
  std::nth_element(samples.begin(), samples.begin() + std::ptrdiff_t(rank), samples.end());
  return samples[rank];
}

struct RequestTiming {
  double arrival = 0.0;
  double first_token = -1.0;  // < 0: no token yet
  double finish = -1.0;
  std::vector<double> token_times;
};

struct MetricsSummary {
  std::int64_t finished = 0;   // excluding cancelled
  std::int64_t cancelled = 0;
  std::int64_t prompt_tokens = 0;
  std::int64_t generated_tokens = 0;
  double ttft_p50 = 0, ttft_p99 = 0, ttft_mean = 0;
  double itl_p50 = 0, itl_p99 = 0;
  double e2e_p50 = 0, e2e_p99 = 0;
  double throughput_tok_s = 0;
  double output_tok_s = 0;
  double kv_utilisation_mean = 0, kv_utilisation_peak = 0;
  double prefix_hit_rate = 0;
  std::int64_t prefix_cached_tokens = 0;
  std::int64_t preemptions = 0, preemptions_recompute = 0, preemptions_swap = 0;
  std::int64_t steps = 0;
};

class SchedulerMetrics {
 public:
  void on_step(std::int64_t used_blocks, std::int64_t total_blocks) {
    ++steps_;
    const double u = total_blocks > 0 ? double(used_blocks) / double(total_blocks) : 0.0;
    util_sum_ += u;
    util_peak_ = std::max(util_peak_, u);
  }
  void on_admit(std::int64_t tokens_to_prefill, std::int64_t cached) {
    prefill_considered_ += tokens_to_prefill;
    prefill_cached_ += cached;
  }
  void on_preempt(bool swapped) { ++(swapped ? swaps_ : recomputes_); }
  void on_cancel() { ++cancelled_; }
  void on_finish(const RequestTiming& t, std::int64_t prompt_tokens, std::int64_t generated) {
    ++finished_;
    prompt_tokens_ += prompt_tokens;
    generated_ += generated;
    if (t.first_token >= 0.0) ttft_.push_back(t.first_token - t.arrival);
    for (std::size_t i = 1; i < t.token_times.size(); ++i) itl_.push_back(t.token_times[i] - t.token_times[i - 1]);
    e2e_.push_back(t.finish - t.arrival);
    first_arrival_ = std::min(first_arrival_, t.arrival);
    last_finish_ = std::max(last_finish_, t.finish);
  }

  MetricsSummary summary() const {
    MetricsSummary s;
    s.finished = finished_;
    s.cancelled = cancelled_;
    s.prompt_tokens = prompt_tokens_;
    s.generated_tokens = generated_;
    s.ttft_p50 = percentile(ttft_, 0.5);
    s.ttft_p99 = percentile(ttft_, 0.99);
    double sum = 0;
    for (double x : ttft_) sum += x;
    s.ttft_mean = ttft_.empty() ? 0.0 : sum / double(ttft_.size());
    s.itl_p50 = percentile(itl_, 0.5);
    s.itl_p99 = percentile(itl_, 0.99);
    s.e2e_p50 = percentile(e2e_, 0.5);
    s.e2e_p99 = percentile(e2e_, 0.99);
    const double span = last_finish_ - first_arrival_;
    if (finished_ > 0 && span > 0) {
      s.throughput_tok_s = double(prompt_tokens_ + generated_) / span;
      s.output_tok_s = double(generated_) / span;
    }
    s.kv_utilisation_mean = steps_ > 0 ? util_sum_ / double(steps_) : 0.0;
    s.kv_utilisation_peak = util_peak_;
    s.prefix_cached_tokens = prefill_cached_;
    s.prefix_hit_rate = prefill_considered_ > 0 ? double(prefill_cached_) / double(prefill_considered_) : 0.0;
    s.preemptions_recompute = recomputes_;
    s.preemptions_swap = swaps_;
    s.preemptions = recomputes_ + swaps_;
    s.steps = steps_;
    return s;
  }

 private:
  std::int64_t steps_ = 0, finished_ = 0, cancelled_ = 0;
  std::int64_t prompt_tokens_ = 0, generated_ = 0;
  std::int64_t prefill_considered_ = 0, prefill_cached_ = 0;
  std::int64_t recomputes_ = 0, swaps_ = 0;
  double util_sum_ = 0, util_peak_ = 0;
  double first_arrival_ = 1e300, last_finish_ = -1e300;
  std::vector<double> ttft_, itl_, e2e_;
};

}  // namespace fastinfer::sched
