// Helpers shared by the Engine's test programs: a paged KV configuration,
// a single-sequence greedy reference run through the model's solo verbs,
// and a request builder.
#pragma once

#include <algorithm>
#include <cstdint>
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

inline sched::Request make_request(std::vector<std::int32_t> prompt, int max_new, std::vector<std::int32_t> stops) {
  sched::Request r;
  r.prompt = std::move(prompt);
  r.max_new_tokens = max_new;
  r.stop_ids = std::move(stops);
  return r;
}

}  // namespace fastinfer::testing
