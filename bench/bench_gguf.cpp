// GGUF and Q8_0 speed at the 110M shape (dim 768, hidden 2048, 12 layers,
// vocab 32000, shared classifier):
//   BM_OpenGguf110M/<type>     open + load (zero copy) a 110M GGUF file; target <= 1 s
//   BM_Matvec110M/<type>/<m>   one weight matrix of the 110M shape, 2 threads
//   BM_TokenMatvecs110M/<type> every matvec of one decoded token (7 per layer + classifier)
//   BM_Decode110M/<type>       LlamaModel::forward_decode on 2 threads (tok/s);
//                              llama.cpp Q8_0 decode on this machine class: 178-214 tok/s
//   BM_Prefill110M/<type>      a 512-token prompt (llama-bench's pp512), tokens/s
// Types: 0 = f32, 1 = f16, 2 = q8_0. The files are written once to the temp
// directory by save_gguf_llama (what fastinfer-convert does) from synthetic:110M.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include "bench_env.hpp"
#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/model/gguf.hpp"
#include "fastinfer/model/gguf_loader.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/synthetic.hpp"

namespace {

using fastinfer::DType;
constexpr int kThreads = 2;

DType type_of(std::int64_t i) { return i == 0 ? DType::F32 : i == 1 ? DType::F16 : DType::Q8_0; }

// synthetic:110M in each storage type, made once per process.
const fastinfer::LlamaWeights& weights(DType t) {
  static std::map<DType, fastinfer::LlamaWeights> cache;
  auto it = cache.find(t);
  if (it != cache.end()) return it->second;
  if (t == DType::Q8_0) return cache[t] = fastinfer::quantize_weights_q8_0(weights(DType::F32));
  return cache[t] = fastinfer::make_synthetic("110M", t, 0, kThreads);
}

// A 110M GGUF file of each type, written once and removed at exit.
struct TempFiles {
  std::map<DType, std::string> paths;
  ~TempFiles() {
    for (auto& [t, p] : paths) std::remove(p.c_str());
  }
  const std::string& get(DType t) {
    auto it = paths.find(t);
    if (it != paths.end()) return it->second;
    const std::string p = (std::filesystem::temp_directory_path() /
                           ("fastinfer_bench_110M_" + std::to_string(::getpid()) + "_" +
                            std::string(fastinfer::dtype_name(t)) + ".gguf"))
                              .string();
    fastinfer::save_gguf_llama(weights(t), p);
    return paths[t] = p;
  }
};
TempFiles& files() {
  static TempFiles f;
  return f;
}

void BM_OpenGguf110M(benchmark::State& state) {
  const std::string& path = files().get(type_of(state.range(0)));
  for (auto _ : state) {
    auto w = fastinfer::load_gguf_llama(path);
    benchmark::DoNotOptimize(w.layers.back().w_down.data);
  }
  state.SetLabel(std::string(fastinfer::dtype_name(type_of(state.range(0)))));
}
BENCHMARK(BM_OpenGguf110M)->DenseRange(0, 2)->Unit(benchmark::kMillisecond);

// range(1): 0 = wq [768][768], 1 = w_gate [2048][768], 2 = w_down [768][2048], 3 = classifier [32000][768]
void BM_Matvec110M(benchmark::State& state) {
  const auto& w = weights(type_of(state.range(0)));
  const fastinfer::MatrixView m = state.range(1) == 0   ? w.layers[0].wq
                                  : state.range(1) == 1 ? w.layers[0].w_gate
                                  : state.range(1) == 2 ? w.layers[0].w_down
                                                        : w.classifier;
  std::vector<float> x(std::size_t(m.cols), 0.5f), y(std::size_t(m.rows));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(i % 13) * 0.1f - 0.6f;
  for (auto _ : state) {
    fastinfer::cpu::matvec(m, x.data(), y.data(), kThreads);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(m.bytes()));
  state.SetLabel(std::string(fastinfer::dtype_name(m.dtype)) + " " + std::to_string(m.rows) + "x" +
                 std::to_string(m.cols));
}
BENCHMARK(BM_Matvec110M)->ArgsProduct({{0, 1, 2}, {0, 1, 2, 3}})->Unit(benchmark::kMicrosecond);

void BM_TokenMatvecs110M(benchmark::State& state) {
  const auto& w = weights(type_of(state.range(0)));
  const auto& c = w.config;
  std::vector<float> x(std::size_t(c.hidden_dim), 0.1f), y(std::size_t(c.vocab_size));
  std::size_t bytes = w.classifier.bytes();
  for (const auto& l : w.layers)
    bytes += l.wq.bytes() + l.wk.bytes() + l.wv.bytes() + l.wo.bytes() + l.w_gate.bytes() + l.w_up.bytes() +
             l.w_down.bytes();
  for (auto _ : state) {
    for (const auto& l : w.layers)
      for (const fastinfer::MatrixView* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down})
        fastinfer::cpu::matvec(*m, x.data(), y.data(), kThreads);
    fastinfer::cpu::matvec(w.classifier, x.data(), y.data(), kThreads);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(state.iterations());  // tokens
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(bytes));
  state.SetLabel(std::string(fastinfer::dtype_name(type_of(state.range(0)))));
}
BENCHMARK(BM_TokenMatvecs110M)->DenseRange(0, 2)->Unit(benchmark::kMillisecond);

void BM_Decode110M(benchmark::State& state) {
  fastinfer::LlamaModel<> model(weights(type_of(state.range(0))), {kThreads});
  model.forward_prefill(std::vector<std::int32_t>{1, 400, 500, 600}, 0);
  int pos = 4;
  for (auto _ : state) {
    if (pos >= 260) {  // keep the attention span comparable to llama-bench's 128-token decode
      state.PauseTiming();
      model.reset();
      model.forward_prefill(std::vector<std::int32_t>{1, 400, 500, 600}, 0);
      pos = 4;
      state.ResumeTiming();
    }
    benchmark::DoNotOptimize(model.forward_decode(std::int32_t(300 + pos), pos));
    ++pos;
  }
  state.SetItemsProcessed(state.iterations());  // tokens
  state.SetLabel(std::string(fastinfer::dtype_name(type_of(state.range(0)))) + " q8_0 kernels " +
                 fastinfer::cpu::q8_0::kernel_isa());
}
BENCHMARK(BM_Decode110M)->DenseRange(0, 2)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_Prefill110M(benchmark::State& state) {
  fastinfer::LlamaModel<> model(weights(type_of(state.range(0))), {kThreads});
  constexpr int kTokens = 512;
  std::vector<std::int32_t> prompt(kTokens);
  for (int i = 0; i < kTokens; ++i) prompt[std::size_t(i)] = std::int32_t((i * 7919 + 1) % 32000);
  for (auto _ : state) {
    model.reset();
    benchmark::DoNotOptimize(model.forward_prefill(prompt, 0));
  }
  state.counters["tok_s"] = benchmark::Counter(double(state.iterations()) * kTokens, benchmark::Counter::kIsRate);
  state.SetLabel(std::string(fastinfer::dtype_name(type_of(state.range(0)))) + " q8_0 kernels " +
                 fastinfer::cpu::q8_0::kernel_isa());
}
BENCHMARK(BM_Prefill110M)->DenseRange(0, 2)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

FASTINFER_BENCHMARK_MAIN()
