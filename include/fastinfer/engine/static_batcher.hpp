// StaticBatcher: the baseline continuous batching is measured against.
// Requests are served in fixed batches of up to batch_size, in arrival
// order: a batch is formed from the requests that have arrived when the
// previous batch ends (waiting for the first if none has), and no request
// joins until the whole batch has finished. Every row of a batch decodes
// until its longest request is done (rows whose request ended keep
// computing a pad token: the padding of static batching), and the batch
// holds the KV of every row until then.
//
// It runs on the same model and kernels as the Engine (one ragged forward
// per step, prompts fed whole or in max_batch-row chunks, sampling with the
// same per-request streams), so the comparison measures scheduling only.
// Prompts are not padded (that would only make the baseline slower); the
// outputs equal the Engine's. Per-request timing as the batcher keeps it:
// first token and each token when the step that produced it ends, finish
// when the request's own last token is out.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/model/forward_batch.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/sched/request.hpp"
#include "fastinfer/sched/scheduler_metrics.hpp"

namespace fastinfer::engine {

struct StaticBatchConfig {
  std::int32_t batch_size = 16;
};

template <typename Backend = CpuBackend>
class StaticBatcher {
 public:
  explicit StaticBatcher(LlamaModel<Backend>& model, StaticBatchConfig config = {}, sched::SchedulerClock clock = {})
      : model_(model), cfg_(config), clock_(clock ? std::move(clock) : sched::steady_seconds_clock()) {
    FASTINFER_CHECK(cfg_.batch_size >= 1, InvalidArgument, "StaticBatcher: batch_size must be >= 1, got ",
                    cfg_.batch_size);
  }

  // Serves `requests` (arrival_time in seconds from the start, ascending)
  // and returns their outputs in order. The model's KV pool must hold one
  // batch: batch_size sequences of the longest prompt + output.
  std::vector<std::vector<sched::TokenId>> run(const std::vector<sched::Request>& requests) {
    const LlamaConfig& c = model_.config();
    for (const auto& r : requests) sched::validate_request(r, c.max_seq_len, c.vocab_size);
    std::vector<std::vector<sched::TokenId>> outputs(requests.size());
    const double start = clock_();
    std::size_t next = 0;
    while (next < requests.size()) {
      double now = clock_() - start;
      if (requests[next].arrival_time > now) {
        std::this_thread::sleep_for(std::chrono::duration<double>(requests[next].arrival_time - now));
        now = clock_() - start;
      }
      std::vector<std::size_t> batch;
      while (next < requests.size() && std::int32_t(batch.size()) < cfg_.batch_size &&
             requests[next].arrival_time <= now)
        batch.push_back(next++);
      run_batch_(requests, batch, start, outputs);
    }
    return outputs;
  }

  sched::MetricsSummary metrics() const { return metrics_.summary(); }
  std::int64_t forward_tokens() const { return forward_tokens_; }

 private:
  struct Row {
    std::size_t req = 0;
    SeqId seq = 0;
    std::int64_t fed = 0;  // prompt tokens fed so far
    bool done = false;
    sched::TokenId last = 0;
    sched::RequestTiming timing;
  };

  void run_batch_(const std::vector<sched::Request>& requests, const std::vector<std::size_t>& batch, double start,
                  std::vector<std::vector<sched::TokenId>>& outputs) {
    KVStore& kv = model_.kv();
    const std::int64_t ctx = model_.config().max_seq_len;
    std::vector<Row> rows;
    for (std::size_t k = 0; k < batch.size(); ++k) {
      Row row;
      row.req = batch[k];
      row.seq = SeqId(1000000 + k);
      row.timing.arrival = start + requests[row.req].arrival_time;
      FASTINFER_CHECK(kv.add_sequence(row.seq), UsageError, "StaticBatcher: the KV pool has no room for a sequence");
      rows.push_back(row);
    }
    auto take_token = [&](Row& row, sched::TokenId t, double now) {
      const sched::Request& r = requests[row.req];
      auto& out = outputs[row.req];
      row.last = t;
      if (row.done) return;
      if (std::find(r.stop_ids.begin(), r.stop_ids.end(), t) != r.stop_ids.end()) {
        row.done = true;
      } else {
        out.push_back(t);
        if (row.timing.first_token < 0) row.timing.first_token = now;
        row.timing.token_times.push_back(now);
        row.done = std::int64_t(out.size()) >= r.max_new_tokens ||
                   std::int64_t(r.prompt.size() + out.size()) >= ctx;
      }
      if (row.done) {
        row.timing.finish = now;
        metrics_.on_finish(row.timing, std::int64_t(r.prompt.size()), std::int64_t(out.size()));
      }
    };
    // The step's tokens for sampled_ (logits row logits_rows_[i] for
    // sampled_[i]), picked on the backend in one call: one launch and one
    // copy back on a device, not one per row.
    auto sample_step = [&](double now) {
      if (sampled_.empty()) return;
      params_.clear();
      indices_.clear();
      for (const Row* row : sampled_) {
        params_.push_back(requests[row->req].sampling);
        indices_.push_back(std::uint64_t(outputs[row->req].size()));
      }
      tokens_.resize(sampled_.size());
      model_.sample_logits(logits_rows_.data(), std::int64_t(sampled_.size()), params_.data(),
                           indices_.data(), tokens_.data());
      for (std::size_t i = 0; i < sampled_.size(); ++i) take_token(*sampled_[i], tokens_[i], now);
    };
    // Prefill: every prompt, in forwards of at most max_batch rows.
    for (;;) {
      fb_.clear();
      std::vector<Row*> fed;
      std::int64_t budget = model_.max_batch();
      for (Row& row : rows) {
        const auto& prompt = requests[row.req].prompt;
        const std::int64_t left = std::int64_t(prompt.size()) - row.fed;
        if (left == 0 || budget == 0) continue;
        const std::int64_t n = std::min(left, budget);
        fb_.add(row.seq, prompt.data() + row.fed, std::int32_t(n));
        row.fed += n;
        budget -= n;
        fed.push_back(&row);
      }
      if (fed.empty()) break;
      forward_tokens_ += fb_.rows();
      model_.forward_to_sample(fb_);  // rows stay on the backend: sample_step picks there
      const double now = clock_();
      sampled_.clear();
      logits_rows_.clear();
      for (std::size_t b = 0; b < fed.size(); ++b)
        if (fed[b]->fed == std::int64_t(requests[fed[b]->req].prompt.size()))
          sampled_.push_back(fed[b]), logits_rows_.push_back(std::int32_t(b));
      sample_step(now);
    }
    // Decode, padded: every row steps until the last one is done.
    for (;;) {
      fb_.clear();
      std::vector<Row*> fed;
      bool any = false;
      for (Row& row : rows) any = any || !row.done;
      if (!any) break;
      for (Row& row : rows) {
        if (kv.length(row.seq) >= ctx) continue;  // a padded row at the end of the context stops computing
        fb_.add(row.seq, &row.last, 1);
        fed.push_back(&row);
      }
      forward_tokens_ += fb_.rows();
      model_.forward_to_sample(fb_);  // rows stay on the backend: sample_step picks there
      const double now = clock_();
      sampled_ = fed;
      logits_rows_.resize(fed.size());
      for (std::size_t b = 0; b < fed.size(); ++b) logits_rows_[b] = std::int32_t(b);
      sample_step(now);
    }
    for (Row& row : rows) kv.free_sequence(row.seq);
  }

  LlamaModel<Backend>& model_;
  StaticBatchConfig cfg_;
  sched::SchedulerClock clock_;
  ForwardBatch fb_;
  // A step's sampled rows, their logits rows, parameters, token indices and tokens.
  std::vector<Row*> sampled_;
  std::vector<std::int32_t> logits_rows_;
  std::vector<SamplingParams> params_;
  std::vector<std::uint64_t> indices_;
  std::vector<std::int32_t> tokens_;
  sched::SchedulerMetrics metrics_;
  std::int64_t forward_tokens_ = 0;
};

}  // namespace fastinfer::engine
