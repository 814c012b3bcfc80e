// MedusaHeads (Cai et al. 2024, Medusa-1): K small heads on the target's
// last hidden state that guess the tokens after the next one.
//
// Head k (0-based) reads h_t, the hidden state of position t AFTER the final
// RMSNorm (the row LlamaModel::last_hidden() gives, the same vector the
// classifier reads; tools/train_medusa.py trains on exactly that), and
// predicts token t + 2 + k (the model itself predicts t + 1):
//
//   r      = h + SiLU(W_k h + b_k)        residual block, W_k [dim][dim]
//   logits = C_k r                         C_k [vocab][dim], or the model's
//                                          own classifier when shared
//
// Weights are f32 on the host: a head is dim^2 + dim (+ vocab * dim) floats,
// small next to the model, and the heads run once per verification step.
//
// File format (little-endian), version 1:
//   offset  0  char[8]  magic "FIMEDUSA"
//           8  u32      version (1)
//          12  u32      K, number of heads (1 .. 64)
//          16  u32      dim (hidden size of the target)
//          20  u32      vocab (vocabulary size of the target)
//          24  u32      dtype of the weights: 0 = f32 (the only one so far)
//          28  u32      flags: bit 0 = heads share the model's classifier
//                       (no C_k stored); other bits must be 0
//          32  per head k = 0 .. K-1, f32 row-major:
//                W_k [dim][dim] (output row, input column), b_k [dim],
//                C_k [vocab][dim] unless shared
// The file must end right after the last head: anything else is a
// FormatError naming the file, the field and the value.
//
// "random:SEED" (examples/common/medusa_flags.hpp) builds random heads of the model's
// shape with a shared classifier and small residual weights, so that a head
// guesses roughly what the model itself would say next: useless as a
// predictor, but exactly what the exactness tests need (the output must not
// depend on head quality). "pad:FILE" zero-pads a file's heads to the
// model's hidden size (padded_to): heads trained on a model work unchanged on
// its inflated stand-in (issue 10), whose extra hidden coordinates are zero.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/core/mapped_file.hpp"
#include "fastinfer/core/philox.hpp"
#include "fastinfer/core/tensor.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/speculative/head_file.hpp"

namespace fastinfer::speculative {

class MedusaHeads {
 public:
  static constexpr char kMagic[8] = {'F', 'I', 'M', 'E', 'D', 'U', 'S', 'A'};
  static constexpr std::uint32_t kVersion = 1;
  static constexpr std::uint32_t kFlagSharedClassifier = 1;
  static constexpr std::uint32_t kDTypeF32 = 0;
  static constexpr int kMaxHeads = 64;
  static constexpr std::size_t kHeaderBytes = 32;

  MedusaHeads() = default;
  // Zero heads of the given shape.
  MedusaHeads(int num_heads, int dim, int vocab, bool shared_classifier)
      : k_(num_heads), dim_(dim), vocab_(vocab), shared_(shared_classifier) {
    FASTINFER_CHECK(num_heads >= 1 && num_heads <= kMaxHeads, InvalidArgument, "Medusa head count ", num_heads,
                    " is outside [1, ", kMaxHeads, "]");
    FASTINFER_CHECK(dim >= 1 && vocab >= 1, InvalidArgument, "Medusa heads need dim >= 1 and vocab >= 1, got ", dim,
                    " and ", vocab);
    w_.assign(std::size_t(k_) * std::size_t(dim_) * std::size_t(dim_), 0.0f);
    b_.assign(std::size_t(k_) * std::size_t(dim_), 0.0f);
    if (!shared_) c_.assign(std::size_t(k_) * std::size_t(vocab_) * std::size_t(dim_), 0.0f);
    h1_.assign(std::size_t(dim_), 0.0f);
    r_.assign(std::size_t(dim_), 0.0f);
  }

  int num_heads() const { return k_; }
  int dim() const { return dim_; }
  int vocab() const { return vocab_; }
  bool shared_classifier() const { return shared_; }

  // Mutable weights of head k (the trainer's layout): W [dim][dim], b [dim],
  // C [vocab][dim] (nullptr when shared).
  float* residual_weight(int k) { return w_.data() + std::size_t(check_head_(k)) * std::size_t(dim_) * std::size_t(dim_); }
  float* residual_bias(int k) { return b_.data() + std::size_t(check_head_(k)) * std::size_t(dim_); }
  float* classifier(int k) {
    return shared_ ? nullptr : c_.data() + std::size_t(check_head_(k)) * std::size_t(vocab_) * std::size_t(dim_);
  }
  const float* residual_weight(int k) const { return const_cast<MedusaHeads*>(this)->residual_weight(k); }
  const float* residual_bias(int k) const { return const_cast<MedusaHeads*>(this)->residual_bias(k); }
  const float* classifier(int k) const { return const_cast<MedusaHeads*>(this)->classifier(k); }

  // The heads must read this model's hidden state and speak its vocabulary.
  void check_compatible(const LlamaConfig& c) const {
    FASTINFER_CHECK(dim_ == c.dim, InvalidArgument, "Medusa heads have dim ", dim_, ", the model's hidden size is ",
                    c.dim);
    FASTINFER_CHECK(vocab_ == c.vocab_size, InvalidArgument, "Medusa heads have vocabulary ", vocab_,
                    ", the model's is ", c.vocab_size);
  }

  // Logits of head k for `rows` hidden rows [rows][dim]: out[rows][vocab]
  // (several rows: the Engine's Medusa requests of a step, whose products
  // then stream the head's weights once). `shared` is the model's
  // classifier (weights().classifier), read only when the heads share it.
  // The two products run as `backend`'s linear (the model's backend: the
  // same kernels and threads as the model); the bias and SiLU are a few
  // host floats. Uses member scratch: one caller at a time.
  template <class Backend>
  void head_logits(Backend& backend, int k, const float* hidden, const MatrixView& shared, float* out,
                   int rows = 1) {
    // The heads' weights and scratch are host vectors and the hidden row is
    // last_hidden()'s host copy: a device backend needs them uploaded first.
    static_assert(Backend::kHostVisible,
                  "MedusaHeads::head_logits: heads run on host-visible backends only (a device backend would need "
                  "the heads and the hidden row in its memory)");
    check_head_(k);
    FASTINFER_CHECK(rows >= 1, InvalidArgument, "Medusa head logits of ", rows, " rows");
    const std::size_t d = std::size_t(dim_);
    r_.resize(std::size_t(rows) * d);
    if (!compact_.empty()) {
      // Padded heads: the zero rows and columns contribute nothing, whatever
      // the input (r_i = h_i + SiLU(0) = h_i beyond the original width, and
      // an own classifier's extra columns are zero), so compute at the
      // original width: on a 110M stand-in that reads 4 MB per step, not 34.
      MedusaHeads& c = compact_.front();
      const std::size_t cd = std::size_t(c.dim_);
      narrow_.resize(std::size_t(rows) * cd);
      for (std::size_t r = 0; r < std::size_t(rows); ++r)
        std::copy(hidden + r * d, hidden + r * d + cd, narrow_.begin() + std::ptrdiff_t(r * cd));
      if (!shared_) return c.head_logits(backend, k, narrow_.data(), shared, out, rows);
      c.r_.resize(std::size_t(rows) * cd);
      c.residual_(backend, k, narrow_.data(), c.r_.data(), rows);
      for (std::size_t r = 0; r < std::size_t(rows); ++r) {
        std::copy(c.r_.begin() + std::ptrdiff_t(r * cd), c.r_.begin() + std::ptrdiff_t((r + 1) * cd),
                  r_.begin() + std::ptrdiff_t(r * d));
        std::copy(hidden + r * d + cd, hidden + (r + 1) * d, r_.begin() + std::ptrdiff_t(r * d + cd));
      }
    } else {
      residual_(backend, k, hidden, r_.data(), rows);
    }
    if (shared_) {
      FASTINFER_CHECK(shared.data != nullptr && shared.rows == vocab_ && shared.cols == dim_, InvalidArgument,
                      "Medusa heads share the model's classifier: expected [", vocab_, "][", dim_, "], got [",
                      shared.rows, "][", shared.cols, "]");
      backend.linear(shared, r_.data(), rows, out);
    } else {
      backend.linear(MatrixView{DType::F32, classifier(k), vocab_, dim_}, r_.data(), rows, out);
    }
  }

  // ---- files ------------------------------------------------------------------

  static MedusaHeads load(const std::string& path) {
    const auto file = MappedFile::open(path);
    const std::uint8_t* h = file->at(0, kHeaderBytes, "Medusa heads header");
    FASTINFER_CHECK(std::memcmp(h, kMagic, 8) == 0, FormatError, path, ": not a Medusa heads file (bad magic '",
                    head_file::printable(h, 8), "', expected 'FIMEDUSA')");
    using head_file::load_u32;
    const std::uint32_t version = load_u32(h + 8), k = load_u32(h + 12), dim = load_u32(h + 16),
                        vocab = load_u32(h + 20), dtype = load_u32(h + 24), flags = load_u32(h + 28);
    FASTINFER_CHECK(version == kVersion, FormatError, path, ": Medusa heads version ", version,
                    " is not supported (expected ", kVersion, ")");
    FASTINFER_CHECK(k >= 1 && k <= std::uint32_t(kMaxHeads), FormatError, path, ": head count ", k,
                    " is outside [1, ", kMaxHeads, "]");
    FASTINFER_CHECK(dim >= 1 && dim <= (1u << 16), FormatError, path, ": dim ", dim, " is outside [1, 65536]");
    FASTINFER_CHECK(vocab >= 1 && vocab <= (1u << 24), FormatError, path, ": vocab ", vocab,
                    " is outside [1, 16777216]");
    FASTINFER_CHECK(dtype == kDTypeF32, FormatError, path, ": weight dtype ", dtype, " is not supported (0 = f32)");
    FASTINFER_CHECK((flags & ~kFlagSharedClassifier) == 0, FormatError, path, ": unknown flags 0x", std::hex, flags);
    const bool shared = (flags & kFlagSharedClassifier) != 0;
    // Sized from the header and checked against the file BEFORE the heads
    // are allocated: a patched dim of 32784 must not allocate 8.6 GB
    // (found by fuzz/fuzz_readers.cpp).
    const std::uint64_t expected = kHeaderBytes + payload_bytes_for_(k, dim, vocab, shared);
    FASTINFER_CHECK(file->size() >= expected, FormatError, path, ": truncated: ", file->size(), " bytes, the header (K ",
                    k, ", dim ", dim, ", vocab ", vocab, ") needs ", expected);
    FASTINFER_CHECK(file->size() == expected, FormatError, path, ": ", file->size() - expected,
                    " bytes after the last head (file has ", file->size(), ", expected ", expected, ")");
    MedusaHeads heads(int(k), int(dim), int(vocab), shared);
    std::uint64_t off = kHeaderBytes;
    auto read = [&](float* dst, std::size_t n, const char* what) {
      std::memcpy(dst, file->at(off, n * sizeof(float), what), n * sizeof(float));
      off += n * sizeof(float);
    };
    const std::size_t d = dim;
    for (int i = 0; i < int(k); ++i) {
      read(heads.residual_weight(i), d * d, "Medusa residual weight");
      read(heads.residual_bias(i), d, "Medusa residual bias");
      if (!heads.shared_) read(heads.classifier(i), std::size_t(vocab) * d, "Medusa classifier");
    }
    for (float v : heads.w_) FASTINFER_CHECK(std::isfinite(v), FormatError, path, ": non-finite residual weight ", v);
    return heads;
  }

  void save(const std::string& path) const {
    FASTINFER_CHECK(k_ >= 1, InvalidArgument, "cannot save empty Medusa heads to ", path);
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    FASTINFER_CHECK(bool(f), InvalidArgument, "cannot open ", path, " for writing");
    char h[kHeaderBytes];
    std::memcpy(h, kMagic, 8);
    const std::uint32_t fields[6] = {kVersion, std::uint32_t(k_), std::uint32_t(dim_), std::uint32_t(vocab_),
                                     kDTypeF32, shared_ ? kFlagSharedClassifier : 0u};
    for (int i = 0; i < 6; ++i) head_file::store_u32(h + 8 + 4 * i, fields[i]);
    f.write(h, kHeaderBytes);
    auto write = [&](const float* p, std::size_t n) {
      f.write(reinterpret_cast<const char*>(p), std::streamsize(n * sizeof(float)));
    };
    const std::size_t d = std::size_t(dim_);
    for (int i = 0; i < k_; ++i) {
      write(residual_weight(i), d * d);
      write(residual_bias(i), d);
      if (!shared_) write(classifier(i), std::size_t(vocab_) * d);
    }
    FASTINFER_CHECK(bool(f.flush()), InvalidArgument, "writing Medusa heads to ", path, " failed");
  }

  // Random heads: W, b ~ U(-scale, scale)/sqrt(dim), own classifiers (when
  // not shared) ~ U(-1, 1)/sqrt(dim). Philox(seed), so a seed names one set.
  static MedusaHeads random(std::uint64_t seed, int num_heads, int dim, int vocab, bool shared_classifier = true,
                            float scale = 0.5f) {
    MedusaHeads heads(num_heads, dim, vocab, shared_classifier);
    std::uint64_t index = 0;
    const float s = scale / std::sqrt(float(dim));
    auto fill = [&](std::vector<float>& v, float amp) {
      for (float& x : v) x = amp * (2.0f * uniform_float(seed, std::uint64_t(7), index++) - 1.0f);
    };
    fill(heads.w_, s);
    fill(heads.b_, s);
    fill(heads.c_, 1.0f / std::sqrt(float(dim)));
    return heads;
  }

  // The same heads on a wider hidden state whose extra coordinates are zero
  // (an inflated model, model/inflate.hpp: after the final RMSNorm the new
  // coordinates are exactly 0 and the old ones unchanged): W, b and the own
  // classifiers gain zero rows/columns, so every logit is what it was.
  MedusaHeads padded_to(int dim) const {
    FASTINFER_CHECK(dim >= dim_, InvalidArgument, "cannot pad Medusa heads of dim ", dim_, " down to ", dim);
    if (dim == dim_) return *this;
    MedusaHeads out(k_, dim, vocab_, shared_);
    out.compact_.push_back(compact_.empty() ? *this : compact_.front());
    const std::size_t d0 = std::size_t(dim_), d1 = std::size_t(dim);
    for (int k = 0; k < k_; ++k) {
      for (std::size_t o = 0; o < d0; ++o) {
        std::copy(residual_weight(k) + o * d0, residual_weight(k) + (o + 1) * d0, out.residual_weight(k) + o * d1);
        out.residual_bias(k)[o] = residual_bias(k)[o];
      }
      if (!shared_)
        for (std::size_t t = 0; t < std::size_t(vocab_); ++t)
          std::copy(classifier(k) + t * d0, classifier(k) + (t + 1) * d0, out.classifier(k) + t * d1);
    }
    return out;
  }

 private:
  // r = h + SiLU(W_k h + b_k) for each of `rows` rows [rows][dim].
  template <class Backend>
  void residual_(Backend& backend, int k, const float* hidden, float* r, int rows) {
    const MatrixView w{DType::F32, residual_weight(k), dim_, dim_};
    const std::size_t n = std::size_t(rows) * std::size_t(dim_);
    h1_.resize(n);
    backend.linear(w, hidden, rows, h1_.data());
    const float* b = residual_bias(k);
    for (std::size_t e = 0; e < n; ++e) {
      const float a = h1_[e] + b[e % std::size_t(dim_)];
      r[e] = hidden[e] + a / (1.0f + std::exp(-a));
    }
  }

  int check_head_(int k) const {
    FASTINFER_CHECK(k >= 0 && k < k_, InvalidArgument, "Medusa head ", k, " is outside [0, ", k_, ")");
    return k;
  }
  // Bytes of the heads after the header (k <= 64, dim <= 2^16, vocab <= 2^24:
  // at most 2^62, no overflow).
  static std::uint64_t payload_bytes_for_(std::uint64_t k, std::uint64_t dim, std::uint64_t vocab, bool shared) {
    return k * (dim * dim + dim + (shared ? 0 : vocab * dim)) * sizeof(float);
  }

  int k_ = 0, dim_ = 0, vocab_ = 0;
  bool shared_ = true;
  std::vector<float> w_, b_, c_;
  std::vector<float> h1_, r_, narrow_;  // scratch of head_logits
  // Padded heads (padded_to) keep the unpadded ones to compute with; the
  // padded weights above stay the documented layout (files, accessors).
  // (0 or 1 element: a vector so that copies are deep and own their scratch).
  std::vector<MedusaHeads> compact_;
};

}  // namespace fastinfer::speculative
