// One verification forward pass for a token tree and an optional side window:
//
//   [pending tokens (causal) | tree nodes | extra tokens]
//
// pending  the accepted tokens whose KV is not yet right, the last of them
//          the root (the last emitted token); positions start, start + 1, ..
// tree     node i sees every pending token and its own ancestors; its RoPE
//          position is root + depth (siblings share a position)
// extra    a drafter's side branch (lookahead decoding's 2-D Jacobi window):
//          each sees every pending token and the extras its own mask row
//          names; position root + extra_depth[i]; never sees a tree node,
//          and no tree node sees it, so the verification rows stay blind to
//          it (exactness never depends on the window)
//
// The KV slot of batch row r is start + r (ForwardBatch's rule), so after
// verification the accepted path's KV is in place only for nodes with
// path[j] == j (a prefix of node order); the rest is recomputed as pending
// tokens at the front of the next pass (see medusa_tree.hpp for why
// recomputation rather than moving entries). kept_in_place() counts them.
//
// Shared by the drafters' tree verification (speculative_generate.hpp) and
// usable by Medusa's loop (medusa_tree.hpp builds the same layout without
// extras).
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/model/forward_batch.hpp"
#include "fastinfer/speculative/speculative_verifier.hpp"

namespace fastinfer::speculative {

// 1-based depth of every node (parents come before children).
inline std::vector<int> tree_depths(const TokenTree& tree) {
  std::vector<int> d(tree.tokens.size());
  for (std::size_t i = 0; i < d.size(); ++i) {
    const int p = tree.parent[i];
    FASTINFER_CHECK(p >= -1 && p < int(i), InvalidArgument, "tree node ", i, " has parent ", p,
                    " (must be -1 or an earlier node)");
    d[i] = p < 0 ? 1 : d[std::size_t(p)] + 1;
  }
  return d;
}

// Nodes per depth: out[d] = nodes at depth d + 1; returns the tree's depth.
inline int tree_depth_counts(const TokenTree& tree, std::vector<std::int32_t>& out) {
  out.clear();
  for (int d : tree_depths(tree)) {
    if (int(out.size()) < d) out.resize(std::size_t(d), 0);
    ++out[std::size_t(d - 1)];
  }
  return int(out.size());
}

// Adds the path tokens[0..n) below the root, sharing existing prefixes (a
// trie): candidates that agree on their first tokens cost one node there.
inline void add_tree_path(TokenTree& tree, const std::int32_t* tokens, int n) {
  int node = -1;
  for (int j = 0; j < n; ++j) {
    int next = -1;
    for (int i = 0; i < tree.size() && next < 0; ++i)
      if (tree.parent[std::size_t(i)] == node && tree.tokens[std::size_t(i)] == tokens[j]) next = i;
    if (next < 0) {
      tree.tokens.push_back(tokens[j]);
      tree.parent.push_back(node);
      next = tree.size() - 1;
    }
    node = next;
  }
}

// Keeps only the nodes at depth <= max_depth and the first max_nodes of
// those (a prefix in node order is still a tree: parents come first).
inline void trim_tree(TokenTree& tree, int max_depth, int max_nodes) {
  const std::vector<int> depth = tree_depths(tree);
  std::vector<int> remap(depth.size(), -1);
  TokenTree out;
  for (std::size_t i = 0; i < depth.size() && out.size() < max_nodes; ++i) {
    if (depth[i] > max_depth) continue;
    const int p = tree.parent[i];
    remap[i] = out.size();
    out.tokens.push_back(tree.tokens[i]);
    out.parent.push_back(p < 0 ? -1 : remap[std::size_t(p)]);
  }
  tree = std::move(out);
}

// Leading accepted nodes already at their final KV slot.
inline int kept_in_place(const std::vector<int>& path) {
  int n = 0;
  while (n < int(path.size()) && path[std::size_t(n)] == n) ++n;
  return n;
}

// One entry's rows [pending tokens | tree nodes | later rows] as a
// ForwardBatch describes them (a tree entry inside a ragged batch: the
// Engine's): writes the RoPE positions of the pending tokens and the nodes
// (positions[0 .. n_pending + tree.size())) and, in the entry's row-major
// mask block of side `side` (>= n_pending + tree.size(), zeroed by the
// caller), that every row sees the pending tokens up to its own and a node
// its ancestors and itself. Later rows (extras) get only the pending
// columns. An empty tree is a causal entry. depth: tree_depths(tree).
inline void tree_entry_layout(std::int64_t start, int n_pending, const TokenTree& tree,
                              const std::vector<int>& depth, std::int64_t* positions, std::uint8_t* mask,
                              int side) {
  const int t = tree.size();
  FASTINFER_CHECK(n_pending >= 1 && side >= n_pending + t && int(depth.size()) == t, InvalidArgument,
                  "tree layout: ", n_pending, " pending tokens and ", t, " nodes in a block of side ", side);
  const std::int64_t root = start + n_pending - 1;
  for (int i = 0; i < n_pending; ++i) positions[i] = start + i;
  for (int i = 0; i < t; ++i) positions[n_pending + i] = root + depth[std::size_t(i)];
  auto m = [&](int r, int c) -> std::uint8_t& {
    return mask[std::size_t(r) * std::size_t(side) + std::size_t(c)];
  };
  for (int r = 0; r < side; ++r)
    for (int c = 0; c < std::min(r + 1, n_pending); ++c) m(r, c) = 1;
  for (int i = 0; i < t; ++i)
    for (int a = i; a >= 0; a = tree.parent[std::size_t(a)]) m(n_pending + i, n_pending + a) = 1;
}

// The extras' part of an entry laid out by tree_entry_layout: extra e is
// row x0 + e of the entry's mask block (side `side`), at RoPE position
// root + extra_depth[e], and sees the earlier extras its row of extra_mask
// ([extra_stride]^2 row-major; only the top-left n_extra block is read)
// names, besides the pending columns tree_entry_layout gave it.
inline void extra_entry_layout(std::int64_t root, int x0, const int* extra_depth,
                               const std::uint8_t* extra_mask, int n_extra, int extra_stride,
                               std::int64_t* positions, std::uint8_t* mask, int side) {
  FASTINFER_CHECK(n_extra >= 0 && n_extra <= extra_stride && x0 >= 1 && x0 + n_extra <= side, InvalidArgument,
                  "extra layout: ", n_extra, " extra tokens (mask stride ", extra_stride, ") from row ", x0,
                  " in a block of side ", side);
  for (int e = 0; e < n_extra; ++e) {
    FASTINFER_CHECK(extra_depth[e] >= 1, InvalidArgument, "extra token ", e, " has depth ", extra_depth[e],
                    " (must be >= 1: it comes after the root)");
    positions[x0 + e] = root + extra_depth[e];
    for (int f = 0; f < n_extra; ++f)
      if (extra_mask[std::size_t(e) * std::size_t(extra_stride) + std::size_t(f)]) {
        FASTINFER_CHECK(f <= e, InvalidArgument, "extra token ", e, " may not see the later extra ", f);
        mask[std::size_t(x0 + e) * std::size_t(side) + std::size_t(x0 + f)] = 1;
      }
  }
}

// Fills `batch` for one sequence. extra_mask is [n_extra_full][n_extra_full]
// row-major with n_extra_full = extra_stride; only its top-left
// n_extra x n_extra block is used, so a prefix of the extras may be fed
// (their masks must only name earlier extras for that to stay consistent).
// Without extras it is [pending | tree] (Medusa's, EAGLE's and MTP's step).
inline void build_tree_batch(ForwardBatch& batch, SeqId seq, const std::int32_t* pending, int n_pending,
                             std::int64_t start, const TokenTree& tree, const std::int32_t* extra = nullptr,
                             const int* extra_depth = nullptr, const std::uint8_t* extra_mask = nullptr,
                             int n_extra = 0, int extra_stride = 0) {
  FASTINFER_CHECK(n_pending >= 1, InvalidArgument, "a tree verification needs the root token pending, got ",
                  n_pending, " pending tokens");
  FASTINFER_CHECK(n_extra >= 0 && n_extra <= extra_stride, InvalidArgument, "tree batch: ", n_extra,
                  " extra tokens with a mask of stride ", extra_stride);
  const std::vector<int> depth = tree_depths(tree);
  const int t = tree.size(), n = n_pending + t + n_extra;
  batch.clear();
  batch.add(seq, pending, n_pending, start);
  batch.tokens.insert(batch.tokens.end(), tree.tokens.begin(), tree.tokens.end());
  if (n_extra > 0) batch.tokens.insert(batch.tokens.end(), extra, extra + n_extra);
  batch.qo_indptr.back() = std::int32_t(batch.tokens.size());
  batch.logits = LogitsRows::All;
  const std::int64_t root = start + n_pending - 1;
  batch.positions.resize(std::size_t(n));
  batch.mask.assign(std::size_t(n) * std::size_t(n), 0);
  tree_entry_layout(start, n_pending, tree, depth, batch.positions.data(), batch.mask.data(), n);
  extra_entry_layout(root, n_pending + t, extra_depth, extra_mask, n_extra, extra_stride,
                     batch.positions.data(), batch.mask.data(), n);
}

}  // namespace fastinfer::speculative
