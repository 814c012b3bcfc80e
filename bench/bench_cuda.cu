// The CUDA backend's speed on one GPU, against the GPU's own ceilings
// (scripts/gpu-check.sh runs it; issue 16's bars):
//   BM_CudaDecode1B              decode tok/s of the 1B bf16 stand-in; weights
//                                GB/s and the fraction of HBM peak (bar: 0.70)
//   BM_CudaDecode1BQ8_0          the same with the weights quantized to Q8_0
//                                (the GEMV's dequant in registers): weights GB/s
//   BM_CudaPrefill1B             a 512-token prefill, TFLOP/s (2 x params x tokens)
//   BM_CudaGemv                  the decode GEMV alone on the 1B's shapes, 20
//                                launches back to back: GB/s
//   BM_CudaPagedDecodeAttention  64 sequences x 4096 tokens, f16 KV, 32 query /
//                                8 KV heads of 128: KV GB/s and fraction of HBM
//                                peak (bar: 0.80)
//   BM_CudaSampleRows            1 and 64 rows of 32000 logits sampled on the
//                                device against copied back and sampled on the host
// Decode and attention run twice: /0 the f32 attention kernel, /1 f16 KV on
// tensor cores (attention_mma.cuh).
// HBM peak is the device's memory clock x bus width x 2; the measured
// device-to-device copy rate is printed beside it as the practical ceiling.
// Times are CUDA events around the work (manual time), one stream.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/backend/cuda/cuda_backend.cuh"
#include "fastinfer/model/gguf_loader.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/synthetic.hpp"

using namespace fastinfer;

namespace {

double hbm_peak_gbs() {
  int khz = 0, bits = 0;
  FASTINFER_CUDA_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrMemoryClockRate, 0));
  FASTINFER_CUDA_CHECK(cudaDeviceGetAttribute(&bits, cudaDevAttrGlobalMemoryBusWidth, 0));
  return 2.0 * double(khz) * 1e3 * double(bits) / 8.0 / 1e9;
}

// Reads plus writes of a 1 GiB device-to-device copy, best of 5.
double copy_gbs() {
  const std::size_t bytes = std::size_t(1) << 30;
  cuda::DeviceBuffer<std::uint8_t> a(bytes), b(bytes);
  cudaEvent_t t0, t1;
  FASTINFER_CUDA_CHECK(cudaEventCreate(&t0));
  FASTINFER_CUDA_CHECK(cudaEventCreate(&t1));
  float best = 1e30f;
  for (int i = 0; i < 5; ++i) {
    FASTINFER_CUDA_CHECK(cudaEventRecord(t0));
    FASTINFER_CUDA_CHECK(cudaMemcpy(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice));
    FASTINFER_CUDA_CHECK(cudaEventRecord(t1));
    FASTINFER_CUDA_CHECK(cudaEventSynchronize(t1));
    float ms = 0;
    FASTINFER_CUDA_CHECK(cudaEventElapsedTime(&ms, t0, t1));
    best = std::min(best, ms);
  }
  (void)cudaEventDestroy(t0);
  (void)cudaEventDestroy(t1);
  return 2.0 * double(bytes) / (double(best) * 1e-3) / 1e9;
}

struct Ceilings {
  double peak = hbm_peak_gbs(), copy = copy_gbs();
};
const Ceilings& ceilings() {
  static const Ceilings c = [] {
    Ceilings k;
    std::printf("HBM peak %.0f GB/s, measured device copy %.0f GB/s\n", k.peak, k.copy);
    return k;
  }();
  return c;
}

// The 1B bf16 stand-in on the device (`q8_0`: its weights quantized first).
std::unique_ptr<LlamaModel<CudaBackend>> make_model_1b(bool q8_0) {
  ModelOptions o;
  o.kv.layout = KVLayoutKind::Paged;
  o.kv.quant = kv::QuantKind::F16;
  o.max_batch = 512;
  const int threads = int(std::max(1u, std::thread::hardware_concurrency()));
  LlamaWeights w = make_synthetic("1B", DType::BF16, 1, threads);
  if (q8_0) w = quantize_weights_q8_0(w);
  return std::make_unique<LlamaModel<CudaBackend>>(w, o);
}
LlamaModel<CudaBackend>& model_1b() {
  static const std::unique_ptr<LlamaModel<CudaBackend>> m = make_model_1b(false);
  return *m;
}
LlamaModel<CudaBackend>& model_1b_q8_0() {
  static const std::unique_ptr<LlamaModel<CudaBackend>> m = make_model_1b(true);
  return *m;
}

// Wall time of f() with the stream drained before and after.
template <typename F>
double timed(CudaBackend& b, F&& f) {
  b.context().synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  f();
  b.context().synchronize();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Decode steps after a 16-token prompt, one per iteration: tok/s and the
// weights' GB/s.
void decode_steps(benchmark::State& state, LlamaModel<CudaBackend>& m) {
  std::vector<std::int32_t> prompt(16, 5);
  m.forward_prefill(prompt, 0);
  int pos = 16;
  for (auto _ : state) {
    if (pos >= m.config().max_seq_len) pos = 16;
    state.SetIterationTime(timed(m.backend(), [&] { benchmark::DoNotOptimize(m.forward_decode(7, pos)); }));
    ++pos;
  }
  const double bytes = double(m.weights_bytes());
  state.counters["tok/s"] = benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["weights_GB/s"] =
      benchmark::Counter(bytes * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["hbm_peak_GB/s"] = ceilings().peak;
  state.counters["copy_GB/s"] = ceilings().copy;
}

// Arg: 1 = f16 KV attention on tensor cores (attention_mma.cuh), 0 = the f32 kernel.
void BM_CudaDecode1B(benchmark::State& state) {
  auto& m = model_1b();
  m.backend().context().set_tensor_core_attention(state.range(0) != 0);
  decode_steps(state, m);
}
BENCHMARK(BM_CudaDecode1B)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(256)->Arg(0)->Arg(1);

void BM_CudaDecode1BQ8_0(benchmark::State& state) { decode_steps(state, model_1b_q8_0()); }
BENCHMARK(BM_CudaDecode1BQ8_0)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(256);

void BM_CudaPrefill1B(benchmark::State& state) {
  auto& m = model_1b();
  m.backend().context().set_tensor_core_attention(true);  // the default, whatever the decode runs left
  std::vector<std::int32_t> prompt(512);
  for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = std::int32_t(i * 7 % 32000);
  for (auto _ : state)
    state.SetIterationTime(timed(m.backend(), [&] { benchmark::DoNotOptimize(m.forward_prefill(prompt, 0)); }));
  // Weight bytes / 2 = parameters (bf16), give or take the norms.
  const double flops = 2.0 * double(m.weights_bytes()) / 2.0 * double(prompt.size());
  state.counters["TFLOP/s"] = benchmark::Counter(flops * double(state.iterations()) / 1e12, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_CudaPrefill1B)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(10);

// Arg: as BM_CudaDecode1B's.
void BM_CudaPagedDecodeAttention(benchmark::State& state) {
  constexpr int kSeqs = 64, kLen = 4096, kKv = 8, kQ = 32, kD = 128, kBlock = 16;
  CudaBackend b;
  b.context().set_tensor_core_attention(state.range(0) != 0);
  kv::KVCacheConfig cfg;
  cfg.n_layers = 1, cfg.n_kv_heads = kKv, cfg.head_dim = kD, cfg.block_size = kBlock;
  cfg.num_blocks = kSeqs * kLen / kBlock + kSeqs;
  KVOptions o;
  o.layout = KVLayoutKind::Paged;
  o.quant = kv::QuantKind::F16;
  o.block_size = kBlock;
  auto store = b.make_kv_store(o, cfg);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> host(std::size_t(kLen) * kKv * kD);
  for (float& x : host) x = u(rng);
  auto kvdev = b.allocate<float>(host.size());
  cuda::copy_to_device(kvdev.data(), host.data(), host.size(), b.stream());
  std::vector<SeqId> seqs;
  for (SeqId s = 0; s < kSeqs; ++s) {
    store->add_sequence(s);
    seqs.push_back(s);
    if (!store->extend_all({ReserveRequest{s, kLen}})) state.SkipWithError("KV pool too small");
    store->append(0, s, kvdev.data(), kvdev.data(), kLen);
  }
  auto q = b.allocate<float>(std::size_t(kSeqs) * kQ * kD), out = b.allocate<float>(q.size());
  std::vector<std::int32_t> qo(kSeqs + 1);
  for (int i = 0; i <= kSeqs; ++i) qo[std::size_t(i)] = i;
  store->prepare(seqs, true, 1);
  for (auto _ : state)
    state.SetIterationTime(
        timed(b, [&] { store->attend(0, q.data(), qo.data(), nullptr, out.data(), kQ, 1); }));
  const double bytes = double(kSeqs) * kLen * kKv * kD * 2 /* K, V */ * 2 /* f16 */;
  state.counters["KV_GB/s"] = benchmark::Counter(bytes * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["hbm_peak_GB/s"] = ceilings().peak;
}
BENCHMARK(BM_CudaPagedDecodeAttention)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(50)
    ->Arg(0)
    ->Arg(1);

// The decode GEMV alone on the 1B's shapes (bf16 weights, f32 activations):
// weight GB/s for n rows, against the HBM peak. Args: rows, cols, n.
void BM_CudaGemv(benchmark::State& state) {
  const std::int64_t rows = state.range(0), cols = state.range(1), n = state.range(2);
  CudaBackend b;
  std::vector<std::uint16_t> host(std::size_t(rows * cols));
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& w : host) w = f32_to_bf16(u(rng));
  std::vector<KeepAlive> keep;
  const MatrixView w = b.upload(MatrixView{DType::BF16, host.data(), rows, cols}, keep);
  auto x = b.allocate<float>(std::size_t(n * cols)), y = b.allocate<float>(std::size_t(n * rows));
  // Back to back, as a decode step runs them (dependent launches overlap
  // one's start with the previous one's end); the host's sync is paid once
  // per kLaunches.
  constexpr int kLaunches = 20;
  for (auto _ : state)
    state.SetIterationTime(timed(b, [&] {
      for (int i = 0; i < kLaunches; ++i) b.linear(w, x.data(), n, y.data());
    }) / kLaunches);
  state.counters["weights_GB/s"] =
      benchmark::Counter(double(w.bytes()) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["hbm_peak_GB/s"] = ceilings().peak;
}
BENCHMARK(BM_CudaGemv)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->Iterations(200)
    ->Args({2048, 2048, 1})
    ->Args({5632, 2048, 1})
    ->Args({2048, 5632, 1})
    ->Args({32000, 2048, 1})
    ->Args({5632, 2048, 8})
    ->Args({5632, 2048, 32});

// Sampling a batch of rows (vocab 32000, temperature 0.8, top-k 40 and
// top-p 0.9; arg 1: temperature 1 and no filter): on the device
// (CudaBackend::sample_rows, a token per row comes back) against what the
// backend did before, every row copied to the host and drawn by the CPU
// sampler. Arg 0: rows; arg 1: filter off; arg 2: 1 = host path.
void BM_CudaSampleRows(benchmark::State& state) {
  const std::int64_t n = state.range(0), vocab = 32000;
  const bool plain = state.range(1) != 0, on_host = state.range(2) != 0;
  CudaBackend b;
  const std::size_t rows_n = std::size_t(n), vocab_n = std::size_t(vocab);
  std::vector<float> host(rows_n * vocab_n);
  std::mt19937 rng(4);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (float& x : host) x = normal(rng);
  auto logits = b.allocate<float>(host.size());
  cuda::copy_to_device(logits.data(), host.data(), host.size(), b.stream());
  std::vector<std::int32_t> rows(rows_n), tokens(rows_n);
  std::vector<SamplingParams> params(
      rows_n, plain ? SamplingParams{1.0f, 0, 1.0f, 1} : SamplingParams{0.8f, 40, 0.9f, 1});
  std::vector<std::uint64_t> indices(rows_n);
  for (std::int64_t i = 0; i < n; ++i)
    rows[std::size_t(i)] = std::int32_t(i), params[std::size_t(i)].seed = 7 + i;
  std::vector<float> row_host(vocab_n);
  cpu::SamplerWorkspace ws(vocab);
  std::uint64_t step = 0;
  for (auto _ : state) {
    for (auto& index : indices) index = step;
    ++step;
    state.SetIterationTime(timed(b, [&] {
      if (!on_host) {
        b.sample_rows(logits.data(), vocab, rows.data(), n, params.data(), indices.data(), tokens.data());
        return;
      }
      for (std::int64_t i = 0; i < n; ++i) {
        cuda::copy_to_host(row_host.data(), logits.data() + i * vocab, std::size_t(vocab), b.stream());
        tokens[std::size_t(i)] =
            cpu::sample_at_index(row_host.data(), vocab, params[std::size_t(i)], indices[std::size_t(i)], ws);
      }
    }));
    benchmark::DoNotOptimize(tokens.data());
  }
  state.counters["rows/s"] =
      benchmark::Counter(double(n) * double(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_CudaSampleRows)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->Iterations(50)
    ->ArgNames({"rows", "plain", "host"})
    ->Args({1, 0, 0})
    ->Args({1, 0, 1})
    ->Args({64, 0, 0})
    ->Args({64, 0, 1})
    ->Args({64, 1, 0})
    ->Args({64, 1, 1});

}  // namespace

int main(int argc, char** argv) {
  if (cuda::device_count() == 0) {
    std::fprintf(stderr, "bench_cuda: no CUDA device\n");
    return 1;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  try {
    benchmark::RunSpecifiedBenchmarks();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda: %s\n", e.what());
    return 1;
  }
  benchmark::Shutdown();
  return 0;
}
