// MedusaHeads: the file format round-trips, every malformed file is a
// FormatError naming what is wrong, and a head's logits match a scalar
// double-precision reference of residual block + classifier.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/medusa_flags.hpp"
#include "fastinfer/backend/cpu/cpu_backend.hpp"
#include "fastinfer/speculative/medusa_heads.hpp"

namespace {

namespace speculative = fastinfer::speculative;
using speculative::MedusaHeads;

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("fastinfer_medusa_" + name)).string();
}

std::vector<char> slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}
void spit(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}
void put_u32(std::vector<char>& b, std::size_t off, std::uint32_t v) {
  // The bound also tells g++ 12 the vector is not empty (it warned
  // -Wstringop-overflow on a "region of size 0" otherwise).
  if (off + 4 > b.size()) throw std::out_of_range("put_u32 past the end of the file bytes");
  for (int i = 0; i < 4; ++i) b[off + std::size_t(i)] = char((v >> (8 * i)) & 0xffu);
}

std::string error_of(const std::string& path) {
  try {
    MedusaHeads::load(path);
  } catch (const fastinfer::FormatError& e) {
    return e.what();
  }
  return "no error";
}

// Scalar reference of head k in double precision.
std::vector<double> reference_logits(const MedusaHeads& h, int k, const std::vector<float>& hidden,
                                     const std::vector<float>& shared) {
  const int d = h.dim(), v = h.vocab();
  std::vector<double> r(std::size_t(d), 0.0), out(std::size_t(v), 0.0);
  for (int o = 0; o < d; ++o) {
    double a = h.residual_bias(k)[o];
    for (int i = 0; i < d; ++i) a += double(h.residual_weight(k)[std::size_t(o) * std::size_t(d) + std::size_t(i)]) * hidden[std::size_t(i)];
    r[std::size_t(o)] = hidden[std::size_t(o)] + a / (1.0 + std::exp(-a));
  }
  const float* c = h.shared_classifier() ? shared.data() : h.classifier(k);
  for (int t = 0; t < v; ++t)
    for (int i = 0; i < d; ++i) out[std::size_t(t)] += double(c[std::size_t(t) * std::size_t(d) + std::size_t(i)]) * r[std::size_t(i)];
  return out;
}

}  // namespace

TEST_CASE("Medusa heads round-trip through the file format, own and shared classifiers") {
  for (bool shared : {false, true}) {
    const MedusaHeads a = MedusaHeads::random(11, 3, 13, 29, shared);
    const std::string path = temp_path(shared ? "rt_shared.bin" : "rt_own.bin");
    a.save(path);
    const std::uint64_t per_head = 13 * 13 + 13 + (shared ? 0 : 29 * 13);
    CHECK(std::filesystem::file_size(path) == 32 + 3 * per_head * 4);
    const MedusaHeads b = MedusaHeads::load(path);
    CHECK(b.num_heads() == 3);
    CHECK(b.dim() == 13);
    CHECK(b.vocab() == 29);
    CHECK(b.shared_classifier() == shared);
    for (int k = 0; k < 3; ++k) {
      CHECK(std::memcmp(a.residual_weight(k), b.residual_weight(k), 13 * 13 * 4) == 0);
      CHECK(std::memcmp(a.residual_bias(k), b.residual_bias(k), 13 * 4) == 0);
      if (!shared) CHECK(std::memcmp(a.classifier(k), b.classifier(k), 29 * 13 * 4) == 0);
      else CHECK(b.classifier(k) == nullptr);
    }
    std::filesystem::remove(path);
  }
}

TEST_CASE("Medusa heads loader rejects malformed files with a clear FormatError") {
  const std::string good = temp_path("good.bin"), bad = temp_path("bad.bin");
  MedusaHeads::random(3, 2, 8, 16, false).save(good);
  const std::vector<char> bytes = slurp(good);
  auto with = [&](auto edit) {
    std::vector<char> b = bytes;
    edit(b);
    spit(bad, b);
    return error_of(bad);
  };
  CHECK_THAT(with([](std::vector<char>& b) { b[0] = 'X'; }), Catch::Contains("bad magic"));
  CHECK_THAT(with([](std::vector<char>& b) { put_u32(b, 8, 2); }), Catch::Contains("version 2"));
  CHECK_THAT(with([](std::vector<char>& b) { put_u32(b, 12, 0); }), Catch::Contains("head count 0"));
  CHECK_THAT(with([](std::vector<char>& b) { put_u32(b, 12, 1000); }), Catch::Contains("head count 1000"));
  CHECK_THAT(with([](std::vector<char>& b) { put_u32(b, 16, 0); }), Catch::Contains("dim 0"));
  CHECK_THAT(with([](std::vector<char>& b) { put_u32(b, 24, 1); }), Catch::Contains("dtype 1"));
  CHECK_THAT(with([](std::vector<char>& b) { put_u32(b, 28, 6); }), Catch::Contains("unknown flags"));
  CHECK_THAT(with([](std::vector<char>& b) { b.resize(b.size() - 1); }), Catch::Contains("truncated"));
  CHECK_THAT(with([](std::vector<char>& b) { b.resize(20); }), Catch::Contains("header"));
  CHECK_THAT(with([](std::vector<char>& b) { b.push_back(0); }), Catch::Contains("after the last head"));
  // A file written with a shared classifier flag but the classifier bytes present is too long.
  CHECK_THAT(with([](std::vector<char>& b) { put_u32(b, 28, 1); }), Catch::Contains("after the last head"));
  CHECK_THAT(with([](std::vector<char>& b) {
               const float nan = std::nanf("");
               std::memcpy(b.data() + 32, &nan, 4);
             }),
             Catch::Contains("non-finite"));
  CHECK(error_of(good) == "no error");
  CHECK_THROWS_AS(MedusaHeads::load(temp_path("does_not_exist.bin")), fastinfer::Error);
  std::filesystem::remove(good);
  std::filesystem::remove(bad);
}

TEST_CASE("Medusa head logits match a scalar reference (odd sizes, own and shared classifier)") {
  fastinfer::CpuBackend cpu;
  for (bool shared : {false, true})
    for (int dim : {1, 7, 33}) {
      const int vocab = 45;
      MedusaHeads h = MedusaHeads::random(5 + std::uint64_t(dim), 2, dim, vocab, shared, 2.0f);
      std::vector<float> hidden(static_cast<std::size_t>(dim)), cls(static_cast<std::size_t>(vocab * dim));
      for (std::size_t i = 0; i < hidden.size(); ++i) hidden[i] = std::sin(0.7f * float(i) + 0.3f);
      for (std::size_t i = 0; i < cls.size(); ++i) cls[i] = std::cos(0.37f * float(i));
      const fastinfer::MatrixView sv{fastinfer::DType::F32, cls.data(), vocab, dim};
      for (int k = 0; k < 2; ++k) {
        std::vector<float> out(static_cast<std::size_t>(vocab));
        h.head_logits(cpu, k, hidden.data(), sv, out.data());
        const auto ref = reference_logits(h, k, hidden, cls);
        for (int t = 0; t < vocab; ++t) CHECK(out[std::size_t(t)] == Approx(ref[std::size_t(t)]).margin(1e-4));
      }
    }
}

TEST_CASE("Medusa heads from a spec: random:SEED, shape checks, bad input") {
  fastinfer::LlamaConfig c;
  c.dim = 16;
  c.vocab_size = 40;
  const MedusaHeads a = fastinfer::examples::medusa_heads_from_flag("random:42", c, 3), b = fastinfer::examples::medusa_heads_from_flag("random:42", c, 3),
                    d = fastinfer::examples::medusa_heads_from_flag("random:43", c, 3);
  CHECK(a.num_heads() == 3);
  CHECK(a.shared_classifier());
  CHECK(std::memcmp(a.residual_weight(2), b.residual_weight(2), 16 * 16 * 4) == 0);
  CHECK(std::memcmp(a.residual_weight(2), d.residual_weight(2), 16 * 16 * 4) != 0);
  CHECK_THROWS_AS(fastinfer::examples::medusa_heads_from_flag("random:", c), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(fastinfer::examples::medusa_heads_from_flag("random:x1", c), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(MedusaHeads(0, 4, 4, true), fastinfer::InvalidArgument);
  const std::string path = temp_path("shape.bin");
  MedusaHeads::random(1, 2, 8, 40).save(path);
  CHECK_THROWS_WITH(fastinfer::examples::medusa_heads_from_flag(path, c), Catch::Contains("dim 8"));
  c.dim = 8;
  c.vocab_size = 41;
  CHECK_THROWS_WITH(fastinfer::examples::medusa_heads_from_flag(path, c), Catch::Contains("vocabulary 40"));
  std::filesystem::remove(path);
  MedusaHeads h = MedusaHeads::random(1, 2, 8, 40);
  fastinfer::CpuBackend cpu;
  std::vector<float> x(8, 0.1f), out(40);
  CHECK_THROWS_AS(h.head_logits(cpu, 2, x.data(), {}, out.data()), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(h.head_logits(cpu, 0, x.data(), {}, out.data()), fastinfer::InvalidArgument);  // shared, none given
}

TEST_CASE("Medusa heads zero-padded to a wider hidden state give the same logits on zero-extended input") {
  fastinfer::CpuBackend cpu;
  for (bool shared : {false, true}) {
    MedusaHeads h = MedusaHeads::random(9, 2, 6, 11, shared, 2.0f);
    MedusaHeads wide = h.padded_to(10);
    CHECK(wide.dim() == 10);
    std::vector<float> x(6), xw(10, 0.0f), cls(11 * 6), clsw(11 * 10, 0.0f);
    for (int i = 0; i < 6; ++i) xw[std::size_t(i)] = x[std::size_t(i)] = 0.3f * float(i) - 0.7f;
    for (int t = 0; t < 11; ++t)
      for (int i = 0; i < 6; ++i) clsw[std::size_t(t * 10 + i)] = cls[std::size_t(t * 6 + i)] = std::cos(float(t * 6 + i));
    for (int k = 0; k < 2; ++k) {
      std::vector<float> a(11), b(11);
      h.head_logits(cpu, k, x.data(), {fastinfer::DType::F32, cls.data(), 11, 6}, a.data());
      wide.head_logits(cpu, k, xw.data(), {fastinfer::DType::F32, clsw.data(), 11, 10}, b.data());
      for (int t = 0; t < 11; ++t) CHECK(b[std::size_t(t)] == Approx(a[std::size_t(t)]).margin(1e-5));
    }
  }
  CHECK_THROWS_AS(MedusaHeads::random(1, 1, 8, 4).padded_to(7), fastinfer::InvalidArgument);
  const std::string path = temp_path("pad.bin");
  MedusaHeads::random(2, 2, 8, 40, false).save(path);
  fastinfer::LlamaConfig c;
  c.dim = 24;
  c.vocab_size = 40;
  CHECK(fastinfer::examples::medusa_heads_from_flag("pad:" + path, c).dim() == 24);
  c.dim = 4;
  CHECK_THROWS_AS(fastinfer::examples::medusa_heads_from_flag("pad:" + path, c), fastinfer::InvalidArgument);
  std::filesystem::remove(path);
}
