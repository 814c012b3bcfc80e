// fastinfer-kv-eval: what each KV-cache quantization costs in accuracy.
//
// For every model and quantization type, the same token sequences are fed
// teacher-forced (one forward pass over the whole sequence, logits at every
// position) with an f32 KV cache and with the quantized one; reported are the
// mean KL divergence KL(p_f32 || p_quant) of the next-token distribution over
// all positions, the share of positions whose argmax agrees, and the KV bytes
// per token (every layer, K and V, scales included).
//
// Sequences: stories260K (--shared/models/stories260K.bin): the golden cases,
// prompt + continuation; tinystories-656k: its golden cases; synthetic:NAME:
// --sequences pseudo-random sequences of --length tokens. `--json` prints a
// JSON array of {"quant","model","mean_kld","top1_agreement","bytes_per_token"}.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"

#include "common/cli.hpp"
#include "common/golden.hpp"

namespace fs = std::filesystem;

namespace {

// prompt + continuation of every golden case file in `dir`.
std::vector<std::vector<std::int32_t>> golden_sequences(const fs::path& dir) {
  std::vector<std::vector<std::int32_t>> out;
  for (const auto& c : fastinfer::examples::read_golden_cases(dir)) out.push_back(c.sequence());
  return out;
}

std::vector<std::vector<std::int32_t>> random_sequences(int count, int length, int vocab, int max_len) {
  std::vector<std::vector<std::int32_t>> out;
  std::uint64_t state = 0x9E3779B97F4A7C15ull;
  for (int s = 0; s < count; ++s) {
    std::vector<std::int32_t> seq{1};
    while (int(seq.size()) < std::min(length, max_len)) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      seq.push_back(std::int32_t((state >> 33) % std::uint64_t(vocab)));
    }
    out.push_back(std::move(seq));
  }
  return out;
}

// log-softmax of logits[n] into out[n], in double.
void log_softmax(const float* logits, int n, std::vector<double>& out) {
  double mx = logits[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, double(logits[i]));
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - mx);
  const double lse = mx + std::log(sum);
  out.resize(std::size_t(n));
  for (int i = 0; i < n; ++i) out[std::size_t(i)] = double(logits[i]) - lse;
}

struct Result {
  double mean_kld = 0, top1 = 0;
  std::size_t bytes_per_token = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"KL divergence and top-1 agreement of quantized KV caches against f32 KV."};
  std::string shared = "/work/shared";
  std::vector<std::string> models = {"stories260K", "tinystories-656k", "synthetic:15M"};
  std::vector<std::string> quants = {"f16", "bf16", "int8", "fp8-e4m3", "fp8-e5m2", "int4"};
  int threads = 1, sequences = 2, length = 256;
  bool json = false;
  app.add_option("--shared", shared, "directory holding models/ and golden/");
  app.add_option("--model", models, "stories260K, tinystories-656k, or any load_model spec (synthetic:15M)");
  app.add_option("--kv", quants, "quantization types to compare with f32")
      ->check(CLI::IsMember(fastinfer::examples::kv_quant_choices()));
  app.add_option("--threads", threads, "threads")->check(CLI::PositiveNumber);
  app.add_option("--sequences", sequences, "random sequences per synthetic model")->check(CLI::PositiveNumber);
  app.add_option("--length", length, "tokens per random sequence")->check(CLI::PositiveNumber);
  app.add_flag("--json", json, "print a JSON array");
  fastinfer::LoadOptions load;
  fastinfer::examples::add_ctx_size(app, load);
  if (const int code = fastinfer::examples::parse_args(app, "fastinfer-kv-eval", argc, argv); code >= 0) return code;
  return fastinfer::examples::run_main("fastinfer-kv-eval", [&] {
    nlohmann::json rows = nlohmann::json::array();
    for (const std::string& name : models) {
      std::string spec = name;
      std::vector<std::vector<std::int32_t>> seqs;
      const bool s260 = name == "stories260K", ts = name == "tinystories-656k";
      if (s260) spec = shared + "/models/stories260K.bin";
      if (ts) spec = shared + "/models/tinystories-656k";
      const fastinfer::LlamaWeights weights = fastinfer::load_model(spec, load);
      const auto& c = weights.config;
      if (s260) seqs = golden_sequences(shared + "/golden/cases");
      else if (ts) seqs = golden_sequences(shared + "/golden/tinystories-656k/cases");
      else seqs = random_sequences(sequences, length, c.vocab_size, c.max_seq_len);
      const std::size_t V = std::size_t(c.vocab_size);

      auto run = [&](fastinfer::kv::QuantKind q) {
        fastinfer::ModelOptions o;
        o.threads = threads;
        o.kv.quant = q;
        fastinfer::LlamaModel<> model(weights, o);
        std::vector<std::vector<float>> out;
        for (const auto& s : seqs) {
          std::vector<float> rows(s.size() * V);
          model.reset();
          model.forward_prefill_all(s.data(), std::int64_t(s.size()), 0, rows.data());
          out.push_back(std::move(rows));
        }
        return std::make_pair(std::move(out), model.kv().bytes_per_token());
      };
      const auto ref = run(fastinfer::kv::QuantKind::F32);
      std::vector<double> lp, lq;
      for (const std::string& qname : quants) {
        const auto got = run(fastinfer::kv::parse_quant(qname));
        double kld = 0;
        std::int64_t agree = 0, positions = 0;
        for (std::size_t s = 0; s < seqs.size(); ++s)
          for (std::size_t p = 0; p < seqs[s].size(); ++p) {
            const float* a = ref.first[s].data() + p * V;
            const float* b = got.first[s].data() + p * V;
            log_softmax(a, int(V), lp);
            log_softmax(b, int(V), lq);
            double k = 0;
            for (std::size_t i = 0; i < V; ++i) k += std::exp(lp[i]) * (lp[i] - lq[i]);
            kld += std::max(0.0, k);
            agree += std::max_element(a, a + V) - a == std::max_element(b, b + V) - b;
            ++positions;
          }
        const std::string model_name = s260 || ts ? name : spec;
        rows.push_back({{"quant", qname},
                        {"model", model_name},
                        {"mean_kld", kld / double(positions)},
                        {"top1_agreement", double(agree) / double(positions)},
                        {"bytes_per_token", got.second},
                        {"positions", positions}});
        if (!json)
          std::printf("%-18s %-9s mean KLD %.3e  top-1 %6.2f %%  %6zu B/token (f32 %zu)  over %lld positions\n",
                      model_name.c_str(), qname.c_str(), kld / double(positions),
                      100.0 * double(agree) / double(positions), got.second, ref.second, (long long)positions);
      }
    }
    if (json) std::printf("%s\n", rows.dump(1).c_str());
    return 0;
  });
}
