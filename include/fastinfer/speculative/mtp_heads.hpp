// MtpHeads: DeepSeek-V3's multi-token-prediction modules (§2.2), trained on
// a frozen target, as a drafter. Module k (1..D) at position i reads the
// previous module's output h^{k-1}_i (h^0 = the target's feature f_i, its
// residual stream before the final norm) and the embedding of token i + k:
//
//   h^k_i = Layer_k([RMSNorm(emb(t_{i+k}), enorm_k) ; RMSNorm(h^{k-1}_i, hnorm_k)])
//
// and gives token i + k + 1 through the target's own final norm and
// classifier. Layer_k is exactly an EAGLE head's layer (eagle_head.hpp: fc
// over [embedding ; feature] + bias, one decoder block with its own KV) with
// input norms: a module IS an EagleHead, and so are its loader checks, its
// f16 compute and its zero-padding. (DeepSeek concatenates [h ; emb]; the
// order here is EAGLE's, the same function.) What differs from EAGLE: D
// separate modules, one per tree level, instead of one head applied again.
//
// Positions and KV. With the text t_0..t_{L-1} and the target's features of
// positions 0..L-2 (the last token not yet through the target), module k
// holds committed rows i = 0..L-1-k (row i needs token i + k), each from
// module k-1's committed output at i: commit_accepted() cascades new rows
// through the modules in order. Module 1's last output h^1_{L-2} is the root
// whose classifier gives the depth-1 drafts; tree level d >= 2 is module d at
// position L - 2, reading its parent node's feature and token. That row
// attends to module d's committed rows (up to L - 1 - d) and itself: the
// rows between would need drafted tokens (tools/train_mtp.py trains with
// that mask). The tree is therefore at most D deep.
//
// File format FIMTPHDS (little-endian), version 1:
//   offset  0  char[8]  magic "FIMTPHDS"
//           8  .. 51    as FIEAGLEH (eagle_head.hpp): version (1), dim, vocab,
//                       n_heads, n_kv_heads, head_dim, hidden_dim, dtype
//                       (0 f32, 1 f16), flags (0), norm_eps, rope_theta: one
//                       shape for every module, the same bounds
//          52  u32      tensors per module (13)
//          56  u32      module count D, 1 .. 16
//          60  tensor table, D x 13 entries of 32 bytes (char[16] name, u32
//              rows, u32 cols, u64 offset): per module, in order,
//                enorm [1][dim], hnorm [1][dim], then FIEAGLEH's 11 tensors
//                (fc .. w_down, same shapes and order)
//              then the tensors, row-major, contiguous in table order from
//              60 + D * 416, the file ending right after the last.
// Every field is checked with a one-line FormatError naming the file, the
// field and the value; D is bounded before the table is read and the file's
// size is checked against the whole table before any weight is allocated;
// non-finite weights are refused.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/core/mapped_file.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/model/weights.hpp"
#include "fastinfer/speculative/eagle_head.hpp"
#include "fastinfer/speculative/head_file.hpp"

namespace fastinfer::speculative {

class MtpHeads {
 public:
  static constexpr char kMagic[8] = {'F', 'I', 'M', 'T', 'P', 'H', 'D', 'S'};
  static constexpr int kMaxModules = 16;
  static constexpr int kTensorsPerModule = 2 + EagleHead::kTensorCount;  // enorm, hnorm, the layer's 11
  static constexpr std::size_t kFixedBytes = 60;
  static constexpr std::size_t kModuleTableBytes = std::size_t(kTensorsPerModule) * EagleHead::kEntryBytes;  // 416

  MtpHeads() = default;
  // Takes modules that all have input norms and one shape.
  explicit MtpHeads(std::vector<EagleHead> modules) : modules_(std::move(modules)) {
    FASTINFER_CHECK(!modules_.empty() && int(modules_.size()) <= kMaxModules, InvalidArgument, "MTP: ",
                    modules_.size(), " modules (must be 1 .. ", kMaxModules, ")");
    for (const EagleHead& m : modules_) {
      FASTINFER_CHECK(!m.empty() && m.has_input_norms(), InvalidArgument,
                      "MTP: every module needs weights and input norms");
      const EagleHeadShape &a = m.shape(), &b = modules_[0].shape();
      FASTINFER_CHECK(a.dim == b.dim && a.vocab == b.vocab && a.n_heads == b.n_heads && a.n_kv_heads == b.n_kv_heads &&
                          a.head_dim == b.head_dim && a.hidden_dim == b.hidden_dim && a.norm_eps == b.norm_eps &&
                          a.rope_theta == b.rope_theta,
                      InvalidArgument, "MTP: the modules' shapes differ");
    }
    outputs_.resize(modules_.size());
  }

  int module_count() const { return int(modules_.size()); }
  bool empty() const { return modules_.empty(); }
  const EagleHead& module(int k) const { return modules_[std::size_t(check_module_(k))]; }
  EagleHead& module(int k) { return modules_[std::size_t(check_module_(k))]; }
  int dim() const { return empty() ? 0 : modules_[0].dim(); }
  // The deepest tree the modules draft (level d is module d).
  int max_depth() const { return module_count(); }

  void check_compatible(const LlamaConfig& c) const {
    FASTINFER_CHECK(!empty(), InvalidArgument, "the MTP heads are empty (load or build them first)");
    for (const EagleHead& m : modules_) m.check_compatible(c);
  }

  // ---- state: each module's committed rows (see the file comment) -----------

  void reset() {
    for (EagleHead& m : modules_) m.reset();
    for (std::vector<float>& o : outputs_) o.clear();
  }
  void clear_tree() {
    for (EagleHead& m : modules_) m.clear_tree();
  }
  // Committed rows of module k (1-based, as in the file comment).
  int committed(int k) const { return module(k - 1).committed(); }
  // Positions whose target features the modules have read (module 1's rows).
  int committed() const { return committed(1); }

  // New target features of positions committed(1) .. + n - 1 (features
  // [n][dim]); seq is the whole text so far. Module 1 commits those rows;
  // module k >= 2 every row whose token i + k is in seq and whose input
  // (module k-1's output at i) exists. root [dim] receives module 1's last
  // output (the predicted feature of position committed(1)).
  void commit(const LlamaWeights& w, const float* features, int n, const std::vector<std::int32_t>& seq, float* root,
              int threads = 1) {
    Commit part{this, features, n, seq.data(), int(seq.size()), root};
    commit_together(w, &part, 1, threads);
  }

  // One request's commit() (seq: tokens[0 .. n_tokens)).
  struct Commit {
    MtpHeads* heads = nullptr;
    const float* features = nullptr;
    int n = 0;
    const std::int32_t* tokens = nullptr;
    int n_tokens = 0;
    float* root = nullptr;
  };
  // commit() of several requests' copies of the same modules (an Engine
  // step's MTP requests): module by module, each module's rows of every
  // request in one forward (EagleHead::commit_all_together), so each
  // module's weights stream once a step, not once per request. A request's
  // rows and root are what its own commit() gives wherever the products are
  // batch invariant. Every part is checked before any module changes.
  static void commit_together(const LlamaWeights& w, Commit* parts, int count, int threads = 1) {
    if (count <= 0) return;
    for (int p = 0; p < count; ++p) {
      const Commit& c = parts[p];
      FASTINFER_CHECK(c.heads != nullptr && !c.heads->empty(), InvalidArgument, "MTP: commit part ", p,
                      " names no heads");
      FASTINFER_CHECK(c.heads->module_count() == parts[0].heads->module_count(), InvalidArgument,
                      "MTP: commit parts with ", parts[0].heads->module_count(), " and ",
                      c.heads->module_count(), " modules");
      FASTINFER_CHECK(c.n >= 0 && c.heads->committed(1) + c.n < c.n_tokens, InvalidArgument, "MTP: ", c.n,
                      " rows past position ", c.heads->committed(1), " need more than ", c.n_tokens,
                      " tokens");
      // Every token a module may read this call (module m reads up to m
      // positions past module 1's last), so that a bad one stops the call
      // before module 1 commits, not halfway down the cascade.
      const int first = c.heads->committed(1) + 1;
      const int end = std::min(c.n_tokens, first + c.n + c.heads->module_count() - 1);
      for (int i = first; i < end; ++i)
        FASTINFER_CHECK(c.tokens[i] >= 0 && c.tokens[i] < w.token_embedding.rows, InvalidArgument,
                        "MTP: token ", c.tokens[i], " at position ", i, " is outside the vocabulary [0, ",
                        w.token_embedding.rows, ")");
    }
    const std::size_t d = std::size_t(parts[0].heads->dim());
    const int last = parts[0].heads->module_count() - 1;
    std::vector<EagleHead::Rows>& rows = parts[0].heads->commit_rows_;
    for (int m = 0; m <= last; ++m) {
      // Nobody reads the last module's committed outputs (unless it is module 1).
      const bool outputs = m < last || m == 0;
      rows.clear();
      for (int p = 0; p < count; ++p) {
        MtpHeads& h = *parts[p].heads;
        EagleHead& mod = h.modules_[std::size_t(m)];
        const int p0 = mod.committed();
        // Row i of module m (0-based) reads token i + m + 1 and input row i.
        const int avail = m == 0 ? p0 + parts[p].n : h.modules_[std::size_t(m - 1)].committed();
        const int p1 = std::min(avail, parts[p].n_tokens - 1 - m);
        if (p1 <= p0) continue;
        const float* in =
            m == 0 ? parts[p].features : h.outputs_[std::size_t(m - 1)].data() + std::size_t(p0) * d;
        float* out = nullptr;
        if (outputs) {
          h.outputs_[std::size_t(m)].resize(std::size_t(p1) * d);
          out = h.outputs_[std::size_t(m)].data() + std::size_t(p0) * d;
        }
        rows.push_back(EagleHead::Rows{&mod, in, parts[p].tokens + p0 + m + 1, p1 - p0, out});
      }
      if (outputs)
        EagleHead::commit_all_together(w, rows.data(), int(rows.size()), threads);
      else
        EagleHead::commit_together(w, rows.data(), int(rows.size()), threads);
    }
    for (int p = 0; p < count; ++p) {
      const std::vector<float>& o1 = parts[p].heads->outputs_[0];
      if (parts[p].root != nullptr && !o1.empty()) std::copy(o1.end() - long(d), o1.end(), parts[p].root);
    }
  }

  // Tree level `level` (2 .. max_depth()): module `level` at the target's
  // last position, one row per node (features: the parents' drafted
  // features, tokens: the nodes' tokens); out [n][dim].
  void expand(int level, const LlamaWeights& w, const float* features, const std::int32_t* tokens, int n, float* out,
              int threads = 1) {
    EagleHead::TreeRows part = level_rows(level, features, tokens, n, out);
    EagleHead::expand_together(w, &part, 1, threads);
  }
  // expand()'s rows as a part of EagleHead::expand_together (level by level,
  // several requests' heads drafting at once); valid until the next call.
  EagleHead::TreeRows level_rows(int level, const float* features, const std::int32_t* tokens, int n,
                                 float* out) {
    FASTINFER_CHECK(level >= 2 && level <= max_depth(), InvalidArgument, "MTP: tree level ", level, " needs module ",
                    level, ", the heads have ", module_count());
    EagleHead& mod = modules_[std::size_t(level - 1)];
    parentless_.assign(std::size_t(n), -1);  // a module serves one level: its rows' parents are other modules'
    return EagleHead::TreeRows{
        {&mod, features, tokens, n, out}, parentless_.data(), committed(1) - 1 - mod.committed()};
  }

  // ---- files ------------------------------------------------------------------

  static MtpHeads load(const std::string& path) {
    using head_file::load_u32;
    const auto file = MappedFile::open(path);
    const std::uint8_t* h = file->at(0, kFixedBytes, "MTP heads header");
    FASTINFER_CHECK(std::memcmp(h, kMagic, 8) == 0, FormatError, path, ": not an MTP heads file (bad magic '",
                    head_file::printable(h, 8), "', expected 'FIMTPHDS')");
    std::uint32_t dtype = 0;
    const EagleHeadShape s = EagleHead::read_header(path, h, "MTP heads", dtype);
    const std::uint32_t per = load_u32(h + 52), count = load_u32(h + 56);
    FASTINFER_CHECK(per == std::uint32_t(kTensorsPerModule), FormatError, path, ": tensors per module ", per,
                    " (expected ", kTensorsPerModule, ")");
    FASTINFER_CHECK(count >= 1 && count <= std::uint32_t(kMaxModules), FormatError, path, ": module count ", count,
                    " is outside [1, ", kMaxModules, "]");
    const int D = int(count);
    // The whole table against the shape, and the file's size against it,
    // before any module is allocated.
    const std::uint8_t* table = file->at(kFixedBytes, std::size_t(D) * kModuleTableBytes, "MTP heads tensor table");
    const EagleHead shape_only = EagleHead::shape_of(s);
    const std::uint64_t data_start = kFixedBytes + std::uint64_t(D) * kModuleTableBytes;
    std::uint64_t expected = data_start;
    for (int m = 0; m < D; ++m) {
      for (int t = 0; t < kTensorsPerModule; ++t) {
        const int index = m * kTensorsPerModule + t;
        const std::uint8_t* e = table + std::size_t(index) * EagleHead::kEntryBytes;
        if (t < 2)
          expected = EagleHead::check_entry(path, index, e, kNormNames[t], 1, s.dim, expected, dtype);
        else
          expected = EagleHead::check_entry(path, index, e, EagleHead::kTensorNames[std::size_t(t - 2)],
                                            shape_only.rows(t - 2), shape_only.cols(t - 2), expected, dtype);
      }
    }
    EagleHead::check_file_size(path, file->size(), expected);
    const std::size_t elem = dtype == EagleHead::kDTypeF32 ? 4 : 2;
    std::vector<EagleHead> modules;
    std::uint64_t at = data_start;
    std::vector<float> norms(std::size_t(2) * std::size_t(s.dim));
    for (int m = 0; m < D; ++m) {
      EagleHead mod(s);
      const std::uint8_t* p = file->at(at, std::size_t(expected - at), "MTP heads weights");
      EagleHead::read_values(p, dtype, norms.size(), norms.data());
      for (std::size_t i = 0; i < norms.size(); ++i) {
        FASTINFER_CHECK(std::isfinite(norms[i]), FormatError, path, ": non-finite value ", norms[i], " in module ",
                        m + 1, "'s ", kNormNames[i / std::size_t(s.dim)], " at element ", i % std::size_t(s.dim));
      }
      mod.read_weights(path, p + norms.size() * elem, dtype);
      mod.set_input_norms(norms.data(), norms.data() + s.dim);
      at += (norms.size() + mod.values()) * elem;
      modules.push_back(std::move(mod));
    }
    return MtpHeads(std::move(modules));
  }

  // Writes the heads in the format above (f32, or f16 when `f16`).
  void save(const std::string& path, bool f16 = false) const {
    FASTINFER_CHECK(!empty(), InvalidArgument, "cannot save empty MTP heads to ", path);
    const EagleHead& first = modules_[0];
    const int D = module_count(), dim = first.dim();
    std::vector<char> bytes(kFixedBytes + std::size_t(D) * kModuleTableBytes, 0);
    std::memcpy(bytes.data(), kMagic, 8);
    first.write_header(bytes.data(), f16);
    head_file::store_u32(bytes.data() + 52, std::uint32_t(kTensorsPerModule));
    head_file::store_u32(bytes.data() + 56, std::uint32_t(D));
    std::uint64_t off = bytes.size();
    for (int m = 0; m < D; ++m) {
      const EagleHead& mod = modules_[std::size_t(m)];
      char* e = bytes.data() + kFixedBytes + std::size_t(m) * kModuleTableBytes;
      for (int t = 0; t < kTensorsPerModule; ++t, e += EagleHead::kEntryBytes)
        off = t < 2 ? EagleHead::write_entry(e, kNormNames[t], 1, dim, off, f16)
                    : EagleHead::write_entry(e, EagleHead::kTensorNames[std::size_t(t - 2)], mod.rows(t - 2),
                                             mod.cols(t - 2), off, f16);
    }
    for (const EagleHead& mod : modules_) {
      for (int half = 0; half < 2; ++half) {
        EagleHead::append_values(bytes, mod.input_norm(half), std::size_t(dim), f16);
      }
      mod.append_weights(bytes, f16);
    }
    EagleHead::write_file(path, bytes, "MTP heads");
  }

  // D random modules (Philox(seed + k)): EagleHead::random's layers with
  // input norms 1. Poor drafters, exactly what exactness tests need.
  static MtpHeads random(std::uint64_t seed, int modules, const EagleHeadShape& shape) {
    FASTINFER_CHECK(modules >= 1 && modules <= kMaxModules, InvalidArgument, "MTP: ", modules,
                    " modules (must be 1 .. ", kMaxModules, ")");
    std::vector<EagleHead> out;
    const std::vector<float> ones(std::size_t(shape.dim), 1.0f);
    for (int k = 0; k < modules; ++k) {
      out.push_back(EagleHead::random(seed + std::uint64_t(k), shape));
      out.back().set_input_norms(ones.data(), ones.data());
    }
    return MtpHeads(std::move(out));
  }

  // The same heads on a target widened to `dim` (EagleHead::padded_to per
  // module, input norms included).
  MtpHeads padded_to(int dim) const {
    FASTINFER_CHECK(!empty(), InvalidArgument, "cannot pad empty MTP heads");
    std::vector<EagleHead> out;
    for (const EagleHead& m : modules_) out.push_back(m.padded_to(dim));
    return MtpHeads(std::move(out));
  }

 private:
  static constexpr const char* kNormNames[2] = {"enorm", "hnorm"};

  int check_module_(int k) const {
    FASTINFER_CHECK(k >= 0 && k < module_count(), InvalidArgument, "MTP module ", k, " is outside [0, ",
                    module_count(), ")");
    return k;
  }

  std::vector<EagleHead> modules_;
  // outputs_[m]: module m's committed outputs by position [committed][dim]
  // (the next module's inputs; module 0's last row is the root). The last
  // module's stay empty (unless it is module 0).
  std::vector<std::vector<float>> outputs_;
  std::vector<int> parentless_;
  std::vector<EagleHead::Rows> commit_rows_;  // commit_together's scratch (the first part's)
};

// The template side of eagle_generate.hpp's tree builder and loop.
inline EagleHead::TreeRows level_rows(MtpHeads& heads, int level, const float* features,
                                      const std::int32_t* tokens, const int* /*parent_rows*/, int n,
                                      float* out) {
  return heads.level_rows(level, features, tokens, n, out);
}
inline int max_tree_depth(const MtpHeads& heads) { return heads.max_depth(); }
inline void commit_accepted(MtpHeads& heads, const LlamaWeights& w, const float* features, int n,
                            const std::vector<std::int32_t>& seq, float* root, int threads) {
  heads.commit(w, features, n, seq, root, threads);
}

}  // namespace fastinfer::speculative
