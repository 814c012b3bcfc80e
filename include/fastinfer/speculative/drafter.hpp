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

namespace fastinfer::speculative {

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
  // Optional token tree over `tokens` (several candidate continuations
  // sharing prefixes, verified in one pass with a tree mask): parent[i] is
  // the index of token i's parent, -1 when it follows the context directly;
  // parents come before children. Empty: `tokens` is a chain. A tree needs a
  // target that takes a custom mask (ModelTarget does); callers that verify
  // chains only can use first_chain().
  std::vector<int> parent;
  // Optional layout of `extra` (lookahead's 2-D window): extra_depth[i] >= 1
  // is extra i's position after the last context token, extra_mask
  // [extra.size()]^2 row-major says which extras extra i attends to (itself
  // included; only earlier ones). Each extra always sees the context and
  // never the drafts. Empty: the extras follow the drafts causally.
  std::vector<int> extra_depth;
  std::vector<std::uint8_t> extra_mask;

  bool is_tree() const { return !parent.empty(); }
  bool has_extra_layout() const { return !extra_depth.empty(); }
  // The path through every node's first child: the tree read as one chain.
  std::vector<std::int32_t> first_chain() const {
    if (parent.empty()) return tokens;
    std::vector<std::int32_t> out;
    int node = -1;
    for (std::size_t i = 0; i < tokens.size(); ++i)
      if (parent[i] == node) {
        out.push_back(tokens[i]);
        node = int(i);
      }
    return out;
  }

  void clear() {
    tokens.clear();
    probs.clear();
    extra.clear();
    parent.clear();
    extra_depth.clear();
    extra_mask.clear();
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
  // Tokens propose() would feed before its first draft to catch up with
  // `context`: a draft model's KV gap after the steps it sat out. Dynamic
  // speculation prices a probe with it (adaptive_draft_length.hpp). 0 for a
  // drafter whose price does not depend on what happened before.
  virtual std::int64_t catch_up_tokens(const std::vector<std::int32_t>& context) const {
    (void)context;
    return 0;
  }
  // After verification: `context` now holds the emitted tokens, `accepted` of
  // the proposal's drafts were kept (for a tree: the accepted path's length); extra_logits holds the rows [n_extra][vocab]
  // of the first n_extra extra tokens (nullptr when none were fed).
  virtual void observe(const std::vector<std::int32_t>& context, int accepted, const float* extra_logits,
                       int n_extra) {
    (void)context;
    (void)accepted;
    (void)extra_logits;
    (void)n_extra;
  }
};

}  // namespace fastinfer::speculative
