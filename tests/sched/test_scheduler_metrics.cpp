#include <catch2/catch.hpp>

#include <vector>

#include "fastinfer/sched/scheduler_metrics.hpp"
#include "fastinfer/sched/scheduler_policy.hpp"

using namespace fastinfer;
using namespace fastinfer::sched;

TEST_CASE("percentile: nearest rank") {
  CHECK(percentile({}, 0.5) == 0.0);
  CHECK(percentile({7.0}, 0.99) == 7.0);
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(double(i));  // unsorted on purpose
  CHECK(percentile(v, 0.5) == 50.0);
  CHECK(percentile(v, 0.99) == 99.0);
  CHECK(percentile(v, 1.0) == 100.0);
  CHECK(percentile(v, 0.0) == 1.0);
  CHECK(percentile({1.0, 2.0, 3.0}, 0.5) == 2.0);
  CHECK(percentile({1.0, 2.0}, 0.5) == 1.0);
  CHECK_THROWS_AS(percentile(v, 1.5), InvalidArgument);
}

TEST_CASE("SchedulerMetrics: aggregates latency, throughput, utilisation, hits and preemptions") {
  SchedulerMetrics m;
  RequestTiming a;
  a.arrival = 0.0;
  a.first_token = 0.5;
  a.token_times = {0.5, 0.7, 1.0};
  a.finish = 1.0;
  RequestTiming b;
  b.arrival = 1.0;
  b.first_token = 3.0;
  b.token_times = {3.0, 3.0, 4.0};  // two tokens in one step: a gap of 0
  b.finish = 4.0;
  m.on_finish(a, 10, 3);
  m.on_finish(b, 5, 3);
  m.on_cancel();
  m.on_step(2, 8);
  m.on_step(6, 8);
  m.on_admit(20, 0);
  m.on_admit(20, 12);
  m.on_preempt(false);
  m.on_preempt(true);
  m.on_preempt(true);
  const MetricsSummary s = m.summary();
  CHECK(s.finished == 2);
  CHECK(s.cancelled == 1);
  CHECK(s.ttft_p50 == 0.5);
  CHECK(s.ttft_p99 == 2.0);
  CHECK(s.ttft_mean == Approx(1.25));
  // ITL samples {0.2, 0.3, 0.0, 1.0}.
  CHECK(s.itl_p50 == Approx(0.2));
  CHECK(s.itl_p99 == Approx(1.0));
  CHECK(s.e2e_p50 == 1.0);
  CHECK(s.e2e_p99 == 3.0);
  CHECK(s.throughput_tok_s == Approx(21.0 / 4.0));
  CHECK(s.output_tok_s == Approx(6.0 / 4.0));
  CHECK(s.kv_utilisation_mean == Approx(0.5));
  CHECK(s.kv_utilisation_peak == Approx(0.75));
  CHECK(s.prefix_hit_rate == Approx(12.0 / 40.0));
  CHECK(s.preemptions == 3);
  CHECK(s.preemptions_swap == 2);
  CHECK(s.preemptions_recompute == 1);
  CHECK(s.steps == 2);
}

TEST_CASE("scheduler policies: closed sets with names and traits") {
  CHECK(policy_name(PreemptionPolicy{Swap{}}) == "swap");
  CHECK(policy_name(PreemptionPolicy{}) == "recompute");
  CHECK(policy_name(OrderingPolicy{PrefixAware{}}) == "prefix_aware");
  STATIC_REQUIRE(PreemptionTraits<NoEviction>::reserves_to_completion);
  STATIC_REQUIRE(!PreemptionTraits<NoEviction>::preempts);
  STATIC_REQUIRE(PreemptionTraits<Swap>::swaps);
  STATIC_REQUIRE(OrderingTraits<Priority>::uses_priority);
  STATIC_REQUIRE(!OrderingTraits<Fcfs>::uses_priority);
}
