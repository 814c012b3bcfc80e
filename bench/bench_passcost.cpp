// Cost of one forward pass over n tokens after a 32-token context, per model:
// what speculative verification pays for checking n - 1 drafted tokens, to
// compare with one decode step (n = 1).
//
//   bench_passcost --benchmark_format=json [--benchmark_filter=...]
//
// * BM_PassCost/model:M/n:N (1 thread): every iteration rolls the solo
//   sequence back to 32 cached positions and feeds N tokens with the logits
//   of every row (forward_prefill_all, as verification does). Counters:
//   us_per_pass, us_per_token, tok_s (tokens per second through the pass).
//   The pass-cost ratio of n to n = 1 is us_per_pass(n) / us_per_pass(1).
//   Models: 0 = stories260K.bin, 1 = tinystories-656k (HF directory),
//   2 = synthetic:110M (f32, random weights).
// Models under ../shared are skipped with a message when absent.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bench_env.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"

using namespace fastinfer;

namespace {

constexpr int kContext = 32;

// The model spec of index i, or "" when its file is absent.
std::string spec(int i) {
  const std::filesystem::path shared(FASTINFER_SHARED_DIR);
  switch (i) {
    case 0: {
      const auto p = shared / "models/stories260K.bin";
      return std::filesystem::exists(p) ? p.string() : std::string();
    }
    case 1: {
      const auto p = shared / "models/tinystories-656k";
      return std::filesystem::exists(p) ? p.string() : std::string();
    }
    default:
      return "synthetic:110M";
  }
}

// Built once per model and kept for the whole run.
LlamaModel<>* model(int i) {
  static std::map<int, std::unique_ptr<LlamaModel<>>> cache;
  auto& slot = cache[i];
  if (!slot) {
    const std::string s = spec(i);
    if (s.empty()) return nullptr;
    slot = std::make_unique<LlamaModel<>>(load_model(s), ModelOptions{1, 64});
  }
  return slot.get();
}

void BM_PassCost(benchmark::State& state) {
  const int which = int(state.range(0)), n = int(state.range(1));
  LlamaModel<>* m = model(which);
  if (m == nullptr) {
    state.SkipWithError(("skipped: model " + std::to_string(which) + " not found under " FASTINFER_SHARED_DIR).c_str());
    for (auto _ : state) {
    }
    return;
  }
  const int vocab = m->config().vocab_size;
  std::vector<std::int32_t> context(kContext), tokens(static_cast<std::size_t>(n));
  for (int i = 0; i < kContext; ++i) context[std::size_t(i)] = std::int32_t((i * 7919 + 1) % vocab);
  for (int i = 0; i < n; ++i) tokens[std::size_t(i)] = std::int32_t((i * 31 + 17) % vocab);
  std::vector<float> logits(static_cast<std::size_t>(n) * std::size_t(vocab));
  m->set_threads(1);
  m->reset();
  m->forward_prefill(context, 0);
  for (auto _ : state) {
    m->forward_prefill_all(tokens.data(), n, kContext, logits.data());  // rolls back to kContext first
    benchmark::DoNotOptimize(logits.data());
  }
  state.SetLabel(spec(which).substr(spec(which).find_last_of('/') + 1));
  const double iters = double(state.iterations());
  state.counters["us_per_pass"] = benchmark::Counter(iters * 1e-6, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["us_per_token"] =
      benchmark::Counter(iters * n * 1e-6, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["tok_s"] = benchmark::Counter(iters * n, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_PassCost)
    ->ArgNames({"model", "n"})
    ->ArgsProduct({{0, 1}, {1, 2, 3, 5, 9, 14, 16}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_PassCost)
    ->ArgNames({"model", "n"})
    ->ArgsProduct({{2}, {1, 2, 5, 9, 16}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

FASTINFER_BENCHMARK_MAIN()
