// Medusa candidate trees: the policies pick the paths they promise, the tree
// puts the top-1 chain first with parents before children, the verification
// batch's mask and positions follow the ancestry, typical acceptance takes the
// longest accepted path, and exact sampling through the tree (deterministic
// candidates, SpecInfer's rejection) emits tokens distributed as the target.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

#include "common/medusa_flags.hpp"
#include "fastinfer/speculative/medusa_tree.hpp"

namespace {

namespace speculative = fastinfer::speculative;

speculative::HeadGuesses guesses() {
  speculative::HeadGuesses g;
  g.tokens = {{10, 11, 12}, {20, 21, 22}, {30, 31, 32}};
  g.probs = {{0.6f, 0.3f, 0.1f}, {0.5f, 0.45f, 0.05f}, {0.9f, 0.05f, 0.05f}};
  return g;
}

std::vector<int> ranks_of(const speculative::CandidateTree& ct, int node) {
  std::vector<int> r;
  for (int a = node; a >= 0; a = ct.tree.parent[std::size_t(a)]) r.insert(r.begin(), ct.tree.tokens[std::size_t(a)] % 10);
  return r;
}

}  // namespace

TEST_CASE("fixed choices: default tree, chain first, parents before children, prefixes implied") {
  const auto g = guesses();
  const speculative::FixedChoicesTree t = speculative::FixedChoicesTree::default_for(3);
  CHECK(speculative::guesses_needed(t) == 3);
  const speculative::CandidateTree ct = speculative::build_candidate_tree(speculative::select_paths(t, g), g, 3);
  ct.tree.validate(100);
  REQUIRE(ct.tree.size() == 8);  // chain of 3 + {1} {2} {0,1} {1,0} {0,0,1}
  CHECK(ct.tree.tokens[0] == 10);
  CHECK(ct.tree.tokens[1] == 20);
  CHECK(ct.tree.tokens[2] == 30);
  CHECK(ct.tree.parent == std::vector<int>{-1, 0, 1, -1, -1, 0, 3, 1});
  CHECK(ct.depth == std::vector<int>{1, 2, 3, 1, 1, 2, 2, 3});
  // A choice whose prefix is missing gets it; duplicates collapse; too-deep choices are cut at max depth.
  speculative::FixedChoicesTree odd{{{2, 1}, {2, 1}, {0, 0, 0}}};
  const auto ct2 = speculative::build_candidate_tree(speculative::select_paths(odd, g), g, 2);
  CHECK(ct2.tree.tokens == std::vector<std::int32_t>{10, 20, 12, 21});
  CHECK(ct2.tree.parent == std::vector<int>{-1, 0, -1, 2});
  CHECK_THROWS_AS(speculative::select_paths(speculative::FixedChoicesTree{{{}}}, g), fastinfer::InvalidArgument);
}

TEST_CASE("dynamic tree grows by cumulative probability within its budget") {
  const auto g = guesses();
  // Scores: {0} .6, {1} .3, {0,0} .3, {0,1} .27, {0,0,0} .27, {1,0} .15, {1,1} .135, {2} .1, ...
  const auto paths = speculative::select_paths(speculative::DynamicTree{5, 3, 0}, g);
  std::set<std::vector<int>> got(paths.begin(), paths.end());
  CHECK(got == std::set<std::vector<int>>{{0}, {1}, {0, 0}, {0, 1}, {0, 0, 0}});
  const auto ct = speculative::build_candidate_tree(paths, g, 3);
  CHECK(ct.tree.size() == 5);
  CHECK(ranks_of(ct, 0) == std::vector<int>{0});
  CHECK(ranks_of(ct, 1) == std::vector<int>{0, 0});
  CHECK(ranks_of(ct, 2) == std::vector<int>{0, 0, 0});
  // Every chosen path's prefixes are in the tree (ancestor-closed), at any budget.
  for (int budget : {0, 1, 2, 7, 20, 39}) {
    const auto p = speculative::select_paths(speculative::DynamicTree{budget, 3, 0}, g);
    CHECK(int(p.size()) == std::min(budget, 3 + 9 + 27));
    std::set<std::vector<int>> s(p.begin(), p.end());
    for (const auto& x : p)
      if (x.size() > 1) CHECK(s.count(std::vector<int>(x.begin(), x.end() - 1)) == 1);
  }
  CHECK(speculative::select_paths(speculative::DynamicTree{10, 1, 2}, g).size() == 2);  // top_k 1, depth 2: the chain
  CHECK_THROWS_AS(speculative::select_paths(speculative::DynamicTree{3, 0, 0}, g), fastinfer::InvalidArgument);
}

TEST_CASE("tree verification batch: causal pending tokens, ancestor mask, positions by depth") {
  const auto g = guesses();
  const auto ct = speculative::build_candidate_tree(speculative::select_paths(speculative::FixedChoicesTree::default_for(2), g), g, 2);
  // nodes: 0 {0}, 1 {0,0}, 2 {1}, 3 {2}, 4 {0,1}, 5 {1,0}
  REQUIRE(ct.tree.parent == std::vector<int>{-1, 0, -1, -1, 0, 2});
  const std::int32_t pending[3] = {5, 6, 7};
  fastinfer::ForwardBatch b;
  speculative::build_tree_batch(b, 0, pending, 3, 40, ct.tree);
  CHECK(b.rows() == 9);
  CHECK(b.start_pos == std::vector<std::int64_t>{40});
  CHECK(b.positions == std::vector<std::int64_t>{40, 41, 42, 43, 44, 43, 43, 44, 44});
  CHECK(b.logits == fastinfer::LogitsRows::All);
  const int n = 9;
  auto sees = [&](int r, int c) { return b.mask[std::size_t(r * n + c)] != 0; };
  for (int r = 0; r < n; ++r)
    for (int c = 0; c < n; ++c) {
      bool want;
      if (r < 3) want = c <= r;
      else if (c < 3) want = true;
      else {
        want = false;
        for (int a = r - 3; a >= 0; a = ct.tree.parent[std::size_t(a)]) want = want || a == c - 3;
      }
      INFO("row " << r << " col " << c);
      CHECK(sees(r, c) == want);
    }
}

TEST_CASE("typical acceptance over a tree takes the longest accepted path") {
  // vocab 4; root children tokens 1 and 2; node 0 (1) has child 3 (token 3); node 1 (2) has child 2 (token 0)
  // whose row accepts again.
  speculative::TokenTree t{{1, 2, 0, 3}, {-1, -1, 1, 0}};
  std::vector<float> p = {
      0.05f, 0.45f, 0.45f, 0.05f,  // root: accepts 1 and 2
      0.1f,  0.1f,  0.1f,  0.7f,   // after node 0 (token 1): token 3 accepted
      0.9f,  0.05f, 0.03f, 0.02f,  // after node 1 (token 2): token 0 accepted
      0.01f, 0.01f, 0.97f, 0.01f,  // after node 2
      0.25f, 0.25f, 0.25f, 0.25f,  // after node 3 (uniform: its children would be rejected)
  };
  const auto out = speculative::verify_tree_typical_lossy(p.data(), 4, t, {}, true, 0, 0);
  CHECK(out.accepted == 2);
  CHECK(out.path == std::vector<int>{1, 2});  // two paths of length 2: the one ending first in node order
  CHECK(out.tokens == std::vector<std::int32_t>{2, 0, 2});
  // The root row is confident about a token outside the tree: nothing passes, its argmax follows.
  std::vector<float> q = p;
  q[0] = 0.01f, q[1] = 0.01f, q[2] = 0.01f, q[3] = 0.97f;
  const auto none = speculative::verify_tree_typical_lossy(q.data(), 4, t, {}, true, 0, 0);
  CHECK(none.accepted == 0);
  CHECK(none.tokens == std::vector<std::int32_t>{3});
}

TEST_CASE("exact tree sampling with Medusa's deterministic candidates emits the target's distribution") {
  // Small vocabulary, three-level tree from fixed choices; target rows differ per node.
  const int vocab = 6;
  speculative::HeadGuesses g;
  g.tokens = {{2, 0, 5}, {1, 3, 4}};
  g.probs = {{0.5f, 0.3f, 0.2f}, {0.5f, 0.3f, 0.2f}};
  const auto ct = speculative::build_candidate_tree(speculative::select_paths(speculative::FixedChoicesTree::default_for(2), g), g, 2);
  const int rows = ct.tree.size() + 1;
  std::vector<float> logits(std::size_t(rows * vocab));
  for (int i = 0; i < rows * vocab; ++i) logits[std::size_t(i)] = std::sin(1.7f * float(i) + 0.4f) * 1.5f;
  fastinfer::SamplingParams sp;
  sp.temperature = 1.0f;
  fastinfer::cpu::SamplerWorkspace ws(vocab);
  // Target distributions of the first token and of the second given the first = node 0's token.
  auto softmax = [&](int row) {
    std::vector<double> p(static_cast<std::size_t>(vocab));
    double z = 0;
    for (int x = 0; x < vocab; ++x) z += p[std::size_t(x)] = std::exp(double(logits[std::size_t(row * vocab + x)]));
    for (double& v : p) v /= z;
    return p;
  };
  const auto p0 = softmax(0), p1 = softmax(1);  // row 1: after node 0 (token 2)
  auto tv_at = [&](int n, double& tv_second) {
    std::vector<double> first(std::size_t(vocab), 0.0), second(std::size_t(vocab), 0.0);
    int n_second = 0;
    for (int s = 0; s < n; ++s) {
      sp.seed = std::uint64_t(s) + 1;
      std::vector<float> probs(logits.size());
      for (int r = 0; r < rows; ++r)
        fastinfer::cpu::sampling_distribution(logits.data() + r * vocab, vocab, sp, probs.data() + r * vocab, ws);
      const auto out = speculative::verify_tree_rejection(probs.data(), nullptr, vocab, ct.tree, sp.seed, 0);
      first[std::size_t(out.tokens[0])] += 1;
      if (out.tokens[0] == ct.tree.tokens[0] && out.tokens.size() >= 2) {
        second[std::size_t(out.tokens[1])] += 1;
        ++n_second;
      }
    }
    double tv = 0, tv2 = 0;
    for (int x = 0; x < vocab; ++x) {
      tv += std::abs(first[std::size_t(x)] / n - p0[std::size_t(x)]);
      tv2 += std::abs(second[std::size_t(x)] / std::max(1, n_second) - p1[std::size_t(x)]);
    }
    tv_second = tv2 / 2;
    return tv / 2;
  };
  double s_small = 0, s_big = 0;
  const double small = tv_at(2000, s_small), big = tv_at(100000, s_big);
  INFO("TV first token: " << small << " at 2k, " << big << " at 100k; second: " << s_small << ", " << s_big);
  CHECK(big < 0.01);
  CHECK(s_big < 0.015);
  CHECK(big < small);
  // Far from a different distribution (the uniform one): the test can fail.
  double tv_uniform = 0;
  for (int x = 0; x < vocab; ++x) tv_uniform += std::abs(p0[std::size_t(x)] - 1.0 / vocab) / 2;
  CHECK(tv_uniform > 10 * big);
}

TEST_CASE("tree names: choices, choices:FILE (the trainer's tree file), dynamic:BUDGET[:TOP_K], and bad ones throw") {
  using namespace fastinfer::speculative;
  const std::string file =
      (std::filesystem::temp_directory_path() / ("fastinfer_medusa_tree_" + std::to_string(::getpid()) + ".choices"))
          .string();
  {
    std::ofstream f(file);
    f << "# a comment line\n0\n0 0\n\n1   # rank 1 at depth 1\n0 1\n0 0 0\n";
  }
  const auto t = std::get<FixedChoicesTree>(fastinfer::examples::medusa_options_from_flag("choices:" + file, 4).tree);
  CHECK(t.choices == std::vector<TreePath>{{0}, {0, 0}, {1}, {0, 1}, {0, 0, 0}});
  CHECK(guesses_needed(t) == 2);
  CHECK(std::get<FixedChoicesTree>(fastinfer::examples::medusa_options_from_flag("choices", 4).tree).choices ==
        FixedChoicesTree::default_for(4).choices);
  const auto d = std::get<DynamicTree>(fastinfer::examples::medusa_options_from_flag("dynamic:24", 4).tree);
  CHECK((d.budget == 24 && d.top_k == DynamicTree{}.top_k));
  const auto d2 = std::get<DynamicTree>(fastinfer::examples::medusa_options_from_flag("dynamic:6:2", 4).tree);
  CHECK((d2.budget == 6 && d2.top_k == 2));
  CHECK_THROWS_AS(fastinfer::examples::medusa_options_from_flag("dynamic:x", 4), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(fastinfer::examples::medusa_options_from_flag("dynamic:4:0", 4), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(fastinfer::examples::medusa_options_from_flag("bushy", 4), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(fastinfer::examples::medusa_options_from_flag("choices:" + file + ".missing", 4), fastinfer::FormatError);
  {
    std::ofstream f(file);
    f << "0\n0 -1\n";
  }
  CHECK_THROWS_WITH(fastinfer::examples::medusa_options_from_flag("choices:" + file, 4), Catch::Contains(":2: '-1' is not a rank"));
  {
    std::ofstream f(file);
    f << "# only a comment\n";
  }
  CHECK_THROWS_WITH(fastinfer::examples::medusa_options_from_flag("choices:" + file, 4), Catch::Contains("holds no path"));
  std::filesystem::remove(file);
}
