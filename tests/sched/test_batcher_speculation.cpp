// The batcher's side of speculative decoding: draft slots are budgeted
// (tokens, KV blocks, max_new_tokens, the context), accepted drafts keep
// their KV and are not fed again, rejected slots and their blocks go back at
// commit, shared prefix blocks are never written, and every request's stream
// equals its stream alone, through preemption by recompute and by swap.
//
// The simulated model writes [token, drafts] into the cells the block table
// names, reads the sequence back through the table, and verifies each draft
// against the oracle continuation (sched_harness.hpp's next_token), exactly
// as a greedy verifier would: accept while equal, then emit the oracle's own
// token. The drafter proposes the oracle's continuation with some
// probability and junk otherwise, so acceptance is ragged.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <vector>

#include "sched_harness.hpp"

using namespace sched_test;

namespace {

constexpr std::int32_t kVocab = 64;

class SpecSim {
 public:
  SpecSim(std::int32_t device_blocks, std::int32_t host_blocks, std::int32_t block_size)
      : bs_(block_size),
        device_(std::size_t(device_blocks), std::vector<Cell>(std::size_t(block_size))),
        host_(std::size_t(host_blocks), std::vector<Cell>(std::size_t(block_size))) {}

  // `drafted` / `accepted` count what the step's verification did.
  StepResult run(const StepPlan& plan, const ContinuousBatcher& b, const PagedAllocator& alloc, std::mt19937_64& rng,
                 double right_prob) {
    for (const BlockSwap& s : plan.swap_out) host_.at(std::size_t(s.host)) = device_.at(std::size_t(s.device));
    for (const BlockSwap& s : plan.swap_in) device_.at(std::size_t(s.device)) = host_.at(std::size_t(s.host));
    for (const BlockCopy& c : plan.copies)
      for (std::int32_t t = 0; t < c.tokens; ++t)
        device_.at(std::size_t(c.dst))[std::size_t(t)] = device_.at(std::size_t(c.src))[std::size_t(t)];
    StepResult res;
    for (std::size_t i = 0; i < plan.entries.size(); ++i) {
      const PlanEntry& e = plan.entries[i];
      const std::vector<BlockId>& table = alloc.block_table(e.id);
      // The allocator holds exactly the entry's tokens and its draft slots.
      if (alloc.length(e.id) != e.position + e.num_tokens + e.num_drafts) ++bad_books;
      if (e.num_drafts > 0 && (e.num_tokens != 1 || !e.samples)) ++bad_books;
      for (std::int32_t k = 0; k < e.num_tokens; ++k) {
        const std::int64_t p = e.position + k;
        cell(table, p) = Cell{plan.tokens[std::size_t(plan.token_indptr[i] + k)], p};
      }
      if (!e.samples) continue;
      std::vector<TokenId> seq;
      const std::int64_t len = e.position + e.num_tokens;
      for (std::int64_t p = 0; p < len; ++p) {
        const Cell& c = cell(table, p);
        if (c.position != p) ++corrupt;
        seq.push_back(c.token);
      }
      // Drafts: the oracle's continuation, each right with right_prob.
      std::vector<TokenId> drafts, tmp = seq;
      for (std::int32_t j = 0; j < e.num_drafts; ++j) {
        const TokenId truth = next_token(e.id, tmp, kVocab);
        const bool right = double(rng() % 1000) < right_prob * 1000.0;
        drafts.push_back(right ? truth : TokenId((truth + 1 + TokenId(rng() % (kVocab - 1))) % kVocab));
        tmp.push_back(drafts.back());
      }
      for (std::size_t j = 0; j < drafts.size(); ++j) {
        const std::int64_t p = len + std::int64_t(j);
        cell(table, p) = Cell{drafts[j], p};
      }
      // Greedy verification against the oracle.
      std::vector<TokenId> row;
      std::int32_t accepted = 0;
      for (std::size_t j = 0; j <= drafts.size(); ++j) {
        const TokenId truth = next_token(e.id, seq, kVocab);
        row.push_back(truth);
        seq.push_back(truth);
        if (j == drafts.size() || truth != drafts[j]) break;
        ++accepted;
      }
      drafted += std::int64_t(drafts.size());
      this->accepted += accepted;
      res.add(e.id, row.data(), row.size(), accepted);
      (void)b;
    }
    return res;
  }

  std::int64_t corrupt = 0, bad_books = 0, drafted = 0, accepted = 0;

 private:
  Cell& cell(const std::vector<BlockId>& table, std::int64_t p) {
    return device_.at(std::size_t(table.at(std::size_t(p / bs_))))[std::size_t(p % bs_)];
  }
  std::int32_t bs_;
  std::vector<std::vector<Cell>> device_, host_;
};

struct SpecRun {
  std::map<RequestId, std::vector<TokenId>> outputs;
  std::int64_t preemptions = 0, drafted = 0, accepted = 0;
};

SpecRun run_spec(const Workload& w, SchedulerConfig cfg, std::int32_t blocks, bool prefix, double right_prob,
                 std::uint64_t seed) {
  PagedAllocator alloc(blocks, 4);
  FakePrefixCache cache(alloc);
  ContinuousBatcher b(alloc, cfg, prefix ? cache.provider() : PrefixProvider{});
  SpecSim sim(blocks, cfg.swap_blocks, 4);
  std::mt19937_64 rng(seed);
  SpecRun out;
  std::size_t next = 0;
  std::int64_t steps = 0;
  while (next < w.requests.size() || b.has_work()) {
    while (next < w.requests.size() && w.arrival_step[next] <= steps) b.submit(w.requests[next++]);
    // Each running request asks for 0..4 drafts, changing from step to step.
    for (const Request& r : w.requests)
      if (b.status(r.id) != RequestStatus::Finished) b.set_draft_tokens(r.id, std::int32_t(rng() % 5));
    // (requests not yet submitted throw: only submitted ones are asked)
    const StepPlan& plan = b.schedule();
    std::int64_t fed = 0;
    for (const PlanEntry& e : plan.entries) fed += e.num_tokens + e.num_drafts;
    if (fed > cfg.max_tokens_per_step) FAIL("drafts exceed the token budget");
    const StepResult res = sim.run(plan, b, alloc, rng, right_prob);
    for (RequestId id : b.commit(res)) out.outputs[id] = b.output(id);
    b.check_invariants();
    alloc.check_invariants();
    ++steps;
    if (steps > 100000) FAIL("did not finish");
  }
  CHECK(sim.corrupt == 0);
  CHECK(sim.bad_books == 0);
  out.preemptions = b.metrics().preemptions;
  out.drafted = sim.drafted;
  out.accepted = sim.accepted;
  cache.evict(1 << 30);
  CHECK(alloc.num_free_blocks() == alloc.num_blocks());
  return out;
}

}  // namespace

TEST_CASE("ContinuousBatcher speculation: draft slots keep solo streams through preemption and prefix sharing",
          "[sched][spec]") {
  std::mt19937_64 rng(42);
  WorkloadShape shape;
  shape.count = 120;
  shape.max_prompt = 30;
  shape.max_new = 40;
  shape.spread_steps = 30;
  shape.shared_prefix = 0.5;
  Workload w = make_workload(rng, shape, kVocab);
  // Submitted requests only may be asked for drafts: give every request an
  // arrival at step 0 (the set_draft_tokens loop walks them all).
  for (auto& s : w.arrival_step) s = 0;
  for (int variant = 0; variant < 4; ++variant) {
    SchedulerConfig cfg;
    cfg.max_context = 96;
    cfg.max_tokens_per_step = 48;
    cfg.max_prefill_chunk = 13;
    cfg.max_seqs = 24;
    cfg.vocab_size = kVocab;
    bool prefix = false;
    std::int32_t blocks = 60;
    if (variant == 1) cfg.preemption = Swap{}, cfg.swap_blocks = 200;
    if (variant == 2) prefix = true;
    if (variant == 3) cfg.preemption = NoEviction{}, blocks = 200;
    INFO("variant " << variant);
    const SpecRun r = run_spec(w, cfg, blocks, prefix, 0.7, 9 + std::uint64_t(variant));
    std::int64_t mismatches = 0;
    for (const Request& q : w.requests) mismatches += r.outputs.at(q.id) != run_alone(q, cfg.max_context, kVocab);
    CHECK(mismatches == 0);
    CHECK(r.drafted > 0);
    CHECK(r.accepted > 0);
    CHECK(r.accepted < r.drafted);
    if (variant < 3) CHECK(r.preemptions > 0);
  }
}

TEST_CASE("ContinuousBatcher speculation: slots respect max_new_tokens, the context and the budget", "[sched][spec]") {
  PagedAllocator alloc(64, 4);
  SchedulerConfig cfg;
  cfg.max_context = 32;
  cfg.max_tokens_per_step = 8;
  ContinuousBatcher b(alloc, cfg);
  Request a;
  a.id = 1;
  a.prompt = {1, 2, 3};
  a.max_new_tokens = 3;
  b.submit(a);
  CHECK_THROWS_AS(b.set_draft_tokens(1, -1), InvalidArgument);
  CHECK_THROWS_AS(b.set_draft_tokens(99, 2), UsageError);
  b.set_draft_tokens(1, 6);
  CHECK(b.draft_tokens(1) == 6);
  {
    const StepPlan& p = b.schedule();  // prefill: no slots
    REQUIRE(p.entries.size() == 1);
    CHECK(p.entries[0].num_drafts == 0);
    StepResult r;
    r.add(1, 10);
    b.commit(r);
  }
  {
    // One output so far, max 3: the decode may draft 1 (then the target's token makes 3).
    const StepPlan& p = b.schedule();
    REQUIRE(p.entries.size() == 1);
    CHECK(p.entries[0].num_tokens == 1);
    CHECK(p.entries[0].num_drafts == 1);
    CHECK(alloc.length(1) == 5);
    // A row may keep at most its slots, and never its last token.
    StepResult too_many;
    const TokenId row[3] = {11, 12, 13};
    too_many.add(1, row, 3, 2);
    CHECK_THROWS_AS(b.commit(too_many), UsageError);
    StepResult last_kept;
    last_kept.add(1, row, 1, 1);
    CHECK_THROWS_AS(b.commit(last_kept), UsageError);
    StepResult rejected;  // the draft was rejected: one token, nothing kept
    rejected.add(1, 11);
    b.commit(rejected);
    CHECK(b.computed_tokens(1) == 4);
    CHECK(alloc.length(1) == 4);
  }
  {
    const StepPlan& p = b.schedule();
    CHECK(p.entries[0].num_drafts == 0);  // one token left: no room for a draft
    StepResult r;
    r.add(1, 12);
    b.commit(r);
    CHECK(b.status(1) == RequestStatus::Finished);
    CHECK(b.output(1) == std::vector<TokenId>{10, 11, 12});
  }
  // The budget: 8 tokens for two decoding requests asking 6 drafts each.
  for (RequestId id : {2, 3}) {
    Request r;
    r.id = id;
    r.prompt = {1, 2};
    r.max_new_tokens = 20;
    b.submit(r);
    b.set_draft_tokens(id, 6);
  }
  {
    const StepPlan& p = b.schedule();
    StepResult r;
    for (const PlanEntry& e : p.entries) r.add(e.id, 5);
    b.commit(r);
  }
  {
    const StepPlan& p = b.schedule();
    REQUIRE(p.entries.size() == 2);
    // The first leaves one budget token for the second decode.
    CHECK(p.entries[0].num_drafts == 6);
    CHECK(p.entries[1].num_drafts == 0);
    // Accept 3 drafts of the first: its KV keeps them, 4 tokens emitted.
    StepResult r;
    const TokenId row[4] = {6, 7, 8, 9};
    r.add(p.entries[0].id, row, 4, 3);
    r.add(p.entries[1].id, 5);
    const RequestId first = p.entries[0].id;
    b.commit(r);
    CHECK(b.computed_tokens(first) == 2 + 1 + 3);
    CHECK(alloc.length(first) == 6);
    CHECK(b.output(first).size() == 5);
  }
  b.check_invariants();
  alloc.check_invariants();
}

TEST_CASE("ContinuousBatcher speculation: a tree's re-fed tokens still get slots up to max_unfed", "[sched][spec]") {
  // A token tree keeps only the accepted nodes on its first chain: the rest
  // of the accepted path is unfed in the next step, in front of the next
  // tree. Each batcher below reaches that state, then asks with a max_unfed.
  SchedulerConfig cfg;
  cfg.max_context = 64;
  cfg.max_tokens_per_step = 16;
  auto after_tree = [&](PagedAllocator& alloc, ContinuousBatcher& b) {
    Request a;
    a.id = 1;
    a.prompt = {1, 2, 3};
    a.max_new_tokens = 30;
    b.submit(a);
    CHECK_THROWS_AS(b.set_draft_tokens(1, 2, 0), InvalidArgument);
    b.set_draft_tokens(1, 4);
    StepResult first;
    first.add(b.schedule().entries[0].id, 10);
    b.commit(first);
    const StepPlan& p = b.schedule();  // a decode with 4 slots
    REQUIRE(p.entries.size() == 1);
    CHECK(p.entries[0].num_drafts == 4);
    // Three nodes accepted, one of them kept in place, and the target's token.
    StepResult r;
    const TokenId row[4] = {11, 12, 13, 14};
    r.add(1, row, 4, 1);
    b.commit(r);
    CHECK(b.computed_tokens(1) == 3 + 1 + 1);
    CHECK(alloc.length(1) == 5);
  };
  // Three unfed tokens (12, 13, 14): no slots at max_unfed 1 or 2 ...
  for (std::int32_t max_unfed : {1, 2}) {
    PagedAllocator alloc(64, 4);
    ContinuousBatcher b(alloc, cfg);
    after_tree(alloc, b);
    b.set_draft_tokens(1, 4, max_unfed);
    const StepPlan& p = b.schedule();
    REQUIRE(p.entries.size() == 1);
    CHECK(p.entries[0].num_tokens == 3);
    CHECK(p.entries[0].num_drafts == 0);
    CHECK(p.entries[0].samples);
  }
  // ... 4 at max_unfed 3: the entry feeds 3 + 4 positions.
  PagedAllocator alloc(64, 4);
  ContinuousBatcher b(alloc, cfg);
  after_tree(alloc, b);
  b.set_draft_tokens(1, 4, 3);
  const StepPlan& p = b.schedule();
  REQUIRE(p.entries.size() == 1);
  CHECK(p.entries[0].num_tokens == 3);
  CHECK(p.entries[0].num_drafts == 4);
  CHECK(alloc.length(1) == 5 + 3 + 4);
  StepResult r;
  r.add(1, 20);  // every node rejected: the target's token alone
  b.commit(r);
  CHECK(b.computed_tokens(1) == 8);
  CHECK(alloc.length(1) == 8);
  CHECK(b.output(1) == std::vector<TokenId>{10, 11, 12, 13, 14, 20});
  b.check_invariants();
  alloc.check_invariants();
}
