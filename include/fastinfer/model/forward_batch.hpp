// ForwardBatch: one ragged step of the model over several sequences, the
// shape an Engine turns a scheduler StepPlan into (sched/step_plan.hpp).
//
//   tokens     every new token of every sequence, concatenated
//   qo_indptr  sequence b feeds tokens[qo_indptr[b] .. qo_indptr[b+1])
//   seq_ids    the KV-cache sequence of each entry (distinct in one batch)
//   start_pos  where each entry's first token goes; kAppend (-1): at the
//              sequence's current length. A start below the length first
//              truncates the sequence there (speculative rollback).
//   positions  optional, one per token: the RoPE position of that token,
//              for token trees whose siblings share a depth. Empty: start + i.
//              The KV slot of token i is always start + i.
//   mask       optional, per sequence an n_b x n_b row-major block of bytes
//              (nonzero: new token i sees new token j), blocks concatenated in
//              batch order; the cached prefix is always visible. Empty: causal.
//   logits     which rows come back: the last token of each sequence, every
//              token, none (a prefill chunk that does not end the prompt), or
//              PerEntry: logits_tail[b] trailing rows of entry b (0 .. its
//              count; 1 for a sampling row, 1 + drafts for a speculating
//              row, 0 for a mid-prompt chunk), so that the classifier runs
//              only over rows someone reads.
//
// Plain data; clear() keeps capacity, so an Engine that reuses one batch
// allocates nothing per step once the vectors have grown.
#pragma once

#include <cstdint>
#include <vector>

#include "fastinfer/memory/paged_allocator.hpp"

namespace fastinfer {

enum class LogitsRows { Last, All, None, PerEntry };

struct ForwardBatch {
  static constexpr std::int64_t kAppend = -1;

  std::vector<std::int32_t> tokens;
  std::vector<std::int32_t> qo_indptr{0};
  std::vector<SeqId> seq_ids;
  std::vector<std::int64_t> start_pos;
  std::vector<std::int64_t> positions;
  std::vector<std::uint8_t> mask;
  LogitsRows logits = LogitsRows::Last;
  std::vector<std::int32_t> logits_tail;  // LogitsRows::PerEntry: one count per entry

  std::int32_t batch() const { return std::int32_t(seq_ids.size()); }
  std::int64_t rows() const { return std::int64_t(tokens.size()); }
  std::int32_t count(std::int32_t b) const { return qo_indptr[std::size_t(b) + 1] - qo_indptr[std::size_t(b)]; }
  // Rows of logits a forward pass returns for this batch (PerEntry: the sum
  // of logits_tail, whose shape the model checks).
  std::int64_t logits_rows() const {
    switch (logits) {
      case LogitsRows::All: return rows();
      case LogitsRows::Last: return std::int64_t(batch());
      case LogitsRows::None: return 0;
      case LogitsRows::PerEntry: {
        std::int64_t n = 0;
        for (std::int32_t t : logits_tail) n += t;
        return n;
      }
    }
    return 0;
  }

  void clear() {
    tokens.clear();
    qo_indptr.assign(1, 0);
    seq_ids.clear();
    start_pos.clear();
    positions.clear();
    mask.clear();
    logits = LogitsRows::Last;
    logits_tail.clear();
  }

  // Appends one sequence's n tokens, fed from `start` (kAppend: its length).
  void add(SeqId seq, const std::int32_t* toks, std::int32_t n, std::int64_t start = kAppend) {
    tokens.insert(tokens.end(), toks, toks + n);
    qo_indptr.push_back(std::int32_t(tokens.size()));
    seq_ids.push_back(seq);
    start_pos.push_back(start);
  }
  void add(SeqId seq, const std::vector<std::int32_t>& toks, std::int64_t start = kAppend) {
    add(seq, toks.data(), std::int32_t(toks.size()), start);
  }
};

}  // namespace fastinfer
