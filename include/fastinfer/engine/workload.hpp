// Synthetic serving workloads: how many requests, when they arrive (all at
// once, or a Poisson process at a given rate), prompt and output lengths
// drawn from given distributions, and the fraction of requests that start
// with one shared prefix (a system prompt). Plus the driver that feeds a
// workload to an Engine on its own clock. Used by fastinfer-serve-bench and
// bench_engine; deterministic for a seed.
#pragma once

#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/engine/engine.hpp"
#include "fastinfer/sched/request.hpp"

namespace fastinfer::engine {

// Lengths uniform in [min, max] (examples/common/workload_flags.hpp reads
// "128" or "64:256" from a command line).
struct LengthRange {
  // Longer than any context a model may have (kMaxContext): a length of 2^31
  // would overflow the sums that size a KV pool.
  static constexpr std::int64_t kMaxLength = std::int64_t(1) << 24;
  std::int32_t min = 128, max = 128;

  // InvalidArgument unless 1 <= min <= max <= kMaxLength (`what` names it).
  void validate(const char* what) const {
    FASTINFER_CHECK(min >= 1 && max >= min && max <= kMaxLength, InvalidArgument, "workload: ", what,
                    " length range ", min, ":", max, " needs 1 <= MIN <= MAX <= ", kMaxLength);
  }
};

struct WorkloadConfig {
  std::int32_t num_requests = 64;
  double rate = 0;  // requests per second (Poisson); 0: all arrive at once
  LengthRange prompt{128, 128};
  LengthRange output{128, 128};
  double shared_prefix_fraction = 0;  // of requests whose prompt starts with the shared prefix
  std::int32_t shared_prefix_tokens = 64;
  std::int32_t vocab_size = 32000;
  std::int32_t bos_id = 1;
  float temperature = 0;  // 0: greedy
  std::uint64_t seed = 1;
};

// Requests with arrival_time in seconds from the start of the run, and no
// stop ids: each produces exactly its output length (unless the context fills).
inline std::vector<sched::Request> make_workload(const WorkloadConfig& c) {
  FASTINFER_CHECK(c.num_requests >= 0, InvalidArgument, "workload: num_requests must be >= 0, got ", c.num_requests);
  FASTINFER_CHECK(c.rate >= 0, InvalidArgument, "workload: rate must be >= 0, got ", c.rate);
  FASTINFER_CHECK(c.shared_prefix_fraction >= 0 && c.shared_prefix_fraction <= 1, InvalidArgument,
                  "workload: shared_prefix_fraction must lie in [0, 1], got ", c.shared_prefix_fraction);
  FASTINFER_CHECK(c.vocab_size > 3, InvalidArgument, "workload: vocab_size too small: ", c.vocab_size);
  c.prompt.validate("prompt");
  c.output.validate("output");
  std::mt19937_64 rng(c.seed);
  std::uniform_int_distribution<std::int32_t> tok(3, c.vocab_size - 1);
  std::vector<std::int32_t> shared{c.bos_id};
  for (std::int32_t i = 1; i < c.shared_prefix_tokens; ++i) shared.push_back(tok(rng));
  std::exponential_distribution<double> gap(c.rate > 0 ? c.rate : 1.0);
  std::bernoulli_distribution shares(c.shared_prefix_fraction);
  std::vector<sched::Request> out;
  double t = 0;
  for (std::int32_t i = 0; i < c.num_requests; ++i) {
    sched::Request r;
    const std::int32_t plen = std::uniform_int_distribution<std::int32_t>(c.prompt.min, c.prompt.max)(rng);
    if (shares(rng)) r.prompt.assign(shared.begin(), shared.end());
    else r.prompt.push_back(c.bos_id);
    while (std::int32_t(r.prompt.size()) < plen) r.prompt.push_back(tok(rng));
    r.max_new_tokens = std::uniform_int_distribution<std::int32_t>(c.output.min, c.output.max)(rng);
    r.sampling.temperature = c.temperature;
    r.sampling.seed = c.seed * 1000003u + std::uint64_t(i);
    if (c.rate > 0 && i > 0) t += gap(rng);
    r.arrival_time = t;
    out.push_back(std::move(r));
  }
  return out;
}

// Feeds `requests` (arrival_time relative to the start) to the engine as
// their time comes, steps until all have ended, and returns their ids in
// order. Sleeps while nothing has arrived.
template <typename Backend>
std::vector<sched::RequestId> drive(Engine<Backend>& engine, std::vector<sched::Request> requests) {
  std::vector<sched::RequestId> ids;
  ids.reserve(requests.size());
  const double start = engine.now();
  std::size_t next = 0;
  while (next < requests.size() || engine.has_work()) {
    const double now = engine.now() - start;
    while (next < requests.size() && requests[next].arrival_time <= now) {
      sched::Request r = requests[next++];
      r.arrival_time += start;
      ids.push_back(engine.submit(std::move(r)));
    }
    if (!engine.step() && next < requests.size()) {
      const double wait = requests[next].arrival_time - (engine.now() - start);
      if (wait > 0) std::this_thread::sleep_for(std::chrono::duration<double>(wait));
    }
  }
  return ids;
}

}  // namespace fastinfer::engine
