// The scheduler's two policy axes, each a closed set of tag types held in a
// std::variant (a runtime knob in SchedulerConfig, no virtual classes).
//
// Preemption: what happens when running sequences need blocks the pool no
// longer has.
//   Recompute  : release the victim's blocks; it re-prefills prompt +
//                generated tokens when readmitted (cheap memory, costs compute).
//   Swap       : copy the victim's blocks to a host swap space and back
//                later; falls back to Recompute when the swap space is full.
//   NoEviction : never preempt; admit a request only when blocks for its
//                whole life (prompt + max_new_tokens) can be reserved.
// Ordering: which waiting request is admitted next.
//   Fcfs       : arrival time, then submission order.
//   Priority   : higher Request::priority first, then arrival.
//   PrefixAware: longest cached prefix first (among a lookahead window),
//                then arrival.
// Priority and PrefixAware age: a request waiting longer than
// SchedulerConfig::starvation_steps steps goes ahead of every younger one,
// which bounds its wait (docs/batching.md).
#pragma once

#include <string_view>
#include <type_traits>
#include <variant>

namespace fastinfer::sched {

struct Recompute {};
struct Swap {};
struct NoEviction {};
using PreemptionPolicy = std::variant<Recompute, Swap, NoEviction>;

struct Fcfs {};
struct Priority {};
struct PrefixAware {};
using OrderingPolicy = std::variant<Fcfs, Priority, PrefixAware>;

namespace detail {
template <typename T>
inline constexpr bool dependent_false = false;
}

// What the batcher needs to know about a preemption policy.
template <typename P>
struct PreemptionTraits {
  static_assert(detail::dependent_false<P>,
                "not a preemption policy: use sched::Recompute, sched::Swap or sched::NoEviction");
};
template <>
struct PreemptionTraits<Recompute> {
  static constexpr bool preempts = true;
  static constexpr bool swaps = false;
  static constexpr bool reserves_to_completion = false;
  static constexpr std::string_view name = "recompute";
};
template <>
struct PreemptionTraits<Swap> {
  static constexpr bool preempts = true;
  static constexpr bool swaps = true;
  static constexpr bool reserves_to_completion = false;
  static constexpr std::string_view name = "swap";
};
template <>
struct PreemptionTraits<NoEviction> {
  static constexpr bool preempts = false;
  static constexpr bool swaps = false;
  static constexpr bool reserves_to_completion = true;
  static constexpr std::string_view name = "no_eviction";
};

template <typename P>
struct OrderingTraits {
  static_assert(detail::dependent_false<P>,
                "not an ordering policy: use sched::Fcfs, sched::Priority or sched::PrefixAware");
};
template <>
struct OrderingTraits<Fcfs> {
  static constexpr bool uses_priority = false;
  static constexpr bool prefix_aware = false;
  static constexpr std::string_view name = "fcfs";
};
template <>
struct OrderingTraits<Priority> {
  static constexpr bool uses_priority = true;
  static constexpr bool prefix_aware = false;
  static constexpr std::string_view name = "priority";
};
template <>
struct OrderingTraits<PrefixAware> {
  static constexpr bool uses_priority = true;
  static constexpr bool prefix_aware = true;
  static constexpr std::string_view name = "prefix_aware";
};

inline std::string_view policy_name(const PreemptionPolicy& p) {
  return std::visit([](auto t) { return PreemptionTraits<decltype(t)>::name; }, p);
}
inline std::string_view policy_name(const OrderingPolicy& p) {
  return std::visit([](auto t) { return OrderingTraits<decltype(t)>::name; }, p);
}

}  // namespace fastinfer::sched
