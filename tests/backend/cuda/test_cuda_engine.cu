// The Engine on CudaBackend: continuous batching, chunked prefill,
// preemption (recompute and swap through the device store), the prefix cache
// and speculation run on LlamaModel<CudaBackend> unchanged, and every golden
// case of stories260K (f32 weights, f32 KV) comes out token for token, all
// requests in one batch. Skips visibly without a CUDA device (label cuda).
#include <catch2/catch.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "fastinfer/engine/engine.hpp"
#include "fastinfer/model/load_model.hpp"
#include "cuda_store_pair.cuh"
#include "../../engine/engine_harness.hpp"
#include "golden.hpp"
#include "shared_dir.hpp"

namespace fe = fastinfer::engine;
namespace fs = fastinfer::sched;
using namespace fastinfer;
using fastinfer::testing::make_request;
using fastinfer::testing::paged_options;

TEST_CASE("cuda engine: every golden case in one batch, through chunking, preemption, the prefix cache and "
          "speculation",
          "[cuda][engine][golden]") {
  FASTINFER_REQUIRE_CUDA();
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(cases_dir, "golden/cases");
  const auto cases = fastinfer::testing::read_golden_cases(cases_dir);
  REQUIRE(cases.size() >= 4);

  struct Variant {
    const char* name;
    int pool;  // KV blocks (0: room for everything)
    fe::EngineConfig cfg;
    bool speculate = false;
  };
  std::vector<Variant> variants;
  {
    Variant v{"whole prompts", 0, {}};
    v.cfg.scheduler.max_tokens_per_step = 512;
    variants.push_back(v);
  }
  {
    Variant v{"chunked prefill (7-token chunks, 48-token budget)", 0, {}};
    v.cfg.scheduler.max_tokens_per_step = 48;
    v.cfg.scheduler.max_prefill_chunk = 7;
    variants.push_back(v);
  }
  {
    Variant v{"small pool, preemption by recompute, prefix cache", 48, {}};
    v.cfg.scheduler.max_tokens_per_step = 64;
    v.cfg.scheduler.preemption = fs::Recompute{};
    v.cfg.prefix_cache = true;
    variants.push_back(v);
  }
  {
    Variant v{"small pool, preemption by swap", 48, {}};
    v.cfg.scheduler.max_tokens_per_step = 64;
    v.cfg.scheduler.preemption = fs::Swap{};
    v.cfg.scheduler.swap_blocks = 256;
    variants.push_back(v);
  }
  {
    Variant v{"prompt-lookup speculation, k 2", 0, {}, true};
    v.cfg.spec.policy = fe::SpecAlways{};
    variants.push_back(v);
  }

  for (const Variant& v : variants) {
    INFO(v.name);
    LlamaModel<CudaBackend> model(fastinfer::load_model(model_path.string()), paged_options(v.pool));
    fe::Engine<CudaBackend> engine(model, v.cfg);
    fe::RequestSpec spec;
    if (v.speculate) spec.drafter = fe::SpecDrafter::PromptLookup, spec.k = 2;
    std::vector<fs::RequestId> ids;
    for (const auto& gc : cases)
      ids.push_back(engine.submit(make_request(gc.prompt, gc.max_new_tokens, {1}), spec));
    std::int64_t steps = 0;
    while (engine.step())
      if (++steps % 16 == 0) {
        engine.batcher().check_invariants();
        model.kv().allocator().check_invariants();
      }
    for (std::size_t i = 0; i < cases.size(); ++i) {
      INFO("case " << cases[i].name);
      REQUIRE(engine.status(ids[i]) == fs::RequestStatus::Finished);
      CHECK(engine.output(ids[i]) == cases[i].continuation);
    }
    const fe::EngineMetrics m = engine.metrics();
    CHECK(m.finished == std::int64_t(cases.size()));
    if (v.pool > 0) CHECK(m.preemptions > 0);
    if (v.cfg.prefix_cache) CHECK(m.prefix_cached_tokens > 0);
    if (v.speculate) CHECK(m.spec_accepted > 0);
    engine.clear_prefix_cache();
    CHECK(model.kv().allocator().num_free_blocks() == model.kv().allocator().num_blocks());
  }
  {
    // Tree drafters read the target's weights on the host: refused by name
    // on the device, nothing admitted.
    LlamaModel<CudaBackend> model(fastinfer::load_model(model_path.string()), paged_options(0));
    fe::EngineConfig cfg;
    cfg.spec.medusa_heads = std::make_shared<fastinfer::speculative::MedusaHeads>(
        2, model.config().dim, model.config().vocab_size, true);
    fe::Engine<CudaBackend> engine(model, cfg);
    fe::RequestSpec medusa;
    medusa.drafter = fe::SpecDrafter::Medusa;
    CHECK_THROWS_WITH(engine.submit(make_request(cases[0].prompt, 4, {1}), medusa),
                      Catch::Contains("host-visible backends only"));
    CHECK(engine.batcher().num_running() == 0);
    CHECK_FALSE(engine.has_work());
  }
}
