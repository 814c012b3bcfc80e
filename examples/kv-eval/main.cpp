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
//
// `--press NAME... --ratio R...` measures KV compression instead (kv_press.hpp):
// each sequence's first 3/4 is the prompt, compressed after its prefill, and
// the last 1/4 is fed teacher-forced; KL divergence and top-1 agreement are
// against the same sequence with the uncompressed cache. Memory saved is the
// share of the prompt's KV blocks given back (paged, block 16). Retrieval: a
// run of 8 random tokens (the needle) is planted at 10 % of a --length-token
// prompt of filler (the model's golden text, random tokens for synthetic
// models); after compression the needle's first 2 tokens are fed again and
// the score is the share of its remaining 6 tokens predicted top-1
// (teacher-forced), next to the same score with the uncompressed cache.
// Sequences for the press mode: the golden texts joined end to end, cut into
// --sequences windows of --length tokens (random tokens for synthetic models).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
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

// Teacher-forced logits of every position of every sequence, uncompressed.
std::vector<std::vector<float>> all_logits(fastinfer::LlamaModel<>& model,
                                           const std::vector<std::vector<std::int32_t>>& seqs) {
  const std::size_t V = std::size_t(model.config().vocab_size);
  std::vector<std::vector<float>> out;
  for (const auto& s : seqs) {
    std::vector<float> rows(s.size() * V);
    model.reset();
    model.forward_prefill_all(s.data(), std::int64_t(s.size()), 0, rows.data());
    out.push_back(std::move(rows));
  }
  return out;
}

// KL(p || q) of two logits rows, and whether their argmax agrees.
std::pair<double, bool> compare_rows(const float* a, const float* b, int V, std::vector<double>& lp,
                                     std::vector<double>& lq) {
  log_softmax(a, V, lp);
  log_softmax(b, V, lq);
  double k = 0;
  for (int i = 0; i < V; ++i) k += std::exp(lp[std::size_t(i)]) * (lp[std::size_t(i)] - lq[std::size_t(i)]);
  return {std::max(0.0, k), std::max_element(a, a + V) - a == std::max_element(b, b + V) - b};
}

// Windows of `length` tokens over the golden texts joined end to end.
std::vector<std::vector<std::int32_t>> text_windows(const std::vector<std::vector<std::int32_t>>& texts, int count,
                                                    int length) {
  std::vector<std::int32_t> all;
  for (const auto& t : texts) all.insert(all.end(), t.begin(), t.end());
  while (int(all.size()) < length + count * 37) all.insert(all.end(), all.begin(), all.end());
  std::vector<std::vector<std::int32_t>> out;
  // Each window starts with BOS, as the models saw every text in training.
  for (int s = 0; s < count; ++s) {
    out.push_back({1});
    out.back().insert(out.back().end(), all.begin() + s * 37, all.begin() + s * 37 + length - 1);
  }
  return out;
}

// The logits of every token of `feed` after `prompt` was prefilled and, if
// `press` is set, compressed at `ratio`; KV blocks before and after.
struct PressRun {
  std::vector<float> logits;
  std::int32_t blocks_before = 0, blocks_freed = 0;
  double entries_removed = 0;
};
PressRun run_press(fastinfer::LlamaModel<>& model, const std::vector<std::int32_t>& prompt,
                   const std::vector<std::int32_t>& feed, const fastinfer::kv::Press* press, double ratio) {
  auto& kv = model.kv();
  if (kv.contains(0)) kv.free_sequence(0);
  kv.add_sequence(0);
  kv.observe_queries(0);
  PressRun r;
  for (std::size_t done = 0; done < prompt.size();) {
    const std::size_t n = std::min(prompt.size() - done, std::size_t(model.max_batch()));
    fastinfer::ForwardBatch b;
    b.add(0, prompt.data() + done, std::int32_t(n));
    b.logits = fastinfer::LogitsRows::None;
    model.forward(b);
    done += n;
  }
  r.blocks_before = std::int32_t(kv.allocator().block_table(0).size());
  if (press != nullptr) {
    const fastinfer::CompressionStats st = kv.compress(0, *press, ratio);
    r.blocks_freed = st.blocks_freed;
    r.entries_removed = 1.0 - double(st.kept_entries) / double(st.total_entries);
  }
  fastinfer::ForwardBatch b;
  b.add(0, feed);
  b.logits = fastinfer::LogitsRows::All;
  const float* out = model.forward(b);
  r.logits.assign(out, out + feed.size() * std::size_t(model.config().vocab_size));
  return r;
}

struct PressScore {
  double kld = 0, top1 = 0, retrieval = 0, memory_saved = 0, entries_removed = 0;
  std::int64_t positions = 0, needle_tokens = 0;
};

// One press at one ratio (press == nullptr: uncompressed, retrieval only).
PressScore score_press(fastinfer::LlamaModel<>& model, const std::vector<std::vector<std::int32_t>>& seqs,
                       const std::vector<std::vector<float>>& reference,
                       const std::vector<std::pair<std::vector<std::int32_t>, std::vector<std::int32_t>>>& needles,
                       const fastinfer::kv::Press* press, double ratio) {
  const int V = model.config().vocab_size;
  std::vector<double> lp, lq;
  PressScore sc;
  std::int64_t agree = 0, blocks = 0, freed = 0, hits = 0;
  double removed = 0;
  for (std::size_t s = 0; press && s < seqs.size(); ++s) {
    const std::size_t P = seqs[s].size() * 3 / 4;
    const std::vector<std::int32_t> prompt(seqs[s].begin(), seqs[s].begin() + std::ptrdiff_t(P));
    const std::vector<std::int32_t> feed(seqs[s].begin() + std::ptrdiff_t(P), seqs[s].end());
    const PressRun r = run_press(model, prompt, feed, press, ratio);
    for (std::size_t i = 0; i < feed.size(); ++i) {
      const auto [k, same] = compare_rows(reference[s].data() + (P + i) * std::size_t(V),
                                          r.logits.data() + i * std::size_t(V), V, lp, lq);
      sc.kld += k;
      agree += same;
      ++sc.positions;
    }
    blocks += r.blocks_before;
    freed += r.blocks_freed;
    removed += r.entries_removed;
  }
  for (const auto& [prompt, needle] : needles) {
    // Cue: the needle's first two tokens; score: its other tokens, top-1.
    const PressRun r = run_press(model, prompt, needle, press, ratio);
    for (std::size_t i = 1; i + 1 < needle.size(); ++i) {
      const float* row = r.logits.data() + i * std::size_t(V);
      hits += std::max_element(row, row + V) - row == needle[i + 1];
      ++sc.needle_tokens;
    }
  }
  if (sc.positions > 0) {
    sc.kld /= double(sc.positions);
    sc.top1 = double(agree) / double(sc.positions);
    sc.memory_saved = double(freed) / double(blocks);
    sc.entries_removed = removed / double(seqs.size());
  }
  sc.retrieval = sc.needle_tokens > 0 ? double(hits) / double(sc.needle_tokens) : 0.0;
  return sc;
}

// Needle prompts: filler of `length` tokens with 8 random tokens planted at
// 10 %; returns (prompt, needle) pairs.
std::vector<std::pair<std::vector<std::int32_t>, std::vector<std::int32_t>>> needle_prompts(
    const std::vector<std::int32_t>& filler_text, int count, int length, int vocab) {
  std::vector<std::pair<std::vector<std::int32_t>, std::vector<std::int32_t>>> out;
  std::uint64_t state = 0x2545F4914F6CDD1Dull;
  auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return std::int32_t((state >> 33) % std::uint64_t(vocab - 3)) + 3;
  };
  for (int t = 0; t < count; ++t) {
    std::vector<std::int32_t> prompt{1}, needle;
    for (int i = 0; i < 8; ++i) needle.push_back(next());

    const int at = length / 10 + t;
    for (std::size_t i = std::size_t(t) * 11; int(prompt.size()) < length; ++i) {
      if (int(prompt.size()) == at) prompt.insert(prompt.end(), needle.begin(), needle.end());
      prompt.push_back(filler_text.empty() ? next() : filler_text[i % filler_text.size()]);
    }
    out.emplace_back(std::move(prompt), std::move(needle));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"KL divergence and top-1 agreement of quantized KV caches against f32 KV."};
  std::string shared = "/work/shared";
  std::vector<std::string> models = {"stories260K", "tinystories-656k", "synthetic:15M"};
  std::vector<std::string> quants = {"f16", "bf16", "int8", "fp8-e4m3", "fp8-e5m2", "int4"};
  int threads = 1, sequences = 2, length = 256;
  bool json = false;
  std::vector<std::string> presses;
  std::vector<double> ratios = {0.25, 0.5, 0.75};
  int needles = 8;
  app.add_option("--shared", shared, "directory holding models/ and golden/");
  app.add_option("--model", models, "stories260K, tinystories-656k, or any load_model spec (synthetic:15M)");
  app.add_option("--kv", quants, "quantization types to compare with f32")
      ->check(CLI::IsMember(fastinfer::examples::kv_quant_choices()));
  app.add_option("--threads", threads, "threads")->check(CLI::PositiveNumber);
  app.add_option("--sequences", sequences, "random sequences per synthetic model")->check(CLI::PositiveNumber);
  app.add_option("--length", length, "tokens per random sequence")->check(CLI::PositiveNumber);
  app.add_flag("--json", json, "print a JSON array");
  app.add_option("--press", presses, "KV presses to measure instead of quantization: streamingllm snapkv h2o pyramidkv");
  app.add_option("--ratio", ratios, "compression ratios (share of KV entries removed), each in [0, 1)");
  app.add_option("--needles", needles, "needle prompts per model (press mode)")->check(CLI::NonNegativeNumber);
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
      // A stand-in inflated from a shared model computes its function: its golden text fits it too.
      const bool from_s260 = s260 || (name.rfind("inflate:", 0) == 0 && name.find("stories260K") != std::string::npos);
      const bool from_ts = ts || (name.rfind("inflate:", 0) == 0 && name.find("tinystories-656k") != std::string::npos);
      if (from_s260) seqs = golden_sequences(shared + "/golden/cases");
      else if (from_ts) seqs = golden_sequences(shared + "/golden/tinystories-656k/cases");
      else seqs = random_sequences(sequences, length, c.vocab_size, c.max_seq_len);
      const std::size_t V = std::size_t(c.vocab_size);
      const std::string model_name = s260 || ts ? name : spec;

      if (!presses.empty()) {
        std::vector<std::int32_t> filler;
        if (from_s260 || from_ts) {
          for (const auto& t : seqs) filler.insert(filler.end(), t.begin(), t.end());
          seqs = text_windows(seqs, sequences, std::min(length, c.max_seq_len));
        }
        fastinfer::ModelOptions o;
        o.threads = threads;
        o.kv.layout = fastinfer::KVLayoutKind::Paged;
        o.kv.block_size = 16;
        fastinfer::LlamaModel<> model(weights, o);
        const std::vector<std::vector<float>> reference = all_logits(model, seqs);
        const auto needle_set = needle_prompts(filler, needles, std::min(length, c.max_seq_len) - 8, c.vocab_size);
        const PressScore base = score_press(model, seqs, reference, needle_set, nullptr, 0.0);
        for (const std::string& pname : presses) {
          const fastinfer::kv::Press press = fastinfer::kv::parse_press(pname);
          for (double ratio : ratios) {
            const PressScore sc = score_press(model, seqs, reference, needle_set, &press, ratio);
            rows.push_back({{"press", pname},
                            {"ratio", ratio},
                            {"model", model_name},
                            {"memory_saved", sc.memory_saved},
                            {"entries_removed", sc.entries_removed},
                            {"mean_kld", sc.kld},
                            {"top1_agreement", sc.top1},
                            {"retrieval", sc.retrieval},
                            {"retrieval_uncompressed", base.retrieval},
                            {"positions", sc.positions},
                            {"needle_tokens", sc.needle_tokens}});
            if (!json)
              std::printf("%-26s %-12s ratio %.2f  memory saved %5.1f %%  KLD %.3e  top-1 %6.2f %%  retrieval %5.1f %% "
                          "(uncompressed %5.1f %%)\n",
                          model_name.c_str(), pname.c_str(), ratio, 100.0 * sc.memory_saved, sc.kld, 100.0 * sc.top1,
                          100.0 * sc.retrieval, 100.0 * base.retrieval);
          }
        }
        continue;
      }

      auto run = [&](fastinfer::kv::QuantKind q) {
        fastinfer::ModelOptions o;
        o.threads = threads;
        o.kv.quant = q;
        fastinfer::LlamaModel<> model(weights, o);
        return std::make_pair(all_logits(model, seqs), model.kv().bytes_per_token());
      };
      const auto ref = run(fastinfer::kv::QuantKind::F32);
      std::vector<double> lp, lq;
      for (const std::string& qname : quants) {
        const auto got = run(fastinfer::kv::parse_quant(qname));
        double kld = 0;
        std::int64_t agree = 0, positions = 0;
        for (std::size_t s = 0; s < seqs.size(); ++s)
          for (std::size_t p = 0; p < seqs[s].size(); ++p) {
            const auto [k, same] = compare_rows(ref.first[s].data() + p * V, got.first[s].data() + p * V, int(V), lp, lq);
            kld += k;
            agree += same;
            ++positions;
          }
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
