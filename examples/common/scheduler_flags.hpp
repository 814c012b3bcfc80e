// Scheduler command-line words (fastinfer-serve-bench --preemption): the
// names are the library's own (sched::PreemptionTraits<P>::name, what
// policy_name prints), so a new policy is a new choice and a flag can never
// spell one differently from the JSON the program writes.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/sched/scheduler_policy.hpp"

namespace fastinfer::examples {

namespace detail {
template <std::size_t... I>
std::vector<sched::PreemptionPolicy> every_preemption(std::index_sequence<I...>) {
  return {sched::PreemptionPolicy(std::in_place_index<I>)...};
}
}  // namespace detail

// Every preemption policy, in declaration order.
inline std::vector<sched::PreemptionPolicy> every_preemption() {
  return detail::every_preemption(std::make_index_sequence<std::variant_size_v<sched::PreemptionPolicy>>());
}

// --preemption choices: every policy's name.
inline std::vector<std::string> preemption_choices() {
  std::vector<std::string> out;
  for (const auto& p : every_preemption()) out.emplace_back(sched::policy_name(p));
  return out;
}

// A preemption_choices() name -> the policy; InvalidArgument naming the text.
inline sched::PreemptionPolicy parse_preemption(std::string_view name) {
  for (const auto& p : every_preemption())
    if (sched::policy_name(p) == name) return p;
  throw_error<InvalidArgument>("unknown preemption policy '", name, "'");
}

}  // namespace fastinfer::examples
