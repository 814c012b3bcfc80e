// GGUF container and Llama loader: writer/reader round trips of every value
// and tensor type, validation errors that name the problem, and the shared
// stories260K GGUF files checked bit for bit against the llama2.c checkpoint
// (read here by an independent few-line parser).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "fastinfer/backend/cpu/q8_0.hpp"
#include "fastinfer/model/gguf.hpp"
#include "fastinfer/model/gguf_loader.hpp"
#include "shared_dir.hpp"

using namespace fastinfer;
namespace fs = std::filesystem;

namespace {

fs::path temp_path(const std::string& name) {
  return fs::temp_directory_path() / ("fastinfer_test_gguf_" + std::to_string(::getpid()) + "_" + name);
}

std::vector<std::uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
}
void write_bytes(const fs::path& p, const std::vector<std::uint8_t>& b) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

// The llama2.c checkpoint as plain f32 arrays, parsed independently of the
// library's loaders.
struct Llama2c {
  std::int32_t dim, hidden, layers, heads, kv_heads, vocab, seq_len;
  std::vector<float> all;
  std::size_t embed, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final;

  explicit Llama2c(const fs::path& p) {
    auto bytes = read_bytes(p);
    std::int32_t h[7];
    std::memcpy(h, bytes.data(), sizeof h);
    dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kv_heads = h[4], vocab = std::abs(h[5]), seq_len = h[6];
    all.resize((bytes.size() - sizeof h) / 4);
    std::memcpy(all.data(), bytes.data() + sizeof h, all.size() * 4);
    const std::size_t kv = std::size_t(dim / heads * kv_heads), L = std::size_t(layers);
    std::size_t o = 0;
    auto take = [&](std::size_t n) { const std::size_t at = o; o += n; return at; };
    embed = take(std::size_t(vocab) * std::size_t(dim));
    rms_att = take(L * std::size_t(dim));
    wq = take(L * std::size_t(dim) * std::size_t(dim));
    wk = take(L * kv * std::size_t(dim));
    wv = take(L * kv * std::size_t(dim));
    wo = take(L * std::size_t(dim) * std::size_t(dim));
    rms_ffn = take(L * std::size_t(dim));
    w1 = take(L * std::size_t(hidden) * std::size_t(dim));
    w2 = take(L * std::size_t(dim) * std::size_t(hidden));
    w3 = take(L * std::size_t(hidden) * std::size_t(dim));
    rms_final = take(std::size_t(dim));
  }
  const float* at(std::size_t off) const { return all.data() + off; }

  // LlamaWeights viewing this object's arrays (f32), shared classifier.
  LlamaWeights weights() const {
    LlamaWeights w;
    LlamaConfig& c = w.config;
    c.dim = dim, c.hidden_dim = hidden, c.n_layers = layers, c.n_heads = heads, c.n_kv_heads = kv_heads;
    c.vocab_size = vocab, c.max_seq_len = seq_len, c.head_dim = dim / heads, c.bos_id = 1, c.eos_id = -1;
    const std::int64_t kv = c.kv_dim();
    w.token_embedding = {DType::F32, at(embed), vocab, dim};
    w.classifier = w.token_embedding;
    w.final_norm = at(rms_final);
    for (std::int64_t l = 0; l < layers; ++l) {
      LlamaLayerWeights lw;
      lw.attn_norm = at(rms_att + std::size_t(l * dim));
      lw.ffn_norm = at(rms_ffn + std::size_t(l * dim));
      lw.wq = {DType::F32, at(wq + std::size_t(l * dim * dim)), dim, dim};
      lw.wk = {DType::F32, at(this->wk + std::size_t(l * kv * dim)), kv, dim};
      lw.wv = {DType::F32, at(wv + std::size_t(l * kv * dim)), kv, dim};
      lw.wo = {DType::F32, at(wo + std::size_t(l * dim * dim)), dim, dim};
      lw.w_gate = {DType::F32, at(w1 + std::size_t(l * hidden * dim)), hidden, dim};
      lw.w_down = {DType::F32, at(w2 + std::size_t(l * dim * hidden)), dim, hidden};
      lw.w_up = {DType::F32, at(w3 + std::size_t(l * hidden * dim)), hidden, dim};
      w.layers.push_back(lw);
    }
    return w;
  }
};

// Compares every element of `m` (any dtype) with f32 `expected` after `round`.
template <typename Round>
void check_matrix(const MatrixView& m, const float* expected, std::int64_t rows, std::int64_t cols, Round round,
                  const std::string& what) {
  INFO(what);
  REQUIRE(m.rows == rows);
  REQUIRE(m.cols == cols);
  std::vector<float> row(static_cast<std::size_t>(cols));
  std::int64_t mismatches = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    cpu::reference::load_row(m.dtype, m.row_ptr(r), row.data(), cols);
    for (std::int64_t c = 0; c < cols; ++c)
      if (f32_bits(row[std::size_t(c)]) != f32_bits(round(expected[r * cols + c]))) ++mismatches;
  }
  CHECK(mismatches == 0);
}

void check_vector(const float* v, const float* expected, std::int64_t n, const std::string& what) {
  INFO(what);
  CHECK(std::memcmp(v, expected, std::size_t(n) * 4) == 0);
}

template <typename Round>
void check_against_llama2c(const LlamaWeights& w, const Llama2c& b, Round round) {
  const LlamaConfig& c = w.config;
  CHECK(c.dim == b.dim);
  CHECK(c.hidden_dim == b.hidden);
  CHECK(c.n_layers == b.layers);
  CHECK(c.n_heads == b.heads);
  CHECK(c.n_kv_heads == b.kv_heads);
  CHECK(c.vocab_size == b.vocab);
  CHECK(c.head_dim == b.dim / b.heads);
  CHECK(c.rope_style == RopeStyle::Interleaved);
  const std::int64_t kv = c.kv_dim(), dim = b.dim, hid = b.hidden;
  check_matrix(w.token_embedding, b.at(b.embed), b.vocab, dim, round, "token_embd");
  check_matrix(w.classifier, b.at(b.embed), b.vocab, dim, round, "output");
  check_vector(w.final_norm, b.at(b.rms_final), dim, "output_norm");
  for (std::int64_t l = 0; l < b.layers; ++l) {
    const LlamaLayerWeights& lw = w.layers[std::size_t(l)];
    const std::string n = "layer " + std::to_string(l);
    check_vector(lw.attn_norm, b.at(b.rms_att + std::size_t(l * dim)), dim, n + " attn_norm");
    check_vector(lw.ffn_norm, b.at(b.rms_ffn + std::size_t(l * dim)), dim, n + " ffn_norm");
    check_matrix(lw.wq, b.at(b.wq + std::size_t(l * dim * dim)), dim, dim, round, n + " wq");
    check_matrix(lw.wk, b.at(b.wk + std::size_t(l * kv * dim)), kv, dim, round, n + " wk");
    check_matrix(lw.wv, b.at(b.wv + std::size_t(l * kv * dim)), kv, dim, round, n + " wv");
    check_matrix(lw.wo, b.at(b.wo + std::size_t(l * dim * dim)), dim, dim, round, n + " wo");
    check_matrix(lw.w_gate, b.at(b.w1 + std::size_t(l * hid * dim)), hid, dim, round, n + " w1");
    check_matrix(lw.w_down, b.at(b.w2 + std::size_t(l * dim * hid)), dim, hid, round, n + " w2");
    check_matrix(lw.w_up, b.at(b.w3 + std::size_t(l * hid * dim)), hid, dim, round, n + " w3");
  }
}

const auto exact = [](float x) { return x; };
const auto to_f16 = [](float x) { return f16_to_f32(f32_to_f16(x)); };

// A small file with every value type and every tensor type.
struct Sample {
  std::vector<float> f32 = std::vector<float>(3 * 64);
  std::vector<std::uint16_t> f16 = std::vector<std::uint16_t>(2 * 32);
  std::vector<std::uint16_t> bf16 = std::vector<std::uint16_t>(5);
  std::vector<std::uint8_t> q8 = std::vector<std::uint8_t>(2 * 2 * 34);
  Sample() {
    for (std::size_t i = 0; i < f32.size(); ++i) f32[i] = float(i) * 0.5f - 3.0f;
    for (std::size_t i = 0; i < f16.size(); ++i) f16[i] = f32_to_f16(float(i) / 7.0f);
    for (std::size_t i = 0; i < bf16.size(); ++i) bf16[i] = f32_to_bf16(float(i) * 1.5f);
    std::vector<float> x(128);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(float(i));
    for (int r = 0; r < 2; ++r) cpu::q8_0::quantize_row_reference(x.data() + 64 * r, q8.data() + 68 * r, 64);
  }
  void write(const fs::path& p, std::uint32_t alignment = 0) const {
    gguf::GgufWriter w;
    if (alignment) w.set_alignment(alignment);
    w.set_string("general.architecture", "test");
    w.set_uint32("u32", 4000000000u);
    w.set_int32("i32", -7);
    w.set_uint64("u64", 1ull << 40);
    w.set_float32("f32", 0.25f);
    w.set_bool("yes", true);
    w.set_string("unicode", "caf\xC3\xA9 \xE2\x96\x81");
    w.set_string_array("strings", {"a", "", "bc"});
    w.set_float32_array("floats", {1.5f, -2.0f});
    w.set_int32_array("ints", {3, -4, 5});
    w.add_tensor("t.f32", gguf::TensorType::F32, {64, 3}, f32.data());
    w.add_tensor("t.f16", gguf::TensorType::F16, {32, 2}, f16.data());
    w.add_tensor("t.bf16", gguf::TensorType::BF16, {5}, bf16.data());
    w.add_tensor("t.q8", gguf::TensorType::Q8_0, {64, 2}, q8.data());
    w.write(p.string());
  }
};

std::string error_of(const fs::path& p) {
  try {
    gguf::GgufFile::open(p.string());
  } catch (const FormatError& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("GGUF writer output reads back: every value and tensor type") {
  const Sample s;
  for (std::uint32_t alignment : {0u, 64u, 8u}) {
    const auto p = temp_path("sample.gguf");
    s.write(p, alignment);
    auto f = gguf::GgufFile::open(p.string());
    INFO("alignment " << alignment);
    CHECK(f->version() == 3);
    CHECK(f->alignment() == (alignment ? alignment : 32u));
    CHECK(f->data_offset() % f->alignment() == 0);
    CHECK(f->get_string("general.architecture") == "test");
    CHECK(f->get_uint("u32") == 4000000000u);
    CHECK(f->get("i32").int_value == -7);
    CHECK_THROWS_AS(f->get_uint("i32"), FormatError);  // negative
    CHECK(f->get_uint("u64") == (1ull << 40));
    CHECK(f->get_float("f32") == 0.25);
    CHECK(f->get("yes").uint_value == 1);
    CHECK(f->get_string("unicode") == "caf\xC3\xA9 \xE2\x96\x81");
    const auto& strs = f->get_string_array("strings");
    REQUIRE(strs.size() == 3);
    CHECK(strs[0] == "a");
    CHECK(strs[1].empty());
    CHECK(strs[2] == "bc");
    CHECK(f->get_number_array("floats") == std::vector<double>{1.5, -2.0});
    CHECK(f->get_number_array("ints") == std::vector<double>{3, -4, 5});
    CHECK_THROWS_AS(f->get_string("u32"), FormatError);
    CHECK_THROWS_WITH(f->get("nope"), Catch::Contains("'nope' is missing"));

    REQUIRE(f->tensors().size() == 4);
    const auto& t32 = f->tensor("t.f32");
    CHECK(t32.dims == std::vector<std::uint64_t>{64, 3});
    CHECK(t32.matrix().rows == 3);
    CHECK(t32.matrix().cols == 64);
    CHECK(std::memcmp(t32.data, s.f32.data(), s.f32.size() * 4) == 0);
    CHECK(std::memcmp(f->tensor("t.f16").data, s.f16.data(), s.f16.size() * 2) == 0);
    CHECK(std::memcmp(f->tensor("t.bf16").data, s.bf16.data(), s.bf16.size() * 2) == 0);
    CHECK(f->tensor("t.q8").bytes == s.q8.size());
    CHECK(std::memcmp(f->tensor("t.q8").data, s.q8.data(), s.q8.size()) == 0);
    for (const auto& t : f->tensors()) {
      CHECK(t.offset % f->alignment() == 0);
      // zero copy: the views point into the mapped file
      CHECK(t.data == f->mapped_file()->data() + f->data_offset() + t.offset);
    }
    CHECK(f->find_tensor("t.none") == nullptr);
    CHECK_THROWS_WITH(f->tensor("t.none"), Catch::Contains("tensor 't.none' is missing"));
    fs::remove(p);
  }
}

TEST_CASE("GGUF reader rejects malformed files with a message naming the problem") {
  const Sample s;
  const auto good = temp_path("good.gguf");
  s.write(good);
  const auto bytes = read_bytes(good);
  const auto bad = temp_path("bad.gguf");
  auto with = [&](auto edit) {
    auto b = bytes;
    edit(b);
    write_bytes(bad, b);
    return error_of(bad);
  };
  auto put32 = [](std::vector<std::uint8_t>& b, std::size_t at, std::uint32_t v) { std::memcpy(&b[at], &v, 4); };
  auto put64 = [](std::vector<std::uint8_t>& b, std::size_t at, std::uint64_t v) { std::memcpy(&b[at], &v, 8); };

  CHECK_THAT(with([](auto& b) { b[0] = 'X'; }), Catch::Contains("not a GGUF file"));
  CHECK_THAT(with([&](auto& b) { put32(b, 4, 1); }), Catch::Contains("unsupported GGUF version 1"));
  CHECK_THAT(with([&](auto& b) { put32(b, 4, 4); }), Catch::Contains("unsupported GGUF version 4"));
  CHECK_THAT(with([&](auto& b) { put32(b, 4, 0x03000000u); }), Catch::Contains("big-endian"));
  CHECK_THAT(with([&](auto& b) { put64(b, 8, ~0ull); }), Catch::Contains("tensor count"));
  CHECK_THAT(with([&](auto& b) { put64(b, 16, 1ull << 60); }), Catch::Contains("metadata count"));
  // (the last tensor is padded to the alignment too, so cut into its bytes)
  CHECK_THAT(with([&](auto& b) { b.resize(b.size() - 30); }), Catch::Contains("outside the data section"));
  CHECK_THAT(with([&](auto& b) { b.resize(40); }), Catch::Contains("metadata count 10 cannot fit"));
  CHECK_THAT(with([&](auto& b) { b.resize(200); }), Catch::Contains("outside the file"));
  CHECK_THAT(with([&](auto& b) { b.resize(3); }), Catch::Contains("too short"));
  // the first key's length made huge
  CHECK_THAT(with([&](auto& b) { put64(b, 24, 1ull << 50); }), Catch::Contains("exceeds"));

  // Tensor-info edits: find the first tensor info by its name.
  const std::string name = "t.f32";
  const auto it = std::search(bytes.begin(), bytes.end(), name.begin(), name.end());
  REQUIRE(it != bytes.end());
  const std::size_t info = std::size_t(it - bytes.begin()) + name.size();  // n_dims follows the name
  const std::size_t type_at = info + 4 + 2 * 8, offset_at = type_at + 4;
  CHECK_THAT(with([&](auto& b) { put32(b, type_at, 2); }), Catch::Contains("unsupported tensor type 2"));
  CHECK_THAT(with([&](auto& b) { put32(b, info, 7); }), Catch::Contains("7 dimensions"));
  CHECK_THAT(with([&](auto& b) { put64(b, offset_at, 1u << 20); }), Catch::Contains("outside the data section"));
  CHECK_THAT(with([&](auto& b) { put64(b, offset_at, 4); }), Catch::Contains("not a multiple of the alignment"));
  CHECK_THAT(with([&](auto& b) { put64(b, info + 4, 1ull << 62); }), Catch::Contains("larger than the file"));
  CHECK_THAT(with([&](auto& b) { put64(b, info + 4, 0); }), Catch::Contains("dimension 0"));
  // the q8 tensor with a ragged row
  const std::string qname = "t.q8";
  const auto qit = std::search(bytes.begin(), bytes.end(), qname.begin(), qname.end());
  const std::size_t qinfo = std::size_t(qit - bytes.begin()) + qname.size();
  CHECK_THAT(with([&](auto& b) { put64(b, qinfo + 4, 48); }), Catch::Contains("not a multiple of 32"));

  CHECK_THROWS_AS(gguf::GgufFile::open(temp_path("missing.gguf").string()), FormatError);
  fs::remove(good);
  fs::remove(bad);
}

TEST_CASE("GGUF writer refuses bad tensors and alignments") {
  gguf::GgufWriter w;
  float x[64] = {};
  CHECK_THROWS_AS(w.set_alignment(24), InvalidArgument);
  CHECK_THROWS_AS(w.add_tensor("q", gguf::TensorType::Q8_0, {48}, x), InvalidArgument);
  CHECK_THROWS_AS(w.add_tensor("five", gguf::TensorType::F32, {1, 1, 1, 1, 1}, x), InvalidArgument);
  w.add_tensor("a", gguf::TensorType::F32, {4}, x);
  CHECK_THROWS_AS(w.add_tensor("a", gguf::TensorType::F32, {4}, x), InvalidArgument);
}

TEST_CASE("stories260K.gguf loads with the llama2.c checkpoint's weights bit for bit") {
  FASTINFER_REQUIRE_SHARED(gguf_path, "models/stories260K.gguf");
  FASTINFER_REQUIRE_SHARED(bin_path, "models/stories260K.bin");
  const Llama2c bin(bin_path);
  const LlamaWeights w = load_gguf_llama(gguf_path.string());
  check_against_llama2c(w, bin, exact);
  const LlamaConfig& c = w.config;
  CHECK(c.max_seq_len == 128);  // what llama.cpp's converter wrote
  CHECK(c.norm_eps == 1e-5f);
  CHECK(c.rope_theta == 10000.0f);
  CHECK(c.bos_id == 1);
  CHECK(c.eos_id == 2);
  CHECK_FALSE(c.shared_classifier);  // the converter wrote output.weight
  // zero copy: matrices point into the mapped file
  auto f = gguf::GgufFile::open(gguf_path.string());
  CHECK(w.layers[0].wq.dtype == DType::F32);

  GgufLoadOptions o;
  o.max_seq_len = 512;
  CHECK(load_gguf_llama(gguf_path.string(), o).config.max_seq_len == 512);
}

TEST_CASE("stories260K-f16.gguf loads: f16 matrices equal the rounded f32 weights, norms stay f32") {
  FASTINFER_REQUIRE_SHARED(gguf_path, "models/stories260K-f16.gguf");
  FASTINFER_REQUIRE_SHARED(bin_path, "models/stories260K.bin");
  const Llama2c bin(bin_path);
  const LlamaWeights w = load_gguf_llama(gguf_path.string());
  CHECK(w.layers[0].wq.dtype == DType::F16);
  CHECK(w.token_embedding.dtype == DType::F16);
  check_against_llama2c(w, bin, to_f16);
}

TEST_CASE("llama2.c weights -> GGUF -> load round-trips exactly, and as f16 / bf16 / q8_0") {
  FASTINFER_REQUIRE_SHARED(bin_path, "models/stories260K.bin");
  const Llama2c bin(bin_path);
  const LlamaWeights src = bin.weights();
  const auto p = temp_path("roundtrip.gguf");

  save_gguf_llama(src, p.string());
  {
    const LlamaWeights w = load_gguf_llama(p.string());
    check_against_llama2c(w, bin, exact);
    CHECK(w.config.shared_classifier);
    CHECK(w.classifier.data == w.token_embedding.data);
    CHECK(w.config.max_seq_len == 512);
    CHECK(w.config.eos_id == -1);
  }
  GgufSaveOptions o;
  o.type = DType::F16;
  save_gguf_llama(src, p.string(), o);
  check_against_llama2c(load_gguf_llama(p.string()), bin, to_f16);
  o.type = DType::BF16;
  save_gguf_llama(src, p.string(), o);
  check_against_llama2c(load_gguf_llama(p.string()), bin, [](float x) { return bf16_to_f32(f32_to_bf16(x)); });

  // Q8_0 (dim 64 is a multiple of 32; hidden 172 is not, so w2 cannot be
  // Q8_0 and the save refuses with a clear message).
  o.type = DType::Q8_0;
  CHECK_THROWS_WITH(save_gguf_llama(src, p.string(), o), Catch::Contains("172 columns"));

  // load-time quantization of the f32 file: same bytes as the reference quantizer
  save_gguf_llama(src, p.string());
  GgufLoadOptions lo;
  lo.weights = DType::Q8_0;
  LlamaWeights q;
  CHECK_THROWS_WITH(q = load_gguf_llama(p.string(), lo), Catch::Contains("multiple of 32"));
  fs::remove(p);
}

TEST_CASE("load-time Q8_0 quantization equals the reference quantizer row by row") {
  // A tiny model whose every inner dimension is a multiple of 32.
  LlamaConfig c;
  c.dim = 64, c.hidden_dim = 96, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 40;
  c.max_seq_len = 32, c.head_dim = 16;
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.0f, 0.1f);
  std::vector<std::vector<float>> arrays;
  auto mat = [&](std::int64_t rows, std::int64_t cols) {
    arrays.emplace_back(static_cast<std::size_t>(rows * cols));
    for (auto& x : arrays.back()) x = dist(rng);
    return MatrixView{DType::F32, arrays.back().data(), rows, cols};
  };
  arrays.reserve(64);
  LlamaWeights w;
  w.config = c;
  w.token_embedding = mat(c.vocab_size, c.dim);
  w.classifier = mat(c.vocab_size, c.dim);
  w.final_norm = static_cast<const float*>(mat(1, c.dim).data);
  for (int l = 0; l < c.n_layers; ++l) {
    LlamaLayerWeights lw;
    lw.attn_norm = static_cast<const float*>(mat(1, c.dim).data);
    lw.ffn_norm = static_cast<const float*>(mat(1, c.dim).data);
    lw.wq = mat(c.q_dim(), c.dim), lw.wk = mat(c.kv_dim(), c.dim), lw.wv = mat(c.kv_dim(), c.dim);
    lw.wo = mat(c.dim, c.q_dim()), lw.w_gate = mat(c.hidden_dim, c.dim), lw.w_down = mat(c.dim, c.hidden_dim);
    lw.w_up = mat(c.hidden_dim, c.dim);
    w.layers.push_back(lw);
  }
  const auto p = temp_path("q8.gguf");
  save_gguf_llama(w, p.string());
  GgufLoadOptions lo;
  lo.weights = DType::Q8_0;
  const LlamaWeights q = load_gguf_llama(p.string(), lo);
  auto same_as_reference = [](const MatrixView& quant, const MatrixView& f32) {
    REQUIRE(quant.dtype == DType::Q8_0);
    std::vector<std::uint8_t> expect(row_bytes(DType::Q8_0, f32.cols));
    for (std::int64_t r = 0; r < f32.rows; ++r) {
      cpu::q8_0::quantize_row_reference(static_cast<const float*>(f32.data) + r * f32.cols, expect.data(), f32.cols);
      CHECK(std::memcmp(quant.row_ptr(r), expect.data(), expect.size()) == 0);
    }
  };
  same_as_reference(q.token_embedding, w.token_embedding);
  same_as_reference(q.classifier, w.classifier);
  for (int l = 0; l < c.n_layers; ++l) {
    same_as_reference(q.layers[std::size_t(l)].wq, w.layers[std::size_t(l)].wq);
    same_as_reference(q.layers[std::size_t(l)].w_down, w.layers[std::size_t(l)].w_down);
    CHECK(std::memcmp(q.layers[std::size_t(l)].attn_norm, w.layers[std::size_t(l)].attn_norm, 64 * 4) == 0);
  }
  // and a saved Q8_0 file reads back the same bytes
  GgufSaveOptions so;
  so.type = DType::Q8_0;
  save_gguf_llama(w, p.string(), so);
  const LlamaWeights q2 = load_gguf_llama(p.string());
  same_as_reference(q2.layers[1].w_up, w.layers[1].w_up);
  fs::remove(p);
}

TEST_CASE("Llama loader: missing tensors, shape mismatches and bad keys are named") {
  FASTINFER_REQUIRE_SHARED(bin_path, "models/stories260K.bin");
  const Llama2c bin(bin_path);
  const LlamaWeights src = bin.weights();
  const auto p = temp_path("loader.gguf");

  // Rewrite the file with one tensor or key changed through the container API.
  auto rewrite = [&](const std::string& drop, const std::string& reshape, const std::string& key_override) {
    save_gguf_llama(src, p.string());
    auto f = gguf::GgufFile::open(p.string());
    gguf::GgufWriter w;
    for (const auto& k : f->keys()) {
      const auto& v = f->get(k);
      if (k == key_override) continue;
      if (v.type == gguf::ValueType::String) w.set_string(k, v.string_value);
      else if (v.type == gguf::ValueType::Float32) w.set_float32(k, float(v.float_value));
      else w.set_uint32(k, std::uint32_t(v.uint_value));
    }
    if (!key_override.empty()) w.set_string(key_override, "bogus");
    for (const auto& t : f->tensors()) {
      if (t.name == drop) continue;
      auto dims = t.dims;
      if (t.name == reshape) std::swap(dims[0], dims[1]);
      w.add_tensor(t.name, t.type, dims, t.data);
    }
    const auto q = temp_path("loader2.gguf");
    w.write(q.string());
    try {
      load_gguf_llama(q.string());
    } catch (const FormatError& e) {
      fs::remove(q);
      return std::string(e.what());
    }
    fs::remove(q);
    return std::string("no error");
  };
  CHECK(rewrite("", "", "") == "no error");
  CHECK_THAT(rewrite("blk.3.ffn_down.weight", "", ""), Catch::Contains("tensor 'blk.3.ffn_down.weight' is missing"));
  CHECK_THAT(rewrite("", "blk.1.attn_k.weight", ""),
             Catch::Contains("'blk.1.attn_k.weight' has shape [32, 64], expected [64, 32]"));
  CHECK_THAT(rewrite("", "", "llama.block_count"), Catch::Contains("'llama.block_count' should be an integer"));
  CHECK_THAT(rewrite("", "", "general.architecture"), Catch::Contains("'bogus', only 'llama'"));
  fs::remove(p);
}
