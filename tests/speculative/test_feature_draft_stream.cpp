// FeatureDraftStream (speculative/feature_draft_stream.hpp): features
// observed in pieces, overlapping, draft the tree that a head fed the same
// features at once drafts (the batch-1 loop's commit and draft_feature_tree),
// bit for bit, for an EAGLE head and for MTP modules, also from a late first
// position; a gap restarts the stream; drafting before the features are held
// is refused; head copies share their weights until one is written.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/eagle_flags.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/speculative/eagle_generate.hpp"
#include "fastinfer/speculative/feature_draft_stream.hpp"
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
  CHECK_THROWS_WITH(stream.draft(w, tokens.data(), len, 4), Catch::Contains("no tree after"));
  stream.observe(0, feats.data(), 10);
  CHECK_FALSE(stream.ready(len));
  stream.observe(5, feats.data() + 5 * d, 15);
  stream.observe(20, feats.data() + 20 * d, len - 1 - 20);
  REQUIRE(stream.ready(len));
  CHECK(stream.end() == len - 1);
  for (int nodes : {1, 4, 8}) {
    const sp::TokenTree& got = stream.draft(w, tokens.data(), len, nodes);
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
