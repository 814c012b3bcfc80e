// Fuzz-style robustness: thousands of corrupted GGUF files (bit flips in the
// header, truncations at every length, huge counts and lengths written over
// header fields) go through the reader, the Llama loader and the tokenizer.
// Each must load or end in a fastinfer::Error; nothing may crash, read outside
// the file (run under the ASan build), or allocate more than a small multiple
// of the file's size (checked by counting operator new in this program).
#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <new>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "fastinfer/model/gguf.hpp"
#include "fastinfer/model/gguf_loader.hpp"
#include "fastinfer/tokenizer/sentencepiece_tokenizer.hpp"

// ---- allocation accounting for this test program ----------------------------
namespace {
std::atomic<std::size_t> g_largest_allocation{0};
void note(std::size_t n) {
  std::size_t seen = g_largest_allocation.load(std::memory_order_relaxed);
  while (n > seen && !g_largest_allocation.compare_exchange_weak(seen, n)) {
  }
}
}  // namespace

// Replacements pair malloc with free; GCC cannot see that they match.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  note(n);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  note(n);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  note(n);
  return std::malloc(n == 0 ? 1 : n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  note(n);
  return std::malloc(n == 0 ? 1 : n);
}
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

using namespace fastinfer;
namespace fs = std::filesystem;

namespace {

// A complete tiny Llama GGUF with a vocabulary: every parser path is live.
std::vector<std::uint8_t> make_seed_file(const fs::path& p, std::size_t& header_bytes) {
  static std::vector<float> data(1 << 14);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = float(i % 97) * 0.01f;
  gguf::GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", "fuzz");
  w.set_uint32("llama.context_length", 64);
  w.set_uint32("llama.embedding_length", 32);
  w.set_uint32("llama.feed_forward_length", 64);
  w.set_uint32("llama.block_count", 1);
  w.set_uint32("llama.attention.head_count", 4);
  w.set_uint32("llama.attention.head_count_kv", 2);
  w.set_uint32("llama.rope.dimension_count", 8);
  w.set_float32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.set_string("tokenizer.ggml.model", "llama");
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", "<0x0A>", "\xE2\x96\x81", "a", "b", "ab"};
  for (int i = 0; tokens.size() < 16; ++i) tokens.push_back("t" + std::to_string(i));
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_float32_array("tokenizer.ggml.scores", std::vector<float>(16, -1.0f));
  std::vector<std::int32_t> types(16, 1);
  types[0] = 2, types[1] = 3, types[2] = 3, types[3] = 6;
  w.set_int32_array("tokenizer.ggml.token_type", types);
  w.set_uint32("tokenizer.ggml.bos_token_id", 1);
  w.set_uint32("tokenizer.ggml.eos_token_id", 2);
  using gguf::TensorType;
  w.add_tensor("token_embd.weight", TensorType::F32, {32, 16}, data.data());
  w.add_tensor("output_norm.weight", TensorType::F32, {32}, data.data());
  w.add_tensor("blk.0.attn_norm.weight", TensorType::F32, {32}, data.data());
  w.add_tensor("blk.0.ffn_norm.weight", TensorType::F16, {32}, data.data());
  w.add_tensor("blk.0.attn_q.weight", TensorType::Q8_0, {32, 32}, data.data());
  w.add_tensor("blk.0.attn_k.weight", TensorType::F16, {32, 16}, data.data());
  w.add_tensor("blk.0.attn_v.weight", TensorType::BF16, {32, 16}, data.data());
  w.add_tensor("blk.0.attn_output.weight", TensorType::F32, {32, 32}, data.data());
  w.add_tensor("blk.0.ffn_gate.weight", TensorType::F32, {32, 64}, data.data());
  w.add_tensor("blk.0.ffn_down.weight", TensorType::F32, {64, 32}, data.data());
  w.add_tensor("blk.0.ffn_up.weight", TensorType::F32, {32, 64}, data.data());
  w.write(p.string());
  std::ifstream in(p, std::ios::binary);
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), {});
  header_bytes = std::size_t(gguf::GgufFile::open(p.string())->data_offset());
  return bytes;
}

enum class Outcome { Loaded, Error };

// Everything a user would do with a downloaded file.
Outcome exercise(const fs::path& p) {
  try {
    auto f = gguf::GgufFile::open(p.string());
    GgufLoadOptions o;
    const LlamaWeights w = load_gguf_llama(f, o);
    const auto tok = SentencePieceTokenizer::from_gguf(*f);
    (void)tok->encode("ab a\n");
    return Outcome::Loaded;
  } catch (const fastinfer::Error&) {
    return Outcome::Error;
  }
  // Anything else (std::bad_alloc, std::length_error, ...) escapes and fails the test.
}

}  // namespace

TEST_CASE("corrupted GGUF files end in fastinfer::Error, never a crash or a huge allocation", "[gguf][fuzz]") {
  // Thousands of small files: keep them in memory when /dev/shm exists.
  const fs::path dir = fs::is_directory("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
  const fs::path seed_path = dir / ("fastinfer_fuzz_seed_" + std::to_string(::getpid()) + ".gguf");
  const fs::path p = dir / ("fastinfer_fuzz_" + std::to_string(::getpid()) + ".gguf");
  std::size_t header = 0;
  const auto seed = make_seed_file(seed_path, header);
  REQUIRE(exercise(seed_path) == Outcome::Loaded);
  const std::size_t budget = 64 * seed.size() + (1u << 20);

  auto run = [&](const std::vector<std::uint8_t>& bytes) {
    {
      std::ofstream out(p, std::ios::binary | std::ios::trunc);
      out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    }
    return exercise(p);
  };

  g_largest_allocation = 0;
  int loaded = 0, errors = 0, cases = 0;
  std::mt19937_64 rng(20240611);

  // 1. Truncation at every length through the header, then strided through the data.
  for (std::size_t n = 0; n < seed.size(); n += (n < header + 64 ? 1 : 97)) {
    std::vector<std::uint8_t> b(seed.begin(), seed.begin() + std::ptrdiff_t(n));
    (run(b) == Outcome::Loaded ? loaded : errors)++, ++cases;
  }
  // 2. Random bit flips (1 to 4) in the header.
  for (int i = 0; i < 2500; ++i) {
    auto b = seed;
    const int flips = 1 + int(rng() % 4);
    for (int k = 0; k < flips; ++k) b[rng() % header] ^= std::uint8_t(1u << (rng() % 8));
    (run(b) == Outcome::Loaded ? loaded : errors)++, ++cases;
  }
  // 3. Huge or off-by-a-little values written over header fields (counts,
  // string and array lengths, dims, offsets all live at these positions).
  const std::uint64_t huge[] = {~0ull, 1ull << 63, 1ull << 62, 1ull << 40, 1ull << 32, 0xffffffffull,
                                std::uint64_t(seed.size()), std::uint64_t(seed.size()) + 1, 0, 1, 31, 33};
  for (int i = 0; i < 1500; ++i) {
    auto b = seed;
    const std::size_t at = 8 + rng() % (header - 16);
    const std::uint64_t v = huge[rng() % (sizeof huge / sizeof huge[0])];
    if (rng() % 2) std::memcpy(&b[at], &v, 8);
    else {
      const auto v32 = std::uint32_t(v);
      std::memcpy(&b[at], &v32, 4);
    }
    (run(b) == Outcome::Loaded ? loaded : errors)++, ++cases;
  }
  // 4. Random garbage after a valid magic and version.
  for (int i = 0; i < 300; ++i) {
    std::vector<std::uint8_t> b(std::size_t(8 + rng() % 512));
    std::memcpy(b.data(), seed.data(), 8);
    for (std::size_t k = 8; k < b.size(); ++k) b[k] = std::uint8_t(rng());
    (run(b) == Outcome::Loaded ? loaded : errors)++, ++cases;
  }

  INFO(cases << " cases: " << errors << " errors, " << loaded << " still loaded; largest allocation "
             << g_largest_allocation.load() << " bytes for a " << seed.size() << "-byte file");
  CHECK(cases >= 4000);
  CHECK(errors > cases / 2);
  CHECK(g_largest_allocation.load() <= budget);
  fs::remove(p);
  fs::remove(seed_path);
}
