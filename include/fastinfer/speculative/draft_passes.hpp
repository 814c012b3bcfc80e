// DraftPasses: the forward passes of a drafter that several requests share
// (a head's trees drafted together, the Engine's batched draft model), as
// the passes a draft of k tokens or nodes needs. The head streams say what
// theirs are (FeatureStream::passes); the Engine's switch prices drafting
// by them (engine/spec_policy.hpp's SpecCandidate). Standard library only.
#pragma once

#include <algorithm>

namespace fastinfer::speculative {

struct DraftPasses {
  int commit = 0;  // passes committing the rows new since the last draft
  int levels = 0;  // a tree: one pass a level, at most this many; 0: a chain, one pass a draft

  // Passes a draft of k tokens (a chain) or k nodes (a tree, at most k deep) needs; none at k <= 0.
  int at(int k) const {
    if (k <= 0) return 0;
    return levels > 0 ? commit + std::min(levels, k) : k;
  }
};

}  // namespace fastinfer::speculative
