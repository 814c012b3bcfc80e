// The drafters on their own: prompt lookup's n-gram matching, the lookahead
// pool's n-gram bookkeeping and Jacobi update, and the draft model's KV
// bookkeeping after rejections (its drafts equal a fresh model's).
#include <catch2/catch.hpp>

#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/spec/draft_model.hpp"
#include "fastinfer/spec/lookahead_pool.hpp"
#include "fastinfer/spec/prompt_lookup.hpp"

namespace spec = fastinfer::spec;
using Tokens = std::vector<std::int32_t>;

TEST_CASE("prompt lookup: longest n-gram first, most recent occurrence, up to k tokens") {
  spec::PromptLookup lookup({3, 1});
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
  spec::PromptLookup only_bigrams({2, 2});
  CHECK(only_bigrams.lookup(ctx2, 3).empty());
  CHECK_THROWS_AS(spec::PromptLookup({1, 2}), fastinfer::InvalidArgument);
}

TEST_CASE("lookahead pool: G newest distinct continuations per first token") {
  spec::LookaheadPool pool({3, 3, 2}, 16);
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
  CHECK_THROWS_AS(spec::LookaheadPool({0, 3, 2}, 16), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(spec::LookaheadPool({3, 1, 2}, 16), fastinfer::InvalidArgument);
}

TEST_CASE("lookahead pool: Jacobi levels give diagonal n-grams, outputs become the next guesses") {
  spec::LookaheadPool pool({3, 3, 5}, 64);
  // Iteration 1 fed 10 11 12 at positions 20..22 and predicted 30 31 32 for 21..23.
  pool.jacobi_update(20, {10, 11, 12}, {30, 31, 32});
  CHECK(pool.pool_keys() == 0);  // N = 3 needs two levels
  const Tokens ctx(20, 0);
  CHECK(pool.window(21, ctx) == Tokens{30, 31, 32});
  // Iteration 2 fed the guesses 30 31 32 at 21..23 and predicted 40 41 42 for 22..24.
  pool.jacobi_update(21, {30, 31, 32}, {40, 41, 42});
  // Diagonals by position: (level1 at p, level2 at p+1, output for p+2); the
  // 30 at 21 was predicted from the 10 at 20, the 40 for 22 from the 30.
  CHECK(pool.continuations(10) == std::deque<Tokens>{{30, 40}});
  CHECK(pool.continuations(11) == std::deque<Tokens>{{31, 41}});
  CHECK(pool.continuations(12) == std::deque<Tokens>{{32, 42}});
  CHECK(pool.continuations(30).empty());  // first tokens come from the oldest level only
  CHECK(pool.window(22, ctx) == Tokens{40, 41, 42});
}

TEST_CASE("lookahead drafter proposes the pool's continuation of the last token and a window after it") {
  spec::LookaheadPool pool({4, 3, 5}, 64);
  pool.begin({1, 5, 6, 7, 5});
  spec::DraftProposal out;
  pool.propose({1, 5, 6, 7, 5}, 8, 0, out);
  CHECK(out.tokens == Tokens{6, 7});  // the prompt's 3-gram 5 6 7
  CHECK(out.extra.size() == 4);
  pool.propose({1, 5, 6, 7, 5}, 1, 0, out);
  CHECK(out.tokens == Tokens{6});
}

TEST_CASE("draft model keeps its cache in sync after rejections") {
  auto make = [] {
    return fastinfer::LlamaModel<>(fastinfer::load_model("synthetic:tiny"), fastinfer::ModelOptions{1, 16});
  };
  spec::DraftModel<fastinfer::LlamaModel<>> drafter(make(), {});
  spec::DraftModel<fastinfer::LlamaModel<>> fresh(make(), {});
  spec::DraftProposal a, b;
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
