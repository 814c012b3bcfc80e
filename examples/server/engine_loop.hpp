// EngineLoop: the one thread that owns the Engine. The Engine is not
// thread-safe (one thread submits, cancels and steps; callbacks run on it),
// so HTTP threads never touch it: they hand it closures (submit a job, read
// metrics, check the KV pool) through a queue, and read each job's tokens
// back through the job's own lock.
//
// A Job is one HTTP request: n choices, each one Engine request. Its tokens
// arrive as Events (one per token, then one that ends the choice) that the
// HTTP thread turns into SSE chunks or, for a plain request, waits out.
//
// Cancellation: an HTTP thread sets Job::cancel (client gone, shutdown); the
// loop cancels the job's live requests before its next step, which frees
// their KV blocks. A stop string is found on the loop itself (TextStream)
// and cancels the request the same way (its finish reason stays "stop").
//
// Admission: at most max_outstanding engine requests (running + waiting)
// exist at once; submit() refuses a job that would pass it, and the caller
// answers 429. Counting at the door (one atomic) keeps the refusal cheap,
// so a flood of requests cannot tie up the engine thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fastinfer/engine/engine.hpp"
#include "fastinfer/tokenizer/tokenizer.hpp"

#include "openai_protocol.hpp"
#include "prometheus.hpp"
#include "text_stream.hpp"

namespace fastinfer_server {

using fastinfer::engine::RequestId;
using fastinfer::engine::TokenId;

// One token of one choice, or the end of the choice (finish_reason set).
struct Event {
  int choice = 0;
  bool has_token = false;
  TokenId token = 0;
  std::string text;           // text released with this token (may be empty)
  std::string finish_reason;  // "stop", "length", "abort"; empty for a token
};

struct Choice {
  RequestId id = 0;
  std::vector<TokenId> tokens;
  TextStream text;
  TokenId previous = 0;  // for the tokenizer's streaming decode
  std::string finish_reason;
};

struct Job {
  explicit Job(CompletionRequest r) : request(std::move(r)) {}

  // Waits up to `timeout` for events past `cursor` and appends them to
  // `out`. True when every choice has ended and `out` holds the last event.
  bool wait_events(std::size_t& cursor, std::vector<Event>& out, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait_for(lk, timeout, [&] { return cursor < events.size() || (started && unfinished == 0); });
    for (; cursor < events.size(); ++cursor) out.push_back(events[cursor]);
    return started && unfinished == 0;
  }
  void wait_done() {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return started && unfinished == 0; });
  }
  bool done() {
    std::lock_guard<std::mutex> lk(mu);
    return started && unfinished == 0;
  }

  const CompletionRequest request;
  std::atomic<bool> cancel{false};
  // Under mu (written by the engine thread, read by the HTTP thread):
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Choice> choices;
  std::vector<Event> events;
  int unfinished = 0;
  bool started = false;  // the engine thread has taken the job
  std::string error;     // the engine refused it (the parser let through something it should not have)
};

class EngineLoop {
 public:
  using Engine = fastinfer::engine::Engine<>;

  EngineLoop(Engine& engine, const fastinfer::Tokenizer* tok, std::int64_t max_outstanding)
      : engine_(engine), tok_(tok), max_outstanding_(max_outstanding) {}

  ~EngineLoop() { stop(); }

  void start() { thread_ = std::thread([this] { run_(); }); }

  // Tests only: a pause after every step, so that a tiny model does not
  // finish a request before its client has had time to leave.
  void set_step_delay(std::chrono::milliseconds d) { step_delay_ = d; }

  // Stops after cancelling whatever is still live; joins the thread.
  void stop() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  // Queues the job's n engine requests; false (nothing queued) when that
  // would pass the admission limit.
  bool submit(std::shared_ptr<Job> job) {
    const std::int64_t n = job->request.n;
    std::int64_t cur = outstanding_.load();
    do {
      if (cur + n > max_outstanding_) {
        rejected_.fetch_add(1);
        return false;
      }
    } while (!outstanding_.compare_exchange_weak(cur, cur + n));
    post_([this, job = std::move(job)] { start_job_(job); });
    return true;
  }

  // Asks the loop to end the job's live requests (client gone).
  void cancel(Job& job) {
    job.cancel.store(true);
    {
      std::lock_guard<std::mutex> lk(mu_);
      wake_ = true;
    }
    cv_.notify_all();
  }

  // Cancels every live request (shutdown after the grace period).
  void cancel_all() {
    call_([this] {
      cancel_live_();
      retire_();
    });
  }

  std::int64_t outstanding() const { return outstanding_.load(); }

  // /metrics, rendered on the engine thread (it reads the Engine).
  std::string metrics_text() {
    return call_([this] { return render_metrics_(); });
  }

  // The KV pool's books: "whole" when no sequence holds a block and every
  // block is free or held by the prefix cache, and both structures' own
  // invariant checks pass.
  Json kv_state() {
    return call_([this] { return kv_state_(); });
  }

  // Debug: evicts every evictable prefix-cache block.
  void drop_prefix_cache() {
    call_([this] { engine_.clear_prefix_cache(); });
  }

 private:
  struct LiveRef {
    std::shared_ptr<Job> job;
    int choice = 0;
  };

  void post_(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_all();
  }

  template <typename F>
  auto call_(F f) -> decltype(f()) {
    auto p = std::make_shared<std::packaged_task<decltype(f())()>>(std::move(f));
    auto fut = p->get_future();
    post_([p] { (*p)(); });
    return fut.get();
  }

  void run_() {
    for (;;) {
      std::deque<std::function<void()>> tasks;
      {
        std::unique_lock<std::mutex> lk(mu_);
        if (!engine_.has_work())
          cv_.wait(lk, [&] { return !tasks_.empty() || stop_ || wake_; });
        tasks.swap(tasks_);
        wake_ = false;
        if (stop_ && tasks.empty()) break;
      }
      for (auto& t : tasks) t();
      apply_cancels_();
      if (engine_.has_work()) {
        step_tokens_ = 0;
        engine_.step();
        note_throughput_(step_tokens_);
        if (step_delay_.count() > 0) std::this_thread::sleep_for(step_delay_);
      }
      retire_();
    }
    // Shutdown: nothing may stay live (a waiting HTTP thread would hang).
    cancel_live_();
    retire_();
  }

  void start_job_(const std::shared_ptr<Job>& job) {
    const CompletionRequest& r = job->request;
    const fastinfer::LlamaConfig& mc = engine_.model().config();
    std::vector<RequestId> ids;
    std::string error;
    {
      std::lock_guard<std::mutex> lk(job->mu);
      job->choices.resize(std::size_t(r.n));
      for (int i = 0; i < r.n; ++i) job->choices[std::size_t(i)] = Choice{0, {}, TextStream(r.stop), r.prompt.back(), {}};
    }
    for (int i = 0; i < r.n && error.empty(); ++i) {
      fastinfer::sched::Request er;
      er.prompt = r.prompt;
      er.sampling = r.sampling;
      // Choice i draws its own stream: seed + i (a seeded request is
      // reproducible choice by choice); unseeded requests get a fresh seed.
      er.sampling.seed = (r.seeded ? r.sampling.seed : next_seed_()) + std::uint64_t(i);
      er.max_new_tokens = r.max_tokens;
      if (!r.ignore_eos) {
        er.stop_ids.push_back(mc.bos_id);  // like generate(): BOS ends a llama2.c story
        if (mc.eos_id >= 0) er.stop_ids.push_back(mc.eos_id);
      }
      try {
        const RequestId id = engine_.submit(
            std::move(er), [this, job, i](RequestId, TokenId t) { on_token_(*job, i, t); },
            [this, job, i](RequestId id, fastinfer::sched::FinishReason why) { on_finish_(*job, i, id, why); });
        job->choices[std::size_t(i)].id = id;  // only this thread writes ids
        live_[id] = LiveRef{job, i};
        ids.push_back(id);
        ++submitted_;
      } catch (const fastinfer::Error& e) {
        error = e.what();
      }
    }
    // A refused request (the parser should have caught it) ends its
    // submitted siblings; their finish events say "abort".
    if (!error.empty())
      for (RequestId id : ids) cancel_request_(id);
    outstanding_.fetch_sub(std::int64_t(r.n) - std::int64_t(ids.size()));
    std::lock_guard<std::mutex> lk(job->mu);
    job->started = true;
    job->unfinished = error.empty() ? int(ids.size()) : 0;
    job->error = error;
    job->cv.notify_all();
  }

  void on_token_(Job& job, int i, TokenId t) {
    ++step_tokens_;
    ++generated_tokens_;
    std::lock_guard<std::mutex> lk(job.mu);
    Choice& c = job.choices[std::size_t(i)];
    if (c.text.stopped()) return;  // a stop string already ended it (rest of a speculative run)
    c.tokens.push_back(t);
    const std::string piece = tok_ ? tok_->decode_token(c.previous, t) : std::string();
    c.previous = t;
    Event e;
    e.choice = i;
    e.has_token = true;
    e.token = t;
    e.text = c.text.push(piece);
    job.events.push_back(std::move(e));
    if (c.text.stopped()) stop_hits_.push_back(c.id);
    job.cv.notify_all();
  }

  void on_finish_(Job& job, int i, RequestId id, fastinfer::sched::FinishReason why) {
    using fastinfer::sched::FinishReason;
    observe_latency_(id, why);
    {
      std::lock_guard<std::mutex> lk(job.mu);
      Choice& c = job.choices[std::size_t(i)];
      Event e;
      e.choice = i;
      if (c.text.stopped() || why == FinishReason::Stop) {
        e.finish_reason = "stop";
      } else {
        e.finish_reason = why == FinishReason::Cancelled ? "abort" : "length";
      }
      if (!c.text.stopped()) e.text = c.text.finish();
      c.finish_reason = e.finish_reason;
      job.events.push_back(std::move(e));
      if (job.started) --job.unfinished;  // (a refused job's requests end before it starts)
      job.cv.notify_all();
    }
    ++(why == FinishReason::Cancelled && job.cancel.load() ? cancelled_ : finished_);
    live_.erase(id);
    to_retire_.push_back(id);
    outstanding_.fetch_sub(1);
  }

  void observe_latency_(RequestId id, fastinfer::sched::FinishReason) {
    const fastinfer::sched::RequestTiming& t = engine_.timing(id);
    if (t.first_token >= 0) ttft_.observe(t.first_token - t.arrival);
    for (std::size_t k = 1; k < t.token_times.size(); ++k) itl_.observe(t.token_times[k] - t.token_times[k - 1]);
    prompt_tokens_ += std::int64_t(engine_.batcher().request(id).prompt.size());
  }

  void apply_cancels_() {
    std::vector<RequestId> ids;
    ids.swap(stop_hits_);
    for (const auto& kv : live_)
      if (kv.second.job->cancel.load()) ids.push_back(kv.first);
    for (RequestId id : ids) cancel_request_(id);
  }

  void cancel_live_() {
    std::vector<RequestId> ids;
    for (const auto& kv : live_) {
      kv.second.job->cancel.store(true);
      ids.push_back(kv.first);
    }
    for (RequestId id : ids) cancel_request_(id);
  }

  void cancel_request_(RequestId id) {
    if (live_.count(id) == 0) return;  // ended meanwhile
    engine_.cancel(id);                // on_finish_ runs inside (Cancelled)
  }
  void retire_() {
    for (RequestId id : to_retire_) engine_.retire(id);
    to_retire_.clear();
  }

  std::uint64_t next_seed_() {
    seed_state_ += 0x9E3779B97F4A7C15ull;
    std::uint64_t z = seed_state_;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  void note_throughput_(std::int64_t tokens) {
    const double now = engine_.now();
    recent_.emplace_back(now, tokens);
    while (!recent_.empty() && recent_.front().first < now - kThroughputWindow) recent_.pop_front();
  }

  double tokens_per_second_() const {
    const double now = engine_.now();
    std::int64_t sum = 0;
    for (const auto& s : recent_)
      if (s.first >= now - kThroughputWindow) sum += s.second;
    return double(sum) / kThroughputWindow;
  }

  Json kv_state_() {
    fastinfer::PagedAllocator& a = engine_.model().kv().allocator();
    const auto* cache = engine_.prefix_cache();
    Json j;
    j["total_blocks"] = a.num_blocks();
    j["free_blocks"] = a.num_free_blocks();
    j["sequences"] = a.num_sequences();
    j["prefix_cached_blocks"] = cache ? cache->cached_blocks() : 0;
    std::string problem;
    try {
      a.check_invariants();
      if (cache) cache->check_invariants();
    } catch (const fastinfer::Error& e) {
      problem = e.what();
    }
    j["invariants_ok"] = problem.empty();
    if (!problem.empty()) j["invariant_error"] = problem;
    j["whole"] = problem.empty() && a.num_sequences() == 0 &&
                 std::int64_t(a.num_free_blocks()) + (cache ? cache->cached_blocks() : 0) == a.num_blocks();
    return j;
  }

  std::string render_metrics_() {
    const fastinfer::engine::EngineMetrics m = engine_.metrics();
    const fastinfer::PagedAllocator& a = engine_.model().kv().allocator();
    PrometheusText p;
    p.gauge("fastinfer_requests_running", "Engine requests holding KV blocks.", double(engine_.batcher().num_running()));
    p.gauge("fastinfer_requests_waiting", "Engine requests queued or preempted.",
            double(engine_.batcher().num_waiting() + engine_.batcher().num_swapped()));
    p.counter_family("fastinfer_requests_total", "Engine requests by outcome (rejected: HTTP 429).", "outcome",
                     {{"submitted", double(submitted_)},
                      {"finished", double(finished_)},
                      {"cancelled", double(cancelled_)},
                      {"rejected", double(rejected_.load())}});
    p.counter("fastinfer_prompt_tokens_total", "Prompt tokens of ended requests.", double(prompt_tokens_));
    p.counter("fastinfer_generation_tokens_total", "Tokens generated.", double(generated_tokens_));
    p.gauge("fastinfer_generation_tokens_per_second", "Tokens generated per second over the last 10 s.",
            tokens_per_second_());
    p.histogram("fastinfer_time_to_first_token_seconds", "Time from arrival to first token.", ttft_);
    p.histogram("fastinfer_inter_token_latency_seconds", "Time between consecutive tokens of a request.", itl_);
    p.gauge("fastinfer_kv_blocks_total", "KV blocks in the pool.", double(a.num_blocks()));
    p.gauge("fastinfer_kv_blocks_free", "KV blocks free.", double(a.num_free_blocks()));
    p.gauge("fastinfer_kv_utilisation", "Fraction of KV blocks in use (sequences and prefix cache).",
            a.num_blocks() > 0 ? 1.0 - double(a.num_free_blocks()) / double(a.num_blocks()) : 0.0);
    p.gauge("fastinfer_kv_prefix_cached_blocks", "KV blocks held by the prefix cache.", double(m.prefix_cached_blocks));
    p.gauge("fastinfer_prefix_cache_hit_rate", "Fraction of admitted prompt tokens found in the prefix cache.",
            m.prefix_hit_rate);
    p.counter("fastinfer_spec_drafted_tokens_total", "Draft tokens fed to the model.", double(m.spec_drafted));
    p.counter("fastinfer_spec_accepted_tokens_total", "Draft tokens accepted.", double(m.spec_accepted));
    p.gauge("fastinfer_spec_acceptance_rate", "Accepted / drafted tokens (0 without speculation).", m.acceptance_rate());
    p.counter("fastinfer_preemptions_total", "Requests preempted.", double(m.preemptions));
    p.counter("fastinfer_engine_steps_total", "Engine steps.", double(m.steps));
    return p.str();
  }

  static constexpr double kThroughputWindow = 10.0;

  Engine& engine_;
  const fastinfer::Tokenizer* tok_;
  const std::int64_t max_outstanding_;
  std::atomic<std::int64_t> outstanding_{0};
  std::atomic<std::int64_t> rejected_{0};

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false, wake_ = false;
  std::thread thread_;
  std::chrono::milliseconds step_delay_{0};

  // Engine thread only:
  std::unordered_map<RequestId, LiveRef> live_;
  std::vector<RequestId> stop_hits_, to_retire_;
  std::int64_t step_tokens_ = 0, generated_tokens_ = 0, prompt_tokens_ = 0;
  std::int64_t submitted_ = 0, finished_ = 0, cancelled_ = 0;
  std::uint64_t seed_state_ = std::uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  std::deque<std::pair<double, std::int64_t>> recent_;
  Histogram ttft_{latency_buckets()}, itl_{latency_buckets()};
};

}  // namespace fastinfer_server
