// Helpers shared by the Engine's speculation tests (test_engine_spec.cpp,
// test_engine_eagle.cpp, the seam's guarded runs): one engine run over a workload with per-request
// speculation settings, the books checked every step, and the four engine
// configurations every drafter is tried in.
#pragma once

#include <catch2/catch.hpp>

#include <cstdint>
#include <map>
#include <vector>

#include "fastinfer/engine/engine.hpp"
#include "fastinfer/model/llama_model.hpp"

namespace fastinfer::testing {

struct SpecRun {
  std::vector<std::vector<std::int32_t>> outputs;
  engine::EngineMetrics metrics;
};

// Submits reqs[i] with specs[i % specs.size()], steps until every request
// ends (the batcher's, the pool's and the prefix cache's invariants checked
// after each step), and checks that each request streamed its output and
// that the pool is whole afterwards.
template <class Backend>
SpecRun run_spec_engine(LlamaModel<Backend>& model, const engine::EngineConfig& cfg,
                        const std::vector<sched::Request>& reqs,
                        const std::vector<engine::RequestSpec>& specs) {
  engine::Engine<Backend> eng(model, cfg);
  std::vector<sched::RequestId> ids;
  std::map<sched::RequestId, std::vector<std::int32_t>> streamed;
  for (std::size_t i = 0; i < reqs.size(); ++i)
    ids.push_back(eng.submit(reqs[i], specs[i % specs.size()],
                             [&](sched::RequestId id, std::int32_t t) { streamed[id].push_back(t); }));
  while (eng.step()) {
    eng.batcher().check_invariants();
    model.kv().allocator().check_invariants();
    if (eng.prefix_cache()) eng.prefix_cache()->check_invariants();
  }
  SpecRun out;
  for (sched::RequestId id : ids) {
    REQUIRE(eng.status(id) == sched::RequestStatus::Finished);
    CHECK(streamed[id] == eng.output(id));
    out.outputs.push_back(eng.output(id));
  }
  out.metrics = eng.metrics();
  eng.clear_prefix_cache();
  CHECK(model.kv().allocator().num_free_blocks() == model.kv().allocator().num_blocks());
  return out;
}

// An engine configuration and the KV pool (blocks; 0: roomy) it runs with.
struct SpecVariant {
  const char* name;
  int pool;
  engine::EngineConfig cfg;
};

// A roomy pool; chunked prefill with a 24-token budget; a 40-block pool that
// preempts by recompute, with the prefix cache; the same preempting by swap.
inline std::vector<SpecVariant> spec_variants() {
  std::vector<SpecVariant> v;
  v.push_back({"roomy pool", 0, {}});
  {
    SpecVariant c{"chunked prefill, small budget", 0, {}};
    c.cfg.scheduler.max_tokens_per_step = 24;
    c.cfg.scheduler.max_prefill_chunk = 7;
    v.push_back(c);
  }
  {
    SpecVariant c{"small pool: preemption by recompute, prefix cache", 40, {}};
    c.cfg.scheduler.max_tokens_per_step = 48;
    c.cfg.prefix_cache = true;
    v.push_back(c);
  }
  {
    SpecVariant c{"small pool: preemption by swap", 40, {}};
    c.cfg.scheduler.max_tokens_per_step = 48;
    c.cfg.scheduler.preemption = sched::Swap{};
    c.cfg.scheduler.swap_blocks = 128;
    v.push_back(c);
  }
  return v;
}

}  // namespace fastinfer::testing
