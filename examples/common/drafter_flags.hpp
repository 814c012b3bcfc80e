// Building a drafter from command-line words (fastinfer-generate --spec ...),
// so that the example's main stays a thin caller. Command-line grammar, so it
// lives with the programs; the library takes the typed configurations
// (LookaheadConfig, PromptLookupConfig, DType, kv::QuantKind).
//
//   kind: a kDrafterKinds name ("medusa" is medusa_generate's, not a Drafter)
//   draft:          draft_model (a load_model spec; empty: the target's own
//                   spec, i.e. a self-draft), draft_weights any
//                   parse_weight_dtype name (default bf16), draft_kv any
//                   kv::parse_quant name: the draft model's own cache; the
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
#include "fastinfer/core/sampling_params.hpp"
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
#include "fastinfer/speculative/speculative_verifier.hpp"

namespace fastinfer::examples {

struct DrafterSpec {
  std::string kind = "none";
  std::string draft_model;             // empty: the target's spec
  std::string draft_weights = "bf16";  // a parse_weight_dtype name
  std::string draft_kv = "f32";
  std::string lookahead = "5,4,5";     // W,N,G
  int lookup_candidates = 1;           // prompt lookup: candidates per step (> 1: a tree)
  int exit_layer = 0;                  // early-exit: draft layers; 0: half the target's
};

// --spec choices, in the order --help lists them. make_drafter builds all
// but "medusa", "eagle" and "mtp" (heads over the target with their own
// loops, medusa_generate, eagle_generate and mtp_generate).
inline const std::vector<std::string>& drafter_kinds() {
  static const std::vector<std::string> kinds{"none",   "draft",      "prompt-lookup", "lookahead",
                                              "medusa", "early-exit", "eagle",    "mtp"};
  return kinds;
}

// --spec-rule choices: the rules a sampled run may verify with, by
// acceptance_rule_name (TypicalLossy is Medusa's lossy option, not offered).
inline std::vector<std::string> acceptance_rule_choices() {
  return {speculative::acceptance_rule_name(speculative::AcceptanceRule::Exact),
          speculative::acceptance_rule_name(speculative::AcceptanceRule::Coupled)};
}

// An acceptance_rule_choices() name -> the rule; InvalidArgument otherwise.
inline speculative::AcceptanceRule parse_acceptance_rule(std::string_view name) {
  for (auto r : {speculative::AcceptanceRule::Exact, speculative::AcceptanceRule::Coupled})
    if (speculative::acceptance_rule_name(r) == name) return r;
  throw_error<InvalidArgument>("unknown --spec-rule '", name, "' (exact or coupled)");
}

// "W,N,G" -> speculative::LookaheadConfig; InvalidArgument naming the text otherwise.
inline speculative::LookaheadConfig parse_lookahead(std::string_view text) {
  std::vector<std::int32_t> v;
  try {
    v = parse_token_ids(text);
  } catch (const InvalidArgument&) {
    v.clear();
  }
  FASTINFER_CHECK(v.size() == 3, InvalidArgument, "--lookahead '", text, "' is not W,N,G (three integers)");
  return speculative::LookaheadConfig{v[0], v[1], v[2]};
}

// nullptr for kind "none". `target_model`: the verification target, needed
// by "early-exit" (the drafter runs its first layers and shares its KV).
inline std::unique_ptr<speculative::Drafter> make_drafter(const DrafterSpec& s, const std::string& target_spec,
                                                         const LlamaConfig& target, const SamplingParams& params,
                                                         int threads, LlamaModel<>* target_model = nullptr) {
  if (s.kind == "none") return nullptr;
  if (s.kind == "early-exit") {
    FASTINFER_CHECK(target_model != nullptr, InvalidArgument, "--spec early-exit needs the target model itself");
    return std::make_unique<speculative::EarlyExitDrafter<LlamaModel<>>>(*target_model, s.exit_layer, params);
  }
  if (s.kind == "prompt-lookup") {
    speculative::PromptLookupConfig pl;
    pl.max_candidates = s.lookup_candidates;
    return std::make_unique<speculative::PromptLookup>(pl);
  }
  if (s.kind == "lookahead")
    return std::make_unique<speculative::LookaheadPool>(parse_lookahead(s.lookahead), target.vocab_size,
                                                        &cpu::argmax_token<>);
  FASTINFER_CHECK(s.kind == "draft", InvalidArgument, "--spec '", s.kind,
                  "' is not a drafter make_drafter builds (none, draft, prompt-lookup, lookahead or early-exit)");
  KVOptions kv;
  kv.quant = kv::parse_quant(s.draft_kv);  // InvalidArgument naming the text
  LoadOptions load;
  load.weight_dtype = parse_weight_dtype(s.draft_weights);
  load.threads = threads;
  LlamaModel<> draft(load_model(s.draft_model.empty() ? target_spec : s.draft_model, load),
                     ModelOptions{threads, 0, kv});
  FASTINFER_CHECK(draft.config().vocab_size == target.vocab_size, InvalidArgument, "the draft model's vocabulary (",
                  draft.config().vocab_size, " tokens) differs from the target's (", target.vocab_size, ")");
  return std::make_unique<speculative::DraftModel<LlamaModel<>>>(std::move(draft), params);
}

}  // namespace fastinfer::examples
