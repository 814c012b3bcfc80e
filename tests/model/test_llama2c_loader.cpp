// llama2.c checkpoint loader: layout, zero copy, conversion at load, and
// rejection of every kind of bad file with a FormatError (never a crash).
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "fastinfer/model/llama2c_loader.hpp"
#include "shared_dir.hpp"

namespace fs = std::filesystem;
using fastinfer::DType;
using fastinfer::FormatError;
using fastinfer::Llama2cHeader;

namespace {

// A scratch directory removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("fastinfer_llama2c_" + std::to_string(std::random_device{}()));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::vector<std::uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const fs::path& p, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

// Floats a checkpoint with header h holds after the header (independent count).
std::size_t float_count(const Llama2cHeader& h) {
  const std::size_t L = std::size_t(h.n_layers), D = std::size_t(h.dim), H = std::size_t(h.hidden_dim);
  const std::size_t V = std::size_t(h.vocab_size < 0 ? -h.vocab_size : h.vocab_size);
  const std::size_t hd = D / std::size_t(h.n_heads), kv = hd * std::size_t(h.n_kv_heads);
  std::size_t n = V * D;                    // token_embedding
  n += L * D;                               // rms_att
  n += L * D * D + 2 * L * kv * D + L * D * D;  // wq wk wv wo
  n += L * D;                               // rms_ffn
  n += 3 * L * H * D;                       // w1 w2 w3
  n += D;                                   // rms_final
  n += std::size_t(h.seq_len) * hd;         // freq_cis real + imag
  if (h.vocab_size < 0) n += V * D;         // wcls
  return n;
}

// A checkpoint whose float i equals i * 1e-6 (so every view's first value says
// where it points).
std::vector<std::uint8_t> make_checkpoint(const Llama2cHeader& h) {
  std::vector<std::uint8_t> bytes(sizeof h + float_count(h) * 4);
  std::memcpy(bytes.data(), &h, sizeof h);
  for (std::size_t i = 0; i < float_count(h); ++i) {
    const float v = float(i) * 1e-6f;
    std::memcpy(bytes.data() + sizeof h + i * 4, &v, 4);
  }
  return bytes;
}

float value_at(std::size_t float_index) { return float(float_index) * 1e-6f; }

}  // namespace

TEST_CASE("llama2c loader maps stories260K without copying", "[model][loader]") {
  FASTINFER_REQUIRE_SHARED(path, "models/stories260K.bin");
  const auto w = fastinfer::load_llama2c(path.string());
  const auto& c = w.config;
  CHECK(c.dim == 64);
  CHECK(c.hidden_dim == 172);
  CHECK(c.n_layers == 5);
  CHECK(c.n_heads == 8);
  CHECK(c.n_kv_heads == 4);
  CHECK(c.vocab_size == 512);
  CHECK(c.max_seq_len == 512);
  CHECK(c.head_dim == 8);
  CHECK(c.shared_classifier);
  CHECK(w.classifier.data == w.token_embedding.data);
  CHECK(w.layers.size() == 5);
  CHECK(w.layers[0].wk.rows == 32);
  CHECK(w.layers[0].wo.cols == 64);
  CHECK(w.layers[4].w_down.cols == 172);

  // The embedding's first float is the file's float at byte 28, and the view
  // points into the mapping (no copy): compare bytes, not pointers to a copy.
  const auto bytes = read_bytes(path);
  float first;
  std::memcpy(&first, bytes.data() + 28, 4);
  CHECK(static_cast<const float*>(w.token_embedding.data)[0] == first);
  float last_norm;  // rms_final's last value sits just before freq_cis (512 * 8 floats)
  std::memcpy(&last_norm, bytes.data() + bytes.size() - 4 * (512 * 8) - 4, 4);
  CHECK(w.final_norm[63] == last_norm);
}

TEST_CASE("llama2c loader places every tensor where llama2.c reads it", "[model][loader]") {
  TempDir dir;
  // Separate classifier (negative vocab), GQA, head_dim 4.
  const Llama2cHeader h{16, 24, 2, 4, 2, -10, 6};
  const fs::path file = dir.path / "tiny.bin";
  write_bytes(file, make_checkpoint(h));
  const auto w = fastinfer::load_llama2c(file.string());
  const auto& c = w.config;
  REQUIRE(c.vocab_size == 10);
  REQUIRE_FALSE(c.shared_classifier);
  REQUIRE(c.kv_dim() == 8);

  auto first = [](const fastinfer::MatrixView& m) { return static_cast<const float*>(m.data)[0]; };
  const std::size_t D = 16, H = 24, L = 2, KV = 8, V = 10;
  std::size_t at = 0;
  CHECK(first(w.token_embedding) == value_at(at));
  at += V * D;
  CHECK(w.layers[0].attn_norm[0] == value_at(at));
  CHECK(w.layers[1].attn_norm[0] == value_at(at + D));
  at += L * D;
  CHECK(first(w.layers[1].wq) == value_at(at + D * D));
  at += L * D * D;
  CHECK(first(w.layers[1].wk) == value_at(at + KV * D));
  at += L * KV * D;
  CHECK(first(w.layers[0].wv) == value_at(at));
  at += L * KV * D;
  CHECK(first(w.layers[1].wo) == value_at(at + D * D));
  at += L * D * D;
  CHECK(w.layers[1].ffn_norm[0] == value_at(at + D));
  at += L * D;
  CHECK(first(w.layers[1].w_gate) == value_at(at + H * D));
  at += L * H * D;
  CHECK(first(w.layers[1].w_down) == value_at(at + H * D));
  at += L * H * D;
  CHECK(first(w.layers[0].w_up) == value_at(at));
  at += L * H * D;
  CHECK(w.final_norm[0] == value_at(at));
  at += D + 6 * 4;  // rms_final, then freq_cis (seq_len * head_dim)
  CHECK(first(w.classifier) == value_at(at));
  CHECK(w.classifier.data != w.token_embedding.data);
}

TEST_CASE("llama2c loader converts matrices to bf16/f16 and keeps norms f32", "[model][loader]") {
  TempDir dir;
  const Llama2cHeader h{16, 24, 2, 4, 4, 10, 6};
  const fs::path file = dir.path / "m.bin";
  write_bytes(file, make_checkpoint(h));
  const auto f32 = fastinfer::load_llama2c(file.string());
  for (DType target : {DType::BF16, DType::F16}) {
    fastinfer::LoadOptions options;
    options.weight_dtype = target;
    const auto conv = fastinfer::load_llama2c(file.string(), options);
    CHECK(conv.token_embedding.dtype == target);
    CHECK(conv.classifier.data == conv.token_embedding.data);  // still shared
    CHECK(conv.layers[1].w_down.dtype == target);
    CHECK(conv.final_norm[3] == f32.final_norm[3]);
    const auto* src = static_cast<const float*>(f32.layers[1].wq.data);
    const auto* dst = static_cast<const std::uint16_t*>(conv.layers[1].wq.data);
    for (int i = 0; i < 16 * 16; ++i) {
      const std::uint16_t expect = target == DType::BF16 ? fastinfer::f32_to_bf16(src[i]) : fastinfer::f32_to_f16(src[i]);
      REQUIRE(dst[i] == expect);
    }
  }
}

TEST_CASE("llama2c loader rejects bad files with a FormatError", "[model][loader]") {
  TempDir dir;
  const Llama2cHeader good{16, 24, 2, 4, 2, 10, 6};
  const auto bytes = make_checkpoint(good);
  auto expect_error = [&](const std::vector<std::uint8_t>& content, const std::string& fragment) {
    const fs::path file = dir.path / "bad.bin";
    write_bytes(file, content);
    INFO("expecting an error mentioning '" << fragment << "'");
    CHECK_THROWS_WITH(fastinfer::load_llama2c(file.string()), Catch::Contains(fragment));
    CHECK_THROWS_AS(fastinfer::load_llama2c(file.string()), FormatError);
  };
  auto with_header = [&](Llama2cHeader h) {
    auto b = bytes;
    std::memcpy(b.data(), &h, sizeof h);
    return b;
  };

  CHECK_THROWS_AS(fastinfer::load_llama2c((dir.path / "missing.bin").string()), FormatError);
  CHECK_THROWS_AS(fastinfer::load_llama2c(dir.path.string()), FormatError);  // a directory
  expect_error({}, "header");
  expect_error(std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + 20), "header");
  expect_error(std::vector<std::uint8_t>(bytes.begin(), bytes.end() - 4), "does not match the header");
  expect_error(std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + 28), "does not match the header");
  auto longer = bytes;
  longer.resize(bytes.size() + 4);
  expect_error(longer, "does not match the header");

  Llama2cHeader h = good;
  h.n_heads = 3;  // does not divide dim 16
  expect_error(with_header(h), "n_heads (3) does not divide dim (16)");
  h = good;
  h.n_kv_heads = 3;  // does not divide n_heads 4
  expect_error(with_header(h), "n_kv_heads (3) does not divide n_heads (4)");
  h = good;
  h.dim = 0;
  expect_error(with_header(h), "dim must be positive, got 0");
  h = good;
  h.n_layers = -2;
  expect_error(with_header(h), "n_layers must be positive, got -2");
  h = good;
  h.hidden_dim = 0;
  expect_error(with_header(h), "hidden_dim");
  h = good;
  h.vocab_size = 0;
  expect_error(with_header(h), "vocab_size");
  h = good;
  h.seq_len = -1;
  expect_error(with_header(h), "seq_len");
  h = good;
  h.dim = 12, h.n_heads = 4;  // head_dim 3: odd, RoPE needs pairs
  expect_error(with_header(h), "even");
  h = good;  // sizes whose product overflows 64 bits: a size error, not an allocation
  h.dim = 1 << 30, h.hidden_dim = 1 << 30, h.n_layers = 1 << 30, h.n_heads = 1 << 20, h.n_kv_heads = 1 << 20;
  expect_error(with_header(h), "more than 2^64");
  h = good;
  h.vocab_size = -10;  // claims a separate classifier the file does not hold
  expect_error(with_header(h), "does not match the header");
}
