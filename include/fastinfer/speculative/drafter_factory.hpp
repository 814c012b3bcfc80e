// Building a drafter from command-line words (fastinfer-generate --spec ...),
// so that the example's main stays a thin caller.
//
//   kind "none" | "draft" | "prompt-lookup" | "lookahead" | "early-exit"
//   draft:          draft_model (a load_model spec; empty: the target's own
//                   spec, i.e. a self-draft), draft_weights
//                   "f32"|"bf16"|"f16"|"q8_0" (default bf16), draft_kv any KV
//                   quantization of kv_quant.hpp (f32, f16, bf16, int8, int4,
//                   fp8-e4m3, fp8-e5m2): the draft model's own cache; the
//                   target is untouched, so greedy output never changes
//   prompt-lookup:  lookup_candidates (1: a chain; more: a token tree)
//   lookahead:      "W,N,G"
//   early-exit:     exit_layer (0: half the layers); drafts with the target
//                   model itself (passed to make_drafter), sharing its KV
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/model/weight_convert.hpp"
#include "fastinfer/speculative/draft_model.hpp"
#include "fastinfer/speculative/drafter.hpp"
#include "fastinfer/speculative/early_exit_drafter.hpp"
#include "fastinfer/speculative/lookahead_pool.hpp"
#include "fastinfer/speculative/prompt_lookup.hpp"

namespace fastinfer::speculative {

struct DrafterSpec {
  std::string kind = "none";
  std::string draft_model;             // empty: the target's spec
  std::string draft_weights = "bf16";  // f32 | bf16 | f16
  std::string draft_kv = "f32";
  std::string lookahead = "5,4,5";     // W,N,G
  int lookup_candidates = 1;           // prompt lookup: candidates per step (> 1: a tree)
  int exit_layer = 0;                  // early-exit: draft layers; 0: half the target's
};

// Draft weights: parse_weight_dtype's names plus q8_0.
inline DType parse_draft_weights(std::string_view name) {
  return name == "q8_0" ? DType::Q8_0 : parse_weight_dtype(name);
}

// "W,N,G" -> LookaheadConfig; InvalidArgument naming the text otherwise.
inline LookaheadConfig parse_lookahead(std::string_view text) {
  std::vector<std::int32_t> v;
  try {
    v = parse_token_ids(text);
  } catch (const InvalidArgument&) {
    v.clear();
  }
  FASTINFER_CHECK(v.size() == 3, InvalidArgument, "--lookahead '", text, "' is not W,N,G (three integers)");
  return LookaheadConfig{v[0], v[1], v[2]};
}

// nullptr for kind "none". `target_model`: the verification target, needed
// by "early-exit" (the drafter runs its first layers and shares its KV).
inline std::unique_ptr<Drafter> make_drafter(const DrafterSpec& s, const std::string& target_spec,
                                             const LlamaConfig& target, const cpu::SamplingParams& params,
                                             int threads, LlamaModel<>* target_model = nullptr) {
  if (s.kind == "none") return nullptr;
  if (s.kind == "early-exit") {
    FASTINFER_CHECK(target_model != nullptr, InvalidArgument, "--spec early-exit needs the target model itself");
    return std::make_unique<EarlyExitDrafter<LlamaModel<>>>(*target_model, s.exit_layer, params);
  }
  if (s.kind == "prompt-lookup") {
    PromptLookupConfig pl;
    pl.max_candidates = s.lookup_candidates;
    return std::make_unique<PromptLookup>(pl);
  }
  if (s.kind == "lookahead") return std::make_unique<LookaheadPool>(parse_lookahead(s.lookahead), target.vocab_size);
  FASTINFER_CHECK(s.kind == "draft", InvalidArgument, "unknown --spec '", s.kind,
                  "' (expected none, draft, prompt-lookup, lookahead or early-exit)");
  KVOptions kv;
  kv.quant = kv::parse_quant(s.draft_kv);  // InvalidArgument naming the text
  LoadOptions load;
  load.weight_dtype = parse_draft_weights(s.draft_weights);
  load.threads = threads;
  LlamaModel<> draft(load_model(s.draft_model.empty() ? target_spec : s.draft_model, load),
                     ModelOptions{threads, 0, kv});
  FASTINFER_CHECK(draft.config().vocab_size == target.vocab_size, InvalidArgument, "the draft model's vocabulary (",
                  draft.config().vocab_size, " tokens) differs from the target's (", target.vocab_size, ")");
  return std::make_unique<DraftModel<LlamaModel<>>>(std::move(draft), params);
}

}  // namespace fastinfer::speculative
