// The model over kv::KVCache: what the cache layout costs, and what batching
// several sequences into one forward pass buys.
//
//   bench_kv_model --benchmark_format=json [--benchmark_filter=...]
//
// * BM_DecodeLayout/<layout>/threads: synthetic:15M, f32 KV, batch 1, one
//   token per iteration at positions 64..255 (recycled). tok_s. The issue's
//   target: paged (block 16) within 5 % of contiguous.
// * BM_DecodeBatch/<sequences>/threads: synthetic:15M, f32 paged KV, one
//   forward over `sequences` sequences of one token each per iteration
//   (positions 64..255, recycled together). tok_s = aggregate tokens per
//   second: the linear layers read each weight once per step, so it should
//   grow with the batch until compute, not bandwidth, bounds it.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bench_env.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/synthetic.hpp"

using namespace fastinfer;

namespace {

const LlamaWeights& weights() {
  static const LlamaWeights w = make_synthetic("15M", DType::F32, 0, 2);
  return w;
}

constexpr int kPrompt = 64, kEnd = 256;

std::vector<std::int32_t> prompt_of(std::int64_t seq, int vocab) {
  std::vector<std::int32_t> p(kPrompt);
  for (int i = 0; i < kPrompt; ++i) p[std::size_t(i)] = std::int32_t((i * 7919 + seq * 31 + 1) % vocab);
  return p;
}

void BM_DecodeLayout(benchmark::State& state, KVLayoutKind layout, int block_size) {
  ModelOptions o;
  o.threads = int(state.range(0));
  o.max_batch = kPrompt;
  o.kv.layout = layout;
  o.kv.block_size = block_size;
  LlamaModel<> m(weights(), o);
  const int vocab = m.config().vocab_size;
  const auto prompt = prompt_of(0, vocab);
  m.forward_prefill(prompt, 0);
  int pos = kPrompt;
  for (auto _ : state) {
    if (pos == kEnd) {
      state.PauseTiming();
      m.forward_prefill(prompt, 0);  // rolls back to 0 and refills
      pos = kPrompt;
      state.ResumeTiming();
    }
    benchmark::DoNotOptimize(m.forward_decode(std::int32_t((pos * 13) % vocab), pos));
    ++pos;
  }
  state.counters["tok_s"] = benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
}

void BM_DecodeBatch(benchmark::State& state) {
  const int B = int(state.range(0));
  ModelOptions o;
  o.threads = int(state.range(1));
  o.max_batch = kPrompt;
  o.kv.layout = KVLayoutKind::Paged;
  o.kv.block_size = 16;
  o.kv.max_sequences = B;
  LlamaModel<> m(weights(), o);
  const int vocab = m.config().vocab_size;
  auto refill = [&] {
    for (int s = 0; s < B; ++s) {
      if (m.kv().contains(s)) m.kv().free_sequence(s);
      m.kv().add_sequence(s);
      ForwardBatch p;
      p.add(s, prompt_of(s, vocab));
      p.logits = LogitsRows::None;
      m.forward(p);
    }
  };
  refill();
  ForwardBatch step;
  int pos = kPrompt;
  for (auto _ : state) {
    if (pos == kEnd) {
      state.PauseTiming();
      refill();
      pos = kPrompt;
      state.ResumeTiming();
    }
    step.clear();
    for (int s = 0; s < B; ++s) {
      const std::int32_t t = std::int32_t((pos * 13 + s) % vocab);
      step.add(s, &t, 1);
    }
    benchmark::DoNotOptimize(m.forward(step));
    ++pos;
  }
  state.counters["tok_s"] = benchmark::Counter(double(state.iterations()) * B, benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK_CAPTURE(BM_DecodeLayout, contiguous, KVLayoutKind::Contiguous, 16)->Arg(1)->Arg(2)->UseRealTime();
BENCHMARK_CAPTURE(BM_DecodeLayout, paged16, KVLayoutKind::Paged, 16)->Arg(1)->Arg(2)->UseRealTime();
BENCHMARK_CAPTURE(BM_DecodeLayout, paged1, KVLayoutKind::Paged, 1)->Arg(1)->UseRealTime();
BENCHMARK(BM_DecodeBatch)->Args({1, 1})->Args({4, 1})->Args({16, 1})->Args({1, 2})->Args({4, 2})->Args({16, 2})->UseRealTime();

FASTINFER_BENCHMARK_MAIN()
