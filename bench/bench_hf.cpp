// Hugging Face checkpoints, on models/tinystories-656k:
//  - loading the directory (config + mmap'd safetensors; tokenizer.json;
//    both plus the model's buffers). Target: under 100 ms for everything.
//  - greedy decode on 1 thread, tokens/s (items_per_second). Target: >= 5000.
//  - tokenizer encode throughput on a long story (bytes_per_second).
// Skips (with a message) when ../shared is absent.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <string>
#include <vector>

#include "bench_env.hpp"
#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/model/hf_loader.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/tokenizer/hf_bpe_tokenizer.hpp"

namespace {

const std::filesystem::path kModelDir = std::filesystem::path(FASTINFER_SHARED_DIR) / "models/tinystories-656k";

bool have_model(benchmark::State& state) {
  if (fastinfer::is_hf_model_dir(kModelDir)) return true;
  state.SkipWithError(("missing " + kModelDir.string()).c_str());
  return false;
}

void BM_HfLoadWeights(benchmark::State& state) {
  if (!have_model(state)) return;
  for (auto _ : state) {
    auto w = fastinfer::load_hf_weights(kModelDir);
    benchmark::DoNotOptimize(w.layers.data());
  }
}
BENCHMARK(BM_HfLoadWeights)->Unit(benchmark::kMillisecond);

void BM_HfLoadTokenizer(benchmark::State& state) {
  if (!have_model(state)) return;
  for (auto _ : state) {
    auto tok = fastinfer::HfBpeTokenizer::from_directory(kModelDir);
    benchmark::DoNotOptimize(tok.vocab_size());
  }
}
BENCHMARK(BM_HfLoadTokenizer)->Unit(benchmark::kMillisecond);

// What `fastinfer-generate --model DIR` does before its first token.
void BM_HfLoadEverything(benchmark::State& state) {
  if (!have_model(state)) return;
  for (auto _ : state) {
    auto tok = fastinfer::HfBpeTokenizer::from_directory(kModelDir);
    fastinfer::LlamaModel<> model(fastinfer::load_hf_weights(kModelDir));
    benchmark::DoNotOptimize(model.kv_bytes() + std::size_t(tok.vocab_size()));
  }
}
BENCHMARK(BM_HfLoadEverything)->Unit(benchmark::kMillisecond);

// Greedy decode of 128 tokens after "Once upon a time" (prefill untimed).
void BM_HfDecode(benchmark::State& state) {
  if (!have_model(state)) return;
  fastinfer::ModelOptions options;
  options.threads = int(state.range(0));
  fastinfer::LlamaModel<> model(fastinfer::load_hf_weights(kModelDir), options);
  const std::vector<std::int32_t> prompt = {1, 80, 147, 201, 282, 57};
  const int vocab = model.config().vocab_size;
  constexpr int kNew = 128;
  std::int64_t tokens = 0;
  for (auto _ : state) {
    state.PauseTiming();
    model.reset();
    const float* logits = model.forward_prefill(prompt, 0);
    state.ResumeTiming();
    int pos = int(prompt.size());
    for (int i = 0; i < kNew; ++i) {
      // EOS does not stop the benchmark: every iteration does the same work.
      const auto next = std::int32_t(fastinfer::cpu::argmax(logits, vocab));
      logits = model.forward_decode(next, pos++);
    }
    benchmark::DoNotOptimize(logits);
    tokens += kNew;
  }
  state.SetItemsProcessed(tokens);
}
BENCHMARK(BM_HfDecode)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_HfEncode(benchmark::State& state) {
  if (!have_model(state)) return;
  const auto tok = fastinfer::HfBpeTokenizer::from_directory(kModelDir);
  std::string text;
  while (text.size() < std::size_t(state.range(0)))
    text += "Once upon a time, there was a little girl named Lily. She loved to play outside in the park "
            "with her dog, Spot. One day, she saw a big red ball!\n";
  for (auto _ : state) {
    auto ids = tok.encode(text);
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(text.size()));
}
BENCHMARK(BM_HfEncode)->Arg(1 << 10)->Arg(1 << 16)->Unit(benchmark::kMicrosecond);

}  // namespace

FASTINFER_BENCHMARK_MAIN()
