// Whole-model throughput of the reference LlamaModel.
//
//   bench_model --benchmark_format=json [--benchmark_filter=...]
//
// * BM_ReadSum/threads: streamed read of 1 GiB, the memory ceiling measured in
//   the same run (decode of a big model cannot beat it).
// * BM_Decode110M/<f32|bf16>/threads: one token per iteration on
//   synthetic:110M (positions 16..143, recycled). tok_s = tokens per second;
//   bytes_per_second = tok_s x weights_bytes(), to divide by BM_ReadSum.
// * BM_Prefill110M/512/threads/<f32|bf16>: one 512-token prompt per iteration, batched;
//   tok_s = prompt tokens per second.
// * BM_DecodeStories260K/threads: stories260K.bin decode (overhead-bound;
//   2 threads must not be slower than 1). Skipped with a message when
//   ../shared/models/stories260K.bin is absent.
// * BM_DecodeProfiler110M/profile/threads: BM_Decode110M (f32) with no
//   profiler (0) and with a ForwardProfiler attached (1), side by side: the
//   cost of the hooks when on; off is the same code path as BM_Decode110M.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bench_env.hpp"
#include "fastinfer/model/llama2c_loader.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/synthetic.hpp"

using namespace fastinfer;

namespace {

// Models are built once per (name, dtype) and kept for the whole run.
LlamaModel<>& model(const std::string& name, DType dtype) {
  static std::map<std::pair<std::string, DType>, std::unique_ptr<LlamaModel<>>> cache;
  auto& slot = cache[{name, dtype}];
  if (!slot) {
    if (name.rfind("synthetic:", 0) == 0)
      slot = std::make_unique<LlamaModel<>>(make_synthetic(name, dtype, 0, 2), ModelOptions{1, 512});
    else
      slot = std::make_unique<LlamaModel<>>(load_llama2c(name), ModelOptions{1, 512});
  }
  return *slot;
}

void decode_loop(benchmark::State& state, LlamaModel<>& m) {
  const int vocab = m.config().vocab_size;
  std::vector<std::int32_t> prompt(16);
  for (int i = 0; i < 16; ++i) prompt[std::size_t(i)] = std::int32_t((i * 7919 + 1) % vocab);
  m.reset();
  m.forward_prefill(prompt, 0);
  int pos = 16;
  std::int32_t token = 3;
  for (auto _ : state) {
    const float* logits = m.forward_decode(token, pos);
    benchmark::DoNotOptimize(logits);
    token = std::int32_t((token * 31 + 17) % vocab);
    if (++pos == 144) pos = 16;  // roll back: attention cost stays comparable
  }
  state.counters["tok_s"] = benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(m.weights_bytes()));
  state.counters["weights_bytes"] = double(m.weights_bytes());
}

void BM_Decode110M(benchmark::State& state) {
  const DType dtype = state.range(0) == 0 ? DType::F32 : DType::BF16;
  LlamaModel<>& m = model("synthetic:110M", dtype);
  m.set_threads(int(state.range(1)));
  state.SetLabel(std::string(dtype_name(dtype)));
  decode_loop(state, m);
}
BENCHMARK(BM_Decode110M)->ArgNames({"bf16", "threads"})->Args({0, 2})->Args({1, 2})->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_DecodeProfiler110M(benchmark::State& state) {
  LlamaModel<>& m = model("synthetic:110M", DType::F32);
  m.set_threads(int(state.range(1)));
  ForwardProfiler profiler;
  m.set_profiler(state.range(0) != 0 ? &profiler : nullptr);
  state.SetLabel(state.range(0) != 0 ? "profiler on" : "profiler off");
  const auto t0 = std::chrono::steady_clock::now();
  decode_loop(state, m);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  m.set_profiler(nullptr);
  // The per-op times against a clock outside the model (the whole loop,
  // prefill included, as the profile is): the "within 5 %" figure.
  if (state.range(0) != 0) state.counters["ops_over_wall"] = profiler.total_seconds() / wall;
}
BENCHMARK(BM_DecodeProfiler110M)
    ->ArgNames({"profile", "threads"})
    ->Args({0, 2})
    ->Args({1, 2})
    ->Args({0, 2})
    ->Args({1, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

void BM_Prefill110M(benchmark::State& state) {
  const DType dtype = state.range(2) == 0 ? DType::F32 : DType::BF16;
  LlamaModel<>& m = model("synthetic:110M", dtype);
  m.set_threads(int(state.range(1)));
  state.SetLabel(std::string(dtype_name(dtype)));
  const int n = int(state.range(0));
  std::vector<std::int32_t> prompt(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) prompt[std::size_t(i)] = std::int32_t((i * 7919 + 1) % 32000);
  for (auto _ : state) {
    m.reset();
    benchmark::DoNotOptimize(m.forward_prefill(prompt, 0));
  }
  state.counters["tok_s"] = benchmark::Counter(double(state.iterations()) * n, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Prefill110M)
    ->ArgNames({"tokens", "threads", "bf16"})
    ->Args({512, 2, 0})
    ->Args({512, 2, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

void BM_DecodeStories260K(benchmark::State& state) {
  const std::filesystem::path path = std::filesystem::path(FASTINFER_SHARED_DIR) / "models/stories260K.bin";
  if (!std::filesystem::exists(path)) {
    state.SkipWithError(("skipped: " + path.string() + " not found (set FASTINFER_SHARED_DIR)").c_str());
    for (auto _ : state) {
    }
    return;
  }
  LlamaModel<>& m = model(path.string(), DType::F32);
  m.set_threads(int(state.range(0)));
  decode_loop(state, m);
}
BENCHMARK(BM_DecodeStories260K)->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMicrosecond);

// ---- the memory ceiling in the same run ------------------------------------
void BM_ReadSum(benchmark::State& state) {
  constexpr std::size_t kBytes = std::size_t(1) << 30;
  const std::int64_t n = std::int64_t(kBytes / sizeof(float));
  static float* data = [n] {
    auto* p = static_cast<float*>(std::aligned_alloc(64, kBytes));
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) p[i] = float(i & 1023) * 1e-3f;
    return p;
  }();
  const int threads = int(state.range(0));
  for (auto _ : state) {
    float total = 0.0f;
    (void)threads;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
    for (std::int64_t b = 0; b < n / 4096; ++b) {
      // Eight independent sums per 4096-float block: vectorisable without -ffast-math.
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      const float* p = data + b * 4096;
      for (int i = 0; i < 4096; i += 8)
        for (int j = 0; j < 8; ++j) acc[j] += p[i + j];
      for (float a : acc) total += a;
    }
    benchmark::DoNotOptimize(total);
  }
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(kBytes));
}
BENCHMARK(BM_ReadSum)->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

FASTINFER_BENCHMARK_MAIN()
