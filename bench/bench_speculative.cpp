// Speculative decoding at batch 1, greedy: per drafter, tokens emitted per
// target forward pass and wall-clock throughput, next to plain decoding on the
// same prompts (speed-up = tok_s / tok_s of the "none" row of the same set).
//
//   bench_speculative --benchmark_format=json [--benchmark_filter=...]
//
// Sets (each iteration generates every prompt of the set once):
//   stories260K   the golden prompts of ../shared/golden/cases, their max_new_tokens
//   ts656k        ../shared/golden/tinystories-656k/cases, max_new_tokens 200
//   110M-repeat   synthetic:110M (f32), a 16-token phrase repeated 4 times after
//                 BOS, 48 new tokens (the prompt-lookup case)
// Drafters: none (plain generate()), prompt-lookup (n 3..1), lookahead
// (W, N, G = 5, k + 1, 5), self-bf16 (the target in bf16 weights as the
// draft model). Counters: tok_s (emitted tokens per second),
// accepted_per_forward (emitted tokens per verification pass, 1.0 for plain
// decoding), acceptance (kept drafts / drafted), target_forwards per iteration.
// One thread: the numbers are about the algorithm, not the kernels' scaling.
//
// Issue 10's figures, the memory-bound stand-in (BM_Spec110M/<weights>/<drafter>):
// inflate:<shared>/models/tinystories-656k:110M with f32 or bf16 weights,
// 2 threads, the tinystories-656k golden prompts and their max_new_tokens,
// batch 1, greedy; WALL-CLOCK tok/s (steady_clock around the generation,
// one iteration) and speed_up over the same set's "none" row (run first).
// Drafters: none, pl (prompt lookup, k 4), pl-tree (4 candidates as a
// trie), la-W,N,G (lookahead, 2-D window + trie in one masked pass),
// self-q8-int8 / self-q8-int4 (the inflated target itself with q8_0 weights
// and an int8 / int4 KV cache as the draft model, k 4), ee-N (issue 20:
// self-speculative early exit, the target's first N of 12 layers with its
// norm and classifier, sharing its KV cache, k 4, or K with ee-N-kK; on this
// stand-in the real layers sit at 0 and 6, so ee-1..6 draft with the first
// real layer and ee-7 drafts the full function). BM_Forward110M/<n> and
// BM_Forward1B/bf16/<n>: the wall time of one pass over n tokens after 100
// (the verify cost).
//   bench_speculative --benchmark_filter='BM_(Spec|Forward)110M' --benchmark_format=json   (< 10 min)
//
// Dynamic speculation (issue 17, adaptive_draft_length.hpp), side by side:
// BM_Auto/<set>/<drafter>/k and BM_Auto110M/<weights>/<drafter> generate
// every prompt plainly, with the drafter at its fixed k and with dynamic
// speculation (up to k), alternating, outputs checked equal. Counters:
// plain_tok_s, fixed_tok_s, auto_tok_s (wall clock), fixed_vs_plain,
// auto_vs_plain, *_tokens_per_pass, auto_mean_k (drafts asked per pass),
// auto_plain_share (passes at k = 0), auto_probes.
//   bench_speculative --benchmark_filter='BM_Auto' --benchmark_format=json
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench_env.hpp"
#include "common/drafter_flags.hpp"
#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/speculative/adaptive_draft_length.hpp"
#include "fastinfer/speculative/draft_model.hpp"
#include "fastinfer/speculative/early_exit_drafter.hpp"
#include "fastinfer/speculative/lookahead_pool.hpp"
#include "fastinfer/speculative/prompt_lookup.hpp"
#include "fastinfer/speculative/speculative_generate.hpp"

using namespace fastinfer;
using Model = LlamaModel<>;

namespace {

struct Prompt {
  std::vector<std::int32_t> ids;
  int max_new = 0;
};
struct Set {
  std::string model;  // load_model spec
  std::vector<Prompt> prompts;
};

std::string shared(const std::string& rel) { return std::string(FASTINFER_SHARED_DIR) + "/" + rel; }

std::vector<Prompt> golden_prompts(const std::string& dir) {
  std::vector<Prompt> out;
  if (!std::filesystem::exists(dir)) return out;
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().extension() == ".txt") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    Prompt p;
    std::ifstream in(f);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("prompt:", 0) == 0) {
        std::istringstream s(line.substr(7));
        for (long v; s >> v;) p.ids.push_back(std::int32_t(v));
      }
      if (line.rfind("max_new_tokens:", 0) == 0) p.max_new = std::stoi(line.substr(15));
    }
    out.push_back(p);
  }
  return out;
}

const Set& set(const std::string& name) {
  static std::map<std::string, Set> sets;
  auto it = sets.find(name);
  if (it != sets.end()) return it->second;
  Set s;
  if (name == "stories260K") {
    s.model = shared("models/stories260K.bin");
    s.prompts = golden_prompts(shared("golden/cases"));
  } else if (name == "ts656k") {
    s.model = shared("models/tinystories-656k");
    s.prompts = golden_prompts(shared("golden/tinystories-656k/cases"));
  } else {
    s.model = "synthetic:110M";
    Prompt p;
    p.ids.push_back(1);
    for (int r = 0; r < 4; ++r)
      for (int i = 0; i < 16; ++i) p.ids.push_back(std::int32_t(100 + 37 * i));
    p.max_new = 48;
    s.prompts.push_back(p);
  }
  return sets.emplace(name, std::move(s)).first->second;
}

Model& model(const std::string& spec, bool bf16) {
  static std::map<std::pair<std::string, bool>, std::unique_ptr<Model>> cache;
  auto& slot = cache[{spec, bf16}];
  if (!slot) {
    LoadOptions o;
    if (bf16) o.weight_dtype = DType::BF16;
    o.threads = 2;
    slot = std::make_unique<Model>(load_model(spec, o), ModelOptions{1, 64});
  }
  return *slot;
}

// True (and the benchmark skipped) when the set's model or prompts are absent.
bool missing(benchmark::State& state, const Set& s) {
  if (!s.prompts.empty() && (s.model.rfind("synthetic:", 0) == 0 || std::filesystem::exists(s.model))) return false;
  state.SkipWithError(("missing " + s.model).c_str());
  return true;
}

// The drafters of BM_Speculative (nullptr for "none").
std::unique_ptr<speculative::Drafter> small_drafter(const Set& s, const std::string& drafter_name, const Model& target,
                                                    int k) {
  std::unique_ptr<speculative::Drafter> drafter;
  if (drafter_name == "prompt-lookup") drafter = std::make_unique<speculative::PromptLookup>();
  if (drafter_name == "lookahead")
    drafter = std::make_unique<speculative::LookaheadPool>(speculative::LookaheadConfig{5, k + 1, 5},
                                                           target.config().vocab_size, &cpu::argmax_token<>);
  if (drafter_name == "self-bf16") {
    // A private copy: the draft keeps its own KV cache.
    LoadOptions o;
    o.weight_dtype = DType::BF16;
    o.threads = 2;
    drafter = std::make_unique<speculative::DraftModel<Model>>(Model(load_model(s.model, o), ModelOptions{1, 64}),
                                                         fastinfer::SamplingParams{});
  }
  return drafter;
}

void BM_Speculative(benchmark::State& state, const std::string& set_name, const std::string& drafter_name) {
  const int k = int(state.range(0));
  const Set& s = set(set_name);
  if (missing(state, s)) return;
  Model& target = model(s.model, false);
  speculative::ModelTarget<Model> adapter(target);
  std::unique_ptr<speculative::Drafter> drafter = small_drafter(s, drafter_name, target, k);
  std::int64_t tokens = 0, forwards = 0, step_tokens = 0, drafted = 0, accepted = 0;
  for (auto _ : state) {
    for (const Prompt& p : s.prompts) {
      GenerationParams g;
      g.max_new_tokens = p.max_new;
      if (!drafter) {
        const auto r = generate(target, p.ids, g);
        tokens += std::int64_t(r.tokens.size());
        forwards += std::int64_t(r.tokens.size());
        step_tokens += std::int64_t(r.tokens.size());
      } else {
        const auto r = speculative::speculative_generate(adapter, *drafter, p.ids, g, speculative::SpeculativeOptions{k});
        tokens += std::int64_t(r.generation.tokens.size());
        forwards += r.stats.target_forwards;
        step_tokens += r.stats.step_tokens;
        drafted += r.stats.drafted;
        accepted += r.stats.accepted;
      }
    }
  }
  state.counters["tok_s"] = benchmark::Counter(double(tokens), benchmark::Counter::kIsRate);
  state.counters["accepted_per_forward"] = forwards ? double(step_tokens) / double(forwards) : 0.0;
  state.counters["acceptance"] = drafted ? double(accepted) / double(drafted) : 0.0;
  state.counters["target_forwards"] =
      benchmark::Counter(double(forwards), benchmark::Counter::kAvgIterations);
}

// The price of verification: one forward pass over n tokens at positions
// 100.. (after a 100-token context), per model. Speculation can only pay when
// cost(1 + k) is well below (accepted tokens per pass) x cost(1).
void BM_ForwardTokens(benchmark::State& state, const std::string& set_name) {
  const int n = int(state.range(0));
  const Set& s = set(set_name);
  if (s.model.rfind("synthetic:", 0) != 0 && !std::filesystem::exists(s.model)) {
    state.SkipWithError(("missing " + s.model).c_str());
    return;
  }
  Model& m = model(s.model, false);
  const int vocab = m.config().vocab_size;
  std::vector<std::int32_t> ctx(100), batch(static_cast<std::size_t>(n));
  for (int i = 0; i < 100; ++i) ctx[std::size_t(i)] = std::int32_t((i * 7919 + 1) % vocab);
  for (int i = 0; i < n; ++i) batch[std::size_t(i)] = std::int32_t((i * 31 + 5) % vocab);
  std::vector<float> rows(std::size_t(n) * std::size_t(vocab));
  m.reset();
  m.forward_prefill(ctx, 0);
  for (auto _ : state) {
    m.forward_prefill_all(batch.data(), n, 100, rows.data());
    benchmark::DoNotOptimize(rows.data());
  }
  state.counters["tokens"] = n;
  state.SetLabel(std::string("bf16 dot ") + cpu::bf16_dot_running());  // FASTINFER_BF16_DOT picks it
}

// --- issue 10: the inflated 110M stand-in -------------------------------------

std::string inflated_spec(const std::string& size = "110M") {
  return "inflate:" + shared("models/tinystories-656k") + ":" + size;
}

// The stand-in of `size` (110M or 1B) with `weights`, built once per
// process; building a 1B one drops every other (2-4 GB each).
Model& inflated(const std::string& weights, const std::string& kv = "f32", const std::string& size = "110M") {
  static std::map<std::string, std::unique_ptr<Model>> cache;
  const std::string key = size + "/" + weights + "/" + kv;
  if (!cache.count(key)) {
    if (size != "110M") cache.clear();
    LoadOptions o;
    o.weight_dtype = parse_weight_dtype(weights);
    o.threads = 2;
    KVOptions kvo;
    kvo.quant = kv::parse_quant(kv);
    cache[key] = std::make_unique<Model>(load_model(inflated_spec(size), o), ModelOptions{2, 64, kvo});
  }
  return *cache[key];
}

std::map<std::string, double>& plain_tok_s() {
  static std::map<std::string, double> m;
  return m;
}

// The stand-in's prompts (the tinystories-656k golden cases); empty, and the
// benchmark skipped, when they or the model are absent.
std::vector<Prompt> prompts_110m(benchmark::State& state) {
  auto prompts = golden_prompts(shared("golden/tinystories-656k/cases"));
  if (prompts.empty() || !std::filesystem::exists(shared("models/tinystories-656k"))) {
    state.SkipWithError("missing ../shared/models/tinystories-656k or its golden cases");
    prompts.clear();
  }
  return prompts;
}

// The drafters of BM_Spec110M (nullptr for "none"); sets `k` (4 unless the name says).
std::unique_ptr<speculative::Drafter> drafter_110m(const std::string& drafter_name, Model& target, int& k) {
  const int vocab = target.config().vocab_size;
  std::unique_ptr<speculative::Drafter> drafter;
  if (drafter_name == "pl") drafter = std::make_unique<speculative::PromptLookup>();
  if (drafter_name == "pl-tree") drafter = std::make_unique<speculative::PromptLookup>(speculative::PromptLookupConfig{3, 1, 4});
  if (drafter_name.rfind("la-", 0) == 0) {
    const auto c = fastinfer::examples::parse_lookahead(drafter_name.substr(3));
    drafter = std::make_unique<speculative::LookaheadPool>(c, vocab, &cpu::argmax_token<>);
    k = c.ngram - 1;
  }
  if (drafter_name.rfind("self-q8-", 0) == 0) {
    LoadOptions o;
    o.weight_dtype = DType::Q8_0;
    o.threads = 2;
    KVOptions kvo;
    kvo.quant = kv::parse_quant(drafter_name.substr(8));
    drafter = std::make_unique<speculative::DraftModel<Model>>(
        Model(load_model(inflated_spec(), o), ModelOptions{2, 64, kvo}), fastinfer::SamplingParams{});
  }
  if (drafter_name.rfind("ee-", 0) == 0) {  // ee-N[-kK]: self-speculative early exit, the first N layers, shared KV
    drafter = std::make_unique<speculative::EarlyExitDrafter<Model>>(target, std::stoi(drafter_name.substr(3)),
                                                              fastinfer::SamplingParams{});
    const auto at = drafter_name.find("-k");
    if (at != std::string::npos) k = std::stoi(drafter_name.substr(at + 2));
  }
  return drafter;
}

void BM_Spec110M(benchmark::State& state, const std::string& weights, const std::string& drafter_name) {
  const auto prompts = prompts_110m(state);
  if (prompts.empty()) return;
  Model& target = inflated(weights);
  speculative::ModelTarget<Model> adapter(target);
  int k = 4;
  std::unique_ptr<speculative::Drafter> drafter = drafter_110m(drafter_name, target, k);
  std::int64_t tokens = 0, forwards = 0, step_tokens = 0, drafted = 0, accepted = 0;
  double wall = 0;
  for (auto _ : state) {
    for (const Prompt& p : prompts) {
      GenerationParams g;
      g.max_new_tokens = p.max_new;
      const auto t0 = std::chrono::steady_clock::now();
      const auto r = drafter ? speculative::speculative_generate(adapter, *drafter, p.ids, g, speculative::SpeculativeOptions{k})
                             : speculative::plain_as_speculative(generate(target, p.ids, g));
      wall += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      tokens += std::int64_t(r.generation.tokens.size());
      forwards += r.stats.target_forwards;
      step_tokens += r.stats.step_tokens;
      drafted += r.stats.drafted;
      accepted += r.stats.accepted;
    }
  }
  const double tok_s = wall > 0 ? double(tokens) / wall : 0.0;
  if (!drafter) plain_tok_s()[weights] = tok_s;
  const auto base = plain_tok_s().find(weights);
  state.counters["wall_tok_s"] = tok_s;
  state.counters["speed_up"] = base != plain_tok_s().end() && base->second > 0 ? tok_s / base->second : 0.0;
  state.counters["accepted_per_forward"] = forwards ? double(step_tokens) / double(forwards) : 0.0;
  state.counters["acceptance"] = drafted ? double(accepted) / double(drafted) : 0.0;
  state.counters["drafted_per_forward"] = forwards ? double(drafted) / double(forwards) : 0.0;
  state.counters["tokens"] = double(tokens) / double(state.iterations());
}

// Dynamic speculation next to plain decoding and the same drafter at its
// fixed k, side by side: every prompt is generated by all three, in an order
// that rotates from prompt to prompt (so a load that drifts during the run
// is shared out), and the three outputs must be equal. One controller per
// benchmark, carried across prompts and iterations as a server would carry
// it; its warm-up (a plain pass, then a probe at k) is inside the timings.
void side_by_side(benchmark::State& state, Model& target, speculative::Drafter& drafter, int k,
                  const std::vector<Prompt>& prompts) {
  speculative::ModelTarget<Model> adapter(target);
  speculative::AdaptiveDraftLength ctl(k);
  double wall[3] = {0, 0, 0};  // plain, fixed k, adaptive
  std::int64_t tokens[3] = {0, 0, 0}, forwards[3] = {0, 0, 0}, steps[3] = {0, 0, 0};
  std::int64_t auto_k_sum = 0, auto_plain_steps = 0;
  std::size_t turn = 0;
  for (auto _ : state) {
    for (const Prompt& p : prompts) {
      GenerationParams g;
      g.max_new_tokens = p.max_new;
      std::vector<std::int32_t> out[3];
      for (int j = 0; j < 3; ++j) {
        const int mode = int((turn + std::size_t(j)) % 3);
        speculative::SpeculativeOptions o{k};
        if (mode == 2) o.adaptive = &ctl;
        const auto t0 = std::chrono::steady_clock::now();
        const auto r = mode == 0 ? speculative::plain_as_speculative(generate(target, p.ids, g))
                                 : speculative::speculative_generate(adapter, drafter, p.ids, g, o);
        wall[mode] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        tokens[mode] += std::int64_t(r.generation.tokens.size());
        forwards[mode] += r.stats.target_forwards;
        steps[mode] += r.stats.step_tokens;
        if (mode == 2) {
          auto_k_sum += r.stats.k_sum;
          auto_plain_steps += r.stats.plain_steps;
        }
        out[mode] = r.generation.tokens;
      }
      ++turn;
      if (out[1] != out[0] || out[2] != out[0]) {
        state.SkipWithError("speculative output differs from plain greedy output");
        return;
      }
    }
  }
  const char* names[3] = {"plain", "fixed", "auto"};
  double rate[3];
  for (int m = 0; m < 3; ++m) {
    rate[m] = wall[m] > 0 ? double(tokens[m]) / wall[m] : 0.0;
    state.counters[std::string(names[m]) + "_tok_s"] = rate[m];
    state.counters[std::string(names[m]) + "_tokens_per_pass"] =
        forwards[m] ? double(steps[m]) / double(forwards[m]) : 0.0;
  }
  state.counters["fixed_vs_plain"] = rate[0] > 0 ? rate[1] / rate[0] : 0.0;
  state.counters["auto_vs_plain"] = rate[0] > 0 ? rate[2] / rate[0] : 0.0;
  state.counters["auto_mean_k"] = forwards[2] ? double(auto_k_sum) / double(forwards[2]) : 0.0;
  state.counters["auto_plain_share"] = forwards[2] ? double(auto_plain_steps) / double(forwards[2]) : 0.0;
  state.counters["auto_probes"] = double(ctl.stats().probes);
}

void BM_Auto(benchmark::State& state, const std::string& set_name, const std::string& drafter_name) {
  const int k = int(state.range(0));
  const Set& s = set(set_name);
  if (missing(state, s)) return;
  Model& target = model(s.model, false);
  const auto drafter = small_drafter(s, drafter_name, target, k);
  side_by_side(state, target, *drafter, k, s.prompts);
}

void BM_Auto110M(benchmark::State& state, const std::string& weights, const std::string& drafter_name) {
  const auto prompts = prompts_110m(state);
  if (prompts.empty()) return;
  Model& target = inflated(weights);
  int k = 4;
  const auto drafter = drafter_110m(drafter_name, target, k);
  side_by_side(state, target, *drafter, k, prompts);
}

void BM_Forward(benchmark::State& state, const std::string& weights, const std::string& size) {
  if (!std::filesystem::exists(shared("models/tinystories-656k"))) {
    state.SkipWithError("missing ../shared/models/tinystories-656k");
    return;
  }
  const int n = int(state.range(0));
  Model& m = inflated(weights, "f32", size);
  const int vocab = m.config().vocab_size;
  std::vector<std::int32_t> ctx(100), batch(static_cast<std::size_t>(n));
  for (int i = 0; i < 100; ++i) ctx[std::size_t(i)] = std::int32_t((i * 7919 + 1) % vocab);
  for (int i = 0; i < n; ++i) batch[std::size_t(i)] = std::int32_t((i * 31 + 5) % vocab);
  std::vector<float> rows(std::size_t(n) * std::size_t(vocab));
  m.reset();
  m.forward_prefill(ctx, 0);
  for (auto _ : state) {
    m.forward_prefill_all(batch.data(), n, 100, rows.data());
    benchmark::DoNotOptimize(rows.data());
  }
  state.counters["tokens"] = n;
  state.SetLabel(std::string("bf16 dot ") + cpu::bf16_dot_running());  // FASTINFER_BF16_DOT picks it
}

}  // namespace

int main(int argc, char** argv) {
  for (const std::string set_name : {"stories260K", "ts656k", "110M-repeat"}) {
    const bool big = set_name == "110M-repeat";
    auto* none = benchmark::RegisterBenchmark(("BM_Speculative/" + set_name + "/none").c_str(), BM_Speculative,
                                              set_name, std::string("none"));
    none->Arg(0)->Unit(benchmark::kMillisecond)->MinTime(big ? 0.1 : 0.5);
    for (const std::string d : {"prompt-lookup", "lookahead", "self-bf16"}) {
      if (big && d == "self-bf16") continue;  // 110M: a bf16 self-draft streams half the target's bytes per draft token
      auto* b = benchmark::RegisterBenchmark(("BM_Speculative/" + set_name + "/" + d).c_str(), BM_Speculative,
                                             set_name, d);
      for (int k : {2, 4, 8}) b->Arg(k);
      b->Unit(benchmark::kMillisecond)->MinTime(big ? 0.1 : 0.5);
    }
  }
  for (const std::string w : {"f32", "bf16"}) {
    for (const std::string d : {"none", "pl", "pl-tree", "la-3,3,2", "la-5,3,3", "la-4,4,3", "la-7,4,5", "self-q8-int8",
                                "self-q8-int4", "ee-1", "ee-7", "ee-7-k8"})
      benchmark::RegisterBenchmark(("BM_Spec110M/" + w + "/" + d).c_str(), BM_Spec110M, w, d)
          ->Iterations(1)
          ->UseRealTime()
          ->Unit(benchmark::kSecond);
    auto* f = benchmark::RegisterBenchmark(("BM_Forward110M/" + w).c_str(), BM_Forward, w, std::string("110M"));
    for (int n : {1, 2, 4, 8, 12, 16, 24, 32}) f->Arg(n);
    f->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.2);
  }
  // The 1B stand-in: memory-bound everywhere (2 GB of bf16 weights a pass).
  auto* f1b = benchmark::RegisterBenchmark("BM_Forward1B/bf16", BM_Forward, std::string("bf16"), std::string("1B"));
  for (int n : {1, 2, 4, 8, 16, 32}) f1b->Arg(n);
  f1b->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.5);
  // Dynamic speculation side by side with plain and fixed k (BM_Auto*: one
  // iteration = every prompt of the set by all three).
  for (const std::string set_name : {"stories260K", "ts656k", "110M-repeat"}) {
    const bool big = set_name == "110M-repeat";
    for (const std::string d : {"prompt-lookup", "lookahead", "self-bf16"}) {
      if (big && d == "self-bf16") continue;
      auto* b = benchmark::RegisterBenchmark(("BM_Auto/" + set_name + "/" + d).c_str(), BM_Auto, set_name, d);
      for (int k : {2, 4, 8}) b->Arg(k);
      b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(big ? 0.1 : 0.5);
    }
  }
  for (const std::string w : {"f32", "bf16"})
    for (const std::string d : {"pl", "pl-tree", "la-3,3,2", "la-5,3,3", "la-4,4,3", "la-7,4,5", "self-q8-int8",
                                "self-q8-int4", "ee-1", "ee-7", "ee-7-k8"})
      benchmark::RegisterBenchmark(("BM_Auto110M/" + w + "/" + d).c_str(), BM_Auto110M, w, d)
          ->Iterations(1)
          ->UseRealTime()
          ->Unit(benchmark::kSecond);
  for (const std::string set_name : {"stories260K", "ts656k", "110M-repeat"}) {
    auto* b = benchmark::RegisterBenchmark(("BM_ForwardTokens/" + set_name).c_str(), BM_ForwardTokens, set_name);
    for (int n : {1, 2, 3, 5, 9, 14}) b->Arg(n);
    b->Unit(benchmark::kMicrosecond);
  }
  benchmark::Initialize(&argc, argv);
  fastinfer::bench::record_run_settings();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
