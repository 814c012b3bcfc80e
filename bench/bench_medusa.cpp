// Medusa at batch 1, greedy, on a model's golden prompts: tokens emitted per
// target forward pass and wall-clock throughput, next to plain decoding on
// the same prompts in the same run (speed-up = tok_s / tok_s of
// BM_Medusa/<model>/plain).
//
//   FASTINFER_MEDUSA_HEADS=build-medusa/stories260K.medusa bench_medusa
//   FASTINFER_MEDUSA_MODEL=tinystories-656k FASTINFER_MEDUSA_HEADS=build-medusa/ts656k.medusa bench_medusa
//
// The model is stories260K (golden/cases) or, with FASTINFER_MEDUSA_MODEL=
// tinystories-656k, models/tinystories-656k (golden/tinystories-656k/cases);
// inflate:NAME:SIZE inflates either (model/inflate.hpp; issue 10's
// memory-bound stand-in), and trained heads are then zero-padded (pad:FILE).
// FASTINFER_MEDUSA_WEIGHTS (f32, bf16, f16) and FASTINFER_MEDUSA_THREADS set
// the weight type and threads (default f32, 1). Issue 10's measurement (one
// command, two lines here):
//   FASTINFER_MEDUSA_MODEL=inflate:tinystories-656k:110M FASTINFER_MEDUSA_THREADS=2
//   FASTINFER_MEDUSA_HEADS=build-medusa/ts656k.medusa bench_medusa --benchmark_filter="plain|trained"
// The trained heads come from tools/train_medusa.py (a build artefact): the
// path is taken from FASTINFER_MEDUSA_HEADS or --medusa-heads=PATH; without
// it the trained rows are skipped with an error message saying so (the
// random-head rows still run: they show what the tree costs when almost
// nothing is accepted). Trees: choices (FixedChoicesTree::default_for(4), 9
// nodes), file (the trainer's tree, HEADS.choices, built from the heads'
// measured accuracies) and dynamic (DynamicTree{budget}, budget = the
// benchmark argument).
// Rates are per wall-clock second (UseRealTime: the model may run on several
// threads). Counters: tok_s, accepted_per_forward (emitted tokens per verification
// pass; 1.0 for plain decoding), acceptance (accepted / tree nodes offered).
// Each iteration runs every golden prompt once.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench_env.hpp"
#include "common/medusa_flags.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/speculative/medusa_heads.hpp"
#include "fastinfer/speculative/medusa_tree.hpp"

using namespace fastinfer;
using Model = LlamaModel<>;

namespace {

std::string shared(const std::string& rel) { return std::string(FASTINFER_SHARED_DIR) + "/" + rel; }

std::string g_heads_path;                 // trained heads
std::string g_model_name = "stories260K";  // or tinystories-656k, inflate:tinystories-656k:110M, ...
std::string g_weights = "f32";             // FASTINFER_MEDUSA_WEIGHTS: f32, bf16, f16
int g_threads = 1;                         // FASTINFER_MEDUSA_THREADS

// "stories260K" / "tinystories-656k", optionally as "inflate:NAME:SIZE".
std::string model_path_of(const std::string& name) {
  if (name.compare(0, 8, "inflate:") == 0) {
    const std::string rest = name.substr(8);
    const auto colon = rest.find(':');
    return "inflate:" + model_path_of(rest.substr(0, colon)) + rest.substr(colon);
  }
  return shared(name == "tinystories-656k" ? "models/tinystories-656k" : "models/stories260K.bin");
}
std::string cases_dir_of(const std::string& name) {
  return shared(name.find("tinystories-656k") != std::string::npos ? "golden/tinystories-656k/cases"
                                                                   : "golden/cases");
}

struct Prompt {
  std::vector<std::int32_t> ids;
  int max_new = 0;
};


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

Model* model() {
  static std::unique_ptr<Model> m;
  const std::string path = model_path_of(g_model_name);
  const std::string file = path.compare(0, 8, "inflate:") == 0 ? path.substr(8, path.rfind(':') - 8) : path;
  if (!m && std::filesystem::exists(file)) {
    LoadOptions load;
    load.weight_dtype = parse_weight_dtype(g_weights);
    load.threads = g_threads;
    m = std::make_unique<Model>(load_model(path, load), ModelOptions{g_threads, 64});
  }
  return m.get();
}

// heads: "plain", "trained" or "random:SEED"; tree: "choices" or "dynamic".
void BM_Medusa(benchmark::State& state, const std::string& heads_spec, const std::string& tree) {
  Model* target = model();
  const auto prompts = golden_prompts(cases_dir_of(g_model_name));
  if (!target || prompts.empty()) {
    state.SkipWithError("missing the model or its golden cases under ../shared");
    return;
  }
  std::unique_ptr<speculative::MedusaHeads> heads;
  if (heads_spec == "trained") {
    if (g_heads_path.empty()) {
      state.SkipWithError("no trained heads: set FASTINFER_MEDUSA_HEADS or pass --medusa-heads=PATH "
                          "(tools/train_medusa.py writes them)");
      return;
    }
    // Heads trained on the original of an inflated model: zero-padded (pad:FILE).
    const bool pad = g_model_name.compare(0, 8, "inflate:") == 0;
    heads = std::make_unique<speculative::MedusaHeads>(
        fastinfer::examples::medusa_heads_from_flag((pad ? "pad:" : "") + g_heads_path, target->config()));
  } else if (heads_spec != "plain") {
    heads = std::make_unique<speculative::MedusaHeads>(fastinfer::examples::medusa_heads_from_flag(heads_spec, target->config()));
  }
  speculative::MedusaOptions o;
  if (tree == "choices") {
    o.tree = speculative::FixedChoicesTree::default_for(heads ? heads->num_heads() : 4);
  } else if (tree == "file") {
    if (!std::filesystem::exists(g_heads_path + ".choices")) {
      state.SkipWithError("no tree file next to the heads (HEADS.choices, written by tools/train_medusa.py)");
      return;
    }
    o.tree = speculative::read_choices_file(g_heads_path + ".choices");
  } else {
    o.tree = speculative::DynamicTree{int(state.range(0)), 3, 0};
  }
  std::int64_t tokens = 0, forwards = 0, step_tokens = 0, drafted = 0, accepted = 0;
  for (auto _ : state) {
    for (const Prompt& p : prompts) {
      GenerationParams g;
      g.max_new_tokens = p.max_new;
      if (!heads) {
        const auto r = generate(*target, p.ids, g);
        tokens += std::int64_t(r.tokens.size());
        forwards += std::int64_t(r.tokens.size());
        step_tokens += std::int64_t(r.tokens.size());
      } else {
        const auto r = speculative::medusa_generate(*target, *heads, p.ids, g, o);
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
}

}  // namespace

int main(int argc, char** argv) {
  if (const char* e = std::getenv("FASTINFER_MEDUSA_HEADS")) g_heads_path = e;
  if (const char* e = std::getenv("FASTINFER_MEDUSA_MODEL")) g_model_name = e;
  if (const char* e = std::getenv("FASTINFER_MEDUSA_WEIGHTS")) g_weights = e;
  if (const char* e = std::getenv("FASTINFER_MEDUSA_THREADS")) g_threads = std::max(1, std::atoi(e));
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    const char* flag = "--medusa-heads=";
    if (std::strncmp(argv[i], flag, std::strlen(flag)) == 0) g_heads_path = argv[i] + std::strlen(flag);
    else args.push_back(argv[i]);
  }
  int n = int(args.size());
  const std::string base = "BM_Medusa/" + g_model_name + "/" + g_weights + "/t" + std::to_string(g_threads) + "/";
  benchmark::RegisterBenchmark((base + "plain").c_str(), BM_Medusa, std::string("plain"), std::string("-"))
      ->Arg(0)->Unit(benchmark::kMillisecond)->MinTime(0.5)->UseRealTime();
  for (const std::string h : {"trained", "random:1"}) {
    benchmark::RegisterBenchmark((base + h + "/choices").c_str(), BM_Medusa, h, std::string("choices"))
        ->Arg(9)->Unit(benchmark::kMillisecond)->MinTime(0.5)->UseRealTime();
    if (h == "trained")
      benchmark::RegisterBenchmark((base + h + "/file").c_str(), BM_Medusa, h, std::string("file"))
          ->Arg(0)->Unit(benchmark::kMillisecond)->MinTime(0.5)->UseRealTime();
    auto* b = benchmark::RegisterBenchmark((base + h + "/dynamic").c_str(), BM_Medusa, h, std::string("dynamic"));
    for (int budget : {4, 10, 15, 24}) b->Arg(budget);
    b->Unit(benchmark::kMillisecond)->MinTime(0.5)->UseRealTime();
  }
  benchmark::Initialize(&n, args.data());
  fastinfer::bench::record_run_settings();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
