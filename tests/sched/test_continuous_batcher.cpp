#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "fastinfer/prefix/radix_prefix_cache.hpp"
#include "fastinfer/sched/radix_prefix_provider.hpp"
#include "sched_harness.hpp"

using namespace sched_test;

namespace {

constexpr std::int32_t kVocab = 64;

// Drives a batcher over a workload with the simulated model, checking every
// plan against the budget, the sequence limit and the allocator's books.
struct Driver {
  Driver(PagedAllocator& a, ContinuousBatcher& bb, SimulatedModel& m, double& c) : alloc(a), b(bb), model(m), clock(c) {}
  PagedAllocator& alloc;
  ContinuousBatcher& b;
  SimulatedModel& model;
  double& clock;
  std::mt19937_64 rng{7};
  int max_accept = 1;
  bool retire_finished = false;

  std::map<RequestId, std::vector<TokenId>> outputs;
  std::map<RequestId, std::int64_t> submit_step, finish_step;
  std::int64_t steps = 0, swaps_out = 0, swaps_in = 0, copies = 0, max_batch_tokens = 0;
  std::int64_t mixed_steps = 0;  // steps with both a decode and a prefill chunk

  // Called with each plan before it runs.
  std::function<void(const StepPlan&)> on_plan;
  // Called when a request is submitted.
  std::function<void(const Request&)> on_submit;
  std::function<void(RequestId)> on_finish;

  void run(const Workload& w, std::int64_t max_steps = 200000) {
    std::size_t next = 0;
    const auto& cfg = b.config();
    while (next < w.requests.size() || b.has_work()) {
      while (next < w.requests.size() && w.arrival_step[next] <= steps) {
        Request r = w.requests[next++];
        r.arrival_time = double(steps);
        submit_step[r.id] = b.step();
        if (on_submit) on_submit(r);
        b.submit(r);
      }
      clock = double(steps);
      const StepPlan& plan = b.schedule();
      if (plan.num_tokens() > cfg.max_tokens_per_step) FAIL("plan exceeds the token budget");
      if (std::int64_t(plan.entries.size()) > cfg.max_seqs) FAIL("plan exceeds max_seqs");
      if (plan.token_indptr.size() != plan.entries.size() + 1) FAIL("token_indptr size");
      std::set<RequestId> ids;
      bool decode = false, chunk = false;
      for (std::size_t i = 0; i < plan.entries.size(); ++i) {
        const PlanEntry& e = plan.entries[i];
        if (!ids.insert(e.id).second) FAIL("request twice in one plan");
        if (plan.token_indptr[i + 1] - plan.token_indptr[i] != e.num_tokens || e.num_tokens <= 0)
          FAIL("entry token count");
        (e.num_tokens == 1 ? decode : chunk) = true;
      }
      mixed_steps += decode && chunk;
      max_batch_tokens = std::max(max_batch_tokens, plan.num_tokens());
      swaps_out += std::int64_t(plan.swap_out.size());
      swaps_in += std::int64_t(plan.swap_in.size());
      copies += std::int64_t(plan.copies.size());
      if (on_plan) on_plan(plan);
      const StepResult res = model.run(plan, alloc, rng, max_accept);
      clock = double(steps) + 0.5;
      const std::vector<RequestId> done = b.commit(res);
      for (RequestId id : done) {
        outputs[id] = b.output(id);
        finish_step[id] = steps;
        if (on_finish) on_finish(id);
        if (retire_finished) b.retire(id);
      }
      b.check_invariants();
      alloc.check_invariants();
      ++steps;
      if (steps >= max_steps) FAIL("workload did not finish in " << max_steps << " steps");
    }
  }
};

void expect_solo_streams(const Workload& w, const std::map<RequestId, std::vector<TokenId>>& outputs,
                         std::int64_t max_context) {
  std::int64_t mismatches = 0;
  RequestId first_bad = -1;
  for (const Request& r : w.requests) {
    auto it = outputs.find(r.id);
    if (it == outputs.end() || it->second != run_alone(r, max_context, kVocab)) {
      if (mismatches++ == 0) first_bad = r.id;
    }
  }
  INFO("first mismatching request " << first_bad);
  CHECK(mismatches == 0);
}

std::string describe(const SchedulerConfig& c, bool prefix, int accept) {
  return std::string(policy_name(c.preemption)) + " / " + std::string(policy_name(c.ordering)) +
         (prefix ? " / prefix cache" : "") + " / accept<=" + std::to_string(accept);
}

}  // namespace

TEST_CASE("ContinuousBatcher: configuration is checked") {
  PagedAllocator alloc(8, 4);
  SchedulerConfig c;
  c.max_context = 64;  // needs 16 + 1 blocks of 4
  CHECK_THROWS_AS(ContinuousBatcher(alloc, c), InvalidArgument);
  CHECK_THROWS_WITH(ContinuousBatcher(alloc, c), Catch::Contains("max_context 64"));
  c.max_context = 16;
  c.max_tokens_per_step = 0;
  CHECK_THROWS_WITH(ContinuousBatcher(alloc, c), Catch::Contains("max_tokens_per_step"));
  c.max_tokens_per_step = 8;
  c.max_seqs = -1;
  CHECK_THROWS_AS(ContinuousBatcher(alloc, c), InvalidArgument);
  c.max_seqs = 4;
  ContinuousBatcher ok(alloc, c);
  CHECK(!ok.has_work());
}

TEST_CASE("ContinuousBatcher: bad requests are rejected alone, and the others finish as if alone") {
  PagedAllocator alloc(64, 4);
  SchedulerConfig c;
  c.max_context = 48;
  c.max_tokens_per_step = 16;
  c.max_seqs = 4;
  c.vocab_size = kVocab;
  double clock = 0;
  ContinuousBatcher b(alloc, c, {}, [&] { return clock; });
  SimulatedModel model(64, 0, 4, kVocab);
  std::mt19937_64 rng(1);
  WorkloadShape s;
  s.count = 12;
  s.max_prompt = 30;
  Workload w = make_workload(rng, s, kVocab, 100);

  Driver d(alloc, b, model, clock);
  int step_of_misuse = 0;
  d.on_plan = [&](const StepPlan& plan) {
    if (plan.step != 3 || step_of_misuse++) return;
    const std::size_t waiting = b.num_waiting(), running = b.num_running();
    Request r;
    r.id = 999;
    r.prompt = {};
    CHECK_THROWS_WITH(b.submit(r), Catch::Contains("request 999") && Catch::Contains("empty prompt"));
    r.prompt.assign(48, 1);
    CHECK_THROWS_WITH(b.submit(r), Catch::Contains("48 tokens"));
    r.prompt = {1, 2, 3};
    r.max_new_tokens = 0;
    CHECK_THROWS_WITH(b.submit(r), Catch::Contains("max_new_tokens") && Catch::Contains("0"));
    r.max_new_tokens = 5;
    r.prompt = {1, kVocab};
    CHECK_THROWS_WITH(b.submit(r), Catch::Contains("token 64"));
    r.prompt = {1, 2};
    r.sampling.top_p = 0.0f;
    CHECK_THROWS_AS(b.submit(r), InvalidArgument);
    r.sampling.top_p = 1.0f;
    r.sampling.temperature = -1.0f;
    CHECK_THROWS_WITH(b.submit(r), Catch::Contains("temperature"));
    r.sampling.temperature = 1e-40f;  // the samplers' rule: refused at submit, not thrown by a step
    CHECK_THROWS_WITH(b.submit(r), Catch::Contains("request") && Catch::Contains("FLT_MAX"));
    r.sampling.temperature = 0.0f;
    r.id = d.submit_step.begin()->first;  // already submitted
    CHECK_THROWS_AS(b.submit(r), UsageError);
    CHECK_THROWS_WITH(b.submit(r), Catch::Contains("already in use"));
    CHECK_THROWS_AS(b.cancel(12345), UsageError);
    CHECK_THROWS_WITH(b.cancel(12345), Catch::Contains("unknown request 12345"));
    CHECK(b.num_waiting() == waiting);
    CHECK(b.num_running() == running);
    CHECK_THROWS_WITH(b.status(12345), Catch::Contains("12345"));
  };
  d.run(w);
  CHECK(step_of_misuse == 1);
  expect_solo_streams(w, d.outputs, c.max_context);
  CHECK(model.corrupt == 0);
  CHECK(alloc.num_free_blocks() == alloc.num_blocks());
}

TEST_CASE("ContinuousBatcher: plans respect the budget, and chunked prefill feeds each prompt once, in order") {
  PagedAllocator alloc(256, 4);
  SchedulerConfig c;
  c.max_context = 96;
  c.max_tokens_per_step = 12;
  c.max_seqs = 5;
  c.max_prefill_chunk = 8;
  double clock = 0;
  ContinuousBatcher b(alloc, c, {}, [&] { return clock; });
  SimulatedModel model(256, 0, 4, kVocab);
  std::mt19937_64 rng(2);
  WorkloadShape s;
  s.count = 40;
  s.min_prompt = 1;
  s.max_prompt = 60;
  s.spread_steps = 60;
  Workload w = make_workload(rng, s, kVocab);
  std::map<RequestId, std::vector<TokenId>> prompt;
  for (const Request& r : w.requests) prompt[r.id] = r.prompt;

  Driver d(alloc, b, model, clock);
  std::map<RequestId, std::int64_t> next_pos;
  std::map<RequestId, std::vector<int>> fed;  // times each prompt position was fed
  std::map<RequestId, int> prefill_steps;
  d.on_plan = [&](const StepPlan& plan) {
    CHECK(plan.preempted.empty());
    for (std::size_t i = 0; i < plan.entries.size(); ++i) {
      const PlanEntry& e = plan.entries[i];
      if (e.num_tokens > 1) CHECK(e.num_tokens <= c.max_prefill_chunk);
      REQUIRE(e.position == next_pos[e.id]);  // contiguous, in order
      auto& f = fed[e.id];
      const auto& p = prompt[e.id];
      f.resize(p.size());
      bool prompt_part = false;
      for (std::int32_t k = 0; k < e.num_tokens; ++k) {
        const std::int64_t pos = e.position + k;
        if (pos < std::int64_t(p.size())) {
          ++f[std::size_t(pos)];
          prompt_part = true;
          CHECK(plan.tokens[std::size_t(plan.token_indptr[i] + k)] == p[std::size_t(pos)]);
        }
      }
      prefill_steps[e.id] += prompt_part;
      next_pos[e.id] = e.position + e.num_tokens;
      // Samples exactly when the chunk reaches the end of the known tokens.
      CHECK(e.samples == (next_pos[e.id] >= std::int64_t(p.size())));
    }
  };
  d.run(w);
  for (const auto& kv : fed)
    for (int n : kv.second) REQUIRE(n == 1);
  CHECK(fed.size() == w.requests.size());
  int split = 0;
  for (const auto& kv : prefill_steps) split += kv.second >= 3;
  CHECK(split > 0);             // long prompts were fed over several steps
  CHECK(d.mixed_steps > 0);     // and mixed with decodes
  CHECK(d.max_batch_tokens == c.max_tokens_per_step);
  expect_solo_streams(w, d.outputs, c.max_context);
  CHECK(model.corrupt == 0);
  CHECK(b.metrics().preemptions == 0);
}

TEST_CASE("ContinuousBatcher: every policy gives each request its solo stream under random workloads") {
  const std::vector<PreemptionPolicy> preemptions{Recompute{}, Swap{}, NoEviction{}};
  const std::vector<OrderingPolicy> orderings{Fcfs{}, Priority{}, PrefixAware{}};
  std::uint64_t seed = 10;
  for (const auto& pre : preemptions)
    for (const auto& ord : orderings)
      for (int prefix = 0; prefix < 2; ++prefix) {
        const int accept = 1 + int(seed % 3);  // ragged acceptance in some runs
        const std::int32_t bs = 4, blocks = 40;
        PagedAllocator alloc(blocks, bs);
        SchedulerConfig c;
        c.max_context = 64;
        c.max_tokens_per_step = 24;
        c.max_seqs = 6;
        c.preemption = pre;
        c.ordering = ord;
        c.swap_blocks = 24;
        c.starvation_steps = 30;
        c.vocab_size = kVocab;
        FakePrefixCache cache(alloc);
        double clock = 0;
        ContinuousBatcher b(alloc, c, prefix ? cache.provider() : PrefixProvider{}, [&] { return clock; });
        SimulatedModel model(blocks, c.swap_blocks, bs, kVocab);
        std::mt19937_64 rng(seed++);
        WorkloadShape s;
        s.count = 60;
        s.max_prompt = 40;
        s.max_new = 24;
        s.spread_steps = 30;
        s.shared_prefix = 0.6;
        s.priorities = 3;
        s.namespaces = 2;
        Workload w = make_workload(rng, s, kVocab);
        INFO(describe(c, prefix, accept));
        Driver d(alloc, b, model, clock);
        d.max_accept = accept;
        d.run(w);
        expect_solo_streams(w, d.outputs, c.max_context);
        CHECK(model.corrupt == 0);
        const MetricsSummary m = b.metrics();
        CHECK(m.finished == std::int64_t(w.requests.size()));
        if (std::holds_alternative<NoEviction>(pre)) {
          CHECK(m.preemptions == 0);
        } else {
          CHECK(m.preemptions > 0);
        }
        if (std::holds_alternative<Swap>(pre)) {
          CHECK(m.preemptions_swap > 0);
          CHECK(d.swaps_out > 0);
          CHECK(d.swaps_in == d.swaps_out);
        } else {
          CHECK(m.preemptions_swap == 0);
        }
        if (prefix) {
          CHECK(cache.hits() > 0);
          CHECK(m.prefix_cached_tokens > 0);
          CHECK(cache.pinned() == 0);
          cache.evict(1 << 30);
        }
        CHECK(alloc.num_free_blocks() == alloc.num_blocks());
        CHECK(alloc.num_sequences() == 0);
        CHECK(b.swap_space().num_free_blocks() == c.swap_blocks);
      }
}

TEST_CASE("ContinuousBatcher: NoEviction admits only what it can finish") {
  const std::int32_t bs = 4, blocks = 30;
  PagedAllocator alloc(blocks, bs);
  SchedulerConfig c;
  c.max_context = 64;
  c.max_tokens_per_step = 32;
  c.max_seqs = 8;
  c.preemption = NoEviction{};
  double clock = 0;
  ContinuousBatcher b(alloc, c, {}, [&] { return clock; });
  SimulatedModel model(blocks, 0, bs, kVocab);
  std::mt19937_64 rng(3);
  WorkloadShape s;
  s.count = 50;
  s.max_prompt = 30;
  s.max_new = 30;
  s.stop_ids = false;
  s.spread_steps = 5;
  Workload w = make_workload(rng, s, kVocab);
  std::map<RequestId, Request> byid;
  for (const Request& r : w.requests) byid[r.id] = r;
  Driver d(alloc, b, model, clock);
  std::set<RequestId> live;
  std::int64_t peak = 0;
  d.on_plan = [&](const StepPlan& plan) {
    for (const PlanEntry& e : plan.entries) live.insert(e.id);
    // Everything admitted has its whole life reserved: the lives fit the pool.
    std::int64_t life = 0;
    for (RequestId id : live) {
      const Request& r = byid[id];
      life += alloc.blocks_for(std::min<std::int64_t>(std::int64_t(r.prompt.size()) + r.max_new_tokens, c.max_context) - 1);
      // And a running request never needs a block again.
      CHECK(alloc.capacity(id) >= std::min<std::int64_t>(std::int64_t(r.prompt.size()) + r.max_new_tokens, c.max_context) - 1);
    }
    CHECK(life <= blocks);
    peak = std::max(peak, life);
  };
  d.on_finish = [&](RequestId id) { live.erase(id); };
  d.run(w);
  CHECK(peak > blocks / 2);  // the pool was actually contended
  CHECK(b.metrics().preemptions == 0);
  expect_solo_streams(w, d.outputs, c.max_context);
  CHECK(alloc.num_free_blocks() == blocks);
}

TEST_CASE("ContinuousBatcher: a cached prefix is adopted, the last prompt token is still computed") {
  const std::int32_t bs = 4;
  PagedAllocator alloc(32, bs);
  FakePrefixCache cache(alloc);
  SchedulerConfig c;
  c.max_context = 64;
  c.max_tokens_per_step = 64;
  double clock = 0;
  ContinuousBatcher b(alloc, c, cache.provider(), [&] { return clock; });
  SimulatedModel model(32, 0, bs, kVocab);
  std::mt19937_64 rng(4);

  Request a;
  a.id = 1;
  for (int i = 0; i < 16; ++i) a.prompt.push_back(TokenId(i + 3));
  a.max_new_tokens = 3;
  b.submit(a);
  // Prefill of 16 tokens, then two decodes (the third token ends it unfed).
  std::vector<TokenId> out;
  while (b.has_work()) {
    const StepPlan& p = b.schedule();
    b.commit(model.run(p, alloc, rng));
  }
  out = b.output(1);
  REQUIRE(out.size() == 3);
  // 16 prompt + 2 fed outputs = 18 tokens of KV: 4 full blocks cached.
  CHECK(cache.size() == 4);
  CHECK(alloc.num_free_blocks() == 32 - 4);

  Request same = a;
  same.id = 2;
  b.submit(same);
  const StepPlan& p = b.schedule();
  REQUIRE(p.entries.size() == 1);
  CHECK(p.entries[0].position == 15);  // 16 cached, capped to compute the last one
  CHECK(p.entries[0].num_tokens == 1);
  REQUIRE(p.copies.size() == 1);        // the cached last block is copied before writing
  CHECK(p.copies[0].tokens == 3);
  b.commit(model.run(p, alloc, rng));
  Request other_ns = a;
  other_ns.id = 3;
  other_ns.prefix_namespace = 7;        // another tenant: no sharing
  b.submit(other_ns);
  const StepPlan& q = b.schedule();
  bool found = false;
  for (const PlanEntry& e : q.entries)
    if (e.id == 3) {
      found = true;
      CHECK(e.position == 0);
    }
  CHECK(found);
  b.commit(model.run(q, alloc, rng));
  while (b.has_work()) b.commit(model.run(b.schedule(), alloc, rng));
  CHECK(b.output(2) == run_alone(same, c.max_context, kVocab));
  CHECK(b.output(3) == run_alone(other_ns, c.max_context, kVocab));
  CHECK(out == run_alone(a, c.max_context, kVocab));
  CHECK(model.corrupt == 0);
  const MetricsSummary m = b.metrics();
  CHECK(m.prefix_cached_tokens == 15);
  CHECK(m.prefix_hit_rate == Approx(15.0 / 48.0));
  CHECK(cache.pinned() == 0);
  cache.evict(1000);
  CHECK(alloc.num_free_blocks() == 32);
}

TEST_CASE("ContinuousBatcher: cancellation frees blocks in every state and leaves others alone") {
  const std::int32_t bs = 4, blocks = 24;
  for (int policy = 0; policy < 2; ++policy) {
    INFO((policy ? "swap" : "recompute"));
    PagedAllocator alloc(blocks, bs);
    SchedulerConfig c;
    c.max_context = 48;
    c.max_tokens_per_step = 16;
    c.max_seqs = 6;
    c.swap_blocks = 40;
    c.preemption = policy ? PreemptionPolicy{Swap{}} : PreemptionPolicy{Recompute{}};
    double clock = 0;
    ContinuousBatcher b(alloc, c, {}, [&] { return clock; });
    SimulatedModel model(blocks, c.swap_blocks, bs, kVocab);
    std::mt19937_64 rng(5 + std::uint64_t(policy));
    WorkloadShape s;
    s.count = 40;
    s.max_prompt = 30;
    s.max_new = 30;
    s.stop_ids = false;
    s.spread_steps = 10;
    Workload w = make_workload(rng, s, kVocab);
    Driver d(alloc, b, model, clock);
    std::set<RequestId> cancelled;
    std::map<RequestStatus, int> cancelled_in;
    int in_flight = 0;
    d.on_plan = [&](const StepPlan& plan) {
      // Cancel one request of each state now and then, and one in the plan
      // being executed (ended at commit).
      if (plan.step % 5 != 0) return;
      for (const Request& r : w.requests) {
        if (cancelled.count(r.id) || d.submit_step.count(r.id) == 0) continue;
        const RequestStatus st = b.status(r.id);
        if (st == RequestStatus::Finished || cancelled_in[st] >= 3) continue;
        const bool in_plan = std::any_of(plan.entries.begin(), plan.entries.end(),
                                         [&](const PlanEntry& e) { return e.id == r.id; });
        CHECK(b.cancel(r.id));
        if (in_plan) {
          ++in_flight;
          CHECK(b.status(r.id) == RequestStatus::Running);  // still in flight
        } else {
          CHECK(b.status(r.id) == RequestStatus::Finished);
        }
        cancelled.insert(r.id);
        ++cancelled_in[st];
        break;
      }
    };
    d.run(w);
    CHECK(cancelled_in[RequestStatus::Waiting] > 0);
    CHECK(cancelled_in[RequestStatus::Running] > 0);
    if (policy) CHECK(cancelled_in[RequestStatus::Swapped] > 0);
    CHECK(in_flight > 0);
    Workload rest;
    for (const Request& r : w.requests) {
      if (cancelled.count(r.id)) {
        CHECK(b.finish_reason(r.id) == FinishReason::Cancelled);
        CHECK_FALSE(b.cancel(r.id));  // already over
      } else {
        rest.requests.push_back(r);
      }
    }
    expect_solo_streams(rest, d.outputs, c.max_context);
    CHECK(b.metrics().cancelled == std::int64_t(cancelled.size()));
    CHECK(alloc.num_free_blocks() == blocks);
    CHECK(b.swap_space().num_free_blocks() == c.swap_blocks);
  }
}

TEST_CASE("ContinuousBatcher: schedule/commit misuse is refused and changes nothing") {
  PagedAllocator alloc(32, 4);
  SchedulerConfig c;
  c.max_context = 32;
  c.vocab_size = kVocab;
  double clock = 0;
  ContinuousBatcher b(alloc, c, {}, [&] { return clock; });
  SimulatedModel model(32, 0, 4, kVocab);
  std::mt19937_64 rng(6);
  StepResult empty;
  CHECK_THROWS_WITH(b.commit(empty), Catch::Contains("schedule()"));
  Request r1, r2;
  r1.id = 1;
  r1.prompt = {5, 6, 7};
  r1.max_new_tokens = 4;
  r2 = r1;
  r2.id = 2;
  r2.prompt = {9, 9, 9, 9, 9};
  b.submit(r1);
  b.submit(r2);
  const StepPlan& p = b.schedule();
  REQUIRE(p.entries.size() == 2);
  CHECK_THROWS_WITH(b.schedule(), Catch::Contains("not committed"));
  const StepResult good = model.run(p, alloc, rng);
  StepResult bad;
  bad.add(1, good.tokens[0]);  // request 2's row is missing
  CHECK_THROWS_WITH(b.commit(bad), Catch::Contains("no row for request 2"));
  bad.add(2, good.tokens[1]);
  bad.add(2, good.tokens[1]);
  CHECK_THROWS_WITH(b.commit(bad), Catch::Contains("two rows"));
  StepResult stranger = good;
  stranger.add(77, 1);
  CHECK_THROWS_WITH(b.commit(stranger), Catch::Contains("request 77 did not sample"));
  StepResult out_of_vocab;
  out_of_vocab.add(1, kVocab);
  out_of_vocab.add(2, 0);
  CHECK_THROWS_WITH(b.commit(out_of_vocab), Catch::Contains("token 64"));
  StepResult hollow;
  hollow.add(1, nullptr, 0);
  hollow.add(2, 0);
  CHECK_THROWS_WITH(b.commit(hollow), Catch::Contains("holds no token"));
  CHECK(b.output(1).empty());
  CHECK(b.in_flight());
  b.commit(good);  // the real one still works
  while (b.has_work()) b.commit(model.run(b.schedule(), alloc, rng));
  CHECK(b.output(1) == run_alone(r1, c.max_context, kVocab));
  CHECK(b.output(2) == run_alone(r2, c.max_context, kVocab));
  CHECK_THROWS_AS(b.retire(99), UsageError);
  b.retire(1);
  CHECK_THROWS_AS(b.output(1), UsageError);
  b.submit(r1);  // a retired id may come back
  CHECK(b.status(1) == RequestStatus::Waiting);
}

TEST_CASE("ContinuousBatcher: stop ids, max_new_tokens and the context end requests") {
  PagedAllocator alloc(32, 4);
  SchedulerConfig c;
  c.max_context = 12;
  double clock = 0;
  ContinuousBatcher b(alloc, c, {}, [&] { return clock; });
  Request r;
  r.id = 1;
  r.prompt = {1, 2, 3};
  r.max_new_tokens = 100;
  r.stop_ids = {42};
  b.submit(r);
  Request q = r;
  q.id = 2;
  q.prompt = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  b.submit(q);
  Request m = r;
  m.id = 3;
  m.max_new_tokens = 2;
  b.submit(m);
  int steps = 0;
  while (b.has_work()) {
    const StepPlan& p = b.schedule();
    StepResult res;
    for (const PlanEntry& e : p.entries)
      if (e.samples) {
        // Request 1 gets two tokens at once, the second a stop id: it ends
        // without emitting it, and the row's later tokens are dropped.
        if (e.id == 1 && e.sample_index == 1)
          res.add(1, std::vector<TokenId>{7, 42, 8});
        else
          res.add(e.id, 5);
      }
    b.commit(res);
    ++steps;
  }
  CHECK(b.output(1) == std::vector<TokenId>{5, 7});
  CHECK(b.finish_reason(1) == FinishReason::Stop);
  CHECK(b.output(2) == std::vector<TokenId>{5, 5});  // 10 + 2 = context of 12
  CHECK(b.finish_reason(2) == FinishReason::ContextFull);
  CHECK(b.output(3).size() == 2);
  CHECK(b.finish_reason(3) == FinishReason::MaxNewTokens);
  CHECK(finish_reason_name(FinishReason::ContextFull) == "context_full");
  CHECK(alloc.num_free_blocks() == 32);
}

TEST_CASE("ContinuousBatcher: latency metrics follow the injected clock") {
  PagedAllocator alloc(32, 4);
  SchedulerConfig c;
  c.max_context = 32;
  double clock = 0;
  ContinuousBatcher b(alloc, c, {}, [&] { return clock; });
  Request r;
  r.id = 1;
  r.prompt = {1, 2, 3, 4, 5};
  r.max_new_tokens = 3;
  r.arrival_time = 1.0;
  b.submit(r);
  // Commit times: 2, 2.5, 4 -> TTFT 1, ITL {0.5, 1.5}, e2e 3.
  const double times[] = {2.0, 2.5, 4.0};
  for (double t : times) {
    const StepPlan& p = b.schedule();
    CHECK(p.entries.size() == 1);
    StepResult res;
    res.add(1, 9);
    clock = t;
    b.commit(res);
  }
  CHECK(!b.has_work());
  const RequestTiming& tm = b.timing(1);
  CHECK(tm.first_token == 2.0);
  CHECK(tm.finish == 4.0);
  CHECK(tm.token_times == std::vector<double>{2.0, 2.5, 4.0});
  const MetricsSummary m = b.metrics();
  CHECK(m.ttft_p50 == 1.0);
  CHECK(m.itl_p50 == 0.5);
  CHECK(m.itl_p99 == 1.5);
  CHECK(m.e2e_p99 == 3.0);
  CHECK(m.throughput_tok_s == Approx(8.0 / 3.0));
  CHECK(m.output_tok_s == Approx(1.0));
  CHECK(m.steps == 3);
  CHECK(m.kv_utilisation_peak == Approx(2.0 / 32.0));
}

// The soak: thousands of requests into a pool far smaller than their demand.
// Beyond completion and solo streams it checks the starvation bound stated in
// continuous_batcher.hpp: the first live request in service order is served
// in every step, so under FCFS a request finishes within the sum of W(q) =
// prompt + 2 * max_new + 1 steps over itself and the requests still live
// ahead of it when it arrived.
namespace {

struct SoakCase {
  PreemptionPolicy pre;
  OrderingPolicy ord;
  bool prefix;
  int accept;
  int count;
  std::uint64_t seed;
};

void soak(const SoakCase& cs) {
  const std::uint64_t seed = cs.seed;
  {
    const std::int32_t bs = 8, blocks = 48;
    PagedAllocator alloc(blocks, bs);
    SchedulerConfig c;
    c.max_context = 160;
    c.max_tokens_per_step = 48;
    c.max_seqs = 12;
    c.max_prefill_chunk = 32;
    c.preemption = cs.pre;
    c.ordering = cs.ord;
    c.swap_blocks = 64;
    c.starvation_steps = 40;
    c.vocab_size = kVocab;
    FakePrefixCache cache(alloc);
    double clock = 0;
    ContinuousBatcher b(alloc, c, cs.prefix ? cache.provider() : PrefixProvider{}, [&] { return clock; });
    SimulatedModel model(blocks, c.swap_blocks, bs, kVocab);
    std::mt19937_64 rng(seed);
    WorkloadShape s;
    s.count = cs.count;
    s.max_prompt = 100;
    s.max_new = 40;
    s.spread_steps = cs.count * 3;
    s.shared_prefix = cs.prefix ? 0.5 : 0.0;
    s.shared_len = 40;
    s.priorities = 4;
    Workload w = make_workload(rng, s, kVocab);
    INFO(describe(c, cs.prefix, cs.accept));

    Driver d(alloc, b, model, clock);
    d.max_accept = cs.accept;
    d.retire_finished = true;
    struct Live {
      double arrival;
      std::int64_t order, submit, priority, work;
    };
    std::map<RequestId, Live> live;
    std::map<RequestId, std::int64_t> bound;
    std::int64_t live_work = 0, order = 0, unserved = 0;
    const bool fcfs = std::holds_alternative<Fcfs>(cs.ord);
    const bool priority = std::holds_alternative<Priority>(cs.ord);
    d.on_submit = [&](const Request& r) {
      const std::int64_t work = std::int64_t(r.prompt.size()) + 2 * r.max_new_tokens + 1;
      live[r.id] = Live{r.arrival_time, order++, b.step(), r.priority, work};
      live_work += work;
      bound[r.id] = live_work;
    };
    d.on_finish = [&](RequestId id) {
      live_work -= live[id].work;
      live.erase(id);
    };
    d.on_plan = [&](const StepPlan& plan) {
      if (live.empty() || !(fcfs || priority)) return;
      // The first live request in service order, computed from the spec.
      auto key = [&](const Live& l) {
        const bool aged = fcfs || plan.step - l.submit >= c.starvation_steps;
        return std::make_tuple(aged ? 0 : 1, aged ? 0 : -l.priority, l.arrival, l.order);
      };
      auto first = live.begin();
      for (auto it = live.begin(); it != live.end(); ++it)
        if (key(it->second) < key(first->second)) first = it;
      const bool served = std::any_of(plan.entries.begin(), plan.entries.end(),
                                      [&](const PlanEntry& e) { return e.id == first->first; });
      unserved += !served;
      if (std::find(plan.preempted.begin(), plan.preempted.end(), first->first) != plan.preempted.end()) ++unserved;
    };
    d.run(w);
    CHECK(unserved == 0);
    CHECK(model.corrupt == 0);
    expect_solo_streams(w, d.outputs, c.max_context);
    const MetricsSummary m = b.metrics();
    CHECK(m.finished == cs.count);
    CHECK(m.preemptions > 50);
    if (fcfs) {
      std::int64_t over = 0;
      for (const auto& kv : d.finish_step) over += kv.second - d.submit_step[kv.first] > bound[kv.first];
      CHECK(over == 0);
    }
    if (cs.prefix) {
      CHECK(m.prefix_cached_tokens > 0);
      CHECK(cache.pinned() == 0);
      cache.evict(1 << 30);
    }
    CHECK(alloc.num_free_blocks() == blocks);
    CHECK(alloc.num_sequences() == 0);
    CHECK(b.swap_space().num_free_blocks() == c.swap_blocks);
  }
}

}  // namespace

TEST_CASE("ContinuousBatcher: soak, recompute / fcfs / prefix cache, 3000 requests") {
  soak({Recompute{}, Fcfs{}, true, 1, 3000, 100});
}
TEST_CASE("ContinuousBatcher: soak, swap / fcfs / ragged acceptance, 2000 requests") {
  soak({Swap{}, Fcfs{}, false, 2, 2000, 101});
}
TEST_CASE("ContinuousBatcher: soak, swap / priority / prefix cache, 2000 requests") {
  soak({Swap{}, Priority{}, true, 1, 2000, 102});
}
TEST_CASE("ContinuousBatcher: soak, recompute / prefix-aware / prefix cache, 1500 requests") {
  soak({Recompute{}, PrefixAware{}, true, 1, 1500, 103});
}

namespace {

// Runs one step with the simulated model and returns the ids in the plan.
std::vector<RequestId> step_ids(ContinuousBatcher& b, SimulatedModel& model, const PagedAllocator& alloc,
                                std::mt19937_64& rng) {
  const StepPlan& p = b.schedule();
  std::vector<RequestId> ids;
  for (const PlanEntry& e : p.entries) ids.push_back(e.id);
  b.commit(model.run(p, alloc, rng));
  return ids;
}

Request simple_request(RequestId id, std::vector<TokenId> prompt, std::int32_t max_new, std::int32_t priority = 0,
                       double arrival = -1.0) {
  Request r;
  r.id = id;
  r.prompt = std::move(prompt);
  r.max_new_tokens = max_new;
  r.priority = priority;
  r.arrival_time = arrival;
  return r;
}

}  // namespace

TEST_CASE("ContinuousBatcher: orderings pick FCFS, priority, or the longest cached prefix") {
  const std::int32_t bs = 4;
  std::mt19937_64 rng(9);
  const std::vector<TokenId> shared{1, 2, 3, 4, 5, 6, 7, 8};
  auto with_tail = [&](TokenId t) {
    std::vector<TokenId> p = shared;
    p.push_back(t);
    return p;
  };
  for (int ord = 0; ord < 3; ++ord) {
    PagedAllocator alloc(64, bs);
    FakePrefixCache cache(alloc);
    SchedulerConfig c;
    c.max_context = 64;
    c.max_seqs = 1;
    c.ordering = ord == 0 ? OrderingPolicy{Fcfs{}} : ord == 1 ? OrderingPolicy{Priority{}} : OrderingPolicy{PrefixAware{}};
    INFO(policy_name(c.ordering));
    double clock = 0;
    ContinuousBatcher b(alloc, c, cache.provider(), [&] { return clock; });
    SimulatedModel model(64, 0, bs, kVocab);
    // Warm the cache with the shared prefix.
    b.submit(simple_request(1, with_tail(9), 1));
    while (b.has_work()) step_ids(b, model, alloc, rng);
    REQUIRE(cache.size() == 2);
    // Three arrive together: 10 (oldest, uncached, low priority),
    // 11 (high priority, uncached), 12 (youngest, cached prefix).
    b.submit(simple_request(10, {40, 41, 42, 43, 44, 45, 46, 47, 48}, 2, 0, 1.0));
    b.submit(simple_request(11, {50, 51, 52}, 2, 5, 2.0));
    b.submit(simple_request(12, with_tail(33), 2, 0, 3.0));
    std::vector<RequestId> first_served;
    while (b.has_work()) {
      const auto ids = step_ids(b, model, alloc, rng);
      for (RequestId id : ids)
        if (std::find(first_served.begin(), first_served.end(), id) == first_served.end()) first_served.push_back(id);
    }
    const std::vector<RequestId> expect = ord == 0 ? std::vector<RequestId>{10, 11, 12}
                                          : ord == 1 ? std::vector<RequestId>{11, 10, 12}
                                                     : std::vector<RequestId>{12, 10, 11};
    CHECK(first_served == expect);
    cache.evict(100);
    CHECK(alloc.num_free_blocks() == 64);
  }
}

TEST_CASE("ContinuousBatcher: a higher priority arrival preempts, and aging bounds the wait of low priority") {
  const std::int32_t bs = 4;
  std::mt19937_64 rng(11);
  PagedAllocator alloc(64, bs);
  SchedulerConfig c;
  c.max_context = 64;
  c.max_seqs = 1;
  c.ordering = Priority{};
  c.starvation_steps = 20;
  double clock = 0;
  ContinuousBatcher b(alloc, c, {}, [&] { return clock; });
  SimulatedModel model(64, 0, bs, kVocab);
  b.submit(simple_request(1, {3, 4, 5}, 40, 0));
  CHECK(step_ids(b, model, alloc, rng) == std::vector<RequestId>{1});
  // A high-priority request takes the only slot: the running one is preempted.
  b.submit(simple_request(2, {6, 7}, 3, 9));
  const StepPlan& p = b.schedule();
  CHECK(p.preempted == std::vector<RequestId>{1});
  REQUIRE(p.entries.size() == 1);
  CHECK(p.entries[0].id == 2);
  b.commit(model.run(p, alloc, rng));
  CHECK(b.status(1) == RequestStatus::Waiting);
  CHECK(b.computed_tokens(1) == 0);  // recompute: its KV is gone
  // A stream of high-priority requests, one arriving every step: request 1
  // is served again once it has waited starvation_steps steps.
  RequestId next = 100;
  std::int64_t served_at = -1;
  for (int s = 0; s < 60 && served_at < 0; ++s) {
    b.submit(simple_request(next++, {8, 9}, 4, 9));
    const auto ids = step_ids(b, model, alloc, rng);
    if (std::find(ids.begin(), ids.end(), 1) != ids.end()) served_at = b.step();
  }
  CHECK(served_at > 0);
  CHECK(served_at <= 1 + c.starvation_steps + 1);
  CHECK(b.preemptions(1) == 1);
}

// The real prefix cache behind the hooks: the same solo streams, the cache's
// accounting holds after every step, and nothing leaks.
TEST_CASE("ContinuousBatcher: works with RadixPrefixCache through make_prefix_provider") {
  const std::vector<std::pair<PreemptionPolicy, OrderingPolicy>> cases{
      {Recompute{}, Fcfs{}}, {Swap{}, PrefixAware{}}, {NoEviction{}, Priority{}}};
  std::uint64_t seed = 300;
  for (const auto& cs : cases) {
    const std::int32_t bs = 4, blocks = 48;
    PagedAllocator alloc(blocks, bs);
    prefix::RadixPrefixCache cache(alloc);
    SchedulerConfig c;
    c.max_context = 64;
    c.max_tokens_per_step = 24;
    c.max_seqs = 6;
    c.preemption = cs.first;
    c.ordering = cs.second;
    c.swap_blocks = 32;
    double clock = 0;
    {
      ContinuousBatcher b(alloc, c, make_prefix_provider(cache), [&] { return clock; });
      SimulatedModel model(blocks, c.swap_blocks, bs, kVocab);
      std::mt19937_64 rng(seed++);
      WorkloadShape s;
      s.count = 150;
      s.max_prompt = 40;
      s.max_new = 20;
      s.spread_steps = 80;
      s.shared_prefix = 0.7;
      s.shared_len = 24;
      s.namespaces = 2;
      Workload w = make_workload(rng, s, kVocab);
      INFO(describe(c, true, 1));
      Driver d(alloc, b, model, clock);
      d.on_plan = [&](const StepPlan&) { cache.check_invariants(); };
      d.run(w);
      cache.check_invariants();
      expect_solo_streams(w, d.outputs, c.max_context);
      CHECK(model.corrupt == 0);
      CHECK(b.metrics().prefix_hit_rate > 0.02);  // shared prefixes were reused
      CHECK(cache.locked_blocks() == 0);
    }
    cache.evict(cache.evictable_blocks());
    CHECK(alloc.num_free_blocks() == blocks);
  }
}
