// fastinfer-prefix-chat: what the radix prefix cache saves. Two scenarios,
// each run with and without the cache through the Engine:
//   conversation: a multi-turn chat; turn t's prompt is the whole history
//                 (a shorter system prompt, --chat-system-tokens, so that the
//                 turns fit the context; earlier user turns and replies) plus
//                 a new user turn: with the cache only the new turn (and the
//                 last partial block) is computed.
//   shared system prompt: a batch of requests sharing one long system prompt,
//                 each with its own user turn.
// Prints prefill tokens computed, time to first token and hit rate; --json
// prints {"ttft_ms_cold", "ttft_ms_cached", "hit_rate", ...}.
// Exit codes (examples/common/cli.hpp): 0 ok; 2 bad usage (lengths that do
// not fit the context); 1 a bad model file or a runtime failure.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastinfer/engine/engine.hpp"
#include "fastinfer/model/load_model.hpp"

#include "common/cli.hpp"

namespace fx = fastinfer::examples;

namespace {

constexpr const char* kProgram = "fastinfer-prefix-chat";
// The longest default system prompt (the context less a turn caps it).
constexpr int kDefaultSystemTokens = 960;

namespace fe = fastinfer::engine;
using fastinfer::sched::Request;
using fastinfer::sched::TokenId;

struct Scenario {
  double ttft_ms_mean = 0;       // over the measured requests
  double ttft_ms_last = 0;       // the last turn / last request
  std::int64_t prefill_computed = 0;  // prompt tokens actually fed
  std::int64_t prompt_tokens = 0;
  double hit_rate = 0;
};

std::vector<TokenId> random_tokens(std::mt19937_64& rng, int n, int vocab) {
  std::vector<TokenId> t;
  for (int i = 0; i < n; ++i) t.push_back(TokenId(std::uniform_int_distribution<int>(3, vocab - 1)(rng)));
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Multi-turn chat and shared system prompts, with and without the prefix cache"};
  std::string model_spec = "synthetic:110M", weights = "bf16";
  int threads = 2, system_tokens = 0, chat_system_tokens = 128, user_tokens = 64, reply_tokens = 16, turns = 4,
      batch = 4, block_size = 16;
  std::uint64_t seed = 1;
  bool json = false;
  app.add_option("--model", model_spec, "model spec")->capture_default_str();
  app.add_option("--weights", weights, "weight type")->check(CLI::IsMember(fx::weight_choices()))->capture_default_str();
  fastinfer::LoadOptions load;
  fx::add_ctx_size(app, load);
  app.add_option("--threads", threads, "CPU threads")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--system-tokens", system_tokens,
                 "shared system prompt length (0: 960, or less so that a user turn and a reply fit the context)")
      ->check(CLI::Range(0, 1 << 20))->capture_default_str();
  app.add_option("--user-tokens", user_tokens, "tokens of each user turn")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--reply-tokens", reply_tokens, "tokens generated per turn")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--chat-system-tokens", chat_system_tokens, "system prompt of the conversation (its turns must fit)")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--turns", turns, "conversation turns")->check(CLI::Range(1, 1000))->capture_default_str();
  app.add_option("--batch", batch, "requests sharing the system prompt")->check(CLI::Range(1, 4096))->capture_default_str();
  app.add_option("--seed", seed, "token seed")->check(fx::uint64_check())->capture_default_str();
  app.add_flag("--json", json, "print one JSON object");
  if (const int code = fx::parse_args(app, kProgram, argc, argv); code >= 0) return code;

  return fx::run_main(kProgram, [&]() -> int {
    load.weight_dtype = fastinfer::parse_weight_dtype(weights);
    load.threads = threads;
    fastinfer::LlamaWeights lw = fastinfer::load_model(model_spec, load);
    const int ctx = lw.config.max_seq_len;
    // A shared request is the system prompt (BOS first), a user turn and a
    // reply: all three must fit the context, exactly filling it is fine.
    if (system_tokens == 0) system_tokens = std::min(kDefaultSystemTokens, ctx - user_tokens - reply_tokens);
    const int per_turn = user_tokens + reply_tokens;
    FASTINFER_CHECK(system_tokens >= 1 && std::int64_t(system_tokens) + per_turn <= ctx, fastinfer::InvalidArgument,
                    "system prompt ", system_tokens, " + user turn ", user_tokens, " + reply ", reply_tokens,
                    " exceed the context of ", ctx);
    // The conversation must fit the context too; shorten the turns if not.
    chat_system_tokens = std::min(chat_system_tokens, system_tokens);
    turns = std::min(turns, std::max(1, (ctx - 1 - chat_system_tokens) / per_turn));
    // The pool holds what the scenarios use, never a file's huge context.
    if (load.max_context == 0)
      fx::fit_context(lw.config, std::max<std::int64_t>(std::int64_t(system_tokens) + per_turn,
                                                        std::int64_t(chat_system_tokens) + std::int64_t(turns) * per_turn + 1));
    const auto cfg = lw.config;

    fastinfer::ModelOptions mo;
    mo.threads = threads;
    mo.max_batch = std::min(ctx, 1024);
    mo.kv.layout = fastinfer::KVLayoutKind::Paged;
    mo.kv.block_size = block_size;
    mo.kv.max_sequences = batch + 1;
    fastinfer::LlamaModel<> model(std::move(lw), mo);

    std::mt19937_64 rng(seed);
    std::vector<TokenId> system{TokenId(cfg.bos_id)};
    const auto sys_rest = random_tokens(rng, system_tokens - 1, cfg.vocab_size);
    system.insert(system.end(), sys_rest.begin(), sys_rest.end());
    std::vector<std::vector<TokenId>> user_turns;
    for (int t = 0; t < std::max(turns, batch); ++t) user_turns.push_back(random_tokens(rng, user_tokens, cfg.vocab_size));

    auto conversation = [&](bool cached) {
      fe::EngineConfig ec;
      ec.prefix_cache = cached;
      ec.scheduler.max_tokens_per_step = model.max_batch();
      fe::Engine<> engine(model, ec);
      Scenario s;
      std::vector<TokenId> history(system.begin(), system.begin() + chat_system_tokens);
      double ttft_sum = 0;
      for (int t = 0; t < turns; ++t) {
        history.insert(history.end(), user_turns[std::size_t(t)].begin(), user_turns[std::size_t(t)].end());
        Request r;
        r.prompt = history;
        r.max_new_tokens = reply_tokens;
        const auto id = engine.submit(r);
        engine.run();
        const auto m = engine.request_metrics(id);
        history.insert(history.end(), engine.output(id).begin(), engine.output(id).end());
        s.prompt_tokens += m.prompt_tokens;
        s.prefill_computed += m.prompt_tokens - m.cached_prompt_tokens;
        ttft_sum += m.ttft;
        s.ttft_ms_last = m.ttft * 1e3;
      }
      s.ttft_ms_mean = ttft_sum / turns * 1e3;
      s.hit_rate = engine.metrics().prefix_hit_rate;
      return s;
    };

    // The shared system prompt: one request warms the cache (the first user
    // of a deployed system prompt), then the batch arrives at once.
    auto shared = [&](bool cached) {
      fe::EngineConfig ec;
      ec.prefix_cache = cached;
      ec.scheduler.max_tokens_per_step = model.max_batch();
      fe::Engine<> engine(model, ec);
      Request warm;
      warm.prompt = system;
      warm.max_new_tokens = 1;
      engine.submit(warm);
      engine.run();
      Scenario s;
      std::vector<fastinfer::sched::RequestId> ids;
      for (int b = 0; b < batch; ++b) {
        Request r;
        r.prompt = system;
        r.prompt.insert(r.prompt.end(), user_turns[std::size_t(b)].begin(), user_turns[std::size_t(b)].end());
        r.max_new_tokens = reply_tokens;
        ids.push_back(engine.submit(r));
      }
      engine.run();
      double ttft_sum = 0;
      for (auto id : ids) {
        const auto m = engine.request_metrics(id);
        s.prompt_tokens += m.prompt_tokens;
        s.prefill_computed += m.prompt_tokens - m.cached_prompt_tokens;
        ttft_sum += m.ttft;
        s.ttft_ms_last = m.ttft * 1e3;
      }
      s.ttft_ms_mean = ttft_sum / batch * 1e3;
      std::int64_t cached_tokens = 0;
      for (auto id : ids) cached_tokens += engine.request_metrics(id).cached_prompt_tokens;
      s.hit_rate = s.prompt_tokens > 0 ? double(cached_tokens) / double(s.prompt_tokens) : 0.0;
      return s;
    };

    const Scenario conv_cold = conversation(false), conv_hot = conversation(true);
    const Scenario sys_cold = shared(false), sys_hot = shared(true);

    nlohmann::json out;
    auto j = [](const Scenario& s) {
      return nlohmann::json{{"ttft_ms_mean", s.ttft_ms_mean},
                            {"ttft_ms_last", s.ttft_ms_last},
                            {"prefill_tokens_computed", s.prefill_computed},
                            {"prompt_tokens", s.prompt_tokens},
                            {"hit_rate", s.hit_rate}};
    };
    out["conversation"] = {{"cold", j(conv_cold)}, {"cached", j(conv_hot)}, {"turns", turns}};
    out["shared_system_prompt"] = {{"cold", j(sys_cold)}, {"cached", j(sys_hot)}, {"batch", batch}};
    // Headline: the shared-system-prompt batch (system + one user turn each).
    out["ttft_ms_cold"] = sys_cold.ttft_ms_mean;
    out["ttft_ms_cached"] = sys_hot.ttft_ms_mean;
    out["hit_rate"] = sys_hot.hit_rate;
    out["ttft_speedup"] = sys_hot.ttft_ms_mean > 0 ? sys_cold.ttft_ms_mean / sys_hot.ttft_ms_mean : 0.0;
    out["prefill_tokens_cold"] = sys_cold.prefill_computed;
    out["prefill_tokens_cached"] = sys_hot.prefill_computed;
    out["config"] = {{"model", model_spec}, {"weights", weights}, {"threads", threads},
                     {"system_tokens", system_tokens}, {"user_tokens", user_tokens}, {"reply_tokens", reply_tokens}};
    if (json) {
      std::cout << out.dump(2) << "\n";
      return 0;
    }
    fx::print_kv_size(kProgram, model);
    std::printf("%s (%s), system prompt %d tokens, user turns %d tokens, replies %d tokens\n", model_spec.c_str(),
                weights.c_str(), system_tokens, user_tokens, reply_tokens);
    std::printf("%-34s %12s %12s %14s %9s\n", "", "TTFT ms", "last TTFT", "prefill comp.", "hit rate");
    auto row = [](const char* name, const Scenario& s) {
      std::printf("%-34s %12.1f %12.1f %8lld/%-6lld %8.3f\n", name, s.ttft_ms_mean, s.ttft_ms_last,
                  (long long)s.prefill_computed, (long long)s.prompt_tokens, s.hit_rate);
    };
    std::printf("conversation, %d turns\n", turns);
    row("  without cache", conv_cold);
    row("  with cache", conv_hot);
    std::printf("%d requests sharing the system prompt\n", batch);
    row("  without cache", sys_cold);
    row("  with cache", sys_hot);
    std::printf("TTFT with the cache: %.1fx lower (shared system prompt)\n", out["ttft_speedup"].get<double>());
    return 0;
  });
}
