// Helpers shared by the disaggregation tests (in process and over MPI): a
// paged model configuration per KV format, the single-engine reference run,
// and random requests (half of them seeded samplers).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "fastinfer/engine/engine.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "engine_harness.hpp"

namespace fastinfer::testing {

inline ModelOptions kv_options(kv::QuantKind q, int num_blocks, int max_seqs = 16) {
  ModelOptions o = paged_options(num_blocks, max_seqs);
  o.kv.quant = q;
  return o;
}

// The outputs of one engine serving `reqs` together (or each alone when
// called with one request): the reference of every disaggregated run.
inline std::vector<std::vector<std::int32_t>> run_single(const LlamaWeights& w, kv::QuantKind q,
                                                         const std::vector<sched::Request>& reqs,
                                                         const engine::EngineConfig* cfg = nullptr) {
  LlamaModel<> model(w, kv_options(q, 0));
  engine::Engine<> e(model, cfg ? *cfg : engine::EngineConfig{});
  std::vector<sched::RequestId> ids;
  for (const auto& r : reqs) ids.push_back(e.submit(r));
  e.run();
  std::vector<std::vector<std::int32_t>> out;
  for (auto id : ids) out.push_back(e.output(id));
  return out;
}

// n requests: BOS and up to max_extra random tokens, 1..max_new new tokens,
// stop id 1; every other one (at random) samples with its own seed.
inline std::vector<sched::Request> random_requests(std::mt19937& rng, int n, int max_extra, int max_new) {
  std::vector<sched::Request> reqs;
  for (int i = 0; i < n; ++i) {
    std::vector<std::int32_t> prompt{1};
    const int len = std::uniform_int_distribution<int>(0, max_extra)(rng);
    for (int k = 0; k < len; ++k) prompt.push_back(std::uniform_int_distribution<int>(3, 511)(rng));
    sched::Request r = make_request(prompt, std::uniform_int_distribution<int>(1, max_new)(rng), {1});
    if (rng() % 2) {
      r.sampling.temperature = 0.8f;
      r.sampling.seed = rng();
    }
    reqs.push_back(r);
  }
  return reqs;
}

}  // namespace fastinfer::testing
