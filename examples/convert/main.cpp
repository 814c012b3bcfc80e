// fastinfer-convert: any model fastinfer loads (llama2.c .bin, GGUF, a Hugging
// Face directory, synthetic:NAME) -> a GGUF "llama" file, optionally with its
// matrices stored as f16, bf16 or q8_0 and a SentencePiece vocabulary
// embedded (llama2.c tokenizer.bin, or the input GGUF's own).
// Exit codes: 0 ok; 2 bad usage; 1 any other failure. Errors are one line.
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>

#include "fastinfer/model/gguf_loader.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/tokenizer/sentencepiece_tokenizer.hpp"

#include "common/cli.hpp"

namespace fe = fastinfer::examples;

int main(int argc, char** argv) {
  CLI::App app{"Convert a model to GGUF (llama architecture)."};
  std::string input, output, type, tokenizer, name = "fastinfer";
  int threads = 1;
  app.add_option("input", input, "llama2.c .bin, .gguf, Hugging Face directory or synthetic:NAME")->required();
  app.add_option("output", output, "GGUF file to write")->required();
  app.add_option("--type", type, "matrix storage type (default: as loaded)")
      ->check(CLI::IsMember(fe::weight_choices()));
  app.add_option("--tokenizer", tokenizer, "llama2.c tokenizer.bin (or .gguf) vocabulary to embed");
  app.add_option("--name", name, "general.name")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads for loading")->check(CLI::Range(1, 1024))->capture_default_str();
  fastinfer::LoadOptions load;
  fe::add_ctx_size(app, load);  // written as llama.context_length
  if (const int code = fe::parse_args(app, "fastinfer-convert", argc, argv); code >= 0) return code;

  return fe::run_main("fastinfer-convert", [&] {
    const auto t0 = std::chrono::steady_clock::now();
    load.threads = threads;
    const fastinfer::LlamaWeights weights = fastinfer::load_model(input, load);

    fastinfer::GgufSaveOptions save;
    save.name = name;
    if (!type.empty()) save.type = fastinfer::parse_weight_dtype(type);
    const std::string vocab = !tokenizer.empty() ? tokenizer : fe::ends_with(input, ".gguf") ? input : "";
    if (!vocab.empty()) {
      fastinfer::set_gguf_vocabulary(vocab, save);
      FASTINFER_CHECK(save.tokens.empty() || std::int64_t(save.tokens.size()) >= weights.config.vocab_size,
                      fastinfer::InvalidArgument, "the vocabulary has ", save.tokens.size(),
                      " tokens but the model has ", weights.config.vocab_size);
    }
    fastinfer::save_gguf_llama(weights, output, save);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "wrote %s (%s matrices, %d layers, vocab %d%s) in %.2f s\n", output.c_str(), type.empty() ? "unconverted" : type.c_str(),
                 weights.config.n_layers, weights.config.vocab_size,
                 save.tokens.empty() ? ", no tokenizer" : ", with tokenizer", seconds);
    return 0;
  });
}
