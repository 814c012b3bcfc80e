// Passes that exercise a model's batch path end to end, shared by the tests
// that compare one backend with another (tests/backend/test_backend_seam.cpp,
// tests/backend/cuda/test_cuda_backend.cu).
#pragma once

#include <cstdint>
#include <vector>

#include "fastinfer/memory/paged_allocator.hpp"
#include "fastinfer/model/forward_batch.hpp"

namespace fastinfer::testing {

// On a model whose KV cache lacks sequences 1, 2 and 3: a ragged batch of
// sequence 1 (prompt[0..9), causal mask) and sequence 2 (prompt[3..6), a
// token tree: rows 1 and 2 both children of row 0), then sequence 3 forked
// from 1 (shared blocks: its append copies on write) taking two tokens.
// Returns the 14 logits rows, [14][vocab]. `prompt` holds at least 9 tokens.
// `check` asserts (REQUIRE) that a sequence could be added.
template <typename Model, typename Check>
std::vector<float> ragged_tree_fork_logits(Model& model, const std::vector<std::int32_t>& prompt, Check&& check) {
  const std::size_t V = std::size_t(model.config().vocab_size);
  for (SeqId s : {SeqId(1), SeqId(2)}) check(model.kv().add_sequence(s));
  ForwardBatch bt;
  bt.add(1, std::vector<std::int32_t>(prompt.begin(), prompt.begin() + 9));
  bt.add(2, std::vector<std::int32_t>(prompt.begin() + 3, prompt.begin() + 6));
  bt.logits = LogitsRows::All;
  for (int i = 0; i < 9; ++i)
    for (int j = 0; j < 9; ++j) bt.mask.push_back(j <= i ? 1 : 0);
  const std::uint8_t tree[9] = {1, 0, 0, 1, 1, 0, 1, 0, 1};
  bt.mask.insert(bt.mask.end(), tree, tree + 9);
  const float* l = model.forward(bt);
  std::vector<float> out(l, l + 12 * V);
  model.kv().fork(1, 3);
  ForwardBatch next;
  next.add(3, std::vector<std::int32_t>{5, 6});
  next.logits = LogitsRows::All;
  const float* l2 = model.forward(next);
  out.insert(out.end(), l2, l2 + 2 * V);
  return out;
}

}  // namespace fastinfer::testing
