// The drafters on their own: prompt lookup's n-gram matching (one candidate
// or a trie of all), the lookahead pool's n-gram bookkeeping, its 2-D window
// mask (against the paper's description as a set) and Jacobi update, the
// tree verification batch, and the draft model's KV bookkeeping after
// rejections (its drafts equal a fresh model's).
#include <catch2/catch.hpp>

#include <algorithm>
#include <deque>
#include <set>
#include <utility>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/speculative/draft_model.hpp"
#include "fastinfer/speculative/lookahead_pool.hpp"
#include "fastinfer/speculative/prompt_lookup.hpp"
#include "fastinfer/speculative/tree_batch.hpp"

namespace speculative = fastinfer::speculative;
using Tokens = std::vector<std::int32_t>;

TEST_CASE("prompt lookup: longest n-gram first, most recent occurrence, up to k tokens") {
  speculative::PromptLookup lookup({3, 1});
  // "5 6 7" occurred at 0 (followed by 8 9) and the 1-gram "7" later at 6 (followed by 2).
  const Tokens ctx = {5, 6, 7, 8, 9, 1, 7, 2, 5, 6, 7};
  CHECK(lookup.lookup(ctx, 2) == Tokens{8, 9});
  // Past the end of the text it copies its own drafts: 8 9 1 7 2 5 6 7, then 8 9 again.
  CHECK(lookup.lookup(ctx, 10) == Tokens{8, 9, 1, 7, 2, 5, 6, 7, 8, 9});
  CHECK(lookup.lookup({4, 4, 4}, 5) == Tokens{4, 4, 4, 4, 4});  // a period-1 loop drafts all k
  // Only a 1-gram matches: the most recent earlier 7 (index 6).
  const Tokens ctx2 = {3, 7, 4, 0, 7, 2, 9, 7};
  CHECK(lookup.lookup(ctx2, 3) == Tokens{2, 9, 7});
  CHECK(lookup.lookup({1, 2, 3}, 4).empty());  // no repeat, nothing proposed
  CHECK(lookup.lookup(ctx, 0).empty());
  speculative::PromptLookup only_bigrams({2, 2});
  CHECK(only_bigrams.lookup(ctx2, 3).empty());
  CHECK_THROWS_AS(speculative::PromptLookup({1, 2}), fastinfer::InvalidArgument);
}

TEST_CASE("lookahead pool: G newest distinct continuations per first token") {
  speculative::LookaheadPool pool({3, 3, 2}, 16);
  const std::int32_t a[] = {1, 2, 3}, b[] = {1, 4, 5}, c[] = {1, 6, 7};
  pool.add_ngram(a, 3);
  pool.add_ngram(b, 3);
  pool.add_ngram(a, 3);  // a again: moves to the front, no duplicate
  CHECK(pool.continuations(1).size() == 2);
  CHECK(pool.continuations(1).front() == Tokens{2, 3});
  pool.add_ngram(c, 3);  // G = 2: the oldest (b) goes
  CHECK(pool.continuations(1).size() == 2);
  CHECK(pool.continuations(1)[0] == Tokens{6, 7});
  CHECK(pool.continuations(1)[1] == Tokens{2, 3});
  CHECK(pool.continuations(9).empty());
  CHECK_THROWS_AS(speculative::LookaheadPool({0, 3, 2}, 16), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(speculative::LookaheadPool({3, 1, 2}, 16), fastinfer::InvalidArgument);
}

TEST_CASE("lookahead window mask: each token sees level 0 up to its column, then its own column") {
  // The paper's Figure, written as a set: token (level j, column i) sees
  // {(0, c) : c <= i} and {(l, i) : 1 <= l <= j}; nothing else of the window.
  for (int w = 1; w <= 6; ++w)
    for (int levels = 1; levels <= 5; ++levels) {
      std::vector<int> depth;
      std::vector<std::uint8_t> mask;
      speculative::LookaheadPool::window_layout(w, levels, depth, mask);
      const int n = w * levels;
      REQUIRE(int(depth.size()) == n);
      REQUIRE(int(mask.size()) == n * n);
      for (int j = 0; j < levels; ++j)
        for (int i = 0; i < w; ++i) {
          const int e = j * w + i;  // fed level-major
          INFO("W " << w << " levels " << levels << " level " << j << " column " << i);
          CHECK(depth[std::size_t(e)] == i + j + 1);
          std::set<std::pair<int, int>> expected, seen;
          for (int c = 0; c <= i; ++c) expected.insert({0, c});
          for (int l = 1; l <= j; ++l) expected.insert({l, i});
          std::set<int> depths_seen;
          for (int f = 0; f < n; ++f)
            if (mask[std::size_t(e) * std::size_t(n) + std::size_t(f)]) {
              seen.insert({f / w, f % w});
              CHECK(depths_seen.insert(depth[std::size_t(f)]).second);  // one token per position
            }
          CHECK(seen == expected);
          // ... and those positions are exactly root + 1 .. its own: a sequence.
          CHECK(int(depths_seen.size()) == depth[std::size_t(e)]);
          CHECK(*depths_seen.rbegin() == depth[std::size_t(e)]);
        }
    }
}

TEST_CASE("tree batch: pending causal, nodes see ancestors, extras see their mask, nobody sees across") {
  speculative::TokenTree tree;
  const std::int32_t a[] = {10, 11, 12}, b[] = {10, 13}, c[] = {14};
  speculative::add_tree_path(tree, a, 3);
  speculative::add_tree_path(tree, b, 2);  // shares node 10
  speculative::add_tree_path(tree, c, 1);
  speculative::add_tree_path(tree, a, 2);  // already there
  CHECK(tree.tokens == Tokens{10, 11, 12, 13, 14});
  CHECK(tree.parent == std::vector<int>{-1, 0, 1, 0, -1});
  CHECK(speculative::tree_depths(tree) == std::vector<int>{1, 2, 3, 2, 1});
  const Tokens pending = {7, 8};
  const Tokens extra = {20, 21, 22};
  const std::vector<int> extra_depth = {1, 2, 2};
  const std::vector<std::uint8_t> extra_mask = {1, 0, 0, 1, 1, 0, 1, 0, 1};
  fastinfer::ForwardBatch batch;
  speculative::build_tree_batch(batch, 3, pending.data(), 2, 40, tree, extra.data(), extra_depth.data(), extra_mask.data(), 3,
                         3);
  const int n = 2 + 5 + 3;
  REQUIRE(batch.rows() == n);
  CHECK(batch.tokens == Tokens{7, 8, 10, 11, 12, 13, 14, 20, 21, 22});
  CHECK(batch.start_pos == std::vector<std::int64_t>{40});
  CHECK(batch.positions == std::vector<std::int64_t>{40, 41, 42, 43, 44, 43, 42, 42, 43, 43});
  auto ancestor = [&](int x, int y) {  // node y is x or an ancestor of x
    for (int p = x; p >= 0; p = tree.parent[std::size_t(p)])
      if (p == y) return true;
    return false;
  };
  for (int r = 0; r < n; ++r)
    for (int col = 0; col < n; ++col) {
      bool want;
      if (col < 2) want = r >= col;  // pending: causal, seen by everyone after
      else if (r < 2) want = false;
      else if (r < 7) want = col < 7 && ancestor(r - 2, col - 2);
      else want = col >= 7 && extra_mask[std::size_t(r - 7) * 3 + std::size_t(col - 7)];
      INFO("row " << r << " column " << col);
      CHECK(bool(batch.mask[std::size_t(r) * n + std::size_t(col)]) == want);
    }
  // A prefix of the extras uses the top-left block of their mask.
  speculative::build_tree_batch(batch, 3, pending.data(), 2, 40, tree, extra.data(), extra_depth.data(), extra_mask.data(), 2,
                         3);
  CHECK(batch.rows() == n - 1);
  CHECK(batch.mask.size() == std::size_t(n - 1) * std::size_t(n - 1));
  // trim_tree: depth and node budget, still a tree.
  speculative::TokenTree t2 = tree;
  speculative::trim_tree(t2, 2, 10);
  CHECK(t2.tokens == Tokens{10, 11, 13, 14});
  CHECK(t2.parent == std::vector<int>{-1, 0, 0, -1});
  speculative::trim_tree(t2, 2, 2);
  CHECK(t2.tokens == Tokens{10, 11});
  CHECK(speculative::kept_in_place({0, 1, 3}) == 2);
  CHECK(speculative::kept_in_place({3, 4}) == 0);
  CHECK_THROWS_AS(speculative::build_tree_batch(batch, 3, pending.data(), 0, 40, tree, nullptr, nullptr, nullptr, 0, 0),
                  fastinfer::InvalidArgument);
  const std::vector<std::uint8_t> looks_ahead = {1, 1, 0, 1};
  CHECK_THROWS_AS(speculative::build_tree_batch(batch, 3, pending.data(), 2, 40, tree, extra.data(), extra_depth.data(),
                                         looks_ahead.data(), 2, 2),
                  fastinfer::InvalidArgument);
}

TEST_CASE("lookahead pool: columns of a full window plus the last level's outputs are the n-grams") {
  speculative::LookaheadPool pool({3, 4, 5}, 64);  // W 3, N 4: three levels
  pool.set_levels({{10, 11, 12}});
  pool.jacobi_step({20, 21, 22});  // warm-up: appended, nothing collected
  CHECK(pool.pool_keys() == 0);
  pool.jacobi_step({30, 31, 32});
  CHECK(pool.levels().size() == 3);
  CHECK(pool.pool_keys() == 0);
  pool.jacobi_step({40, 41, 42});  // full: column i gives (10+i, 20+i, 30+i, 40+i)
  CHECK(pool.continuations(10) == std::deque<Tokens>{{20, 30, 40}});
  CHECK(pool.continuations(12) == std::deque<Tokens>{{22, 32, 42}});
  CHECK(pool.levels() == std::vector<Tokens>{{20, 21, 22}, {30, 31, 32}, {40, 41, 42}});
  pool.jacobi_step({50, 51, 52});
  CHECK(pool.continuations(20) == std::deque<Tokens>{{30, 40, 50}});
  CHECK_THROWS_AS(pool.jacobi_step({1, 2}), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(pool.set_levels({{1, 2, 3}, {1, 2, 3}, {1, 2, 3}, {1, 2, 3}}), fastinfer::InvalidArgument);
}

TEST_CASE("lookahead drafter proposes a trie of the pool's n-grams and the 2-D window") {
  speculative::LookaheadPool pool({4, 3, 5}, 64);
  pool.begin({1, 5, 6, 7, 5, 6, 8, 5});
  speculative::DraftProposal out;
  pool.propose({1, 5, 6, 7, 5, 6, 8, 5}, 8, 0, out);
  // The prompt's 3-grams after 5: "6 8" (newest) and "6 7" share their 6.
  CHECK(out.tokens == Tokens{6, 8, 7});
  CHECK(out.parent == std::vector<int>{-1, 0, 0});
  CHECK(out.extra.size() == 4);  // one level until warm-up grows it
  CHECK(out.extra_depth == std::vector<int>{1, 2, 3, 4});
  pool.propose({1, 5, 6, 7, 5, 6, 8, 5}, 1, 0, out);
  CHECK(out.tokens == Tokens{6});  // depth capped at k
  CHECK(out.first_chain() == Tokens{6});
  // observe() with the window's rows: the last level's argmax becomes a new level.
  std::vector<float> rows(4 * 64, 0.0f);
  for (int i = 0; i < 4; ++i) rows[std::size_t(i) * 64 + std::size_t(30 + i)] = 1.0f;
  pool.observe({1, 5, 6, 7, 5, 6, 8, 5, 6}, 0, rows.data(), 4);
  REQUIRE(pool.levels().size() == 2);
  CHECK(pool.levels()[1] == Tokens{30, 31, 32, 33});
  pool.propose({1, 5, 6, 7, 5, 6, 8, 5, 6}, 4, 0, out);
  CHECK(out.extra.size() == 8);
  CHECK(out.extra_depth == std::vector<int>{1, 2, 3, 4, 2, 3, 4, 5});
  // A window cut short (no room in the pass): no Jacobi step, no new level.
  pool.observe({1, 5, 6, 7, 5, 6, 8, 5, 6, 7}, 0, rows.data(), 4);
  CHECK(pool.levels().size() == 2);
}

TEST_CASE("lookahead window shifts by the accepted count after its Jacobi step") {
  // W 4, N 3: two levels. Level j, column i guesses root + i + j + 1; a step
  // that keeps a drafts moves the root a + 1 positions, the Jacobi step
  // accounts for one of them, the shift for the other a.
  speculative::LookaheadPool pool({4, 3, 5}, 64);
  const Tokens ctx = {1, 5, 6, 7, 5, 6, 8, 5};
  pool.begin(ctx);
  pool.set_levels({{10, 11, 12, 13}, {20, 21, 22, 23}});
  std::vector<float> rows(8 * 64, 0.0f);
  for (int i = 0; i < 4; ++i) rows[std::size_t(4 + i) * 64 + std::size_t(30 + i)] = 1.0f;  // last level's outputs
  Tokens after = ctx;
  after.insert(after.end(), {6, 8, 5});  // two drafts kept + the bonus token
  pool.observe(after, 2, rows.data(), 8);
  // n-grams from the unshifted columns (10+i, 20+i, 30+i)...
  CHECK(pool.continuations(10) == std::deque<Tokens>{{20, 30}});
  CHECK(pool.continuations(13) == std::deque<Tokens>{{23, 33}});
  // ...then levels {20..23}, {30..33} drop their first two columns; the two
  // freed columns hold context tokens.
  REQUIRE(pool.levels().size() == 2);
  CHECK(Tokens(pool.levels()[0].begin(), pool.levels()[0].begin() + 2) == Tokens{22, 23});
  CHECK(Tokens(pool.levels()[1].begin(), pool.levels()[1].begin() + 2) == Tokens{32, 33});
  for (const Tokens& level : pool.levels())
    for (int i = 2; i < 4; ++i) CHECK(std::find(after.begin(), after.end(), level[std::size_t(i)]) != after.end());
  // A step without the window's rows (a plain step, or no room) moves the
  // root by accepted + 1 with no Jacobi step: shift by that.
  const Tokens before_plain = pool.levels()[1];
  after.push_back(7);
  pool.observe(after, 0, nullptr, 0);
  CHECK(pool.levels()[1][0] == before_plain[1]);
  CHECK(pool.levels()[1][1] == before_plain[2]);
  // Shifting by W or more refills every column; a negative shift is refused.
  pool.shift_window(9, after);
  for (const Tokens& level : pool.levels())
    for (std::int32_t t : level) CHECK(std::find(after.begin(), after.end(), t) != after.end());
  CHECK_THROWS_AS(pool.shift_window(-1, after), fastinfer::InvalidArgument);
}

TEST_CASE("prompt lookup with several candidates: every match, distinct, as a trie") {
  speculative::PromptLookup lookup({2, 1, 4});
  // Matches of "7": at 6 (-> 2 5 6) and at 2 (-> 8 9 1); the 2-gram "6 7" at 1 (-> 8 9 1) comes first.
  const Tokens ctx = {5, 6, 7, 8, 9, 1, 7, 2, 5, 6, 7};
  const auto all = lookup.lookup_all(ctx, 3);
  REQUIRE(all.size() == 2);
  CHECK(all[0] == Tokens{8, 9, 1});
  CHECK(all[1] == Tokens{2, 5, 6});
  CHECK(all[0] == lookup.lookup(ctx, 3));
  speculative::DraftProposal out;
  lookup.propose(ctx, 3, 0, out);
  CHECK(out.tokens == Tokens{8, 9, 1, 2, 5, 6});
  CHECK(out.parent == std::vector<int>{-1, 0, 1, -1, 3, 4});
  speculative::PromptLookup one({2, 1, 1});
  one.propose(ctx, 3, 0, out);
  CHECK(out.parent.empty());  // one candidate: a plain chain
  CHECK_THROWS_AS(speculative::PromptLookup({2, 1, 0}), fastinfer::InvalidArgument);
}

TEST_CASE("draft model keeps its cache in sync after rejections") {
  auto make = [] {
    return fastinfer::LlamaModel<>(fastinfer::load_model("synthetic:tiny"), fastinfer::ModelOptions{1, 16});
  };
  speculative::DraftModel<fastinfer::LlamaModel<>> drafter(make(), {});
  speculative::DraftModel<fastinfer::LlamaModel<>> fresh(make(), {});
  speculative::DraftProposal a, b;
  Tokens ctx = {1, 20, 30};
  drafter.begin(ctx);
  drafter.propose(ctx, 4, 0, a);
  REQUIRE(a.tokens.size() == 4);
  // One draft accepted, then a different token: the cache holds rejected drafts beyond.
  ctx.push_back(a.tokens[0]);
  ctx.push_back(std::int32_t((a.tokens[1] + 1) % 512));
  drafter.propose(ctx, 4, 0, a);
  fresh.begin(ctx);
  fresh.propose(ctx, 4, 0, b);
  CHECK(a.tokens == b.tokens);
  CHECK(a.probs.empty());  // greedy drafts carry no distribution
  CHECK_THROWS_AS(drafter.propose({1, 600}, 2, 0, a), fastinfer::InvalidArgument);
}
