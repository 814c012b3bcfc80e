// The drafter interface of speculative decoding: something that guesses the
// next few tokens cheaply. The generation loop (speculative_generate.hpp)
// asks it for up to k tokens, verifies them with one target forward pass and
// tells it what was kept. Drafters: DraftModel (a second, cheaper model),
// PromptLookup (n-gram match in the text so far), LookaheadPool (Jacobi
// lookahead decoding's n-gram pool).
//
// A virtual interface rather than a tag policy: the drafter is chosen at run
// time (fastinfer-generate --spec) and is called once per verification, far
// from any inner loop.
#pragma once

#include <cstdint>
#include <vector>

namespace fastinfer::spec {

struct DraftProposal {
  // Guesses for the positions right after the context, in order.
  std::vector<std::int32_t> tokens;
  // [tokens.size()][vocab]: the filtered distributions the tokens were drawn
  // from (exact rejection sampling needs them); empty when the drafter is
  // deterministic (then q is one-hot at each token).
  std::vector<float> probs;
  // Tokens the loop appends after the drafts in the same target forward pass
  // (lookahead's Jacobi window); their logits rows come back in observe().
  std::vector<std::int32_t> extra;

  void clear() {
    tokens.clear();
    probs.clear();
    extra.clear();
  }
};

class Drafter {
 public:
  virtual ~Drafter() = default;
  // A new request starts with `prompt`.
  virtual void begin(const std::vector<std::int32_t>& prompt) { (void)prompt; }
  // Up to k guesses for the tokens after `context` (prompt + emitted so far);
  // `token_index` is the request index of the first guess (for Philox coins).
  virtual void propose(const std::vector<std::int32_t>& context, int k, std::uint64_t token_index,
                       DraftProposal& out) = 0;
  // After verification: `context` now holds the emitted tokens, `accepted` of
  // the proposal's drafts were kept; extra_logits holds the rows [n_extra][vocab]
  // of the first n_extra extra tokens (nullptr when none were fed).
  virtual void observe(const std::vector<std::int32_t>& context, int accepted, const float* extra_logits,
                       int n_extra) {
    (void)context;
    (void)accepted;
    (void)extra_logits;
    (void)n_extra;
  }
};

}  // namespace fastinfer::spec
