// EAGLE-2's dynamic draft tree: expansion picks the best nodes of a level by
// cumulative probability, reranking keeps exactly the `budget` best
// candidates, and what it returns is a tree (parents before children, every
// parent chosen) with the top-1 chain first. A property test over random
// probabilities and shapes, plus hand-made cases.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastinfer/core/philox.hpp"
#include "fastinfer/speculative/eagle_tree.hpp"

namespace {
namespace speculative = fastinfer::speculative;
}  // namespace

TEST_CASE("EAGLE tree: expansion by cumulative score, rerank to the budget, top-1 chain first") {
  speculative::DraftTreeBuilder b;
  const std::int32_t t1[] = {10, 11, 12};
  const float p1[] = {0.5f, 0.3f, 0.2f};
  b.add_children(-1, t1, p1, 3);
  CHECK(b.frontier(1, 2) == std::vector<int>{0, 1});
  const std::int32_t t2[] = {20, 21};
  const float p2a[] = {0.9f, 0.1f}, p2b[] = {0.8f, 0.2f};
  b.add_children(0, t2, p2a, 2);  // scores 0.45, 0.05
  b.add_children(1, t2, p2b, 2);  // scores 0.24, 0.06
  CHECK(b.frontier(2, 1) == std::vector<int>{3});
  std::vector<int> picked;
  // Budget 4: 0.5 (10), 0.45 (10-20), 0.3 (11), 0.24 (11-20).
  const auto tree = b.rerank(4, picked);
  CHECK(tree.tokens == std::vector<std::int32_t>{10, 20, 11, 20});
  CHECK(tree.parent == std::vector<int>{-1, 0, -1, 2});
  CHECK(picked == std::vector<int>{0, 3, 1, 5});
  CHECK(b.rerank(0, picked).size() == 0);
  CHECK(b.rerank(100, picked).size() == 7);
  CHECK_THROWS_AS(b.add_children(9, t2, p2a, 1), fastinfer::InvalidArgument);
  const float bad[] = {1.5f};
  CHECK_THROWS_AS(b.add_children(0, t2, bad, 1), fastinfer::InvalidArgument);
}

TEST_CASE("EAGLE tree property: within budget, a tree, the best-scored candidates, chain first") {
  std::uint64_t coin = 0;
  auto u = [&] { return fastinfer::uniform_float(77, 9, coin++); };
  for (int trial = 0; trial < 300; ++trial) {
    const int depth = 1 + int(u() * 7), top_k = 1 + int(u() * 5), budget = int(u() * 40);
    speculative::DraftTreeBuilder b;
    auto children = [&](int parent) {
      std::vector<float> p(static_cast<std::size_t>(top_k));
      float left = 1.0f;
      for (float& x : p) left -= (x = left * u());
      std::sort(p.begin(), p.end(), std::greater<float>());
      std::vector<std::int32_t> t(static_cast<std::size_t>(top_k));
      for (int i = 0; i < top_k; ++i) t[std::size_t(i)] = std::int32_t(i + 100 * trial);
      // Ties now and then: two children with the same probability.
      if (top_k > 1 && u() < 0.2f) p[1] = p[0];
      b.add_children(parent, t.data(), p.data(), top_k);
    };
    children(-1);
    for (int level = 2; level <= depth; ++level)
      for (int f : b.frontier(level - 1, top_k)) children(f);
    std::vector<int> picked;
    const speculative::TokenTree tree = b.rerank(budget, picked);
    INFO("trial " << trial << ": depth " << depth << ", top_k " << top_k << ", budget " << budget);
    REQUIRE(tree.size() == std::min(budget, b.size()));
    REQUIRE(int(picked.size()) == tree.size());
    CHECK_NOTHROW(tree.validate(1 << 20));  // parents are -1 or earlier nodes
    const auto& c = b.candidates();
    std::vector<char> chosen(c.size(), 0);
    for (int i : picked) chosen[std::size_t(i)] = 1;
    double worst_chosen = 2, best_left = -1;
    for (std::size_t i = 0; i < c.size(); ++i)
      (chosen[i] ? worst_chosen = std::min(worst_chosen, c[i].score) : best_left = std::max(best_left, c[i].score));
    CHECK(worst_chosen >= best_left);  // the budget best, whatever the ties
    for (int k = 0; k < tree.size(); ++k) {
      const auto& cand = c[std::size_t(picked[std::size_t(k)])];
      CHECK(tree.tokens[std::size_t(k)] == cand.token);
      const int p = tree.parent[std::size_t(k)];
      CHECK((p < 0 ? -1 : picked[std::size_t(p)]) == cand.parent);
      CHECK(cand.depth <= depth);
    }
    // The first nodes are a chain from the root, each the best chosen child.
    int at = -1;
    for (int k = 0; k < tree.size() && tree.parent[std::size_t(k)] == at; ++k) {
      for (int j = 0; j < tree.size(); ++j)
        if (tree.parent[std::size_t(j)] == at) CHECK(c[std::size_t(picked[std::size_t(j)])].score <= c[std::size_t(picked[std::size_t(k)])].score);
      at = k;
    }
    if (tree.size() > 0) CHECK(tree.parent[0] == -1);
    // Ranks: a permutation rising along every path, and the tree of any
    // smaller budget k is exactly the nodes of rank < k (what the Engine's
    // switch reads from one verified tree: BudgetAcceptance).
    std::vector<int> ranks, small_picked;
    b.rerank(budget, picked, &ranks);
    REQUIRE(int(ranks.size()) == tree.size());
    std::vector<int> sorted_ranks = ranks;
    std::sort(sorted_ranks.begin(), sorted_ranks.end());
    for (int k = 0; k < tree.size(); ++k) {
      CHECK(sorted_ranks[std::size_t(k)] == k);
      const int p = tree.parent[std::size_t(k)];
      if (p >= 0) CHECK(ranks[std::size_t(p)] < ranks[std::size_t(k)]);
    }
    const int k = int(u() * float(tree.size() + 1));
    b.rerank(k, small_picked);
    std::vector<int> want;
    for (int n = 0; n < tree.size(); ++n)
      if (ranks[std::size_t(n)] < k) want.push_back(picked[std::size_t(n)]);
    std::sort(want.begin(), want.end());
    std::sort(small_picked.begin(), small_picked.end());
    CHECK(small_picked == want);
  }
}

TEST_CASE("top_tokens: the most probable tokens, ties to the lower id, probabilities of the softmax") {
  const float logits[] = {0.0f, 2.0f, 1.0f, 2.0f, -1.0f};
  std::int32_t t[3];
  float p[3];
  speculative::top_tokens(logits, 5, 3, t, p);
  CHECK(t[0] == 1);
  CHECK(t[1] == 3);
  CHECK(t[2] == 2);
  double z = 0;
  for (float l : logits) z += std::exp(double(l));
  CHECK(p[0] == Approx(std::exp(2.0) / z));
  CHECK(p[2] == Approx(std::exp(1.0) / z));
  // Against a full sort on random rows with many ties (values on a coarse grid).
  std::uint64_t coin = 0;
  for (int trial = 0; trial < 200; ++trial) {
    const int vocab = 1 + trial % 37, n = 1 + trial % 7;
    std::vector<float> row(static_cast<std::size_t>(vocab));
    for (float& x : row) x = float(int(8 * fastinfer::uniform_float(5, 1, coin++))) - 3.0f;
    std::vector<std::int32_t> ref(row.size());
    for (int i = 0; i < vocab; ++i) ref[std::size_t(i)] = i;
    std::stable_sort(ref.begin(), ref.end(), [&](std::int32_t a, std::int32_t b) { return row[std::size_t(a)] > row[std::size_t(b)]; });
    std::vector<std::int32_t> got(static_cast<std::size_t>(n));
    std::vector<float> probs(static_cast<std::size_t>(n));
    speculative::top_tokens(row.data(), vocab, n, got.data(), probs.data());
    INFO("trial " << trial);
    for (int r = 0; r < std::min(n, vocab); ++r) CHECK(got[std::size_t(r)] == ref[std::size_t(r)]);
  }
}
