// What a client asks the scheduler for: a prompt, how to sample, when to
// stop, how urgent it is, and which prefix-cache tenant it belongs to.
//
// This header is backend-free: how to sample is the library's one std-only
// SamplingParams (core/sampling_params.hpp), carried to the engine as is.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/core/sampling_params.hpp"

namespace fastinfer::sched {

using RequestId = std::int64_t;
using TokenId = std::int32_t;

// The name the scheduler used before the library had one sampling struct;
// kept for code that still spells it so, deprecated.
using SamplingConfig [[deprecated("use fastinfer::SamplingParams (fastinfer/core/sampling_params.hpp)")]] =
    SamplingParams;

struct Request {
  RequestId id = 0;
  std::vector<TokenId> prompt;
  SamplingParams sampling;
  std::int32_t max_new_tokens = 256;
  // Sampling one of these ends the request; like generate(), the stop token
  // itself is not part of the output.
  std::vector<TokenId> stop_ids;
  // Larger runs first under the Priority ordering, and is preempted last.
  std::int32_t priority = 0;
  // Seconds on the batcher's clock; negative means "now" at submit(). FCFS
  // orders by it, and time to first token is measured from it.
  double arrival_time = -1.0;
  // Prefix-cache tenant (adapter, salt): requests of different namespaces
  // never share cached blocks.
  std::uint64_t prefix_namespace = 0;
};

enum class RequestStatus {
  Waiting,   // queued: never admitted, or preempted by recompute
  Running,   // holds KV blocks on the device
  Swapped,   // preempted by swap: its blocks live in host swap space
  Finished,  // done (stopped, length limit, context full or cancelled)
};

enum class FinishReason {
  None,          // not finished
  Stop,          // sampled one of stop_ids
  MaxNewTokens,  // produced max_new_tokens tokens
  ContextFull,   // prompt + output filled the context
  Cancelled,     // cancel() was called
};

inline std::string_view finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::None: return "none";
    case FinishReason::Stop: return "stop";
    case FinishReason::MaxNewTokens: return "max_new_tokens";
    case FinishReason::ContextFull: return "context_full";
    case FinishReason::Cancelled: return "cancelled";
  }
  return "?";
}

// Throws InvalidArgument naming the offending value. max_context is the
// model's context length; vocab_size 0 skips the token-range check. A prompt
// must leave room for at least one new token.
inline void validate_request(const Request& r, std::int64_t max_context, std::int64_t vocab_size = 0) {
  FASTINFER_CHECK(!r.prompt.empty(), InvalidArgument, "request ", r.id, ": empty prompt");
  FASTINFER_CHECK(std::int64_t(r.prompt.size()) < max_context, InvalidArgument, "request ", r.id, ": prompt of ",
                  r.prompt.size(), " tokens does not fit the context of ", max_context,
                  " tokens with room for one new token");
  FASTINFER_CHECK(r.max_new_tokens > 0, InvalidArgument, "request ", r.id, ": max_new_tokens must be positive, got ",
                  r.max_new_tokens);
  for (TokenId t : r.prompt)
    FASTINFER_CHECK(t >= 0 && (vocab_size == 0 || t < vocab_size), InvalidArgument, "request ", r.id,
                    ": prompt token ", t, " is outside the vocabulary [0, ", vocab_size, ")");
  // The samplers' own rule (core/sampling_params.hpp), checked here so that
  // a bad request is refused at submit, never thrown by a step.
  try {
    validate(r.sampling);
  } catch (const InvalidArgument& e) {
    throw_error<InvalidArgument>("request ", r.id, ": ", e.what());
  }
}

}  // namespace fastinfer::sched
