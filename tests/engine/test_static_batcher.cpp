// The static-batching baseline and the synthetic workload generator: the
// baseline's outputs equal each request run alone (its padding rows change
// nothing), batches never admit late arrivals, the workload follows its
// configuration.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/workload_flags.hpp"
#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/engine/engine.hpp"
#include "fastinfer/engine/static_batcher.hpp"
#include "fastinfer/engine/workload.hpp"
#include "fastinfer/model/load_model.hpp"
#include "shared_dir.hpp"

namespace fe = fastinfer::engine;

namespace {
fastinfer::ModelOptions paged(int num_blocks, int seqs) {
  fastinfer::ModelOptions o;
  o.kv.layout = fastinfer::KVLayoutKind::Paged;
  o.kv.max_sequences = seqs;
  o.kv.num_blocks = num_blocks;
  return o;
}
}  // namespace

TEST_CASE("workload: lengths, shared prefixes and arrivals follow the configuration", "[engine][workload]") {
  fe::WorkloadConfig c;
  c.num_requests = 400;
  c.prompt = fastinfer::examples::parse_length_range("20:40");
  c.output = fastinfer::examples::parse_length_range("5");
  c.shared_prefix_fraction = 0.5;
  c.shared_prefix_tokens = 16;
  c.vocab_size = 512;
  c.rate = 100;
  const auto reqs = fe::make_workload(c);
  REQUIRE(reqs.size() == 400);
  int shared = 0;
  double last = 0;
  for (const auto& r : reqs) {
    CHECK(r.prompt.size() >= 20);
    CHECK(r.prompt.size() <= 40);
    CHECK(r.max_new_tokens == 5);
    CHECK(r.prompt[0] == 1);
    CHECK(r.arrival_time >= last);
    last = r.arrival_time;
    shared += std::equal(reqs[0].prompt.begin(), reqs[0].prompt.begin() + 16, r.prompt.begin()) ? 1 : 0;
    for (auto t : r.prompt) CHECK(t < 512);
  }
  // Binomial(400, 0.5) (plus the rare chance match) stays within +-60 of 200
  // with overwhelming probability; the mean gap of a 100/s Poisson is 10 ms.
  CHECK(shared > 140);
  CHECK(shared < 262);
  CHECK(last / 399 == Approx(0.01).epsilon(0.25));
  CHECK(fe::make_workload(c)[7].prompt == reqs[7].prompt);  // deterministic for a seed
  CHECK_THROWS_AS(fastinfer::examples::parse_length_range("9:3"), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(fastinfer::examples::parse_length_range("x"), fastinfer::InvalidArgument);
}

TEST_CASE("static batcher: outputs equal the engine's, the batch is padded to its longest request",
          "[engine][static]") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  fe::WorkloadConfig c;
  c.num_requests = 20;
  c.prompt = fastinfer::examples::parse_length_range("2:60");
  c.output = fastinfer::examples::parse_length_range("1:40");
  c.vocab_size = 512;
  c.temperature = 0.7f;
  auto reqs = fe::make_workload(c);
  for (std::size_t i = 0; i < reqs.size(); i += 2) reqs[i].sampling.temperature = 0;  // greedy rows too
  fastinfer::LlamaModel<> model(fastinfer::load_model(model_path.string()), paged(0, 8));
  fe::StaticBatcher<> sb(model, {8});
  const auto outs = sb.run(reqs);
  fe::Engine<> engine(model);
  const auto ids = fe::drive(engine, reqs);
  std::int64_t generated = 0, longest_sum = 0;
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    INFO("request " << i);
    CHECK(outs[i] == engine.output(ids[i]));
    CHECK(std::int64_t(outs[i].size()) == reqs[i].max_new_tokens);
    generated += reqs[i].max_new_tokens;
  }
  for (std::size_t b = 0; b < reqs.size(); b += 8) {
    std::int64_t longest = 0;
    for (std::size_t i = b; i < std::min(b + 8, reqs.size()); ++i)
      longest = std::max<std::int64_t>(longest, reqs[i].max_new_tokens);
    longest_sum += longest * std::int64_t(std::min<std::size_t>(8, reqs.size() - b));
  }
  std::int64_t prompts = 0;
  for (const auto& r : reqs) prompts += std::int64_t(r.prompt.size());
  // Every row decodes (longest - 1) tokens after its prefill sample.
  CHECK(sb.forward_tokens() == prompts + longest_sum - std::int64_t(reqs.size()));
  CHECK(sb.metrics().generated_tokens == generated);
  CHECK(model.kv().allocator().num_free_blocks() == model.kv().allocator().num_blocks());
}
