// MTP generation at batch 1: EAGLE's loop (eagle_generate.hpp: EAGLE-2's
// dynamic tree, one verify pass through the tree machinery, greedy, exact
// or coupled) with MtpHeads drafting, tree level d from module d. The
// verifier decides every token, so greedy output is plain greedy's and the
// coupled rule's is plain sampling's, whatever the modules compute.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "fastinfer/model/generate.hpp"
#include "fastinfer/speculative/eagle_generate.hpp"
#include "fastinfer/speculative/mtp_heads.hpp"

namespace fastinfer::speculative {

// The tree (depth, top_k, budget), the rule, dynamic speculation and the
// profile, as EAGLE's; the loop caps the depth at the modules' count
// (max_tree_depth).
using MtpOptions = EagleOptions;

template <typename Model, typename OnToken>
SpeculativeResult mtp_generate(Model& model, MtpHeads& heads, const std::vector<std::int32_t>& prompt,
                               const GenerationParams& params, const MtpOptions& options, OnToken&& on_token) {
  heads.check_compatible(model.config());
  return feature_draft_generate(model, heads, prompt, params, options, std::forward<OnToken>(on_token));
}

template <typename Model>
SpeculativeResult mtp_generate(Model& model, MtpHeads& heads, const std::vector<std::int32_t>& prompt,
                               const GenerationParams& params, const MtpOptions& options = {}) {
  return mtp_generate(model, heads, prompt, params, options, [](std::int32_t) {});
}

}  // namespace fastinfer::speculative
