// Disaggregated prefill and decode over the in-process transport: one
// prefill engine and two decode engines, each with its own model and KV pool,
// driven in turn by one thread. The reference is one engine serving the same
// requests (itself checked against the llama2.c / HF goldens for greedy f32).
//
// One engine's own tokens can depend on what is batched with a request: a
// step of more than 32 tokens runs the packed GEMM instead of the matvec tiles
// (backend/cpu/gemm.hpp), and a decode row in a step with a prefill chunk
// takes the extend-attention kernel instead of the decode kernel; the sums
// differ in the last bits, which flips a sampled coin (or, rarely, a greedy
// near-tie). Seen here with seeded sampling: the same request alone and in a
// batch on ONE engine gives different tokens. So exactness is asserted where
// the reference is unique: each request alone (prefill -> decode against one
// engine alone, every case, every format, greedy and sampled), and, for
// greedy, in a batch wherever the single engine's batched tokens equal its
// tokens alone, up to a divergence at a near-tie (first_divergence_gap) in at
// most one request per format.
#include <catch2/catch.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "fastinfer/engine/disaggregation.hpp"
#include "fastinfer/engine/engine.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/transfer/in_process_transport.hpp"
#include "engine_harness.hpp"
#include "disagg_harness.hpp"
#include "golden.hpp"
#include "shared_dir.hpp"

namespace fe = fastinfer::engine;
namespace fs = fastinfer::sched;
namespace ft = fastinfer::transfer;
using fastinfer::LlamaModel;
using fastinfer::LlamaWeights;
using fastinfer::kv::QuantKind;
using fastinfer::testing::first_divergence_gap;
using fastinfer::testing::make_request;
using fastinfer::testing::kv_options;
using fastinfer::testing::random_requests;
using fastinfer::testing::run_single;

namespace {

// A prefill rank (0) and two decode ranks (1, 2) in one process.
struct Cluster {
  ft::InProcessHub hub{3};
  ft::InProcessTransport t0{hub, 0}, t1{hub, 1}, t2{hub, 2};
  std::unique_ptr<LlamaModel<>> m0, m1, m2;
  std::unique_ptr<fe::Engine<>> e0, e1, e2;
  std::unique_ptr<fe::PrefillServer<>> prefill;
  std::unique_ptr<fe::DecodeServer<>> d1, d2;

  Cluster(const LlamaWeights& w, QuantKind q, int prefill_blocks, int decode_blocks, fe::DisaggConfig cfg,
          fe::EngineConfig ecfg = {}) {
    m0 = std::make_unique<LlamaModel<>>(w, kv_options(q, prefill_blocks));
    m1 = std::make_unique<LlamaModel<>>(w, kv_options(q, decode_blocks));
    m2 = std::make_unique<LlamaModel<>>(w, kv_options(q, decode_blocks));
    e0 = std::make_unique<fe::Engine<>>(*m0, ecfg);
    e1 = std::make_unique<fe::Engine<>>(*m1, ecfg);
    e2 = std::make_unique<fe::Engine<>>(*m2, ecfg);
    prefill = std::make_unique<fe::PrefillServer<>>(*e0, t0, std::vector<int>{1, 2}, cfg);
    d1 = std::make_unique<fe::DecodeServer<>>(*e1, t1, cfg);
    d2 = std::make_unique<fe::DecodeServer<>>(*e2, t2, cfg);
  }

  void step() {
    prefill->step();
    if (!hub.dead(1)) d1->step();
    if (!hub.dead(2)) d2->step();
  }
  void run() {
    std::int64_t n = 0;
    while (prefill->has_work()) {
      step();
      if (++n % 64 == 0) check();
    }
    prefill->shutdown();
    while ((!hub.dead(1) && !d1->done()) || (!hub.dead(2) && !d2->done())) step();
  }
  void check() const {
    for (const auto* m : {m0.get(), m1.get(), m2.get()}) m->kv().allocator().check_invariants();
    e0->batcher().check_invariants();
    e1->batcher().check_invariants();
    e2->batcher().check_invariants();
  }
  static bool whole(LlamaModel<>& m) {
    return m.kv().allocator().num_free_blocks() == m.kv().allocator().num_blocks();
  }
};

std::vector<fs::Request> golden_requests(const std::string& dir, std::int32_t stop, bool sampled) {
  std::vector<fs::Request> reqs;
  std::uint64_t seed = 77;
  for (const auto& gc : fastinfer::testing::read_golden_cases(dir)) {
    fs::Request r = make_request(gc.prompt, gc.max_new_tokens, {stop});
    if (sampled) {
      r.sampling.temperature = 0.9f;
      r.sampling.top_k = 40;
      r.sampling.seed = seed++;
    }
    reqs.push_back(r);
  }
  return reqs;
}

void check_goldens(const std::string& model_rel, const std::string& cases_rel, std::int32_t stop) {
  const auto model_path = fastinfer::testing::shared_path(model_rel);
  const auto cases_dir = fastinfer::testing::shared_path(cases_rel);
  if (!std::filesystem::exists(model_path) || !std::filesystem::exists(cases_dir)) {
    std::printf("FASTINFER_SKIP: %s or %s not found\n", model_path.c_str(), cases_dir.c_str());
    WARN("FASTINFER_SKIP: shared files not found");
    return;
  }
  const LlamaWeights w = fastinfer::load_model(model_path.string());
  const auto golden = fastinfer::testing::read_golden_cases(cases_dir);
  for (QuantKind q : {QuantKind::F32, QuantKind::F16, QuantKind::BF16, QuantKind::Int8, QuantKind::Int4,
                      QuantKind::FP8E4M3, QuantKind::FP8E5M2}) {
    for (bool sampled : {false, true}) {
      const auto reqs = golden_requests(cases_dir.string(), stop, sampled);
      const auto single = run_single(w, q, reqs);
      if (q == QuantKind::F32 && !sampled)
        for (std::size_t i = 0; i < reqs.size(); ++i) REQUIRE(single[i] == golden[i].continuation);
      // Each request alone on one engine: the reference for the one-at-a-time
      // pass. A request whose single-engine tokens depend on its batch (seen
      // with fp8-e5m2 KV and sampling: alone != together on ONE engine, a
      // property of the engine's kernels, not of the hand-off) is compared
      // in that pass only.
      std::vector<std::vector<std::int32_t>> alone;
      for (const auto& r : reqs) alone.push_back(run_single(w, q, {r})[0]);
      Cluster c(w, q, 0, 0, {});
      std::vector<std::uint64_t> keys;
      for (const auto& r : reqs) keys.push_back(c.prefill->submit(r));
      c.run();
      int decoded = 0, batch_dependent = 0, same_sampled = 0, near_ties = 0;
      for (std::size_t i = 0; i < reqs.size(); ++i) {
        INFO(golden[i].name << " kv " << int(q) << (sampled ? " sampled" : " greedy") << ", together");
        const fe::HandoffResult& res = c.prefill->result(keys[i]);
        REQUIRE(res.status == fe::HandoffStatus::Finished);
        // Sampled tokens in a batch follow the batch's kernel regime on any
        // engine (seen differing under ASan's code generation even where
        // alone == batched on one engine): asserted alone below.
        if (alone[i] != single[i]) {
          ++batch_dependent;
        } else if (!sampled && res.tokens != single[i]) {
          // The decode rank batches the request with others than the single
          // engine did: greedy tokens may part only at a near-tie. A quantized
          // KV format widens the tie: a last-bit change of a key can move its
          // rounded code by one step (seen: gap 1.3e-3 with int8).
          LlamaModel<> solo(w, kv_options(q, 0, 1));
          const float gap = first_divergence_gap(solo, reqs[i].prompt, single[i], res.tokens, stop);
          INFO("parted from the single engine at a logit gap of " << gap);
          const bool rounded_kv = q == QuantKind::Int8 || q == QuantKind::Int4 || q == QuantKind::FP8E4M3 ||
                                  q == QuantKind::FP8E5M2;
          CHECK(gap < (rounded_kv ? 1e-2f : 1e-3f));
          ++near_ties;
        } else if (sampled) {
          same_sampled += res.tokens == single[i];
        }
        decoded += res.decode_rank > 0;
      }
      CHECK(decoded == int(reqs.size()));  // every case really crossed over
      CHECK(near_ties <= 1);
      if (sampled)
        std::printf("note: kv %s sampled, together: %d of %zu requests with the batched single engine's tokens\n",
                    std::string(fastinfer::kv::quant_name(q)).c_str(), same_sampled, reqs.size());
      if (batch_dependent > 0)
        std::printf("note: kv %s %s: %d golden request(s) whose single-engine tokens depend on the batch\n",
                    std::string(fastinfer::kv::quant_name(q)).c_str(), sampled ? "sampled" : "greedy",
                    batch_dependent);
      c.e0->clear_prefix_cache();
      CHECK(Cluster::whole(*c.m0));
      CHECK(Cluster::whole(*c.m1));
      CHECK(Cluster::whole(*c.m2));
      CHECK(c.hub.open_transfers() == 0);
      // One at a time: exactly the request alone on one engine, always.
      Cluster one(w, q, 0, 0, {});
      for (std::size_t i = 0; i < reqs.size(); ++i) {
        INFO(golden[i].name << " kv " << int(q) << (sampled ? " sampled" : " greedy") << ", alone");
        const std::uint64_t key = one.prefill->submit(reqs[i]);
        while (one.prefill->has_work()) one.step();
        const fe::HandoffResult& res = one.prefill->result(key);
        REQUIRE(res.status == fe::HandoffStatus::Finished);
        CHECK(res.decode_rank > 0);
        CHECK(res.tokens == alone[i]);
      }
      one.run();
    }
  }
}

}  // namespace

TEST_CASE("disaggregation: stories260K goldens through prefill and decode equal one engine, every KV format",
          "[engine][disagg][golden]") {
  check_goldens("models/stories260K.bin", "golden/cases", 1);
}

TEST_CASE("disaggregation: tinystories-656k goldens through prefill and decode equal one engine, every KV format",
          "[engine][disagg][golden]") {
  check_goldens("models/tinystories-656k", "golden/tinystories-656k/cases", 2);
}

TEST_CASE("disaggregation: a malformed manifest is rejected before the pool is touched", "[engine][disagg]") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  const LlamaWeights w = fastinfer::load_model(model_path.string());
  LlamaModel<> src(w, kv_options(QuantKind::Int8, 0)), dst(w, kv_options(QuantKind::Int8, 0));
  LlamaModel<> other(w, kv_options(QuantKind::F16, 0));
  fe::Engine<> es(src), ed(dst), eo(other);
  // A real export: a request stopped right after its first token.
  fs::Request r = make_request({1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57}, 8, {});
  const auto id = es.submit(r);
  while (es.output(id).empty()) es.step();
  r.id = id;
  ft::KVExport x = ft::export_sequence(es.kv_pool(), id, r, es.output(id), 9);
  const ft::KVManifest good = x.manifest();
  REQUIRE(good.length == 19);
  REQUIRE(good.num_blocks() == 2);
  auto& alloc = dst.kv().allocator();
  const auto free0 = alloc.num_free_blocks();
  auto rejected = [&](const ft::KVManifest& m, fastinfer::LlamaModel<>& into, fe::Engine<>& e, const char* what) {
    INFO(what);
    CHECK_THROWS_AS(ft::KVImport(e.kv_pool(), m), fastinfer::InvalidArgument);
    CHECK(into.kv().allocator().num_free_blocks() == into.kv().allocator().num_blocks());
  };
  rejected(good, other, eo, "another KV format");
  ft::KVManifest m = good;
  m.length = 40;
  rejected(m, dst, ed, "a length the blocks cannot hold");
  m = good;
  m.blocks.push_back(3);
  rejected(m, dst, ed, "a block too many");
  m = good;
  m.generated.clear();
  rejected(m, dst, ed, "no generated token");
  m = good;
  m.sample_counter = 0;
  rejected(m, dst, ed, "a sampling counter that restarts the stream");
  m = good;
  m.layer_bytes += 1;
  rejected(m, dst, ed, "another block geometry");
  m = good;
  m.request.max_new_tokens = 1;
  rejected(m, dst, ed, "nothing left to decode");
  // The wire format: truncation, trailing words, a wrong magic.
  auto words = ft::serialize_manifest(good);
  CHECK(ft::parse_manifest(words).kv_tokens() == good.kv_tokens());
  for (std::size_t cut : {std::size_t(0), std::size_t(1), std::size_t(5), words.size() - 1}) {
    std::vector<std::uint64_t> t(words.begin(), words.begin() + std::ptrdiff_t(cut));
    CHECK_THROWS_AS(ft::parse_manifest(t), fastinfer::InvalidArgument);
  }
  auto longer = words;
  longer.push_back(0);
  CHECK_THROWS_AS(ft::parse_manifest(longer), fastinfer::InvalidArgument);
  auto huge = words;
  huge[3] = ~0ull;  // the quant name's length
  CHECK_THROWS_AS(ft::parse_manifest(huge), fastinfer::InvalidArgument);
  CHECK(alloc.num_free_blocks() == free0);
  // Through a decode server: a Reject answer, nothing admitted, pool whole.
  ft::InProcessHub hub(2);
  ft::InProcessTransport tp(hub, 0), td(hub, 1);
  fe::DecodeServer<> server(ed, td);
  auto bad = ft::serialize_manifest(good);
  bad.resize(bad.size() - 3);
  tp.send(1, ft::MessageKind::Offer, bad);
  server.step();
  const auto answer = tp.receive();
  REQUIRE(answer.has_value());
  CHECK(answer->kind == ft::MessageKind::Reject);
  CHECK(server.rejected() == 1);
  CHECK(server.admitted() == 0);
  CHECK(alloc.num_free_blocks() == free0);
  alloc.check_invariants();
  // The good manifest imports: blocks taken, given back by abort().
  ft::KVImport in(ed.kv_pool(), good);
  REQUIRE(in.ok());
  CHECK(alloc.num_free_blocks() == free0 - 2);
  in.abort();
  CHECK(alloc.num_free_blocks() == free0);
  x.release();
  es.cancel(id);
  CHECK(src.kv().allocator().num_free_blocks() == src.kv().allocator().num_blocks());
}

TEST_CASE("disaggregation: layers land one after another", "[engine][disagg]") {
  // Two fake pools of 3 layers and 2 blocks, the in-process transport.
  fastinfer::PagedAllocator a(4, 16), b(4, 16);
  std::vector<std::uint8_t> ca(4 * 3 * 64), cb(4 * 3 * 64, 0);
  std::vector<float> pa(4 * 3 * 2), pb(4 * 3 * 2, 0.0f);
  for (std::size_t i = 0; i < ca.size(); ++i) ca[i] = std::uint8_t(i * 7 + 1);
  for (std::size_t i = 0; i < pa.size(); ++i) pa[i] = float(i) + 0.5f;
  const ft::KVPoolView va{&a, ca.data(), pa.data(), 3, 3 * 64, 3 * 2, "int8"};
  const ft::KVPoolView vb{&b, cb.data(), pb.data(), 3, 3 * 64, 3 * 2, "int8"};
  a.add_sequence(5);
  REQUIRE(a.extend(5, 20));
  fs::Request r = make_request(std::vector<std::int32_t>(20, 3), 4, {});
  ft::KVExport x = ft::export_sequence(va, 5, r, {9}, 1);
  a.free_sequence(5);  // the export keeps the two blocks
  CHECK(a.num_free_blocks() == 2);
  ft::KVImport in(vb, x.manifest());
  REQUIRE(in.ok());
  ft::InProcessHub hub(2);
  ft::InProcessTransport t0(hub, 0), t1(hub, 1);
  const auto hr = t1.post_recv(0, 1, in.descriptors());
  CHECK(t1.test(hr).layers_done == 0);  // nothing posted on the other side yet
  const auto hs = t0.post_send(1, 1, x.descriptors());
  std::vector<std::int32_t> seen;
  for (int i = 0; i < 5; ++i) seen.push_back(t1.test(hr).layers_done);
  CHECK(seen == std::vector<std::int32_t>{1, 2, 3, 3, 3});
  CHECK(t0.test(hs).done);
  // The bytes of block i of the source are block in.blocks()[i] of the destination.
  for (std::size_t i = 0; i < 2; ++i) {
    const auto sb = x.manifest().blocks[i], db = in.blocks()[i];
    CHECK(std::equal(ca.begin() + sb * 192, ca.begin() + (sb + 1) * 192, cb.begin() + db * 192));
    CHECK(std::equal(pa.begin() + sb * 6, pa.begin() + (sb + 1) * 6, pb.begin() + db * 6));
  }
  t0.cancel(hs);
  t1.cancel(hr);
  CHECK(hub.open_transfers() == 0);
  in.commit(7);
  CHECK(b.length(7) == 20);
  b.free_sequence(7);
  x.release();
  CHECK(a.num_free_blocks() == 4);
  CHECK(b.num_free_blocks() == 4);
}

// 1,000 requests of random lengths (greedy and seeded) in ten rounds; in
// every other round decode rank 2 is killed mid-stream. Every request that
// finishes equals the single engine; the ones that fail went to the killed
// rank; all pools end whole (the killed rank's server and engine are torn
// down, as a restarted process would be).
TEST_CASE("disaggregation: soak of 1000 requests with killed decode ranks, pools end whole",
          "[engine][disagg][soak]") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  const LlamaWeights w = fastinfer::load_model(model_path.string());
  std::mt19937 rng(2026);
  int failed = 0, finished = 0, same = 0;
  // The deadlines are wall-clock: a sanitizer build runs ~10x slower, so it
  // gets longer ones (a live rank must never look dead) and fewer rounds.
#if defined(__SANITIZE_ADDRESS__)
  const int rounds = 2;
  const double slow = 20;
#else
  const int rounds = 10;
  const double slow = 1;
#endif
  for (int round = 0; round < rounds; ++round) {
    const std::vector<fs::Request> reqs = random_requests(rng, 100, 70, 24);
    const QuantKind q = round % 3 == 0 ? QuantKind::Int8 : QuantKind::F32;
    const bool kill = round % 2 == 1;
    fe::DisaggConfig cfg;
    cfg.timeout_seconds = kill ? 0.2 * slow : 30.0 * slow;
    cfg.result_timeout_seconds = kill ? 0.5 * slow : 0.0;
    fe::EngineConfig ecfg;
    ecfg.prefix_cache = round % 4 == 0;
    const auto single_cfg = ecfg;
    ecfg.scheduler.max_seqs = 12;
    ecfg.scheduler.max_context = 128;  // prompts <= 71 and outputs <= 24 tokens
    // Small pools: decode ranks answer Busy, prefill preempts.
    const auto single = run_single(w, q, reqs, &single_cfg);
    Cluster c(w, q, 24, 20, cfg, ecfg);
    std::vector<std::uint64_t> keys;
    for (const auto& r : reqs) keys.push_back(c.prefill->submit(r));
    std::int64_t steps = 0;
    while (c.prefill->has_work()) {
      c.step();
      ++steps;
      if (kill && steps == 40) c.hub.kill(2);
      if (steps % 50 == 0) c.check();
    }
    c.prefill->shutdown();
    while (!c.d1->done()) c.step();
    int to_dead = 0;
    for (std::size_t i = 0; i < reqs.size(); ++i) {
      const fe::HandoffResult& res = c.prefill->result(keys[i]);
      INFO("round " << round << " request " << i << ": " << res.error);
      if (res.status == fe::HandoffStatus::Failed) {
        CHECK(kill);
        CHECK(res.error.find("rank 2") != std::string::npos);
        ++failed;
        ++to_dead;
        continue;
      }
      REQUIRE(res.status == fe::HandoffStatus::Finished);
      CHECK(res.tokens.size() <= std::size_t(reqs[i].max_new_tokens));
      if (res.tokens == single[i]) {
        ++same;
      } else if (reqs[i].sampling.temperature == 0.0f) {
        // Greedy: the single engine's tokens, batched or alone (its own
        // output can depend on the batch: see the file comment).
        CHECK(res.tokens == run_single(w, q, {reqs[i]})[0]);
      }
      ++finished;
    }
    if (kill) CHECK(to_dead > 0);
    CHECK(c.prefill->held_exports() == 0);
    c.e0->clear_prefix_cache();
    c.e1->clear_prefix_cache();
    CHECK(Cluster::whole(*c.m0));
    CHECK(Cluster::whole(*c.m1));
    // The killed rank restarts: its server drops its imports, its engine its requests.
    c.d2.reset();
    c.e2.reset();
    CHECK(Cluster::whole(*c.m2));
  }
  std::printf("soak: %d finished (%d with the batched single engine's exact tokens), %d failed with the killed rank\n",
              finished, same, failed);
  CHECK(finished + failed == 100 * rounds);
  CHECK(failed > 0);
  CHECK(finished > 90 * rounds);
}


