// The OpenAI request bodies fastinfer-server understands, parsed and checked
// into a CompletionRequest, and the JSON error every failure answers with.
//
// Why the checks live here and not in the Engine: the Engine throws on bad
// input too, but with the library's messages; an HTTP client needs a status,
// an OpenAI error object and the name of the offending field ("param"), and
// must get them before anything reaches the engine thread.
//
// Fields of the wrong type are errors (400, naming the field); unknown fields
// are ignored, as OpenAI's own server ignores fields it does not know.
// null counts as absent (some clients send every field).
#pragma once

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastinfer/sched/request.hpp"
#include "fastinfer/tokenizer/tokenizer.hpp"

namespace fastinfer_server {

using Json = nlohmann::json;

// An error answered to the client as {"error": {...}} with this HTTP status.
struct ApiError : std::runtime_error {
  ApiError(int http_status, std::string message, std::string param_name = {},
           std::string error_type = "invalid_request_error")
      : std::runtime_error(message), status(http_status), param(std::move(param_name)), type(std::move(error_type)) {}
  int status;
  std::string param, type;
};

inline Json error_json(const std::string& message, const std::string& type, const std::string& param) {
  Json e = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) e["param"] = param;
  return Json{{"error", e}};
}

inline Json error_json(const ApiError& e) { return error_json(e.what(), e.type, e.param); }

// What the server accepts; beyond these a request is refused with 400.
struct Limits {
  std::size_t max_body_bytes = 1 << 20;
  std::int64_t max_prompt_tokens = 0;  // 0: the context
  std::int64_t max_tokens = 0;         // 0: the context
  int max_n = 8;
  std::int64_t context = 0;  // the model's
  std::int32_t vocab_size = 0;
};

// How chat messages become one prompt. Plain (no template): the messages'
// contents, each followed by "\n", then nothing: a base model continues
// the text. ChatML and Llama2 are the two template families the server
// recognises in a model's chat_template (by their markers, as llama.cpp
// does); it does not interpret Jinja.
enum class ChatFormat { Plain, ChatML, Llama2 };

inline ChatFormat detect_chat_format(const std::string& jinja) {
  if (jinja.find("<|im_start|>") != std::string::npos) return ChatFormat::ChatML;
  if (jinja.find("[INST]") != std::string::npos) return ChatFormat::Llama2;
  return ChatFormat::Plain;
}

inline const char* chat_format_name(ChatFormat f) {
  return f == ChatFormat::ChatML ? "chatml" : f == ChatFormat::Llama2 ? "llama2" : "plain";
}

struct ChatMessage {
  std::string role, content;
};

inline std::string render_chat(const std::vector<ChatMessage>& messages, ChatFormat format) {
  std::string out;
  if (format == ChatFormat::ChatML) {
    for (const ChatMessage& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    return out + "<|im_start|>assistant\n";
  }
  if (format == ChatFormat::Llama2) {
    // [INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] assistant </s><s>[INST] ...
    std::string system;
    bool open = false;
    for (const ChatMessage& m : messages) {
      if (m.role == "system") {
        system = "<<SYS>>\n" + m.content + "\n<</SYS>>\n\n";
      } else if (m.role == "user") {
        out += (out.empty() ? "[INST] " : "<s>[INST] ") + system + m.content + " [/INST]";
        system.clear();
        open = true;
      } else {
        out += " " + m.content + " </s>";
        open = false;
      }
    }
    (void)open;
    return out;
  }
  for (const ChatMessage& m : messages) out += m.content + "\n";
  return out;
}

enum class Endpoint { Completions, Chat };

struct CompletionRequest {
  Endpoint endpoint = Endpoint::Completions;
  std::vector<std::int32_t> prompt;
  std::int32_t max_tokens = 16;
  fastinfer::SamplingParams sampling;
  bool seeded = false;
  std::vector<std::string> stop;
  int n = 1;
  bool stream = false;
  bool include_usage = false;     // stream_options.include_usage
  bool return_token_ids = false;  // extension (vLLM's name): token ids in every choice / chunk
  bool ignore_eos = false;        // extension: run to max_tokens
};

namespace detail {

inline const Json* field(const Json& body, const char* key) {
  auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

inline double number(const Json& body, const char* key, double fallback, double lo, double hi) {
  const Json* v = field(body, key);
  if (!v) return fallback;
  if (!v->is_number()) throw ApiError(400, std::string("'") + key + "' must be a number", key);
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi))
    throw ApiError(400, std::string("'") + key + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                            "], got " + v->dump(),
                   key);
  return x;
}

inline std::int64_t integer(const Json& body, const char* key, std::int64_t fallback, std::int64_t lo,
                            std::int64_t hi) {
  const Json* v = field(body, key);
  if (!v) return fallback;
  if (!v->is_number_integer()) throw ApiError(400, std::string("'") + key + "' must be an integer", key);
  const std::int64_t x = v->is_number_unsigned() && v->get<std::uint64_t>() > std::uint64_t(hi) ? hi + 1
                                                                                                 : v->get<std::int64_t>();
  if (x < lo || x > hi)
    throw ApiError(400, std::string("'") + key + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                            "], got " + v->dump(),
                   key);
  return x;
}

inline bool boolean(const Json& body, const char* key, bool fallback) {
  const Json* v = field(body, key);
  if (!v) return fallback;
  if (!v->is_boolean()) throw ApiError(400, std::string("'") + key + "' must be a boolean", key);
  return v->get<bool>();
}

inline std::vector<std::string> stop_strings(const Json& body) {
  const Json* v = field(body, "stop");
  if (!v) return {};
  if (v->is_string()) return {v->get<std::string>()};
  if (!v->is_array() || v->size() > 4) throw ApiError(400, "'stop' must be a string or an array of at most 4 strings", "stop");
  std::vector<std::string> out;
  for (const Json& s : *v) {
    if (!s.is_string()) throw ApiError(400, "'stop' must be a string or an array of at most 4 strings", "stop");
    if (!s.get<std::string>().empty()) out.push_back(s.get<std::string>());
  }
  return out;
}

inline std::string message_content(const Json& m) {
  const Json* c = field(m, "content");
  if (!c) return {};
  if (c->is_string()) return c->get<std::string>();
  if (c->is_array()) {  // [{"type": "text", "text": "..."}]
    std::string out;
    for (const Json& part : *c) {
      if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
        throw ApiError(400, "'messages': only text content parts are supported", "messages");
      out += part["text"].get<std::string>();
    }
    return out;
  }
  throw ApiError(400, "'messages': content must be a string or an array of text parts", "messages");
}

inline std::vector<ChatMessage> chat_messages(const Json& body) {
  const Json* v = field(body, "messages");
  if (!v || !v->is_array() || v->empty()) throw ApiError(400, "'messages' must be a non-empty array", "messages");
  std::vector<ChatMessage> out;
  for (const Json& m : *v) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      throw ApiError(400, "'messages': every message needs a string 'role'", "messages");
    out.push_back({m["role"].get<std::string>(), message_content(m)});
  }
  return out;
}

inline std::vector<std::int32_t> prompt_tokens(const Json& body, const fastinfer::Tokenizer* tok) {
  const Json* v = field(body, "prompt");
  if (!v) throw ApiError(400, "'prompt' is required", "prompt");
  if (v->is_string()) {
    if (!tok) throw ApiError(400, "this model has no tokenizer: send 'prompt' as an array of token ids", "prompt");
    return tok->encode(v->get<std::string>());
  }
  if (v->is_array() && !v->empty() && (*v)[0].is_number_integer()) {
    std::vector<std::int32_t> ids;
    for (const Json& t : *v) {
      if (!t.is_number_integer() || t.get<std::int64_t>() < 0 || t.get<std::int64_t>() > std::numeric_limits<std::int32_t>::max())
        throw ApiError(400, "'prompt': token ids must be non-negative integers", "prompt");
      ids.push_back(std::int32_t(t.get<std::int64_t>()));
    }
    return ids;
  }
  if (v->is_array() && v->size() == 1 && (*v)[0].is_string()) return prompt_tokens(Json{{"prompt", (*v)[0]}}, tok);
  throw ApiError(400, "'prompt' must be a string, an array of one string, or a non-empty array of token ids", "prompt");
}

}  // namespace detail

// Parses and checks one request body. Throws ApiError (400) naming the
// field at fault.
inline CompletionRequest parse_completion_request(const std::string& text, Endpoint endpoint,
                                                  const fastinfer::Tokenizer* tok, ChatFormat chat_format,
                                                  const Limits& lim) {
  if (text.size() > lim.max_body_bytes)
    throw ApiError(400, "request body of " + std::to_string(text.size()) + " bytes exceeds the limit of " +
                            std::to_string(lim.max_body_bytes), "body");
  Json body = Json::parse(text, nullptr, false);
  if (body.is_discarded()) throw ApiError(400, "the body is not valid JSON", "body");
  if (!body.is_object()) throw ApiError(400, "the body must be a JSON object", "body");
  CompletionRequest r;
  r.endpoint = endpoint;
  const char* prompt_field = endpoint == Endpoint::Chat ? "messages" : "prompt";
  if (endpoint == Endpoint::Chat) {
    if (!tok) throw ApiError(400, "this model has no tokenizer: chat needs one", "messages");
    r.prompt = tok->encode(render_chat(detail::chat_messages(body), chat_format));
  } else {
    r.prompt = detail::prompt_tokens(body, tok);
  }
  const std::int64_t max_prompt = lim.max_prompt_tokens > 0 ? lim.max_prompt_tokens : lim.context - 1;
  if (std::int64_t(r.prompt.size()) > max_prompt)
    throw ApiError(400, std::string("'") + prompt_field + "' has " + std::to_string(r.prompt.size()) +
                            " tokens, more than the limit of " + std::to_string(max_prompt),
                   prompt_field);
  for (std::int32_t t : r.prompt)
    if (t >= lim.vocab_size)
      throw ApiError(400, "'prompt': token id " + std::to_string(t) + " is outside the vocabulary of " +
                              std::to_string(lim.vocab_size), "prompt");
  const std::int64_t room = lim.context - std::int64_t(r.prompt.size());
  const std::int64_t max_tokens_limit = lim.max_tokens > 0 ? lim.max_tokens : lim.context;
  // Completions default to OpenAI's 16 tokens; chat to the rest of the context.
  const char* mt_key = endpoint == Endpoint::Chat && detail::field(body, "max_completion_tokens") ? "max_completion_tokens"
                                                                                                  : "max_tokens";
  const std::int64_t mt = detail::integer(body, mt_key, endpoint == Endpoint::Chat ? std::min(room, max_tokens_limit) : 16,
                                          1, max_tokens_limit);
  if (mt > room)
    throw ApiError(400, "the prompt (" + std::to_string(r.prompt.size()) + " tokens) plus '" + mt_key + "' (" +
                            std::to_string(mt) + ") exceed the model's context of " + std::to_string(lim.context),
                   mt_key);
  r.max_tokens = std::int32_t(mt);
  r.sampling.temperature = float(detail::number(body, "temperature", 1.0, 0.0, 2.0));
  r.sampling.top_p = float(detail::number(body, "top_p", 1.0, 0.0, 1.0));
  if (r.sampling.top_p <= 0.0f) throw ApiError(400, "'top_p' must be in (0, 1]", "top_p");
  r.sampling.top_k = int(detail::integer(body, "top_k", 0, -1, std::numeric_limits<std::int32_t>::max()));
  if (r.sampling.top_k < 0) r.sampling.top_k = 0;  // vLLM: -1 means off
  // The library's rule on what is left: a temperature whose inverse
  // overflows a float (below 2.9e-39) is refused.
  try {
    fastinfer::validate(r.sampling);
  } catch (const fastinfer::InvalidArgument& e) {
    throw ApiError(400, e.what(), "temperature");
  }
  if (const Json* s = detail::field(body, "seed")) {
    if (!s->is_number_integer()) throw ApiError(400, "'seed' must be an integer", "seed");
    r.sampling.seed = s->is_number_unsigned() ? s->get<std::uint64_t>() : std::uint64_t(s->get<std::int64_t>());
    r.seeded = true;
  }
  r.stop = detail::stop_strings(body);
  r.n = int(detail::integer(body, "n", 1, 1, lim.max_n));
  r.stream = detail::boolean(body, "stream", false);
  if (const Json* so = detail::field(body, "stream_options")) {
    if (!so->is_object()) throw ApiError(400, "'stream_options' must be an object", "stream_options");
    r.include_usage = detail::boolean(*so, "include_usage", false);
  }
  r.return_token_ids = detail::boolean(body, "return_token_ids", false);
  r.ignore_eos = detail::boolean(body, "ignore_eos", false);
  if (detail::field(body, "logprobs") && !(detail::field(body, "logprobs")->is_boolean() && !body["logprobs"].get<bool>()))
    throw ApiError(400, "'logprobs' is not supported by this server", "logprobs");
  if (detail::field(body, "best_of") && detail::integer(body, "best_of", 1, 1, lim.max_n) != r.n)
    throw ApiError(400, "'best_of' other than n is not supported", "best_of");
  if (detail::field(body, "model") && !detail::field(body, "model")->is_string())
    throw ApiError(400, "'model' must be a string", "model");
  return r;
}

}  // namespace fastinfer_server
