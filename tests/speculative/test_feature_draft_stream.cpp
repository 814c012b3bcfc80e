// FeatureDraftStream (speculative/feature_draft_stream.hpp): features
// observed in pieces, overlapping, draft the tree that a head fed the same
// features at once drafts (the batch-1 loop's commit and draft_feature_tree),
// bit for bit, for an EAGLE head and for MTP modules, also from a late first
// position; a gap restarts the stream; drafting before the features are held
// is refused; head copies share their weights until one is written; streams
// (and head parts) drafting together get the trees (rows) each gets alone.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/eagle_flags.hpp"
#include "common/medusa_flags.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/speculative/eagle_generate.hpp"
#include "fastinfer/speculative/feature_draft_stream.hpp"
#include "fastinfer/speculative/feature_tree_batch.hpp"
#include "fastinfer/speculative/medusa_stream.hpp"
#include "shared_dir.hpp"

namespace sp = fastinfer::speculative;

namespace {

// The target's features of every position of `tokens` (one prefill pass).
std::vector<float> features_of(fastinfer::LlamaModel<>& m, const std::vector<std::int32_t>& tokens) {
  m.reset();
  m.forward_prefill(tokens.data(), int(tokens.size()), 0);
  const float* f = m.last_features();
  return std::vector<float>(f, f + tokens.size() * std::size_t(m.config().dim));
}

// The batch-1 loop's tree after `tokens` (positions `first` on): every row
// but the last committed at once (commit_accepted, as feature_draft_generate
// calls it), the root from the last one.
template <typename Head>
sp::TokenTree reference_tree(const Head& proto, const fastinfer::LlamaWeights& w,
                             const std::vector<float>& feats, const std::vector<std::int32_t>& tokens,
                             int first, sp::EagleTreeConfig tree, int nodes) {
  Head head = proto;
  head.reset();
  const std::size_t d = std::size_t(w.config.dim);
  std::vector<float> root(d);
  const int n = int(tokens.size()) - 1 - first;
  const std::vector<std::int32_t> text(tokens.begin() + first, tokens.end());
  commit_accepted(head, w, feats.data() + std::size_t(first) * d, n, text, root.data(), 1);
  tree.depth = std::min(tree.depth, max_tree_depth(head));
  sp::EagleDraftWorkspace ws;
  return sp::draft_feature_tree(head, w, root.data(), std::min(tree.depth, nodes), tree.top_k, nodes, ws);
}

// Pieces 0..9, 5..19 (overlapping), 20..len-2 against one commit; a stream
// starting at position 12 against a head that never saw 0..11.
template <typename Head>
void check_pieces(const Head& head, const fastinfer::LlamaWeights& w, const std::vector<float>& feats,
                  const std::vector<std::int32_t>& tokens, const sp::EagleTreeConfig& cfg) {
  const std::size_t d = std::size_t(w.config.dim);
  const std::int64_t len = std::int64_t(tokens.size());
  sp::FeatureDraftStream<Head> stream(head, cfg);
  CHECK_FALSE(stream.ready(len));
  CHECK(stream.rows_to_commit(len) == 0);
  CHECK_THROWS_WITH(stream.draft(w, tokens.data(), len, 4), Catch::Contains("no tree after"));
  stream.observe(0, feats.data(), 10);
  CHECK_FALSE(stream.ready(len));
  stream.observe(5, feats.data() + 5 * d, 15);
  stream.observe(20, feats.data() + 20 * d, len - 1 - 20);
  REQUIRE(stream.ready(len));
  CHECK(stream.end() == len - 1);
  // What the first tree commits (the Engine's switch prices it): every row but the root's.
  CHECK(stream.rows_to_commit(len) == len - 1);
  for (int nodes : {1, 4, 8}) {
    const sp::TokenTree& got = stream.draft(w, tokens.data(), len, nodes);
    CHECK(stream.rows_to_commit(len) == 0);
    const sp::TokenTree want = reference_tree(head, w, feats, tokens, 0, cfg, nodes);
    INFO("nodes " << nodes);
    CHECK(got.tokens == want.tokens);
    CHECK(got.parent == want.parent);
    CHECK(got.size() <= nodes);
    CHECK(got.size() > 0);
  }
  CHECK(stream.committed() == len - 1);
  sp::FeatureDraftStream<Head> late(head, cfg);
  late.observe(12, feats.data() + 12 * d, len - 1 - 12);
  CHECK(late.base() == 12);
  CHECK(late.rows_to_commit(len) == len - 1 - 12);
  late.stage(tokens.data(), len, 8);
  CHECK(late.staged_rows() == len - 1 - 12);
  const sp::TokenTree& got = late.draft(w, tokens.data(), len, 8);
  const sp::TokenTree want = reference_tree(head, w, feats, tokens, 12, cfg, 8);
  CHECK(got.tokens == want.tokens);
  CHECK(got.parent == want.parent);
}

}  // namespace

TEST_CASE(
    "feature streams: pieces of features draft the batch-1 loop's tree, gaps restart, early drafts are "
    "refused",
    "[speculative][eagle]") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  const fastinfer::LlamaWeights w = fastinfer::load_model(model_path.string());
  fastinfer::LlamaModel<> model(w);
  const sp::EagleHead head = fastinfer::examples::eagle_head_from_flag("random:7", w.config);
  const sp::EagleTreeConfig cfg{3, 3, 8};
  std::vector<std::int32_t> tokens{1};
  for (int i = 0; i < 30; ++i) tokens.push_back(3 + (i * 37) % 500);
  const std::vector<float> feats = features_of(model, tokens);
  const std::size_t d = std::size_t(w.config.dim);
  const std::int64_t len = std::int64_t(tokens.size());

  {
    INFO("EAGLE head");
    check_pieces(head, w, feats, tokens, cfg);
  }
  {
    INFO("MTP modules");
    check_pieces(fastinfer::examples::mtp_heads_from_flag("random:5", w.config), w, feats, tokens, cfg);
  }

  // A gap (positions 0..4, then 9..) restarts at 9.
  sp::EagleStream gap(head, cfg);
  gap.observe(0, feats.data(), 5);
  gap.observe(9, feats.data() + 9 * d, 3);
  CHECK(gap.base() == 9);
  CHECK(gap.end() == 12);
  CHECK_FALSE(gap.ready(len));
  CHECK(gap.ready(13));

  // A stream that is never asked for a tree holds at most kMaxBuffered rows:
  // past them it keeps the newest half and starts after the dropped ones.
  sp::EagleStream plain(head, cfg);
  const std::int64_t cap = sp::EagleStream::kMaxBuffered;
  std::vector<float> many(std::size_t(cap + 1) * d, 0.5f);
  plain.observe(0, many.data(), cap);
  CHECK(plain.base() == 0);
  plain.observe(cap, many.data(), 1);
  CHECK(plain.base() == cap + 1 - cap / 2);
  CHECK(plain.end() == cap + 1);
  CHECK(plain.committed() == 0);
  CHECK(plain.ready(cap + 2));
  CHECK_FALSE(plain.ready(cap / 2));
}

TEST_CASE("EagleHead: copies share the weights until one is written", "[speculative][eagle]") {
  sp::EagleHeadShape s{8, 16, 2, 1, 4, 12, 1e-5f, 10000.0f};
  const sp::EagleHead a = sp::EagleHead::random(3, s);
  sp::EagleHead b = a;
  CHECK(b.shares_weights_with(a));
  const float before = a.tensor(sp::EagleHead::kFc)[0];
  b.tensor(sp::EagleHead::kFc)[0] = before + 1.0f;  // a write clones first
  CHECK_FALSE(b.shares_weights_with(a));
  CHECK(a.tensor(sp::EagleHead::kFc)[0] == before);
  CHECK(b.tensor(sp::EagleHead::kFc)[0] == before + 1.0f);
  sp::EagleHead c = a;
  c.set_weight_dtype(fastinfer::DType::F16);
  CHECK(a.weight_dtype() == fastinfer::DType::F32);
  CHECK(c.weight_dtype() == fastinfer::DType::F16);
}

TEST_CASE("EagleHead: a copy that commits and expands rows still shares the weights", "[speculative][eagle]") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  const fastinfer::LlamaWeights w = fastinfer::load_model(model_path.string());
  const sp::EagleHead proto = fastinfer::examples::eagle_head_from_flag("random:2", w.config);
  sp::EagleHead head = proto;
  const std::size_t d = std::size_t(w.config.dim);
  std::vector<float> feats(3 * d, 0.25f), root(d), out(2 * d);
  const std::int32_t next[3] = {5, 6, 7};
  head.commit(w, feats.data(), next, 3, root.data());
  const int parents[2] = {-1, -1};
  head.expand(w, feats.data(), next, parents, 2, out.data());  // features [2][dim]
  CHECK(head.committed() == 3);
  CHECK(head.shares_weights_with(proto));
}

TEST_CASE(
    "FeatureTreeBatch: streams drafting together get, bit for bit, the trees each drafts alone, step after "
    "step",
    "[speculative][eagle]") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  const fastinfer::LlamaWeights w = fastinfer::load_model(model_path.string());
  fastinfer::LlamaModel<> model(w);
  const sp::EagleHead eagle = fastinfer::examples::eagle_head_from_flag("random:7", w.config);
  const sp::MtpHeads mtp = fastinfer::examples::mtp_heads_from_flag("random:5", w.config);
  const auto medusa =
      std::make_shared<sp::MedusaHeads>(fastinfer::examples::medusa_heads_from_flag("random:3", w.config));
  const auto other_medusa =
      std::make_shared<sp::MedusaHeads>(fastinfer::examples::medusa_heads_from_flag("random:9", w.config));
  const sp::EagleTreeConfig cfg{3, 3, 8};
  const sp::DynamicTree medusa_tree{0, 3, 0};
  // Eight requests of different lengths (so different committed rows, and
  // trees of different shapes): three EAGLE, two MTP, two Medusa sharing
  // heads and one with heads of its own; node budgets 0..8.
  enum Kind { kEagle, kMtp, kMedusa, kOtherMedusa };
  struct Req {
    Kind kind;
    int nodes;
    std::vector<std::int32_t> tokens;
    std::vector<float> feats;
  };
  const Kind kinds[] = {kEagle, kMtp, kEagle, kMtp, kEagle, kMedusa, kOtherMedusa, kMedusa};
  const int budgets[] = {8, 4, 1, 8, 0, 6, 5, 2};
  std::vector<Req> reqs;
  for (int r = 0; r < 8; ++r) {
    Req q{kinds[r], budgets[r], {1}, {}};
    for (int i = 0; i < 14 + 5 * r; ++i) q.tokens.push_back(3 + (i * (31 + 6 * r) + r) % 500);
    q.feats = features_of(model, q.tokens);
    reqs.push_back(std::move(q));
  }
  auto make_stream = [&](const Req& q) -> std::unique_ptr<sp::FeatureStream> {
    if (q.kind == kEagle) return std::make_unique<sp::EagleStream>(eagle, cfg);
    if (q.kind == kMtp) return std::make_unique<sp::MtpStream>(mtp, cfg);
    return std::make_unique<sp::MedusaStream>(q.kind == kMedusa ? medusa : other_medusa, medusa_tree);
  };
  std::vector<std::unique_ptr<sp::FeatureStream>> together, alone;
  for (const Req& q : reqs) {
    together.push_back(make_stream(q));
    alone.push_back(make_stream(q));
  }
  sp::FeatureTreeBatch batch;
  // What the drafting costs, as the Engine's switch prices it: each head
  // type's passes once for all its streams (EAGLE: a commit, then a level
  // each, 3 deep at most; MTP: a commit a module, then a level each, at
  // most a module each; Medusa: one), and the rows committed and drafted.
  const int modules = mtp.module_count(), mtp_depth = std::min(3, modules);
  REQUIRE(batch.forwards() == 0);
  REQUIRE(batch.rows_fed() == 0);
  // Step s drafts after the first len - 4 + 2s tokens (the contexts grow, as
  // accepted tokens make them, and the heads commit the new rows first).
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step);
    batch.clear();
    std::vector<const sp::TokenTree*> got;
    std::vector<std::int64_t> lens;
    int eagle_passes = 0, mtp_passes = 0, medusa_passes = 0;
    std::int64_t rows = 0;
    const std::int64_t forwards_before = batch.forwards(), rows_before = batch.rows_fed();
    for (std::size_t r = 0; r < reqs.size(); ++r) {
      const std::int64_t len = std::int64_t(reqs[r].tokens.size()) - 4 + 2 * step;
      lens.push_back(len);
      for (auto* s : {together[r].get(), alone[r].get()}) s->observe(0, reqs[r].feats.data(), len - 1);
      got.push_back(batch.add(*together[r], w, reqs[r].tokens.data(), len, reqs[r].nodes, 1));
      const int n = reqs[r].nodes;
      rows += n;
      if (reqs[r].kind == kEagle) {
        if (n > 0) eagle_passes = std::max(eagle_passes, 1 + std::min(3, n));
        rows += step == 0 ? len - 1 : 2;  // the rows it commits first
      } else if (reqs[r].kind == kMtp) {
        if (n > 0) mtp_passes = std::max(mtp_passes, modules + std::min(mtp_depth, n));
        rows += step == 0 ? len - 1 : 2;
      } else if (n > 0) {
        medusa_passes = 1;
      }
    }
    batch.draft(w, 1);
    CHECK(batch.forwards() - forwards_before == eagle_passes + mtp_passes + medusa_passes);
    CHECK(batch.rows_fed() - rows_before == rows);
    int nonempty = 0;
    for (std::size_t r = 0; r < reqs.size(); ++r) {
      INFO("request " << r);
      const sp::TokenTree& want = alone[r]->draft(w, reqs[r].tokens.data(), lens[r], reqs[r].nodes, 1);
      CHECK(got[r]->tokens == want.tokens);
      CHECK(got[r]->parent == want.parent);
      CHECK(together[r]->tree_ranks() == alone[r]->tree_ranks());
      CHECK(int(got[r]->tokens.size()) <= reqs[r].nodes);
      nonempty += want.tokens.empty() ? 0 : 1;
    }
    CHECK(nonempty == 7);  // every request but the one with no node budget
  }
}

TEST_CASE(
    "EagleHead::commit_together / commit_all_together / expand_together: each part's rows as its own "
    "commit() / commit_all() / expand() gives them, and bad parts change nothing",
    "[speculative][eagle]") {
  using Rows = sp::EagleHead::Rows;
  using TreeRows = sp::EagleHead::TreeRows;
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  const fastinfer::LlamaWeights w = fastinfer::load_model(model_path.string());
  const sp::EagleHead proto = fastinfer::examples::eagle_head_from_flag("random:4", w.config);
  const std::size_t d = std::size_t(w.config.dim);
  std::vector<float> feats(12 * d);
  for (std::size_t i = 0; i < feats.size(); ++i) feats[i] = float(int(i * 7919 % 199) - 99) / 50.0f;
  std::vector<std::int32_t> next(12);
  for (int i = 0; i < 12; ++i) next[std::size_t(i)] = 5 + 17 * i;
  // Three heads commit 3, 7 and 5 rows (a, together; b, each alone), then 2,
  // 0 and 1 more (the empty part: no row, no feature written).
  std::vector<sp::EagleHead> a(3, proto), b(3, proto);
  const int first[3] = {3, 7, 5}, second[3] = {2, 0, 1};
  for (const int* counts : {first, second}) {
    std::vector<float> root_a(3 * d, -1.0f), root_b(3 * d, -1.0f);
    std::vector<Rows> parts;
    for (int h = 0; h < 3; ++h) {
      const int at = b[std::size_t(h)].committed();
      b[std::size_t(h)].commit(w, feats.data() + std::size_t(at) * d, next.data() + at + 1, counts[h],
                               root_b.data() + std::size_t(h) * d);
      parts.push_back(Rows{&a[std::size_t(h)], feats.data() + std::size_t(at) * d, next.data() + at + 1,
                           counts[h], root_a.data() + std::size_t(h) * d});
    }
    sp::EagleHead::commit_together(w, parts.data(), 3, 1);
    CHECK(root_a == root_b);
    for (int h = 0; h < 3; ++h) CHECK(a[std::size_t(h)].committed() == b[std::size_t(h)].committed());
  }
  // commit_all_together: every row's feature into its part's out (MTP
  // modules of several requests), as each head's commit_all() writes them.
  {
    std::vector<sp::EagleHead> x(3, proto), y(3, proto);
    const int counts[3] = {4, 0, 3};
    std::vector<float> all_x(7 * d, -1.0f), all_y(7 * d, -2.0f);
    std::vector<Rows> parts;
    for (int h = 0, at = 0; h < 3; at += counts[h], ++h) {
      y[std::size_t(h)].commit_all(w, feats.data() + std::size_t(at) * d, next.data() + at + 1, counts[h],
                                   all_y.data() + std::size_t(at) * d);
      parts.push_back(Rows{&x[std::size_t(h)], feats.data() + std::size_t(at) * d, next.data() + at + 1,
                           counts[h], all_x.data() + std::size_t(at) * d});
    }
    sp::EagleHead::commit_all_together(w, parts.data(), 3, 1);
    CHECK(all_x == all_y);
    for (int h = 0; h < 3; ++h) CHECK(x[std::size_t(h)].committed() == counts[h]);
  }
  // Each head already holds a tree row; then a level of 2, 1 and 3 rows,
  // children of that row or of the root.
  std::vector<float> scratch(2 * d);
  const int root_parent = -1;
  for (int h = 0; h < 3; ++h)
    for (auto* head : {&a[std::size_t(h)], &b[std::size_t(h)]})
      head->expand(w, feats.data() + 3 * d, next.data() + 2, &root_parent, 1, scratch.data());
  const int parents[3][3] = {{0, -1, 0}, {0, 0, 0}, {-1, 0, 0}};
  const int n[3] = {2, 1, 3};
  std::vector<float> out_alone(6 * d), out_together(6 * d);
  std::vector<TreeRows> level;
  for (int h = 0, at = 0; h < 3; at += n[h], ++h) {
    b[std::size_t(h)].expand(w, feats.data() + std::size_t(at) * d, next.data() + at, parents[h], n[h],
                             out_alone.data() + std::size_t(at) * d);
    level.push_back(TreeRows{{&a[std::size_t(h)], feats.data() + std::size_t(at) * d, next.data() + at, n[h],
                              out_together.data() + std::size_t(at) * d},
                             parents[h],
                             0});
  }
  sp::EagleHead::expand_together(w, level.data(), 3, 1);
  CHECK(out_together == out_alone);
  for (int h = 0; h < 3; ++h) CHECK(a[std::size_t(h)].tree_rows() == b[std::size_t(h)].tree_rows());

  // A head with weights of its own is run alone, to the same bits.
  sp::EagleHead own = proto;
  own.tensor(sp::EagleHead::kFc)[0] += 0.0f;  // a write: the copy now owns its weights
  REQUIRE_FALSE(own.shares_weights_with(proto));
  sp::EagleHead same = proto, c0 = proto;
  std::vector<float> r_own(d), r_same(d), r_c0(d);
  std::vector<Rows> commits{{&c0, feats.data(), next.data() + 1, 2, r_c0.data()},
                            {&own, feats.data(), next.data() + 1, 4, r_own.data()}};
  sp::EagleHead::commit_together(w, commits.data(), 2, 1);
  same.commit(w, feats.data(), next.data() + 1, 4, r_same.data());
  CHECK(r_own == r_same);
  std::vector<float> o1(d), o2(d), want(d);
  const int roots[1] = {-1};
  std::vector<TreeRows> mixed{{{&c0, feats.data(), next.data(), 1, o1.data()}, roots, 0},
                              {{&own, feats.data() + d, next.data() + 1, 1, o2.data()}, roots, 0}};
  sp::EagleHead::expand_together(w, mixed.data(), 2, 1);
  same.expand(w, feats.data() + d, next.data() + 1, roots, 1, want.data());
  CHECK(o2 == want);

  // A bad part (a parent of a row of this very call, a token outside the
  // vocabulary, the same head twice) is refused before any head changes.
  const int rows_before[3] = {a[0].tree_rows(), a[1].tree_rows(), a[2].tree_rows()};
  const int committed_before[3] = {a[0].committed(), a[1].committed(), a[2].committed()};
  const int bad_parent = rows_before[1];
  const std::int32_t bad_token = w.config.vocab_size;
  std::vector<TreeRows> bad{{{&a[0], feats.data(), next.data(), 1, o1.data()}, roots, 0},
                            {{&a[1], feats.data(), next.data(), 1, o2.data()}, &bad_parent, 0}};
  CHECK_THROWS_WITH(sp::EagleHead::expand_together(w, bad.data(), 2, 1), Catch::Contains("has parent"));
  bad[1] = {{&a[1], feats.data(), &bad_token, 1, o2.data()}, roots, 0};
  CHECK_THROWS_WITH(sp::EagleHead::expand_together(w, bad.data(), 2, 1),
                    Catch::Contains("outside the vocabulary"));
  bad[1] = {{&a[0], feats.data(), next.data(), 1, o2.data()}, roots, 0};
  CHECK_THROWS_WITH(sp::EagleHead::expand_together(w, bad.data(), 2, 1), Catch::Contains("the same head"));
  std::vector<Rows> bad_commit{{&a[0], feats.data(), next.data(), 1, o1.data()},
                               {&a[2], feats.data(), &bad_token, 1, o2.data()}};
  CHECK_THROWS_WITH(sp::EagleHead::commit_together(w, bad_commit.data(), 2, 1),
                    Catch::Contains("outside the vocabulary"));
  for (int h = 0; h < 3; ++h) {
    CHECK(a[std::size_t(h)].tree_rows() == rows_before[h]);
    CHECK(a[std::size_t(h)].committed() == committed_before[h]);
  }
}
