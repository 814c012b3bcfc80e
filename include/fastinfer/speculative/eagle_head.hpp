// EagleHead (Li et al. 2024, EAGLE-1/2): a one-layer decoder that drafts in
// the target's FEATURE space. The feature f_t is the target's residual stream
// after its last layer and BEFORE the final RMSNorm at position t
// (LlamaModel::last_features()); the target turns it into the distribution of
// token t + 1 with its own final norm and classifier, and so does the head
// (EAGLE shares the LM head: the head stores no vocabulary-sized matrix).
//
// Row for position t, given f_t and the embedding e of token t + 1:
//
//   x  = W_fc [e ; f_t] + b_fc                      W_fc [dim][2 dim]
//   x += W_o  Attn(RoPE(W_q n), RoPE(W_k n), W_v n)  n = RMSNorm(x, attn_norm)
//   x += W_down (SiLU(W_gate m) * W_up m)            m = RMSNorm(x, ffn_norm)
//   f'_{t+1} = x                                     the predicted next feature
//
// Attention runs over the head's OWN keys and values: one entry per position
// it has read (committed rows: the target's true features of the accepted
// text) plus, while a draft tree grows, one entry per expanded tree node that
// only the node's descendants see. Draft tokens for position t + 2 are the
// top of softmax(classifier(final_norm(f'_{t+1}))) (lm_logits below).
// RoPE is interleaved (llama2.c's pairs), at the row's position, whatever the
// target's style: it is the head's own attention.
//
// Compute: plain host code over the CPU kernels (cpu::matvec / matmul,
// rmsnorm, rope, swiglu) with the model's threads: on the CPU these are the
// calls CpuBackend::linear makes. All rows of a tree level go through one
// product per matrix. A head read from an f16 file keeps its matrices in f16
// for the products (weight_dtype()): every draft level streams the whole
// layer, so on a 110M stand-in (the padded head is 8 MB in f32) half the
// bytes is a visibly cheaper step, and the values are exactly the file's.
// A device backend would need the head's weights uploaded (not done).
//
// Copies share the weights (copy-on-write: a write through tensor(),
// set_weight_dtype() or set_input_norms() first clones them) and own their
// KV rows: a head per sequence costs its rows, not another layer.
//
// File format (little-endian), version 1:
//   offset  0  char[8]  magic "FIEAGLEH"
//           8  u32      version (1)
//          12  u32      dim          target hidden size        1 .. 65536
//          16  u32      vocab        target vocabulary         1 .. 2^24
//          20  u32      n_heads      the head's query heads    1 .. 1024
//          24  u32      n_kv_heads   divides n_heads
//          28  u32      head_dim     even, 2 .. 1024; n_heads * head_dim <= 65536
//          32  u32      hidden_dim   the head's MLP width      1 .. 2^20
//          36  u32      dtype        0 = f32, 1 = f16 (widened to f32 on load)
//          40  u32      flags        0 (no flag defined)
//          44  f32      norm_eps     the head's RMSNorm eps, finite, (0, 1)
//          48  f32      rope_theta   finite, > 0
//          52  u32      tensor count (11)
//          56  tensor table, 11 entries of 32 bytes:
//                char[16] name (NUL-padded), u32 rows, u32 cols, u64 offset
//              in this order and shape:
//                fc [dim][2 dim] (input: embedding first, then feature),
//                fc_bias [1][dim], attn_norm [1][dim], wq [n_heads*head_dim][dim],
//                wk [n_kv_heads*head_dim][dim], wv (as wk), wo [dim][n_heads*head_dim],
//                ffn_norm [1][dim], w_gate [hidden][dim], w_up [hidden][dim],
//                w_down [dim][hidden]
//         408  the tensors, row-major, each at its table offset: contiguous in
//              table order from 408, the file ending right after the last.
// Every field is checked (a FormatError naming the file, the field and the
// value), and the file's size against what the header implies BEFORE any
// weight is allocated; non-finite weights are refused.
//
// Input norms (set_input_norms; MTP modules, mtp_heads.hpp): when set, the
// two halves of fc's input are RMS-normalised first, [RMSNorm(e, enorm) ;
// RMSNorm(f_t, hnorm)] (DeepSeek-V3's MTP module input), with the head's eps.
// FIEAGLEH has no field for them: save() refuses such a head.
//
// "random:SEED" (examples/common/eagle_flags.hpp) builds a head of the
// model's layer shape whose fc passes the feature through and whose layer adds
// small random terms: a poor drafter (it guesses the token the model just
// predicted), exactly what exactness tests need. "pad:FILE" zero-pads a head
// trained on a model to its inflated stand-in (model/inflate.hpp): the
// target's extra feature and embedding coordinates are exactly zero, so fc
// gains zero rows and columns, every matrix zero columns (and wo / w_down zero
// rows), and the two norms are rescaled as inflate.hpp rescales the model's
// (weights x sqrt(d_old / d_new), eps x d_old / d_new) so that the original
// coordinates normalise as before: the predicted feature is the original one
// followed by zeros.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/mapped_file.hpp"
#include "fastinfer/core/philox.hpp"
#include "fastinfer/core/rope_style.hpp"
#include "fastinfer/core/tensor.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/model/weights.hpp"
#include "fastinfer/speculative/head_file.hpp"

namespace fastinfer::speculative {

struct EagleHeadShape {
  int dim = 0;         // the target's hidden size
  int vocab = 0;       // the target's vocabulary (only checked: the LM head is the target's)
  int n_heads = 0;     // the head's attention
  int n_kv_heads = 0;
  int head_dim = 0;
  int hidden_dim = 0;  // the head's MLP width
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }

  // The target's own layer shape (random heads use it).
  static EagleHeadShape like(const LlamaConfig& c) {
    return EagleHeadShape{c.dim, c.vocab_size, c.n_heads, c.n_kv_heads, c.head_dim, c.hidden_dim, c.norm_eps,
                          c.rope_theta};
  }
  // The bounds the file format promises (see above); `what` prefixes errors.
  template <typename Error = InvalidArgument>
  void validate(const std::string& what) const {
    FASTINFER_CHECK(dim >= 1 && dim <= (1 << 16), Error, what, "dim ", dim, " is outside [1, 65536]");
    FASTINFER_CHECK(vocab >= 1 && vocab <= (1 << 24), Error, what, "vocab ", vocab, " is outside [1, 16777216]");
    FASTINFER_CHECK(n_heads >= 1 && n_heads <= 1024, Error, what, "n_heads ", n_heads, " is outside [1, 1024]");
    FASTINFER_CHECK(n_kv_heads >= 1 && n_kv_heads <= n_heads && n_heads % n_kv_heads == 0, Error, what,
                    "n_kv_heads ", n_kv_heads, " does not divide n_heads ", n_heads);
    FASTINFER_CHECK(head_dim >= 2 && head_dim <= 1024 && head_dim % 2 == 0, Error, what, "head_dim ", head_dim,
                    " is not even in [2, 1024]");
    FASTINFER_CHECK(q_dim() <= (1 << 16), Error, what, "n_heads * head_dim = ", q_dim(), " exceeds 65536");
    FASTINFER_CHECK(hidden_dim >= 1 && hidden_dim <= (1 << 20), Error, what, "hidden_dim ", hidden_dim,
                    " is outside [1, 1048576]");
    FASTINFER_CHECK(std::isfinite(norm_eps) && norm_eps > 0.0f && norm_eps < 1.0f, Error, what, "norm_eps ",
                    norm_eps, " is not in (0, 1)");
    FASTINFER_CHECK(std::isfinite(rope_theta) && rope_theta > 0.0f, Error, what, "rope_theta ", rope_theta,
                    " is not a positive number");
  }
};

class EagleHead {
 public:
  static constexpr char kMagic[8] = {'F', 'I', 'E', 'A', 'G', 'L', 'E', 'H'};
  static constexpr std::uint32_t kVersion = 1;
  static constexpr std::uint32_t kDTypeF32 = 0, kDTypeF16 = 1;
  static constexpr std::size_t kFixedBytes = 56, kEntryBytes = 32, kNameBytes = 16;
  enum Tensor : int { kFc, kFcBias, kAttnNorm, kWq, kWk, kWv, kWo, kFfnNorm, kWGate, kWUp, kWDown, kTensorCount };
  static constexpr std::size_t kHeaderBytes = kFixedBytes + kTensorCount * kEntryBytes;  // 408
  static constexpr std::array<const char*, kTensorCount> kTensorNames = {
      "fc", "fc_bias", "attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w_gate", "w_up", "w_down"};

  EagleHead() = default;
  // A zero head of this shape.
  explicit EagleHead(const EagleHeadShape& shape) : s_(shape) {
    s_.validate("EAGLE head: ");
    std::size_t off = 0;
    for (int t = 0; t < kTensorCount; ++t) {
      offset_[std::size_t(t)] = off;
      off += std::size_t(rows(t)) * std::size_t(cols(t));
    }
    own_weights_().f32.assign(off, 0.0f);
  }

  const EagleHeadShape& shape() const { return s_; }
  int dim() const { return s_.dim; }
  bool empty() const { return !w_ || w_->f32.empty(); }
  // Whether this head and `other` read the same weights (copies share them
  // until one is written).
  bool shares_weights_with(const EagleHead& other) const { return w_ == other.w_; }

  // Rows and columns of tensor t (norms and the bias are one row).
  std::int64_t rows(int t) const {
    switch (t) {
      case kFc: case kWo: case kWDown: return s_.dim;
      case kWq: return s_.q_dim();
      case kWk: case kWv: return s_.kv_dim();
      case kWGate: case kWUp: return s_.hidden_dim;
      default: return 1;
    }
  }
  std::int64_t cols(int t) const {
    switch (t) {
      case kFc: return 2 * std::int64_t(s_.dim);
      case kWo: return s_.q_dim();
      case kWDown: return s_.hidden_dim;
      default: return s_.dim;
    }
  }
  // The f32 master copy of tensor t (what save() writes and tests read).
  // Writes through tensor() reach the products only while weight_dtype() is
  // F32: set the dtype after the last write.
  float* tensor(int t) {
    const std::size_t at = offset_[std::size_t(check_tensor_(t))];
    return own_weights_().f32.data() + at;
  }
  const float* tensor(int t) const { return w_->f32.data() + offset_[std::size_t(check_tensor_(t))]; }
  // Tensor t as the products read it: the f32 master, or its f16 / bf16 copy.
  MatrixView matrix(int t) const {
    if (w_->half.empty()) return MatrixView{DType::F32, tensor(t), rows(t), cols(t)};
    return MatrixView{w_->half_dtype, w_->half.data() + offset_[std::size_t(check_tensor_(t))], rows(t),
                      cols(t)};
  }

  // The dtype the head's matrices are read in: F32, F16 or BF16. A head
  // loaded from an f16 file computes in f16 (load() sets it): its f16 values
  // are exactly the file's, and every draft level streams the layer's
  // weights, so half the bytes is a cheaper draft at no loss against the
  // file. BF16 (rounded to nearest even from the f32 master) is for a target
  // with bf16 weights on AMX (backend_cpu.md): in the bf16-activation mode
  // the head's products then take the AMX tiles too. Products accumulate in
  // f32; the dtype moves drafts, never the target's outputs.
  DType weight_dtype() const { return w_->half.empty() ? DType::F32 : w_->half_dtype; }
  void set_weight_dtype(DType dtype) {
    FASTINFER_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16, InvalidArgument,
                    "an EAGLE head computes in f32, f16 or bf16, not ", dtype_name(dtype));
    Weights& w = own_weights_();
    w.half.clear();
    w.half_dtype = dtype;
    if (dtype == DType::F32) return;
    w.half.resize(w.f32.size());
    for (std::size_t i = 0; i < w.f32.size(); ++i)
      w.half[i] = dtype == DType::F16 ? f32_to_f16(w.f32[i]) : f32_to_bf16(w.f32[i]);
  }

  // The input norms (see the file comment): enorm for the embedding half,
  // hnorm for the feature half, [dim] each; has_input_norms() after.
  void set_input_norms(const float* enorm, const float* hnorm) {
    FASTINFER_CHECK(!empty(), InvalidArgument, "cannot give an empty EAGLE head input norms");
    Weights& w = own_weights_();
    w.input_norms.assign(enorm, enorm + s_.dim);
    w.input_norms.insert(w.input_norms.end(), hnorm, hnorm + s_.dim);
  }
  bool has_input_norms() const { return !w_->input_norms.empty(); }
  // 0: enorm, 1: hnorm (null without input norms).
  const float* input_norm(int which) const {
    return w_->input_norms.empty() ? nullptr
                                   : w_->input_norms.data() + std::size_t(which != 0) * std::size_t(s_.dim);
  }

  // The head must read this model's features and embeddings.
  void check_compatible(const LlamaConfig& c) const {
    FASTINFER_CHECK(!empty(), InvalidArgument, "the EAGLE head is empty (load or build one first)");
    FASTINFER_CHECK(s_.dim == c.dim, InvalidArgument, "the EAGLE head has dim ", s_.dim,
                    ", the model's hidden size is ", c.dim);
    FASTINFER_CHECK(s_.vocab == c.vocab_size, InvalidArgument, "the EAGLE head has vocabulary ", s_.vocab,
                    ", the model's is ", c.vocab_size);
  }

  // ---- the head's own KV: committed rows, then tree rows -------------------

  void reset() {
    committed_ = 0;
    clear_tree();
  }
  // Positions read from the target so far (the committed rows 0..committed()-1).
  int committed() const { return committed_; }
  void truncate(int n) {
    FASTINFER_CHECK(n >= 0 && n <= committed_, InvalidArgument, "EAGLE head: cannot truncate ", committed_,
                    " committed rows to ", n);
    committed_ = n;
    clear_tree();
  }
  void clear_tree() {
    tree_parent_.clear();
    tree_depth_.clear();
  }
  int tree_rows() const { return int(tree_parent_.size()); }

  // Appends n committed rows at positions committed()..: row i reads
  // features[i] (the target's feature at that position, [n][dim]) and the
  // embedding of next_tokens[i] (the token after that position). Drops any
  // tree rows. out_last, when not null, receives the predicted feature of the
  // last row ([dim]); only that row runs the whole layer (the others need
  // only their keys and values).
  void commit(const LlamaWeights& target, const float* features, const std::int32_t* next_tokens, int n,
              float* out_last, int threads = 1) {
    Rows part{this, features, next_tokens, n, out_last};
    commit_together_(target, &part, 1, /*all=*/false, threads);
  }
  // As commit(), with every row's predicted feature in out [n][dim] (an MTP
  // module's outputs are the next module's inputs).
  void commit_all(const LlamaWeights& target, const float* features, const std::int32_t* next_tokens, int n,
                  float* out, int threads = 1) {
    Rows part{this, features, next_tokens, n, out};
    commit_together_(target, &part, 1, /*all=*/true, threads);
  }

  // Adds n tree rows and returns their predicted features (out [n][dim]).
  // Row i reads features[i] and the embedding of tokens[i]; parent_rows[i] is
  // -1 (a child of the last committed row: position committed()) or an
  // earlier tree row (position one past it). A tree row attends to every
  // committed row, its ancestors' rows and itself. root_offset > 0 puts the
  // parentless rows that many positions past committed() (an MTP module
  // drafts at the target's last position, past the rows it could commit).
  void expand(const LlamaWeights& target, const float* features, const std::int32_t* tokens, const int* parent_rows,
              int n, float* out, int threads = 1, int root_offset = 0) {
    TreeRows part{{this, features, tokens, n, out}, parent_rows, root_offset};
    expand_together(target, &part, 1, threads);
  }

  // ---- several heads in one forward (an Engine's requests) ------------------
  //
  // commit_together and expand_together run the rows of several heads (an
  // Engine's requests, each committing its accepted rows or drafting its
  // tree level) in ONE forward: each matrix is streamed once for every
  // part's rows, and each row attends to its own head's rows. Parts must name
  // distinct heads that share their weights (copies of one head, as the
  // Engine gives its requests); parts that do not are run one by one. A
  // row's bits are what its head's commit() / expand() alone gives it
  // wherever the products are batch invariant (the CPU kernels up to 32
  // rows, docs/benchmarks.md). Every part is checked before any head changes.

  // One head's rows: commit()'s arguments (tokens: the next tokens).
  struct Rows {
    EagleHead* head = nullptr;
    const float* features = nullptr;       // [n][dim]
    const std::int32_t* tokens = nullptr;  // [n]
    int n = 0;
    float* out = nullptr;  // commit: the last row's feature [dim] or null; expand: [n][dim]
  };
  // expand()'s arguments.
  struct TreeRows {
    Rows rows;
    const int* parent_rows = nullptr;  // [rows.n]
    int root_offset = 0;
  };

  static void commit_together(const LlamaWeights& target, Rows* parts, int count, int threads = 1) {
    commit_together_(target, parts, count, /*all=*/false, threads);
  }
  // commit_all() of several heads: each part's out, when not null, receives
  // every one of its rows' features [n][dim] (MTP modules of several
  // requests, MtpHeads::commit_together).
  static void commit_all_together(const LlamaWeights& target, Rows* parts, int count, int threads = 1) {
    commit_together_(target, parts, count, /*all=*/true, threads);
  }

  static void expand_together(const LlamaWeights& target, TreeRows* parts, int count, int threads = 1) {
    if (count <= 0) return;
    const auto rows_of = [&](int q) -> const Rows& { return parts[q].rows; };
    for (int p = 0; p < count; ++p) {
      const TreeRows& part = parts[p];
      check_part_(target, p, rows_of);
      FASTINFER_CHECK(part.root_offset >= 0, InvalidArgument, "EAGLE head: tree part ", p,
                      " has root offset ", part.root_offset);
      const int r0 = part.rows.head->tree_rows();
      for (int i = 0; i < part.rows.n; ++i)
        FASTINFER_CHECK(part.parent_rows[i] >= -1 && part.parent_rows[i] < r0, InvalidArgument,
                        "EAGLE head: tree row ", r0 + i, " has parent ", part.parent_rows[i],
                        " (must be -1 or an earlier row of a previous expand)");
    }
    if (!shares_weights_(count, rows_of)) {
      for (int p = 0; p < count; ++p) expand_together(target, parts + p, 1, threads);
      return;
    }
    EagleHead& lead = *parts[0].rows.head;  // its scratch serves the whole forward
    int total = 0;
    for (int p = 0; p < count; ++p) {
      const TreeRows& part = parts[p];
      EagleHead& h = *part.rows.head;
      const int r0 = h.tree_rows();
      lead.pos_.resize(std::size_t(total + part.rows.n));
      lead.owners_.resize(std::size_t(total + part.rows.n));
      for (int i = 0; i < part.rows.n; ++i) {
        const int parent = part.parent_rows[i];
        h.tree_parent_.push_back(parent);
        h.tree_depth_.push_back(parent < 0 ? 0 : h.tree_depth_[std::size_t(parent)] + 1);
        lead.pos_[std::size_t(total + i)] =
            std::int64_t(h.committed_) + part.root_offset + h.tree_depth_.back();
        lead.owners_[std::size_t(total + i)] = RowOwner{&h, r0 + i};
      }
      h.grow_(tree_, std::size_t(r0 + part.rows.n));
      total += part.rows.n;
    }
    lead.inputs_and_kv_(target, count, total, rows_of, /*tree=*/true, threads);
    lead.finish_every_row_(count, total, rows_of, threads);
  }

  // The target's own LM head over predicted features: final RMSNorm and
  // classifier, logits [n][vocab].
  static void lm_logits(const LlamaWeights& target, const float* features, int n, float* out,
                        std::vector<float>& scratch, int threads = 1) {
    const LlamaConfig& c = target.config;
    scratch.resize(std::size_t(n) * std::size_t(c.dim));
    for (int i = 0; i < n; ++i)
      cpu::rmsnorm(scratch.data() + std::size_t(i) * std::size_t(c.dim), features + std::size_t(i) * std::size_t(c.dim),
                   target.final_norm, c.dim, c.norm_eps);
    linear_(target.classifier, scratch.data(), n, out, threads);
  }

  // ---- files ------------------------------------------------------------------

  static EagleHead load(const std::string& path) {
    const auto file = MappedFile::open(path);
    const std::uint8_t* h = file->at(0, kFixedBytes, "EAGLE head header");
    FASTINFER_CHECK(std::memcmp(h, kMagic, 8) == 0, FormatError, path, ": not an EAGLE head file (bad magic '",
                    head_file::printable(h, 8), "', expected 'FIEAGLEH')");
    std::uint32_t dtype = 0;
    const EagleHeadShape s = read_header(path, h, "EAGLE head", dtype);
    const std::uint32_t count = head_file::load_u32(h + 52);
    FASTINFER_CHECK(count == std::uint32_t(kTensorCount), FormatError, path, ": tensor count ", count,
                    " (expected ", int(kTensorCount), ")");
    // The table against the shape, and the file's size against the table,
    // before anything is allocated (bounded above: at most ~2^38 bytes, no
    // u64 overflow).
    const std::uint8_t* table = file->at(kFixedBytes, kTensorCount * kEntryBytes, "EAGLE head tensor table");
    const EagleHead shape_only = shape_of(s);
    std::uint64_t expected = kHeaderBytes;
    for (int t = 0; t < kTensorCount; ++t)
      expected = check_entry(path, t, table + std::size_t(t) * kEntryBytes, kTensorNames[std::size_t(t)],
                             shape_only.rows(t), shape_only.cols(t), expected, dtype);
    check_file_size(path, file->size(), expected);
    EagleHead head(s);
    head.read_weights(
        path, file->at(kHeaderBytes, head.values() * (dtype == kDTypeF32 ? 4 : 2), "EAGLE head weights"),
        dtype);
    return head;
  }

  // ---- pieces of the loader that FIMTPHDS (mtp_heads.hpp) shares -------------

  // A head with this shape and no weights: rows() and cols() of a file's
  // tensors before anything is allocated.
  static EagleHead shape_of(const EagleHeadShape& s) {
    EagleHead h;
    h.s_ = s;
    return h;
  }
  // Floats in the head's tensors (all 11, in table order).
  std::size_t values() const { return w_->f32.size(); }

  // Header bytes 8..51, common to FIEAGLEH and FIMTPHDS: the version, the
  // shape, the dtype (into `dtype`), the flags, eps and theta; each checked
  // against its bound before it becomes an int. `what` names the format.
  static EagleHeadShape read_header(const std::string& path, const std::uint8_t* h, const char* what,
                                    std::uint32_t& dtype) {
    using head_file::load_u32;
    const std::uint32_t version = load_u32(h + 8);
    FASTINFER_CHECK(version == kVersion, FormatError, path, ": ", what, " version ", version,
                    " is not supported (expected ", kVersion, ")");
    const char* names[6] = {"dim", "vocab", "n_heads", "n_kv_heads", "head_dim", "hidden_dim"};
    const std::uint32_t limits[6] = {1u << 16, 1u << 24, 1024, 1024, 1024, 1u << 20};
    int v[6];
    for (int i = 0; i < 6; ++i) {
      const std::uint32_t x = load_u32(h + 12 + 4 * i);
      FASTINFER_CHECK(x >= 1 && x <= limits[i], FormatError, path, ": ", names[i], " ", x, " is outside [1, ",
                      limits[i], "]");
      v[i] = int(x);
    }
    EagleHeadShape s{v[0], v[1], v[2], v[3], v[4], v[5], head_file::load_f32(h + 44), head_file::load_f32(h + 48)};
    s.validate<FormatError>(path + ": ");
    dtype = load_u32(h + 36);
    const std::uint32_t flags = load_u32(h + 40);
    FASTINFER_CHECK(dtype == kDTypeF32 || dtype == kDTypeF16, FormatError, path, ": weight dtype ", dtype,
                    " is not supported (0 = f32, 1 = f16)");
    FASTINFER_CHECK(flags == 0, FormatError, path, ": unknown flags 0x", std::hex, flags);
    return s;
  }
  // Table entry `index` (name, rows, cols, offset) checked against what the
  // header implies; returns the offset of the next tensor.
  static std::uint64_t check_entry(const std::string& path, int index, const std::uint8_t* e, const char* name,
                                   std::int64_t rows, std::int64_t cols, std::uint64_t offset, std::uint32_t dtype) {
    char got[kNameBytes + 1] = {};
    std::memcpy(got, e, kNameBytes);
    FASTINFER_CHECK(std::string(got) == name &&
                        std::all_of(e + std::strlen(got), e + kNameBytes, [](std::uint8_t b) { return b == 0; }),
                    FormatError, path, ": tensor ", index, " is named '",
                    head_file::printable(e, int(std::strlen(got))), "', expected '", name, "'");
    const std::uint32_t r = head_file::load_u32(e + 16), c = head_file::load_u32(e + 20);
    const std::uint64_t off = head_file::load_u64(e + 24);
    FASTINFER_CHECK(r == rows && c == cols, FormatError, path, ": tensor ", name, " is [", r, "][", c,
                    "], the header's dims make it [", rows, "][", cols, "]");
    FASTINFER_CHECK(off == offset, FormatError, path, ": tensor ", name, " at offset ", off, ", expected ", offset,
                    " (tensors are contiguous in table order)");
    return offset + std::uint64_t(r) * c * (dtype == kDTypeF32 ? 4 : 2);
  }
  static void check_file_size(const std::string& path, std::uint64_t size, std::uint64_t expected) {
    FASTINFER_CHECK(size >= expected, FormatError, path, ": truncated: ", size,
                    " bytes, the header and tensor table need ", expected);
    FASTINFER_CHECK(size == expected, FormatError, path, ": ", size - expected,
                    " bytes after the last tensor (file has ", size, ", expected ", expected, ")");
  }
  // n values of a file's bytes p (f32 or f16 by dtype) into out.
  static void read_values(const std::uint8_t* p, std::uint32_t dtype, std::size_t n, float* out) {
    if (dtype == kDTypeF32) {
      for (std::size_t i = 0; i < n; ++i) out[i] = head_file::load_f32(p + 4 * i);
    } else {
      for (std::size_t i = 0; i < n; ++i) out[i] = f16_to_f32(std::uint16_t(p[2 * i] | p[2 * i + 1] << 8));
    }
  }
  // The head's tensors, in table order, from a file's bytes p (f32 or f16
  // by dtype; size already checked); non-finite values are refused. An f16
  // head then computes in f16.
  void read_weights(const std::string& path, const std::uint8_t* p, std::uint32_t dtype) {
    read_values(p, dtype, values(), own_weights_().f32.data());
    for (int t = 0; t < kTensorCount; ++t)
      for (std::int64_t i = 0; i < rows(t) * cols(t); ++i)
        FASTINFER_CHECK(std::isfinite(tensor(t)[i]), FormatError, path, ": non-finite value ", tensor(t)[i],
                        " in tensor ", kTensorNames[std::size_t(t)], " at element ", i);
    set_weight_dtype(dtype == kDTypeF16 ? DType::F16 : DType::F32);
  }

  // Writes the head in the format above (f32, or f16 when `f16`).
  void save(const std::string& path, bool f16 = false) const {
    FASTINFER_CHECK(!empty(), InvalidArgument, "cannot save an empty EAGLE head to ", path);
    FASTINFER_CHECK(!has_input_norms(), InvalidArgument, "cannot save ", path,
                    ": FIEAGLEH has no input norms (an MTP module is saved by MtpHeads::save)");
    std::vector<char> h(kHeaderBytes, 0);
    std::memcpy(h.data(), kMagic, 8);
    write_header(h.data(), f16);
    head_file::store_u32(h.data() + 52, kTensorCount);
    std::uint64_t off = kHeaderBytes;
    for (int t = 0; t < kTensorCount; ++t)
      off = write_entry(h.data() + kFixedBytes + std::size_t(t) * kEntryBytes, kTensorNames[std::size_t(t)], rows(t),
                        cols(t), off, f16);
    append_weights(h, f16);
    write_file(path, h, "EAGLE head");
  }

  // ---- pieces of the writer that FIMTPHDS shares -------------------------------

  // Header bytes 8..51 (read_header's fields) into h.
  void write_header(char* h, bool f16) const {
    const std::uint32_t fields[8] = {kVersion,
                                     std::uint32_t(s_.dim),
                                     std::uint32_t(s_.vocab),
                                     std::uint32_t(s_.n_heads),
                                     std::uint32_t(s_.n_kv_heads),
                                     std::uint32_t(s_.head_dim),
                                     std::uint32_t(s_.hidden_dim),
                                     f16 ? kDTypeF16 : kDTypeF32};
    for (int i = 0; i < 8; ++i) head_file::store_u32(h + 8 + 4 * i, fields[i]);
    head_file::store_f32(h + 44, s_.norm_eps);
    head_file::store_f32(h + 48, s_.rope_theta);
  }
  // One table entry at e; returns the next tensor's offset.
  static std::uint64_t write_entry(char* e, const char* name, std::int64_t rows, std::int64_t cols, std::uint64_t off,
                                   bool f16) {
    std::memcpy(e, name, std::strlen(name));
    head_file::store_u32(e + 16, std::uint32_t(rows));
    head_file::store_u32(e + 20, std::uint32_t(cols));
    head_file::store_u64(e + 24, off);
    return off + std::uint64_t(rows * cols) * (f16 ? 2 : 4);
  }
  // The tensors in table order, appended to out.
  void append_weights(std::vector<char>& out, bool f16) const {
    append_values(out, w_->f32.data(), values(), f16);
  }
  static void append_values(std::vector<char>& out, const float* x, std::size_t n, bool f16) {
    std::size_t at = out.size();
    out.resize(at + n * (f16 ? 2 : 4));
    for (std::size_t i = 0; i < n; ++i) {
      if (f16) {
        const std::uint16_t h = f32_to_f16(x[i]);
        out[at++] = char(h & 0xff);
        out[at++] = char(h >> 8);
      } else {
        head_file::store_f32(out.data() + at, x[i]);
        at += 4;
      }
    }
  }
  static void write_file(const std::string& path, const std::vector<char>& bytes, const char* what) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    FASTINFER_CHECK(bool(f), InvalidArgument, "cannot open ", path, " for writing");
    f.write(bytes.data(), std::streamsize(bytes.size()));
    FASTINFER_CHECK(bool(f.flush()), InvalidArgument, "writing the ", what, " to ", path, " failed");
  }

  // A random head (Philox(seed)): fc = [0 | I] + noise (the feature passes
  // through), norms 1, the layer's matrices ~ U(-a, a) / sqrt(fan_in) with
  // a = 0.5 for wq/wk/wv/w_gate/w_up and `residual_scale` for wo / w_down.
  static EagleHead random(std::uint64_t seed, const EagleHeadShape& shape, float residual_scale = 0.1f) {
    EagleHead head(shape);
    std::uint64_t index = 0;
    auto fill = [&](int t, float amp) {
      const float a = amp / std::sqrt(float(head.cols(t)));
      float* w = head.tensor(t);
      for (std::int64_t i = 0; i < head.rows(t) * head.cols(t); ++i)
        w[i] = a * (2.0f * uniform_float(seed, std::uint64_t(11), index++) - 1.0f);
    };
    fill(kFc, 0.1f);
    for (int i = 0; i < shape.dim; ++i) head.tensor(kFc)[std::size_t(i) * std::size_t(2 * shape.dim) + std::size_t(shape.dim + i)] += 1.0f;
    for (int t : {kWq, kWk, kWv, kWGate, kWUp}) fill(t, 0.5f);
    for (int t : {kWo, kWDown}) fill(t, residual_scale);
    std::fill(head.tensor(kAttnNorm), head.tensor(kAttnNorm) + shape.dim, 1.0f);
    std::fill(head.tensor(kFfnNorm), head.tensor(kFfnNorm) + shape.dim, 1.0f);
    return head;
  }

  // The same head on a target widened to `dim` (its extra feature and
  // embedding coordinates zero; see the file comment).
  EagleHead padded_to(int dim) const {
    FASTINFER_CHECK(!empty(), InvalidArgument, "cannot pad an empty EAGLE head");
    FASTINFER_CHECK(dim >= s_.dim, InvalidArgument, "cannot pad an EAGLE head of dim ", s_.dim, " down to ", dim);
    if (dim == s_.dim) return *this;
    EagleHeadShape s = s_;
    s.dim = dim;
    s.norm_eps = float(double(s_.norm_eps) * double(s_.dim) / double(dim));
    EagleHead out(s);
    const float norm_scale = float(std::sqrt(double(s_.dim) / double(dim)));
    for (int t = 0; t < kTensorCount; ++t) {
      const std::int64_t r0 = rows(t), c0 = cols(t), c1 = out.cols(t);
      for (std::int64_t r = 0; r < r0; ++r) {
        const float* src = tensor(t) + r * c0;
        float* dst = out.tensor(t) + r * c1;
        if (t == kFc) {  // [embedding | feature] halves each move to their padded place
          std::copy(src, src + s_.dim, dst);
          std::copy(src + s_.dim, src + 2 * s_.dim, dst + dim);
        } else {
          std::copy(src, src + c0, dst);
        }
      }
    }
    for (int t : {kAttnNorm, kFfnNorm})
      for (int i = 0; i < s_.dim; ++i) out.tensor(t)[i] *= norm_scale;
    if (has_input_norms()) {  // rescaled alike: the padded halves normalise as the original ones
      std::vector<float> norms(std::size_t(2) * std::size_t(dim), 0.0f);
      for (int half = 0; half < 2; ++half)
        for (int i = 0; i < s_.dim; ++i) norms[std::size_t(half * dim + i)] = input_norm(half)[i] * norm_scale;
      out.set_input_norms(norms.data(), norms.data() + dim);
    }
    out.set_weight_dtype(weight_dtype());
    return out;
  }

 private:
  static constexpr int kv_ = 0, tree_ = 1;

  // commit_together; `all`: every row's predicted feature into its part's
  // out (commit_all, commit_all_together), else each part's last row's.
  static void commit_together_(const LlamaWeights& target, Rows* parts, int count, bool all, int threads) {
    if (count <= 0) return;
    const auto rows_of = [&](int q) -> const Rows& { return parts[q]; };
    for (int p = 0; p < count; ++p) check_part_(target, p, rows_of);
    if (!shares_weights_(count, rows_of)) {
      for (int p = 0; p < count; ++p) commit_together_(target, parts + p, 1, all, threads);
      return;
    }
    EagleHead& lead = *parts[0].head;
    int total = 0;
    for (int p = 0; p < count; ++p) {
      EagleHead& h = *parts[p].head;
      h.clear_tree();
      const int p0 = h.committed_, n = parts[p].n;
      lead.pos_.resize(std::size_t(total + n));
      lead.owners_.resize(std::size_t(total + n));
      for (int i = 0; i < n; ++i) {
        lead.pos_[std::size_t(total + i)] = p0 + i;
        lead.owners_[std::size_t(total + i)] = RowOwner{&h, -1};
      }
      h.grow_(kv_, std::size_t(p0 + n));
      total += n;
    }
    if (total == 0) return;
    lead.inputs_and_kv_(target, count, total, rows_of, /*tree=*/false, threads);
    if (all) return lead.finish_every_row_(count, total, rows_of, threads);
    const std::size_t d = std::size_t(lead.s_.dim);
    // Only each part's last row runs the whole layer: moved to the front
    // (rows only move down, so in order nothing is overwritten unread).
    int finishing = 0;
    for (int p = 0, at = 0; p < count; at += parts[p].n, ++p) {
      if (parts[p].n == 0 || parts[p].out == nullptr) continue;
      const std::size_t from = std::size_t(at + parts[p].n - 1), to = std::size_t(finishing++);
      if (from == to) continue;  // already in place (std::copy must not copy a range onto itself)
      std::copy(lead.x_.begin() + std::ptrdiff_t(from * d), lead.x_.begin() + std::ptrdiff_t((from + 1) * d),
                lead.x_.begin() + std::ptrdiff_t(to * d));
      std::copy(lead.xn_.begin() + std::ptrdiff_t(from * d),
                lead.xn_.begin() + std::ptrdiff_t((from + 1) * d), lead.xn_.begin() + std::ptrdiff_t(to * d));
      lead.pos_[to] = lead.pos_[from];
      lead.owners_[to] = lead.owners_[from];
    }
    if (finishing == 0) return;
    lead.cat_out_.resize(std::size_t(finishing) * d);
    lead.finish_rows_(0, finishing, lead.cat_out_.data(), threads);
    for (int p = 0, k = 0; p < count; ++p) {
      if (parts[p].n == 0 || parts[p].out == nullptr) continue;
      std::copy(lead.cat_out_.begin() + std::ptrdiff_t(std::size_t(k) * d),
                lead.cat_out_.begin() + std::ptrdiff_t(std::size_t(k + 1) * d), parts[p].out);
      ++k;
    }
  }

  // The rest of the layer for all `total` rows of a batched forward (led by
  // this head), each part's features into its out [n][dim] (none where out
  // is null, as commit_all leaves them).
  template <typename RowsOf>
  void finish_every_row_(int count, int total, RowsOf rows_of, int threads) {
    if (count == 1) {
      if (rows_of(0).out != nullptr) finish_rows_(0, total, rows_of(0).out, threads);
      return;
    }
    const std::size_t d = std::size_t(s_.dim);
    cat_out_.resize(std::size_t(total) * d);
    finish_rows_(0, total, cat_out_.data(), threads);
    for (int p = 0, at = 0; p < count; at += rows_of(p).n, ++p)
      if (rows_of(p).out != nullptr)
        std::copy(cat_out_.begin() + std::ptrdiff_t(std::size_t(at) * d),
                  cat_out_.begin() + std::ptrdiff_t(std::size_t(at + rows_of(p).n) * d), rows_of(p).out);
  }

  // Part p of a batched forward: a head, n >= 0, tokens in the vocabulary,
  // a head no earlier part names.
  template <typename RowsOf>
  static void check_part_(const LlamaWeights& target, int p, RowsOf rows_of) {
    const Rows& r = rows_of(p);
    FASTINFER_CHECK(r.head != nullptr, InvalidArgument, "EAGLE head: part ", p, " names no head");
    FASTINFER_CHECK(r.n >= 0, InvalidArgument, "EAGLE head: cannot run ", r.n, " rows (part ", p, ")");
    for (int i = 0; i < r.n; ++i) check_token_(target, r.tokens[i]);
    for (int q = 0; q < p; ++q)
      FASTINFER_CHECK(rows_of(q).head != r.head, InvalidArgument, "EAGLE head: parts ", q, " and ", p,
                      " name the same head");
  }
  // Whether every part's head reads the first one's weights.
  template <typename RowsOf>
  static bool shares_weights_(int count, RowsOf rows_of) {
    for (int p = 1; p < count; ++p)
      if (!rows_of(p).head->shares_weights_with(*rows_of(0).head)) return false;
    return true;
  }

  // The shared half of a batched forward, led by this head (pos_ and owners_
  // set for `total` rows): every part's features and tokens through fc and
  // the norm (x_, xn_), then keys and values into each owner's committed
  // rows (at its committed() before the call) or tree rows (`tree`: its last
  // rows).
  template <typename RowsOf>
  void inputs_and_kv_(const LlamaWeights& target, int count, int total, RowsOf rows_of, bool tree,
                      int threads) {
    const std::size_t d = std::size_t(s_.dim), kvd = kvd_();
    const float* features = rows_of(0).features;
    const std::int32_t* tokens = rows_of(0).tokens;
    if (count > 1) {
      cat_features_.resize(std::size_t(total) * d);
      cat_tokens_.resize(std::size_t(total));
      for (int p = 0, at = 0; p < count; at += rows_of(p).n, ++p) {
        const Rows& r = rows_of(p);
        std::copy(r.features, r.features + std::size_t(r.n) * d,
                  cat_features_.begin() + std::ptrdiff_t(std::size_t(at) * d));
        std::copy(r.tokens, r.tokens + r.n, cat_tokens_.begin() + at);
      }
      features = cat_features_.data();
      tokens = cat_tokens_.data();
    }
    input_rows_(target, features, tokens, total, threads);
    kv_rows_.resize(std::size_t(total) * kvd * 2);
    float* k = kv_rows_.data();
    float* v = k + std::size_t(total) * kvd;
    store_kv_(total, k, v, threads);
    for (int p = 0, at = 0; p < count; at += rows_of(p).n, ++p) {
      EagleHead& h = *rows_of(p).head;
      const int n = rows_of(p).n;
      const std::size_t r0 = std::size_t(tree ? h.tree_rows() - n : h.committed_);
      std::vector<float>& hk = tree ? h.tree_k_ : h.kv_k_;
      std::vector<float>& hv = tree ? h.tree_v_ : h.kv_v_;
      std::copy(k + std::size_t(at) * kvd, k + std::size_t(at + n) * kvd,
                hk.begin() + std::ptrdiff_t(r0 * kvd));
      std::copy(v + std::size_t(at) * kvd, v + std::size_t(at + n) * kvd,
                hv.begin() + std::ptrdiff_t(r0 * kvd));
      if (!tree) h.committed_ += n;
    }
  }

  std::size_t kvd_() const { return std::size_t(s_.kv_dim()); }
  // Tensor t for reading inside the forward: the const tensor(), never the
  // writing one (which would give this copy weights of its own).
  const float* param_(int t) const { return tensor(t); }
  int check_tensor_(int t) const {
    FASTINFER_CHECK(t >= 0 && t < kTensorCount, InvalidArgument, "EAGLE head tensor ", t, " is outside [0, ",
                    int(kTensorCount), ")");
    return t;
  }
  static void check_token_(const LlamaWeights& target, std::int32_t token) {
    FASTINFER_CHECK(token >= 0 && token < target.token_embedding.rows, InvalidArgument, "EAGLE head: token ",
                    token, " is outside the vocabulary [0, ", target.token_embedding.rows, ")");
  }
  static void linear_(const MatrixView& w, const float* x, int n, float* y, int threads) {
    if (n == 1)
      cpu::matvec(w, x, y, threads);
    else
      cpu::matmul(w, x, n, y, threads);
  }
  void grow_(int which, std::size_t rows) {
    std::vector<float>& k = which == kv_ ? kv_k_ : tree_k_;
    std::vector<float>& v = which == kv_ ? kv_v_ : tree_v_;
    if (k.size() < rows * kvd_()) {
      k.resize(std::max(rows, std::size_t(64)) * kvd_() * 2);
      v.resize(k.size());
    }
  }

  // x_ = fc([emb(tokens[i]) ; features[i]]) + b, xn_ = RMSNorm(x_, attn_norm)
  // for n rows.
  void input_rows_(const LlamaWeights& target, const float* features, const std::int32_t* tokens, int n,
                   int threads) {
    const std::size_t d = std::size_t(s_.dim);
    const MatrixView& emb = target.token_embedding;
    in2_.resize(std::size_t(n) * 2 * d);
    for (int i = 0; i < n; ++i) {
      check_token_(target, tokens[i]);
      float* row = in2_.data() + std::size_t(i) * 2 * d;
      cpu::load_matrix_row(emb, tokens[i], row);
      std::copy(features + std::size_t(i) * d, features + std::size_t(i + 1) * d, row + d);
      if (has_input_norms()) {  // in place: rmsnorm reads its row before it writes
        cpu::rmsnorm(row, row, input_norm(0), std::int64_t(d), s_.norm_eps);
        cpu::rmsnorm(row + d, row + d, input_norm(1), std::int64_t(d), s_.norm_eps);
      }
    }
    x_.resize(std::size_t(n) * d);
    xn_.resize(std::size_t(n) * d);
    linear_(matrix(kFc), in2_.data(), n, x_.data(), threads);
    const float* b = param_(kFcBias);
    for (int i = 0; i < n; ++i) {
      float* x = x_.data() + std::size_t(i) * d;
      for (std::size_t j = 0; j < d; ++j) x[j] += b[j];
      cpu::rmsnorm(xn_.data() + std::size_t(i) * d, x, param_(kAttnNorm), std::int64_t(d), s_.norm_eps);
    }
  }

  // Keys (RoPE at pos_) and values of the n rows of xn_ into k / v [n][kv_dim].
  void store_kv_(int n, float* k, float* v, int threads) {
    linear_(matrix(kWk), xn_.data(), n, k, threads);
    linear_(matrix(kWv), xn_.data(), n, v, threads);
    for (int i = 0; i < n; ++i)
      cpu::rope(k + std::size_t(i) * kvd_(), s_.n_kv_heads, s_.head_dim, int(pos_[std::size_t(i)]), s_.rope_theta,
                RopeStyle::Interleaved);
  }

  // Rows [first, first + n) of x_ / xn_: attention, MLP, out [n][dim].
  // Each row attends to its owner's keys (owners_): a committed row to
  // committed keys up to its own position, a tree row to every committed key
  // and its chain of tree rows.
  void finish_rows_(int first, int n, float* out, int threads) {
    const std::size_t d = std::size_t(s_.dim), qd = std::size_t(s_.q_dim());
    q_.resize(std::size_t(n) * qd);
    att_.resize(std::size_t(n) * qd);
    linear_(matrix(kWq), xn_.data() + std::size_t(first) * d, n, q_.data(), threads);
    for (int i = 0; i < n; ++i) {
      float* q = q_.data() + std::size_t(i) * qd;
      cpu::rope(q, s_.n_heads, s_.head_dim, int(pos_[std::size_t(first + i)]), s_.rope_theta, RopeStyle::Interleaved);
      const RowOwner& owner = owners_[std::size_t(first + i)];
      chain_.clear();
      int visible = owner.head->committed_;
      if (owner.tree_row >= 0) {
        for (int a = owner.tree_row; a >= 0; a = owner.head->tree_parent_[std::size_t(a)])
          chain_.push_back(a);
      } else {
        visible = int(pos_[std::size_t(first + i)]) + 1;
      }
      owner.head->attend_(q, visible, chain_, scores_, att_.data() + std::size_t(i) * qd);
    }
    o_.resize(std::size_t(n) * d);
    linear_(matrix(kWo), att_.data(), n, o_.data(), threads);
    h1_.resize(std::size_t(n) * std::size_t(s_.hidden_dim));
    h3_.resize(h1_.size());
    for (int i = 0; i < n; ++i) {
      float* x = out + std::size_t(i) * d;
      const float* xi = x_.data() + std::size_t(first + i) * d;
      for (std::size_t j = 0; j < d; ++j) x[j] = xi[j] + o_[std::size_t(i) * d + j];
      cpu::rmsnorm(xn_.data() + std::size_t(first + i) * d, x, param_(kFfnNorm), std::int64_t(d), s_.norm_eps);
    }
    linear_(matrix(kWGate), xn_.data() + std::size_t(first) * d, n, h1_.data(), threads);
    linear_(matrix(kWUp), xn_.data() + std::size_t(first) * d, n, h3_.data(), threads);
    cpu::swiglu(h1_.data(), h3_.data(), std::int64_t(h1_.size()));
    linear_(matrix(kWDown), h1_.data(), n, o_.data(), threads);
    cpu::add(out, o_.data(), std::int64_t(n) * std::int64_t(d));
  }

  // One query row over this head's committed keys [0, visible) and the tree
  // rows in `chain` (grouped-query: query head h reads KV head h / group).
  void attend_(const float* q, int visible, const std::vector<int>& chain, std::vector<float>& scores,
               float* out) const {
    const int hd = s_.head_dim, group = s_.n_heads / s_.n_kv_heads;
    const std::size_t kvd = kvd_();
    const int total = visible + int(chain.size());
    scores.resize(std::size_t(total));
    const float scale = 1.0f / std::sqrt(float(hd));
    for (int h = 0; h < s_.n_heads; ++h) {
      const float* qh = q + std::size_t(h) * std::size_t(hd);
      const std::size_t kvo = std::size_t(h / group) * std::size_t(hd);
      auto key = [&](int j) {
        return j < visible ? kv_k_.data() + std::size_t(j) * kvd + kvo
                           : tree_k_.data() + std::size_t(chain[std::size_t(j - visible)]) * kvd + kvo;
      };
      auto value = [&](int j) {
        return j < visible ? kv_v_.data() + std::size_t(j) * kvd + kvo
                           : tree_v_.data() + std::size_t(chain[std::size_t(j - visible)]) * kvd + kvo;
      };
      float mx = -INFINITY;
      for (int j = 0; j < total; ++j) {
        const float* k = key(j);
        float s = 0.0f;
        for (int e = 0; e < hd; ++e) s += qh[e] * k[e];
        scores[std::size_t(j)] = s * scale;
        mx = std::max(mx, scores[std::size_t(j)]);
      }
      float sum = 0.0f;
      for (int j = 0; j < total; ++j) sum += (scores[std::size_t(j)] = std::exp(scores[std::size_t(j)] - mx));
      float* o = out + std::size_t(h) * std::size_t(hd);
      std::fill(o, o + hd, 0.0f);
      for (int j = 0; j < total; ++j) {
        const float w = scores[std::size_t(j)] / sum;
        const float* v = value(j);
        for (int e = 0; e < hd; ++e) o[e] += w * v[e];
      }
    }
  }

  EagleHeadShape s_{};
  std::array<std::size_t, kTensorCount> offset_{};
  // The weights, shared by copies of the head (an Engine gives every
  // request a copy: its own KV rows, one set of weights); written only
  // through own_weights_(), which first clones them if another head reads them.
  struct Weights {
    std::vector<float> f32;
    std::vector<std::uint16_t> half;  // f32 in half_dtype when the head computes in f16/bf16 (same offsets)
    DType half_dtype = DType::F32;
    std::vector<float> input_norms;  // [2][dim] enorm, hnorm, or empty (no input norms)
  };
  Weights& own_weights_() {
    if (!w_)
      w_ = std::make_shared<Weights>();
    else if (w_.use_count() > 1)
      w_ = std::make_shared<Weights>(*w_);
    return *w_;
  }
  std::shared_ptr<Weights> w_ = std::make_shared<Weights>();
  // KV: committed rows by position, tree rows by row index.
  int committed_ = 0;
  std::vector<float> kv_k_, kv_v_, tree_k_, tree_v_;
  std::vector<int> tree_parent_, tree_depth_;
  // Scratch of a forward this head leads (one caller at a time): per row its
  // position and owner (the head whose rows it attends to: this one, or
  // another part's in expand_together; tree_row -1: a committed row).
  struct RowOwner {
    const EagleHead* head = nullptr;
    int tree_row = -1;
  };
  std::vector<std::int64_t> pos_;
  std::vector<RowOwner> owners_;
  std::vector<int> chain_;
  std::vector<std::int32_t> cat_tokens_;
  std::vector<float> cat_features_, cat_out_, kv_rows_;
  std::vector<float> in2_, x_, xn_, q_, att_, o_, h1_, h3_, scores_;
};

}  // namespace fastinfer::speculative
