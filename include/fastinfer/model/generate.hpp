// The generation loop: prefill the prompt in one batched pass, then pick and
// feed one token at a time until a stop rule fires. The stop rules are
// llama2.c's (run.c):
//   - the next token would be BOS (id config.bos_id): it ends a story and is
//     not emitted;
//   - max_new_tokens tokens have been emitted;
//   - prompt + emitted tokens fill max_seq_len positions;
// plus, when config.eos_id >= 0 (Hugging Face models), the next token would be
// EOS (not emitted either).
#pragma once

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/sampling_params.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/model/profiler.hpp"

namespace fastinfer {

// How to sample (the library's one SamplingParams) plus when to stop.
struct GenerationParams : SamplingParams {
  int max_new_tokens = 256;
};

enum class StopReason { MaxNewTokens, SeqLen, Bos, Eos };

inline std::string_view stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::MaxNewTokens: return "max_new_tokens";
    case StopReason::SeqLen: return "seq_len";
    case StopReason::Bos: return "bos";
    case StopReason::Eos: return "eos";
  }
  return "?";
}

struct GenerationResult {
  std::vector<std::int32_t> tokens;  // emitted tokens, prompt excluded
  StopReason stopped_by = StopReason::MaxNewTokens;
  int prompt_tokens = 0;
  double prefill_seconds = 0;  // the batched prompt pass
  double ttft_seconds = 0;     // start to first emitted token (prefill + pick)
  double decode_seconds = 0;   // after the first token: every further forward + pick
  // Tokens per second; 0 when there is nothing to divide.
  double prefill_tok_s() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0.0; }
  double decode_tok_s() const {
    return tokens.size() > 1 && decode_seconds > 0 ? double(tokens.size() - 1) / decode_seconds : 0.0;
  }
};

// "1,2,3" -> {1, 2, 3}; InvalidArgument naming the first piece that is not a
// decimal integer (empty pieces included).
inline std::vector<std::int32_t> parse_token_ids(std::string_view text) {
  std::vector<std::int32_t> ids;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = text.find(',', start);
    const std::string_view piece = text.substr(start, comma == std::string_view::npos ? text.npos : comma - start);
    std::int32_t id = 0;
    const auto [end, ec] = std::from_chars(piece.data(), piece.data() + piece.size(), id);
    FASTINFER_CHECK(!piece.empty() && ec == std::errc() && end == piece.data() + piece.size(), InvalidArgument,
                    "'", piece, "' in token ids '", text, "' is not an integer token id");
    ids.push_back(id);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return ids;
}

// The sampling part of `p` (a copy: the verifiers and drafters keep their own).
inline SamplingParams sampling_params(const GenerationParams& p) { return p; }

// InvalidArgument unless `prompt` is non-empty, every id is in the vocabulary,
// it leaves room for at least one new token, and the params make sense.
// Wall-clock seconds from a to b (the timings every generation loop reports).
inline double seconds_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

inline void validate_generation(const LlamaConfig& config, const std::vector<std::int32_t>& prompt,
                                const GenerationParams& params) {
  FASTINFER_CHECK(!prompt.empty(), InvalidArgument, "the prompt is empty (it needs at least BOS)");
  for (std::size_t i = 0; i < prompt.size(); ++i)
    FASTINFER_CHECK(prompt[i] >= 0 && prompt[i] < config.vocab_size, InvalidArgument, "prompt token id ", prompt[i],
                    " at index ", i, " is outside the vocabulary [0, ", config.vocab_size, ")");
  FASTINFER_CHECK(std::int64_t(prompt.size()) < config.max_seq_len, InvalidArgument, "the prompt has ",
                  prompt.size(), " tokens: at or beyond the maximum sequence length ", config.max_seq_len);
  FASTINFER_CHECK(params.max_new_tokens >= 0, InvalidArgument, "max_new_tokens must not be negative, got ",
                  params.max_new_tokens);
  validate(sampling_params(params));
}

// Picks the next token from logits[vocab]: greedy (first maximum) when the
// temperature is 0, else temperature / top-k / top-p sampling with the coin
// Philox(seed, Sampling stream, index), where `index` is the token's index in
// the request: a seed gives the same tokens whatever the batch or threads.
inline std::int32_t pick_token(const float* logits, int vocab, const GenerationParams& params, std::int64_t index,
                               cpu::SamplerWorkspace& workspace) {
  // argmax_token (first maximum, as cpu::argmax) also refuses NaN / +inf
  // logits: greedy must not print token 0 forever from a broken model.
  if (params.temperature == 0.0f) return cpu::argmax_token(logits, vocab);
  return cpu::sample_at_index(logits, vocab, sampling_params(params), std::uint64_t(index), workspace);
}

namespace detail {
// Whether a model picks tokens on its backend (LlamaModel::sample_logits);
// wrappers that only forward passes (ConfidentExit) pick on the host.
template <typename Model, typename = void>
struct samples_on_backend : std::false_type {};
template <typename Model>
struct samples_on_backend<Model, std::void_t<decltype(std::declval<Model&>().sample_logits(
                                     std::int32_t{}, std::declval<const SamplingParams&>(), std::uint64_t{}))>>
    : std::true_type {};
}  // namespace detail

// Generates from `prompt` with `model` (a LlamaModel or anything with
// reset/config/forward_prefill/forward_decode), calling on_token(id) for each
// emitted token as soon as it is picked. The model's cache is reset first.
template <typename Model, typename OnToken>
GenerationResult generate(Model& model, const std::vector<std::int32_t>& prompt, const GenerationParams& params,
                          OnToken&& on_token) {
  const LlamaConfig& c = model.config();
  validate_generation(c, prompt, params);
  using Clock = std::chrono::steady_clock;

  GenerationResult r;
  r.prompt_tokens = int(prompt.size());
  // Allocations once per request, never per token.
  cpu::SamplerWorkspace workspace(detail::samples_on_backend<Model>::value ? 0 : c.vocab_size);
  const SamplingParams sampling = sampling_params(params);
  r.tokens.reserve(std::size_t(std::min<std::int64_t>(params.max_new_tokens, c.max_seq_len - std::int64_t(prompt.size()))));
  model.reset();
  const auto t0 = Clock::now();
  const float* logits = model.forward_prefill(prompt, 0);
  const auto t1 = Clock::now();
  r.prefill_seconds = seconds_between(t0, t1);
  Clock::time_point first = t1;

  int length = int(prompt.size());  // tokens in the sequence so far
  while (true) {
    if (int(r.tokens.size()) >= params.max_new_tokens) {
      r.stopped_by = StopReason::MaxNewTokens;
      break;
    }
    if (length >= c.max_seq_len) {
      r.stopped_by = StopReason::SeqLen;
      break;
    }
    const std::int32_t next = profile_sampling(model, [&] {
      // The same token either way on the CPU backend (sample_logits is the
      // host sampler's bits; a device backend's: within rounding of a boundary).
      if constexpr (detail::samples_on_backend<Model>::value)
        return model.sample_logits(0, sampling, std::uint64_t(r.tokens.size()));
      else
        return pick_token(logits, c.vocab_size, params, std::int64_t(r.tokens.size()), workspace);
    });
    if (next == c.bos_id) {
      r.stopped_by = StopReason::Bos;
      break;
    }
    if (c.eos_id >= 0 && next == c.eos_id) {
      r.stopped_by = StopReason::Eos;
      break;
    }
    r.tokens.push_back(next);
    ++length;
    if (r.tokens.size() == 1) {
      first = Clock::now();
      r.ttft_seconds = seconds_between(t0, first);
    }
    on_token(next);
    // Feed it only when another token may follow it.
    if (int(r.tokens.size()) < params.max_new_tokens && length < c.max_seq_len)
      logits = model.forward_decode(next, length - 1);
  }
  if (!r.tokens.empty()) r.decode_seconds = seconds_between(first, Clock::now());
  return r;
}

template <typename Model>
GenerationResult generate(Model& model, const std::vector<std::int32_t>& prompt, const GenerationParams& params) {
  return generate(model, prompt, params, [](std::int32_t) {});
}

}  // namespace fastinfer
