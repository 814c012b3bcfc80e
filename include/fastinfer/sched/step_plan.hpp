// What one scheduler step asks the engine to do (StepPlan), and what the
// engine hands back (StepResult). Plain data, testable without a model.
//
// Every sequence is the list tokens = prompt + generated; `computed` of them
// have KV in the cache. A plan entry feeds tokens [position, position +
// num_tokens) of one sequence. A decode is the case num_tokens == 1; a
// prefill chunk (a prompt, or a recompute after preemption, or several
// tokens accepted at once) is any other. When the chunk reaches the end of
// the sequence the entry `samples`: the logits of its last token choose the
// next token(s), and StepResult must carry a row for it.
//
// The engine executes a plan in this order (later items may reuse blocks
// that earlier ones released):
//   1. swap_out : device block -> host block (victims preempted by swap)
//   2. swap_in  : host block -> device block (swapped sequences resuming)
//   3. copies   : copy-on-write of shared partial blocks (PagedAllocator)
//   4. forward  : the entries, KV written through each sequence's block
//                 table (PagedAllocator::block_table(id)).
//
// Speculation: a decode entry may carry `num_drafts` draft slots (asked for
// with ContinuousBatcher::set_draft_tokens). The batcher has reserved and
// appended KV for num_tokens + num_drafts tokens; the engine feeds the entry's
// token followed by up to num_drafts drafted tokens of its own, verifies them,
// and reports in StepResult::kv_kept how many of the emitted tokens already
// have KV (the accepted drafts). commit() keeps that KV and gives back the
// rest (the rejected drafts' positions and their blocks).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/memory/paged_allocator.hpp"
#include "fastinfer/sched/request.hpp"

namespace fastinfer::sched {

struct PlanEntry {
  RequestId id = 0;            // also the sequence id in the PagedAllocator
  std::int64_t position = 0;   // position of the first fed token (= tokens already in KV)
  std::int32_t num_tokens = 0; // query tokens this step
  bool samples = false;        // the chunk ends the sequence: sample from its last logits
  // Index among the request's generated tokens of the token sampled here:
  // the key of its random stream, independent of batching and preemption.
  std::int32_t sample_index = 0;
  // Draft slots after the entry's token (speculative decoding; decodes only).
  std::int32_t num_drafts = 0;
};

// One block moving between device and host swap space.
struct BlockSwap {
  BlockId device = kNoBlock;
  std::int32_t host = -1;
};

struct StepPlan {
  std::int64_t step = 0;
  std::vector<PlanEntry> entries;
  // CSR over entries: entry i feeds tokens[token_indptr[i] .. token_indptr[i+1]).
  std::vector<std::int32_t> token_indptr{0};
  std::vector<TokenId> tokens;
  std::vector<BlockCopy> copies;
  std::vector<BlockSwap> swap_out;
  std::vector<BlockSwap> swap_in;
  std::vector<RequestId> preempted;  // preempted in this step (recompute or swap)
  std::vector<RequestId> finished;   // left the batcher since the previous plan (finished or cancelled)

  std::int64_t num_tokens() const { return std::int64_t(tokens.size()); }
  bool empty() const { return entries.empty() && swap_out.empty() && swap_in.empty(); }
  void clear() {
    entries.clear();
    token_indptr.assign(1, 0);
    tokens.clear();
    copies.clear();
    swap_out.clear();
    swap_in.clear();
    preempted.clear();
    finished.clear();
  }
};

// The tokens chosen in one step, ragged: one row per sampling entry, each
// with one token, or several when speculative decoding accepted more than
// one (the extra tokens are fed as a chunk in the next step). CSR like the
// plan, so a step allocates nothing once the buffers have grown.
//
// kv_kept (one per row, or empty = all 0): how many of the row's first tokens
// the step already wrote KV for, i.e. the drafts the verifier accepted (at
// most the entry's num_drafts, and fewer than the row's tokens: the last
// token, the target's own, is never fed yet). They are not fed again.
struct StepResult {
  std::vector<RequestId> ids;
  std::vector<std::int32_t> indptr{0};
  std::vector<TokenId> tokens;
  std::vector<std::int32_t> kv_kept;

  std::size_t rows() const { return ids.size(); }
  void clear() {
    ids.clear();
    indptr.assign(1, 0);
    tokens.clear();
    kv_kept.clear();
  }
  void add(RequestId id, TokenId token) { add(id, &token, 1); }
  void add(RequestId id, const TokenId* row, std::size_t n, std::int32_t kept = 0) {
    if (kept > 0 && kv_kept.size() < ids.size()) kv_kept.resize(ids.size(), 0);
    ids.push_back(id);
    tokens.insert(tokens.end(), row, row + n);
    indptr.push_back(std::int32_t(tokens.size()));
    if (kept > 0 || !kv_kept.empty()) kv_kept.push_back(kept);
  }
  std::int32_t kept(std::size_t row) const { return row < kv_kept.size() ? kv_kept[row] : 0; }
  void add(RequestId id, const std::vector<TokenId>& row) { add(id, row.data(), row.size()); }
};

}  // namespace fastinfer::sched
