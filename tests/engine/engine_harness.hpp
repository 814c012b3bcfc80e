// Helpers shared by the Engine's test programs: a paged KV configuration,
// a single-sequence greedy reference run through the model's solo verbs,
// and a request builder.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/sched/request.hpp"

namespace fastinfer::testing {

inline ModelOptions paged_options(int num_blocks, int max_seqs = 64) {
  ModelOptions o;
  o.threads = 1;
  o.kv.layout = KVLayoutKind::Paged;
  o.kv.block_size = 16;
  o.kv.max_sequences = max_seqs;
  o.kv.num_blocks = num_blocks;
  return o;
}

// Greedy generation through the model's single-sequence verbs, with the
// engine's stop rules: a stop id ends it (not emitted), as does
// max_new_tokens or a full context. The reference every batched run is
// compared with.
inline std::vector<std::int32_t> solo_greedy(LlamaModel<>& m, const std::vector<std::int32_t>& prompt, int max_new,
                                             const std::vector<std::int32_t>& stops) {
  m.reset();
  const int vocab = m.config().vocab_size;
  const float* logits = m.forward_prefill(prompt, 0);
  std::vector<std::int32_t> out;
  std::int64_t len = std::int64_t(prompt.size());
  for (;;) {
    const std::int32_t t = cpu::argmax_token(logits, vocab);
    if (std::find(stops.begin(), stops.end(), t) != stops.end()) break;
    out.push_back(t);
    ++len;
    if (int(out.size()) >= max_new || len >= m.config().max_seq_len) break;
    logits = m.forward_decode(t, int(len - 1));
  }
  return out;
}

// The gap, in solo decoding's logits, between the tokens two greedy runs
// chose at the first position where they differ (0 when they never do).
// Batched passes may sum in another order than solo decoding (more than 32
// rows take the packed GEMM; a decode row beside a prefill chunk takes the
// extend-attention kernel), so a near-tie between the two best logits can go
// either way there; a real defect shows as a wide gap. A run that stopped
// reads as having picked the stop token. Returns +inf when the runs differ
// without a differing position to blame (neither stopped there).
inline float first_divergence_gap(LlamaModel<>& m, const std::vector<std::int32_t>& prompt,
                                  const std::vector<std::int32_t>& expected, const std::vector<std::int32_t>& got,
                                  std::int32_t stop) {
  if (got == expected) return 0.0f;
  std::size_t j = 0;
  while (j < got.size() && j < expected.size() && got[j] == expected[j]) ++j;
  const std::int32_t a = j < expected.size() ? expected[j] : stop;
  const std::int32_t b = j < got.size() ? got[j] : stop;
  if (a == b) return std::numeric_limits<float>::infinity();
  m.reset();
  const float* logits = m.forward_prefill(prompt, 0);
  for (std::size_t i = 0; i < j; ++i) logits = m.forward_decode(expected[i], int(prompt.size() + i));
  return std::fabs(logits[a] - logits[b]);
}

inline sched::Request make_request(std::vector<std::int32_t> prompt, int max_new, std::vector<std::int32_t> stops) {
  sched::Request r;
  r.prompt = std::move(prompt);
  r.max_new_tokens = max_new;
  r.stop_ids = std::move(stops);
  return r;
}

}  // namespace fastinfer::testing
