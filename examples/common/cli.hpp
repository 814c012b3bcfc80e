// What every example program shares: the exit-code convention, one-line
// errors, flag choice lists built from the library's own name tables (so a
// new KV format or weight type cannot drift out of one program's list), and
// the resource flags (--ctx-size). Header-only, for the examples alone.
//
// Exit codes, for every fastinfer-* program:
//   0  success;
//   2  usage error: an unknown flag, a malformed or out-of-range value, a
//      combination that means nothing (InvalidArgument, CLI11 parse errors);
//   1  a bad input file or a runtime failure: a truncated or corrupt model,
//      a size over a limit (LimitError), non-finite logits (NumericError),
//      out of memory.
// Each error is one line on stderr: "<program>: error: <what, value, limit>".
#pragma once

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <system_error>
#include <exception>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/model/kv_store.hpp"
#include "fastinfer/model/weight_convert.hpp"

namespace fastinfer::examples {

inline constexpr int kExitUsage = 2;
inline constexpr int kExitFailure = 1;

// The largest --block-size a program accepts: a block is allocated whole, so
// 2^20 tokens per block cost gigabytes for a 4-token run.
inline constexpr int kMaxBlockSize = 4096;

// Prints "<program>: error: <message>" as one line (newlines flattened).
inline int fail(std::string_view program, int code, const std::string& message) {
  std::string line = message;
  for (char& ch : line)
    if (ch == '\n' || ch == '\r') ch = ' ';
  std::fprintf(stderr, "%.*s: error: %s\n", int(program.size()), program.data(), line.c_str());
  return code;
}

inline bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Parses argv; returns -1 to go on, else the exit code (0 after --help,
// kExitUsage after a one-line error).
inline int parse_args(CLI::App& app, std::string_view program, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return fail(program, kExitUsage, e.what());
  }
  return -1;
}

// Runs a program's body, mapping what it throws onto the exit codes above.
template <typename Body>
int run_main(std::string_view program, Body&& body) {
  try {
    return body();
  } catch (const InvalidArgument& e) {
    return fail(program, kExitUsage, e.what());
  } catch (const std::bad_alloc&) {
    return fail(program, kExitFailure, "out of memory (a size from a file or a flag is too large)");
  } catch (const std::exception& e) {
    return fail(program, kExitFailure, e.what());
  }
}

// A usage error when `unused` holds and any of `options` was given: a flag
// the chosen mode does not use is refused, never silently ignored.
inline void refuse_unused(bool unused, std::initializer_list<const CLI::Option*> options, const std::string& why) {
  if (!unused) return;
  for (const CLI::Option* o : options)
    FASTINFER_CHECK(o == nullptr || o->count() == 0, InvalidArgument, o->get_name(), " is not used ", why);
}

// Checks an unsigned 64-bit decimal (a seed): CLI11 would wrap "-1" and
// "18446744073709551616" into other seeds.
inline CLI::Validator uint64_check() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        std::uint64_t v = 0;
        const char* end = text.data() + text.size();
        const auto r = std::from_chars(text.data(), end, v);
        if (text.empty() || r.ec != std::errc() || r.ptr != end)
          return "'" + text + "' is not an integer in [0, 18446744073709551615]";
        return {};
      },
      "UINT64");
}

// --kv choices: every kv::QuantKind's name, from kv::quant_name.
inline std::vector<std::string> kv_quant_choices() {
  std::vector<std::string> out;
  for (int k = 0; kv::quant_name(kv::QuantKind(k)) != "?"; ++k) out.emplace_back(kv::quant_name(kv::QuantKind(k)));
  return out;
}

// --kv-layout choices, from kv_layout_name.
inline std::vector<std::string> kv_layout_choices() {
  std::vector<std::string> out;
  for (int k = 0; kv_layout_name(KVLayoutKind(k)) != "?"; ++k) out.emplace_back(kv_layout_name(KVLayoutKind(k)));
  return out;
}

// --weights choices: kLoadWeightTypes' names (parse_weight_dtype reads
// them). with_q8_0 false: the element-wise conversions only, for a program
// that converts one file without load_model (fastinfer-inflate).
inline std::vector<std::string> weight_choices(bool with_q8_0 = true) {
  std::vector<std::string> out;
  for (DType t : kLoadWeightTypes)
    if (with_q8_0 || t != DType::Q8_0) out.emplace_back(dtype_name(t));
  return out;
}

// --ctx-size N (llama.cpp's name): the context to run with, replacing the
// model file's. 0 keeps the file's.
inline CLI::Option* add_ctx_size(CLI::App& app, LoadOptions& load) {
  return app
      .add_option("--ctx-size", load.max_context,
                  "context length to run with (0: the model's own; converters often write a small one)")
      ->check(CLI::Range(0, kMaxContext))
      ->capture_default_str();
}

// Prints the KV cache's size, as llama.cpp's "KV self size".
template <typename Model>
void print_kv_size(std::string_view program, const Model& model) {
  std::fprintf(stderr, "%.*s: KV self size = %.2f MiB (%s %s, context %d, %zu B/token)\n", int(program.size()),
               program.data(), double(model.kv_bytes()) / double(1 << 20), std::string(model.kv().layout_name()).c_str(),
               std::string(model.kv().quant_name()).c_str(), model.config().max_seq_len, model.kv().bytes_per_token());
}

// A run asks for `tokens` positions (longest prompt + new tokens + drafts):
// the KV cache is sized for that, never for more than the model's context.
// A file's context of 10^6 then costs nothing a short run does not use.
inline void fit_context(LlamaConfig& c, std::int64_t tokens) {
  if (tokens > 0 && tokens < c.max_seq_len) c.max_seq_len = int(tokens);
}

}  // namespace fastinfer::examples
