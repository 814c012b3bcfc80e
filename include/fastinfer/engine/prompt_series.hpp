// Several prompts, one after another, through one Engine whose prefix cache
// lives across them (what `fastinfer-generate --prompt-ids A --prompt-ids B`
// and `--prompts-file` run): each prompt reuses the KV of whatever earlier
// prompts and their outputs share with it, and reports how many of its
// prompt tokens came from the cache and how many were computed. Stop rules
// are generate()'s: BOS (llama2.c) or EOS (when the model has one) ends a
// generation without being emitted; max_new_tokens; a full context.
#pragma once

#include <cstdint>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/engine/engine.hpp"
#include "fastinfer/model/generate.hpp"

namespace fastinfer::engine {

struct SeriesResult {
  std::vector<std::int32_t> tokens;  // generated (stop token excluded)
  std::int64_t prompt_tokens = 0;
  std::int64_t cached_tokens = 0;    // adopted from the prefix cache
  std::int64_t computed_tokens = 0;  // prompt tokens fed through the model
  double ttft_seconds = 0;
  FinishReason reason = FinishReason::None;
};

// One prompt of comma- or space-separated ids per non-empty line.
inline std::vector<std::vector<std::int32_t>> read_prompts_file(const std::string& path) {
  std::ifstream in(path);
  FASTINFER_CHECK(in.good(), InvalidArgument, "cannot open prompts file '", path, "'");
  std::vector<std::vector<std::int32_t>> out;
  for (std::string line; std::getline(in, line);) {
    for (char& c : line)
      if (c == ' ' || c == '\t' || c == '\r') c = ',';
    while (!line.empty() && line.back() == ',') line.pop_back();
    while (!line.empty() && line.front() == ',') line.erase(line.begin());
    if (line.empty()) continue;
    out.push_back(parse_token_ids(line));
  }
  FASTINFER_CHECK(!out.empty(), InvalidArgument, "prompts file '", path, "' holds no prompt");
  return out;
}

// Runs the prompts in order on `model` (paged KV) with the prefix cache on
// (or off, for comparison); on_token(prompt index, token) streams.
template <typename Backend>
std::vector<SeriesResult> run_prompt_series(LlamaModel<Backend>& model,
                                            const std::vector<std::vector<std::int32_t>>& prompts,
                                            const GenerationParams& params, bool prefix_cache = true,
                                            const std::function<void(std::size_t, std::int32_t)>& on_token = {}) {
  EngineConfig ec;
  ec.prefix_cache = prefix_cache;
  ec.scheduler.max_seqs = 1;
  Engine<Backend> engine(model, ec);
  std::vector<SeriesResult> out;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    Request r;
    r.prompt = prompts[i];
    r.max_new_tokens = params.max_new_tokens;
    r.sampling = {params.temperature, params.top_k, params.top_p, params.seed};
    r.stop_ids.push_back(model.config().bos_id);
    if (model.config().eos_id >= 0) r.stop_ids.push_back(model.config().eos_id);
    TokenCallback cb;
    if (on_token) cb = [&on_token, i](RequestId, TokenId t) { on_token(i, t); };
    const RequestId id = engine.submit(std::move(r), cb);
    engine.run();
    const RequestMetrics m = engine.request_metrics(id);
    SeriesResult s;
    s.tokens = engine.output(id);
    s.prompt_tokens = m.prompt_tokens;
    s.cached_tokens = m.cached_prompt_tokens;
    s.computed_tokens = m.prompt_tokens - m.cached_prompt_tokens;
    s.ttft_seconds = m.ttft;
    s.reason = engine.finish_reason(id);
    out.push_back(std::move(s));
    engine.retire(id);
  }
  return out;
}

}  // namespace fastinfer::engine
