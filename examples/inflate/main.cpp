// fastinfer-inflate: any model fastinfer loads, inflated to a larger shape
// that computes the same function (model/inflate.hpp), written as a Hugging
// Face directory (config.json + model.safetensors, tokenizer files copied from
// a Hugging Face input) or, when --out ends in .gguf, a GGUF "llama" file (Q/K
// rows permuted to interleaved RoPE; a SentencePiece vocabulary embedded from
// --tokenizer or a .gguf input). The same model as `inflate:PATH:SIZE`.
// Exit codes: 0 ok; 2 bad usage (unknown size, shape that cannot grow); 1 any
// other failure. Errors are one line; nothing is written before the model is built.
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

#include <CLI/CLI.hpp>

#include "fastinfer/model/gguf_loader.hpp"
#include "fastinfer/model/inflate.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/model/safetensors_writer.hpp"
#include "fastinfer/tokenizer/sentencepiece_tokenizer.hpp"

#include "common/cli.hpp"

namespace fe = fastinfer::examples;

int main(int argc, char** argv) {
  CLI::App app{"Inflate a Llama checkpoint to a larger shape that computes the same function."};
  std::string model, size, out, weights, tokenizer;
  fastinfer::LoadOptions load;
  app.add_option("--model", model, "llama2.c .bin, .gguf or Hugging Face directory")->required();
  app.add_option("--size", size, "110M, 1B or dim=D,hidden=H,layers=L,heads=N,kv_heads=K")->required();
  app.add_option("--out", out, "output directory (Hugging Face) or FILE.gguf")->required();
  app.add_option("--weights", weights, "matrix storage type (default: the input's)")
      ->check(CLI::IsMember(fe::weight_choices(false)));
  app.add_option("--tokenizer", tokenizer, "GGUF output: llama2.c tokenizer.bin (or .gguf) vocabulary to embed");
  app.add_option("--seed", load.seed, "seed of the inserted layers' random matrices")->capture_default_str();
  app.add_option("--threads", load.threads, "CPU threads")->check(CLI::Range(1, 1024))->capture_default_str();
  fe::add_ctx_size(app, load);
  if (const int code = fe::parse_args(app, "fastinfer-inflate", argc, argv); code >= 0) return code;

  return fe::run_main("fastinfer-inflate", [&] {
    const auto t0 = std::chrono::steady_clock::now();
    if (!weights.empty()) load.weight_dtype = fastinfer::parse_weight_dtype(weights);
    const fastinfer::LlamaWeights w = fastinfer::load_model("inflate:" + model + ":" + size, load);
    const auto t1 = std::chrono::steady_clock::now();
    if (fe::ends_with(out, ".gguf")) {
      fastinfer::GgufSaveOptions save;
      save.name = "inflated " + std::filesystem::path(model).filename().string() + " " + size;
      const std::string vocab = !tokenizer.empty() ? tokenizer : fe::ends_with(model, ".gguf") ? model : "";
      if (!vocab.empty()) fastinfer::set_gguf_vocabulary(vocab, save);
      fastinfer::save_gguf_llama(fastinfer::with_rope_style(w, fastinfer::RopeStyle::Interleaved), out, save);
    } else {
      const bool hf_input = std::filesystem::is_directory(model);
      fastinfer::save_hf_llama(w, out, hf_input ? std::filesystem::path(model) : std::filesystem::path());
    }
    const auto t2 = std::chrono::steady_clock::now();
    const auto& c = w.config;
    std::fprintf(stderr,
                 "wrote %s: dim %d, hidden %d, %d layers, %d/%d heads of %d, vocab %d, %s matrices "
                 "(built in %.2f s, written in %.2f s)\n",
                 out.c_str(), c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size,
                 std::string(fastinfer::dtype_name(w.token_embedding.dtype)).c_str(),
                 std::chrono::duration<double>(t1 - t0).count(), std::chrono::duration<double>(t2 - t1).count());
    return 0;
  });
}
