// The Engine's batched draft model (engine/batched_draft.hpp) against
// speculative::DraftModel, one per request, as the reference: over several
// steps of several requests (catch-up of a prompt, of accepted drafts, after
// a rejection, after the sequence was dropped), every request's drafts and,
// for the exact rule, their distributions are the reference's bit for bit
// (every pass stays within 32 rows: batch invariance);
// a step costs the same number of draft passes whatever the number of
// requests; a pool too small drops only sequences of requests not drafting;
// bad jobs are refused by name before anything changes; a draft model that
// costs at least the target a pass (draft_costs_at_least) is told from one
// that may cost less.
#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "fastinfer/engine/batched_draft.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/speculative/draft_model.hpp"
#include "shared_dir.hpp"

namespace fe = fastinfer::engine;
namespace spec = fastinfer::speculative;
using fastinfer::LlamaModel;

namespace {

using Job = fe::BatchedDraftModel<>::Job;

fastinfer::LlamaWeights draft_weights(const std::filesystem::path& model) {
  fastinfer::LoadOptions o;
  o.weight_dtype = fastinfer::DType::BF16;
  return fastinfer::load_model(model.string(), o);
}

// Requests' contexts that grow as a verifier would make them: after each
// step, request i keeps `kept` of its drafts (i-dependent) and then one token
// of its own (a rejection's correction or the bonus token).
struct World {
  std::vector<std::vector<std::int32_t>> contexts;
  std::mt19937 rng{7};
  void advance(const std::vector<spec::DraftProposal>& drafts, int vocab) {
    for (std::size_t i = 0; i < contexts.size(); ++i) {
      const int kept = int((i + rng()) % (drafts[i].tokens.size() + 1));
      for (int j = 0; j < kept; ++j) contexts[i].push_back(drafts[i].tokens[std::size_t(j)]);
      contexts[i].push_back(std::int32_t(rng() % std::uint32_t(vocab)));
    }
  }
};

void check_against_solo(const std::filesystem::path& model_path, const fastinfer::SamplingParams& params,
                        spec::AcceptanceRule rule) {
  const fastinfer::LlamaWeights w = draft_weights(model_path);
  const int vocab = w.config.vocab_size;
  fe::BatchedDraftModel<> batched(w, 1, 64, 8, fastinfer::CpuBackend{}, rule);
  std::vector<std::unique_ptr<spec::DraftModel<LlamaModel<>>>> solo;
  World world;
  const int n = 5;
  for (int i = 0; i < n; ++i) {
    // The same KV layout as the batched model's (paged, 16-token blocks).
    fastinfer::ModelOptions mo{1, 64};
    mo.kv.layout = fastinfer::KVLayoutKind::Paged;
    solo.push_back(std::make_unique<spec::DraftModel<LlamaModel<>>>(LlamaModel<>(w, mo), params, rule));
    std::vector<std::int32_t> prompt{1};
    for (int t = 0; t < 1 + i; ++t) prompt.push_back(std::int32_t((37 * t + 11 * i + 5) % vocab));
    world.contexts.push_back(prompt);
  }
  for (int step = 0; step < 6; ++step) {
    INFO("step " << step);
    // Request 5 sits out steps 2 and 3 (plain steps: it catches up later);
    // request 4's sequence is dropped before step 3 (it catches up all).
    if (step == 3) batched.release(4);
    std::vector<spec::DraftProposal> got(static_cast<std::size_t>(n)), want(static_cast<std::size_t>(n));
    std::vector<Job> jobs;
    for (int i = 0; i < n; ++i) {
      if (i == 4 && (step == 2 || step == 3)) continue;
      const int k = 1 + (i + step) % 4;
      const std::uint64_t index = std::uint64_t(world.contexts[std::size_t(i)].size());
      jobs.push_back({i + 1, &world.contexts[std::size_t(i)], k, index, params, &got[std::size_t(i)]});
      CHECK(batched.catch_up_tokens(i + 1, world.contexts[std::size_t(i)]) ==
            (i == 3 && step == 3 ? std::int64_t(world.contexts[std::size_t(i)].size())
                                 : solo[std::size_t(i)]->catch_up_tokens(world.contexts[std::size_t(i)])));
      solo[std::size_t(i)]->propose(world.contexts[std::size_t(i)], k, index, want[std::size_t(i)]);
    }
    batched.propose(jobs);
    for (const Job& j : jobs) {
      const std::size_t i = std::size_t(j.id - 1);
      INFO("request " << j.id << ", k " << j.k);
      CHECK(got[i].tokens == want[i].tokens);
      CHECK(got[i].probs == want[i].probs);
    }
    world.advance(got, vocab);
  }
}

}  // namespace

TEST_CASE("batched draft model: each request's greedy drafts equal its own draft model's", "[engine][spec]") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  check_against_solo(model_path, fastinfer::SamplingParams{}, spec::AcceptanceRule::Coupled);
}

TEST_CASE("batched draft model: sampled drafts and their distributions equal its own draft model's",
          "[engine][spec]") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  fastinfer::SamplingParams sampled;
  sampled.temperature = 0.8f;
  sampled.top_p = 0.9f;
  sampled.seed = 11;
  check_against_solo(model_path, sampled, spec::AcceptanceRule::Coupled);
  check_against_solo(model_path, sampled, spec::AcceptanceRule::Exact);
}

TEST_CASE("batched draft model: a step's draft passes do not grow with the number of requests", "[engine][spec]") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  const fastinfer::LlamaWeights w = draft_weights(model_path);
  for (int requests : {1, 8}) {
    fe::BatchedDraftModel<> batched(w, 1, 64, 8, fastinfer::CpuBackend{}, spec::AcceptanceRule::Coupled);
    std::vector<std::vector<std::int32_t>> contexts;
    for (int i = 0; i < requests; ++i) contexts.push_back({1, std::int32_t(10 + i), 20, 30});
    std::vector<spec::DraftProposal> out(static_cast<std::size_t>(requests));
    std::vector<Job> jobs;
    for (int i = 0; i < requests; ++i) jobs.push_back({i + 1, &contexts[std::size_t(i)], 4, 4, {}, &out[std::size_t(i)]});
    batched.propose(jobs);  // the prompts' catch-up fits one pass, then 3 draft levels
    CHECK(batched.forwards() == 4);
    for (int i = 0; i < requests; ++i) contexts[std::size_t(i)].push_back(out[std::size_t(i)].tokens[0]);
    batched.propose(jobs);
    CHECK(batched.forwards() == 8);
    for (const auto& o : out) CHECK(o.tokens.size() == 4);
  }
}

TEST_CASE("batched draft model: a full pool drops only requests not drafting, bad jobs change nothing",
          "[engine][spec]") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  const fastinfer::LlamaWeights w = draft_weights(model_path);
  // Pool for 2 sequences of the whole context (plus spares).
  fe::BatchedDraftModel<> batched(w, 1, 64, 2, fastinfer::CpuBackend{}, spec::AcceptanceRule::Coupled);
  const int ctx = w.config.max_seq_len;
  std::vector<std::int32_t> a(std::size_t(ctx - 40), 5), b(std::size_t(ctx - 40), 6), c(std::size_t(ctx - 40), 7);
  spec::DraftProposal pa, pb, pc;
  batched.propose({{1, &a, 2, 0, {}, &pa}, {2, &b, 2, 0, {}, &pb}});
  CHECK(batched.sequences() == 2);
  // A third long request: one of the others (not drafting now) is dropped.
  batched.propose({{3, &c, 2, 0, {}, &pc}});
  CHECK(batched.sequences() <= 2);
  CHECK(pc.tokens.size() == 2);
  // Three at once cannot fit: refused, by name.
  CHECK_THROWS_WITH(batched.propose({{1, &a, 2, 0, {}, &pa}, {2, &b, 2, 0, {}, &pb}, {3, &c, 2, 0, {}, &pc}}),
                    Catch::Contains("cannot hold the 3 drafting requests"));
  // Bad jobs: refused before any pass.
  const std::int64_t passes = batched.forwards();
  std::vector<std::int32_t> bad{1, w.config.vocab_size};
  CHECK_THROWS_WITH(batched.propose({{5, &bad, 2, 0, {}, &pa}}), Catch::Contains("outside the draft model's vocabulary"));
  CHECK_THROWS_WITH(batched.propose({{5, &a, 0, 0, {}, &pa}}), Catch::Contains("asks for 0 drafts"));
  CHECK(batched.forwards() == passes);
  // At the draft's context end a job gets fewer drafts, or none (a draft
  // checkpoint may have a shorter context than the target).
  for (int id : {1, 2, 3}) batched.release(id);
  std::vector<std::int32_t> full(std::size_t(ctx + 1), 5), near(std::size_t(ctx - 1), 5);
  batched.propose({{5, &full, 3, 0, {}, &pa}, {6, &near, 3, 0, {}, &pb}});
  CHECK(pa.tokens.empty());
  CHECK(pb.tokens.size() == 2);
  CHECK(batched.sequences() == 1);
  // Released requests give their blocks back: the pool ends whole.
  for (int id : {5, 6}) batched.release(id);
  CHECK(batched.sequences() == 0);
  CHECK(batched.model().kv().allocator().num_free_blocks() == batched.model().kv().allocator().num_blocks());
}

TEST_CASE("batched draft model: a draft that costs the target's pass or more is told apart",
          "[engine][spec]") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  const fastinfer::LlamaWeights f32 = fastinfer::load_model(model_path.string());
  fastinfer::LoadOptions lo;
  lo.weight_dtype = fastinfer::DType::F32;
  const fastinfer::LlamaWeights big = fastinfer::load_model("synthetic:15M", lo);
  REQUIRE(f32.layers.front().wq.dtype == fastinfer::DType::F32);
  fastinfer::ModelOptions mo{1, 16};
  mo.kv.layout = fastinfer::KVLayoutKind::Paged;
  fastinfer::ModelOptions int8 = mo;
  int8.kv.quant = fastinfer::kv::QuantKind::Int8;
  LlamaModel<> target(f32, mo), same(f32, mo), cheaper(draft_weights(model_path), mo), larger(big, mo),
      int8_kv(f32, int8);
  CHECK(fe::draft_costs_at_least(same, target));
  CHECK(fe::draft_costs_at_least(larger, target));
  CHECK_FALSE(fe::draft_costs_at_least(target, larger));
  // bf16 weights stream half the bytes; and other types are not compared
  // (a bf16 pass may beat an f32 one of more bytes, or not).
  CHECK_FALSE(fe::draft_costs_at_least(cheaper, target));
  CHECK_FALSE(fe::draft_costs_at_least(target, cheaper));
  // An int8 KV cache reads fewer bytes a key.
  CHECK_FALSE(fe::draft_costs_at_least(int8_kv, target));
  CHECK(fe::draft_costs_at_least(target, int8_kv));
  // The Engine's draft model of the target's own weights.
  fe::BatchedDraftModel<> batched(f32, 1, 16, 2, fastinfer::CpuBackend{}, spec::AcceptanceRule::Coupled);
  CHECK(fe::draft_costs_at_least(batched.model(), target));
}
