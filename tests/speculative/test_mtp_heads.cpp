// MtpHeads: the modules' committed rows and draft rows match a scalar
// double-precision reference of DeepSeek-V3's MTP cascade (module k reads
// module k-1's output and the embedding of token i + k), the FIMTPHDS file
// round-trips (f32 and f16), the loader refuses malformed files with one
// line naming the problem (every truncation, every corrupted header or
// table byte), and random:/pad:/file specs build what they say.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common/eagle_flags.hpp"
#include "eagle_reference.hpp"
#include "fastinfer/core/philox.hpp"
#include "fastinfer/speculative/mtp_heads.hpp"
#include "file_bytes.hpp"

namespace {

namespace speculative = fastinfer::speculative;
using speculative::EagleHead;
using speculative::EagleHeadShape;
using speculative::MtpHeads;
using fastinfer::testing::put_at;
using fastinfer::testing::random_features;
using fastinfer::testing::read_bytes;
using fastinfer::testing::reference;
using fastinfer::testing::ScratchDir;
using fastinfer::testing::write_bytes;
using Target = fastinfer::testing::HeadTarget;

EagleHeadShape small_shape() { return EagleHeadShape{20, 37, 3, 1, 6, 13, 1e-5f, 10000.0f}; }

// D random modules with random (not unit) input norms, so that a norm applied
// to the wrong half or not at all shows.
MtpHeads random_heads(int modules, std::uint64_t seed, const EagleHeadShape& s = small_shape()) {
  MtpHeads h = MtpHeads::random(seed, modules, s);
  for (int k = 0; k < modules; ++k) {
    std::vector<float> n(std::size_t(2 * s.dim));
    for (std::size_t i = 0; i < n.size(); ++i) n[i] = 0.5f + fastinfer::uniform_float(seed, 9 + std::uint64_t(k), i);
    h.module(k).set_input_norms(n.data(), n.data() + s.dim);
  }
  return h;
}

std::vector<float> to_float(const std::vector<double>& x, std::size_t from, std::size_t n) {
  return std::vector<float>(x.begin() + long(from), x.begin() + long(from + n));
}

void check_close(const float* got, const std::vector<double>& want, std::size_t from, std::size_t n) {
  for (std::size_t j = 0; j < n; ++j) {
    INFO("element " << j);
    CHECK(double(got[j]) == Approx(want[from + j]).margin(2e-4).epsilon(2e-4));
  }
}

std::string error_of(const std::string& path) {
  try {
    MtpHeads::load(path);
  } catch (const fastinfer::FormatError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong exception type: ") + e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("MTP modules cascade as the scalar reference: committed rows, the root and draft levels") {
  const EagleHeadShape s = small_shape();
  const std::size_t d = std::size_t(s.dim);
  Target t(s.dim, s.vocab, 4);
  MtpHeads heads = random_heads(3, 7);
  const std::vector<std::int32_t> text = {1, 5, 9, 30, 2, 17, 8, 33, 4};  // L = 9
  const int L = int(text.size());
  const auto f = random_features(L - 1, s.dim, 2);  // the target's features of positions 0..L-2
  std::vector<float> root(d);
  // In two commits (a prefill, then a step that accepted 2): the cascade must
  // pick up the rows the first commit could not make yet.
  heads.commit(t.w, f.data(), 5, std::vector<std::int32_t>(text.begin(), text.begin() + 6), root.data());
  CHECK(heads.committed(1) == 5);
  CHECK(heads.committed(2) == 4);
  CHECK(heads.committed(3) == 3);
  heads.commit(t.w, f.data() + 5 * d, 3, text, root.data());
  CHECK(heads.committed(1) == L - 1);
  CHECK(heads.committed(2) == L - 2);
  CHECK(heads.committed(3) == L - 3);

  // Module 1: rows i = 0..L-2 read (f_i, t_{i+1}); its last output is the root.
  const auto ref1 = reference(heads.module(0), t, f, std::vector<std::int32_t>(text.begin() + 1, text.end()));
  check_close(root.data(), ref1, std::size_t(L - 2) * d, d);
  // Module 2 committed rows i = 0..L-3 read (h^1_i, t_{i+2}); a level-2 draft
  // row at position L-2 reads (root, x) and sees them and itself: causal
  // over L-1 rows. Two siblings in one expand do not see each other.
  std::vector<std::int32_t> tok2(text.begin() + 2, text.end());
  const std::vector<std::int32_t> drafts = {11, 23};
  std::vector<float> in2(2 * d), out2(2 * d);
  std::copy(root.begin(), root.end(), in2.begin());
  std::copy(root.begin(), root.end(), in2.begin() + long(d));
  heads.expand(2, t.w, in2.data(), drafts.data(), 2, out2.data());
  std::vector<std::vector<double>> ref2(2);
  for (int sib = 0; sib < 2; ++sib) {
    tok2.push_back(drafts[std::size_t(sib)]);
    ref2[std::size_t(sib)] = reference(heads.module(1), t, to_float(ref1, 0, std::size_t(L - 1) * d), tok2);
    tok2.pop_back();
    INFO("sibling " << sib);
    check_close(out2.data() + std::size_t(sib) * d, ref2[std::size_t(sib)], std::size_t(L - 2) * d, d);
  }
  // Module 3 committed rows i = 0..L-4 read (h^2_i, t_{i+3}) with h^2 the
  // committed (causal) outputs; its draft row sits at position L-2, one past
  // a gap (row L-3 would need a drafted token), reading the level-2 row.
  std::vector<float> in3 = to_float(ref2[0], 0, std::size_t(L - 3) * d);
  in3.insert(in3.end(), out2.begin(), out2.begin() + long(d));
  std::vector<std::int32_t> tok3(text.begin() + 3, text.end());
  tok3.push_back(29);
  std::vector<int> pos3;
  for (int i = 0; i < L - 3; ++i) pos3.push_back(i);
  pos3.push_back(L - 2);
  const auto ref3 = reference(heads.module(2), t, in3, tok3, pos3);
  std::vector<float> out3(d);
  heads.expand(3, t.w, out2.data(), &tok3.back(), 1, out3.data());
  check_close(out3.data(), ref3, std::size_t(L - 3) * d, d);

  // Levels past the modules, and commits past the text, are refused.
  CHECK_THROWS_WITH(heads.expand(4, t.w, out3.data(), drafts.data(), 1, out3.data()), Catch::Contains("module 4"));
  CHECK_THROWS_WITH(heads.expand(1, t.w, out3.data(), drafts.data(), 1, out3.data()), Catch::Contains("level 1"));
  CHECK_THROWS_WITH(heads.commit(t.w, f.data(), 1, text, root.data()), Catch::Contains("need more than 9 tokens"));
  // reset() forgets every module's rows.
  heads.reset();
  CHECK(heads.committed(1) == 0);
  CHECK(heads.committed(3) == 0);
}

TEST_CASE(
    "MtpHeads::commit_together: each request's copy commits, module by module, what its own commit() "
    "does, and a bad part changes nothing") {
  const EagleHeadShape s = small_shape();
  const std::size_t d = std::size_t(s.dim);
  Target t(s.dim, s.vocab, 4);
  const MtpHeads proto = random_heads(3, 11);
  const std::vector<std::int32_t> text = {1, 5, 9, 30, 2, 17, 8, 33, 4, 12, 6};
  const auto f = random_features(int(text.size()) - 1, s.dim, 3);
  // Three requests of 4, 0 and 7 new rows; then 3, 2 and 1 more (their
  // texts of different lengths: the cascade's rows per module differ).
  std::vector<MtpHeads> together(3, proto), alone(3, proto);
  const int first[3] = {4, 0, 7}, second[3] = {3, 2, 1};
  for (const int* counts : {first, second}) {
    std::vector<float> root_t(3 * d, -1.0f), root_a(3 * d, -1.0f);
    std::vector<MtpHeads::Commit> parts;
    std::vector<std::vector<std::int32_t>> texts;
    for (int r = 0; r < 3; ++r) {
      const int at = alone[std::size_t(r)].committed();
      texts.emplace_back(text.begin(), text.begin() + at + counts[r] + 1);
    }
    for (int r = 0; r < 3; ++r) {
      const int at = alone[std::size_t(r)].committed();
      alone[std::size_t(r)].commit(t.w, f.data() + std::size_t(at) * d, counts[r], texts[std::size_t(r)],
                                   root_a.data() + std::size_t(r) * d);
      parts.push_back({&together[std::size_t(r)], f.data() + std::size_t(at) * d, counts[r],
                       texts[std::size_t(r)].data(), int(texts[std::size_t(r)].size()),
                       root_t.data() + std::size_t(r) * d});
    }
    MtpHeads::commit_together(t.w, parts.data(), 3);
    CHECK(root_t == root_a);
    for (int r = 0; r < 3; ++r)
      for (int k = 1; k <= 3; ++k)
        CHECK(together[std::size_t(r)].committed(k) == alone[std::size_t(r)].committed(k));
  }
  // Draft levels read the committed rows: equal too.
  const std::vector<std::int32_t> drafts = {11};
  std::vector<float> in(d, 0.25f), out_t(d), out_a(d);
  together[2].expand(2, t.w, in.data(), drafts.data(), 1, out_t.data());
  alone[2].expand(2, t.w, in.data(), drafts.data(), 1, out_a.data());
  CHECK(out_t == out_a);
  // A part asking past its text is refused before any module of any part changes.
  const int before = together[0].committed(1), before2 = together[0].committed(2);
  std::vector<MtpHeads::Commit> bad{{&together[0], f.data(), 1, text.data(), int(text.size()), nullptr},
                                    {&together[1], f.data(), 50, text.data(), int(text.size()), nullptr}};
  CHECK_THROWS_WITH(MtpHeads::commit_together(t.w, bad.data(), 2),
                    Catch::Contains("need more than 11 tokens"));
  CHECK(together[0].committed(1) == before);
  CHECK(together[0].committed(2) == before2);
  // A token outside the vocabulary that only a later module would read is
  // refused before module 1 commits: 3 rows from position 0, module 1 reads
  // tokens 1..3, module 2 tokens 2..4, module 3 tokens 3..5.
  MtpHeads fresh = proto;
  std::vector<std::int32_t> poisoned = text;
  poisoned[5] = s.vocab;
  MtpHeads::Commit one{&fresh, f.data(), 3, poisoned.data(), int(poisoned.size()), nullptr};
  CHECK_THROWS_WITH(MtpHeads::commit_together(t.w, &one, 1), Catch::Contains("outside the vocabulary"));
  CHECK(fresh.committed(1) == 0);
  poisoned[5] = text[5];  // the same call with the token put right commits all three modules
  MtpHeads::commit_together(t.w, &one, 1);
  CHECK(fresh.committed(3) == 3);
}

TEST_CASE("MTP heads are built from compatible modules only") {
  CHECK_THROWS_WITH(MtpHeads(std::vector<EagleHead>{}), Catch::Contains("0 modules"));
  CHECK_THROWS_WITH(MtpHeads::random(1, 17, small_shape()), Catch::Contains("17 modules"));
  std::vector<EagleHead> no_norms{EagleHead::random(1, small_shape())};
  CHECK_THROWS_WITH(MtpHeads(no_norms), Catch::Contains("input norms"));
  EagleHeadShape other = small_shape();
  other.hidden_dim = 14;
  std::vector<EagleHead> mixed{MtpHeads::random(1, 1, small_shape()).module(0), MtpHeads::random(1, 1, other).module(0)};
  CHECK_THROWS_WITH(MtpHeads(mixed), Catch::Contains("shapes differ"));
  // An EAGLE file has no room for input norms.
  ScratchDir tmp;
  CHECK_THROWS_WITH(mixed[0].save((tmp.dir / "x.eagle").string()), Catch::Contains("no input norms"));
  CHECK_THROWS_WITH(MtpHeads().check_compatible(fastinfer::LlamaConfig{}), Catch::Contains("empty"));
}

TEST_CASE("FIMTPHDS round-trips in f32 and f16") {
  ScratchDir tmp;
  const MtpHeads h = random_heads(3, 5);
  for (bool f16 : {false, true}) {
    const std::string path = (tmp.dir / (f16 ? "h16.mtp" : "h32.mtp")).string();
    h.save(path, f16);
    const MtpHeads g = MtpHeads::load(path);
    REQUIRE(g.module_count() == 3);
    for (int k = 0; k < 3; ++k) {
      const EagleHead &a = h.module(k), &b = g.module(k);
      CHECK(b.weight_dtype() == (f16 ? fastinfer::DType::F16 : fastinfer::DType::F32));
      auto same = [&](float x, float y) { return f16 ? fastinfer::f16_to_f32(fastinfer::f32_to_f16(x)) == y : x == y; };
      for (int half = 0; half < 2; ++half)
        for (int i = 0; i < a.dim(); ++i) CHECK(same(a.input_norm(half)[i], b.input_norm(half)[i]));
      for (int tn = 0; tn < EagleHead::kTensorCount; ++tn)
        for (std::int64_t i = 0; i < a.rows(tn) * a.cols(tn); ++i) CHECK(same(a.tensor(tn)[i], b.tensor(tn)[i]));
    }
  }
}

TEST_CASE("MTP heads loader refuses malformed files with one line, before allocating") {
  ScratchDir tmp;
  const std::string good = (tmp.dir / "good.mtp").string();
  random_heads(2, 1).save(good);
  const std::string bytes = read_bytes(good);
  const std::string bad = (tmp.dir / "bad.mtp").string();
  auto with = [&](auto edit) {
    std::string b = bytes;
    edit(b);
    write_bytes(bad, b);
    return error_of(bad);
  };
  const std::size_t table = MtpHeads::kFixedBytes, entry = EagleHead::kEntryBytes;
  const std::size_t data = table + 2 * MtpHeads::kModuleTableBytes;
  CHECK(error_of(good) == "no error");
  CHECK_THAT(with([](std::string& b) { b[3] = 'X'; }), Catch::Contains("bad magic 'FIMXPHDS'"));
  CHECK_THAT(with([](std::string& b) { put_at<std::uint32_t>(b, 8, 3); }), Catch::Contains("MTP heads version 3"));
  CHECK_THAT(with([](std::string& b) { put_at<std::uint32_t>(b, 12, 0x7fffffffu); }),
             Catch::Contains("dim 2147483647 is outside"));
  CHECK_THAT(with([](std::string& b) { put_at<std::uint32_t>(b, 36, 2); }), Catch::Contains("weight dtype 2"));
  CHECK_THAT(with([](std::string& b) { put_at<std::uint32_t>(b, 52, 11); }), Catch::Contains("tensors per module 11"));
  CHECK_THAT(with([](std::string& b) { put_at<std::uint32_t>(b, 56, 0); }), Catch::Contains("module count 0"));
  // A huge module count is refused by its bound, not by reading a huge table.
  CHECK_THAT(with([](std::string& b) { put_at<std::uint32_t>(b, 56, 0xffffffffu); }),
             Catch::Contains("module count 4294967295 is outside [1, 16]"));
  CHECK_THAT(with([](std::string& b) { put_at<std::uint32_t>(b, 56, 3); }), Catch::Contains("bad.mtp"));
  CHECK_THAT(with([](std::string& b) { put_at<std::uint32_t>(b, 56, 1); }), Catch::Contains("tensor enorm at offset 892"));
  // Module 2's table: its hnorm renamed, its fc moved, its wq reshaped.
  CHECK_THAT(with([&](std::string& b) { b[table + 14 * entry] = 'x'; }),
             Catch::Contains("tensor 14 is named 'xnorm', expected 'hnorm'"));
  CHECK_THAT(with([&](std::string& b) { put_at<std::uint64_t>(b, table + 15 * entry + 24, 7); }),
             Catch::Contains("tensor fc at offset 7"));
  CHECK_THAT(with([&](std::string& b) { put_at<std::uint32_t>(b, table + 18 * entry + 16, 19); }),
             Catch::Contains("tensor wq is [19][20], the header's dims make it [18][20]"));
  CHECK_THAT(with([](std::string& b) { b.resize(b.size() - 2); }), Catch::Contains("truncated"));
  // Non-finite values: module 2's enorm, module 1's fc.
  const std::size_t module_bytes = (bytes.size() - data) / 2;
  CHECK_THAT(with([&](std::string& b) { put_at<float>(b, data + module_bytes + 4 * 3, NAN); }),
             Catch::Contains("non-finite value nan in module 2's enorm at element 3"));
  CHECK_THAT(with([&](std::string& b) { put_at<float>(b, data + 4 * 40 + 4, INFINITY); }),
             Catch::Contains("non-finite value inf in tensor fc at element 1"));
  CHECK_THAT(error_of((tmp.dir / "missing.mtp").string()), Catch::Contains("missing.mtp"));

  // Fuzz: every truncation, and every header or table byte set to 0xff or
  // 0x00 (or one bit flipped), loads or is refused with one FormatError line;
  // nothing else escapes (no bad_alloc, no crash under the sanitizers).
  int refused = 0;
  for (std::size_t n = 0; n < bytes.size(); n += (n < data ? 1 : 97)) {
    const std::string e = with([&](std::string& b) { b.resize(n); });
    INFO("truncated to " << n << ": " << e);
    CHECK(e.rfind("wrong exception", 0) != 0);
    CHECK(e != "no error");
    CHECK(e.find('\n') == std::string::npos);
  }
  for (std::size_t at = 0; at < data; ++at)
    for (int edit = 0; edit < 3; ++edit) {
      const std::string e = with([&](std::string& b) {
        b[at] = edit == 0 ? char(0xff) : edit == 1 ? char(0) : char(b[at] ^ (1 << (at % 8)));
      });
      INFO("byte " << at << " edit " << edit << ": " << e);
      CHECK(e.rfind("wrong exception", 0) != 0);
      CHECK(e.find('\n') == std::string::npos);
      refused += e != "no error";
    }
  CHECK(refused > int(data));  // most such edits break the file
}

TEST_CASE("MTP heads from a spec: random:SEED with its module count, pad:FILE, a file") {
  fastinfer::LlamaConfig c;
  c.dim = 20, c.vocab_size = 37, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 6, c.hidden_dim = 11;
  c.norm_eps = 1e-5f;
  const MtpHeads a = fastinfer::examples::mtp_heads_from_flag("random:7", c);
  const MtpHeads b = fastinfer::examples::mtp_heads_from_flag("random:7", c);
  const MtpHeads other = fastinfer::examples::mtp_heads_from_flag("random:8", c, 2);
  CHECK(a.module_count() == 4);
  CHECK(other.module_count() == 2);
  CHECK(std::vector<float>(a.module(3).tensor(EagleHead::kWq), a.module(3).tensor(EagleHead::kWq) + 20) ==
        std::vector<float>(b.module(3).tensor(EagleHead::kWq), b.module(3).tensor(EagleHead::kWq) + 20));
  CHECK(a.module(0).tensor(EagleHead::kWq)[0] != other.module(0).tensor(EagleHead::kWq)[0]);
  CHECK(a.module(0).tensor(EagleHead::kWq)[0] != a.module(1).tensor(EagleHead::kWq)[0]);  // modules differ
  CHECK_THROWS_WITH(fastinfer::examples::mtp_heads_from_flag("random:", c), Catch::Contains("MTP heads 'random:'"));
  ScratchDir tmp;
  const std::string path = (tmp.dir / "h.mtp").string();
  a.save(path);
  CHECK(fastinfer::examples::mtp_heads_from_flag(path, c).module_count() == 4);
  fastinfer::LlamaConfig wide = c;
  wide.dim = 28;
  CHECK_THROWS_WITH(fastinfer::examples::mtp_heads_from_flag(path, wide), Catch::Contains("has dim 20"));
  CHECK(fastinfer::examples::mtp_heads_from_flag("pad:" + path, wide).dim() == 28);
  // Narrower targets and other vocabularies: feature_head_from_flag's checks,
  // shared with EAGLE's flags and tested there.
}

TEST_CASE("zero-padded MTP heads draft on a widened target what the originals draft") {
  const EagleHeadShape s = small_shape();
  const int wide = 32;
  const std::size_t d = std::size_t(s.dim), dw = std::size_t(wide);
  Target t(s.dim, s.vocab, 1);
  Target tw(wide, s.vocab, 1);
  // The widened target: the same embedding in the first dim coordinates, zeros after.
  for (int v = 0; v < s.vocab; ++v)
    for (std::size_t j = 0; j < dw; ++j)
      tw.emb[std::size_t(v) * dw + j] = j < d ? t.emb[std::size_t(v) * d + j] : 0.0f;
  MtpHeads h = random_heads(3, 3);
  MtpHeads p = h.padded_to(wide);
  const std::vector<std::int32_t> text = {1, 4, 8, 15, 16, 23, 2};
  const auto f = random_features(6, s.dim, 12);
  std::vector<float> fw(6 * dw, 0.0f);
  for (std::size_t i = 0; i < 6; ++i) std::copy(f.begin() + long(i * d), f.begin() + long((i + 1) * d), fw.begin() + long(i * dw));
  std::vector<float> root(d), root_w(dw), out(d), out_w(dw), out3(d), out3_w(dw);
  h.commit(t.w, f.data(), 6, text, root.data());
  p.commit(tw.w, fw.data(), 6, text, root_w.data());
  const std::int32_t x = 9, y = 30;
  h.expand(2, t.w, root.data(), &x, 1, out.data());
  p.expand(2, tw.w, root_w.data(), &x, 1, out_w.data());
  h.expand(3, t.w, out.data(), &y, 1, out3.data());
  p.expand(3, tw.w, out_w.data(), &y, 1, out3_w.data());
  for (std::size_t j = 0; j < dw; ++j) {
    INFO("coordinate " << j);
    CHECK(root_w[j] == Approx(j < d ? root[j] : 0.0f).margin(1e-4));
    CHECK(out_w[j] == Approx(j < d ? out[j] : 0.0f).margin(1e-4));
    CHECK(out3_w[j] == Approx(j < d ? out3[j] : 0.0f).margin(1e-4));
  }
}
