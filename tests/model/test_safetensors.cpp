#include "fastinfer/model/safetensors.hpp"

#include <catch2/catch.hpp>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "shared_dir.hpp"

using fastinfer::DType;
using fastinfer::FormatError;
using fastinfer::SafetensorsCheckpoint;
using fastinfer::SafetensorsFile;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// Removes this process's scratch directory when the test program exits.
struct ScratchCleanup {
  ~ScratchCleanup() {
    std::error_code ec;
    fs::remove_all(fs::temp_directory_path() / ("fastinfer_test_safetensors_" + std::to_string(::getpid())), ec);
  }
} scratch_cleanup;

fs::path temp_dir() {
  const fs::path d = fs::temp_directory_path() / ("fastinfer_test_safetensors_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

// Writes an 8-byte little-endian length, the header text, then the data.
void write_raw(const fs::path& p, const std::string& header, const std::vector<std::uint8_t>& data,
               std::uint64_t declared_len) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  for (int i = 0; i < 8; ++i) out.put(char((declared_len >> (8 * i)) & 0xff));
  out.write(header.data(), std::streamsize(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
}
void write_file(const fs::path& p, const std::string& header, const std::vector<std::uint8_t>& data) {
  write_raw(p, header, data, header.size());
}

template <typename T>
void append(std::vector<std::uint8_t>& out, const std::vector<T>& values) {
  const auto* b = reinterpret_cast<const std::uint8_t*>(values.data());
  out.insert(out.end(), b, b + values.size() * sizeof(T));
}

// A valid three-dtype file: a [2,3] f32, a [4] f16, a [2,2] bf16 and an i64 scalar.
struct Synthetic {
  std::string header;
  std::vector<std::uint8_t> data;
};
Synthetic synthetic() {
  Synthetic s;
  append(s.data, std::vector<float>{1.f, -2.f, 3.5f, 0.25f, -0.f, 1e-3f});  // 24 bytes
  std::vector<std::uint16_t> h;
  for (float v : {1.f, -0.5f, 65504.f, 6e-8f}) h.push_back(fastinfer::f32_to_f16(v));
  append(s.data, h);  // 8 bytes
  std::vector<std::uint16_t> b;
  for (float v : {3.f, -1.f / 3.f, 1e30f, 2.f}) b.push_back(fastinfer::f32_to_bf16(v));
  append(s.data, b);                                 // 8 bytes
  append(s.data, std::vector<std::int64_t>{42});     // 8 bytes
  json j = {{"__metadata__", {{"format", "pt"}}},
            {"w", {{"dtype", "F32"}, {"shape", {2, 3}}, {"data_offsets", {0, 24}}}},
            {"h", {{"dtype", "F16"}, {"shape", {4}}, {"data_offsets", {24, 32}}}},
            {"b", {{"dtype", "BF16"}, {"shape", {2, 2}}, {"data_offsets", {32, 40}}}},
            {"step", {{"dtype", "I64"}, {"shape", json::array()}, {"data_offsets", {40, 48}}}},
            {"empty", {{"dtype", "F32"}, {"shape", {0, 5}}, {"data_offsets", {48, 48}}}}};
  s.header = j.dump();
  s.header.append((8 - s.header.size() % 8) % 8, ' ');  // writers pad to 8 bytes
  return s;
}

std::string error_of(const fs::path& p) {
  try {
    SafetensorsFile::open(p.string());
  } catch (const FormatError& e) {
    return e.what();
  }
  return "(no error)";
}

std::string error_with_header(const std::string& header, std::size_t data_bytes = 48) {
  const fs::path p = temp_dir() / "bad.safetensors";
  write_file(p, header, std::vector<std::uint8_t>(data_bytes, 0));
  return error_of(p);
}

}  // namespace

TEST_CASE("safetensors: the tinystories checkpoint's tensors, shapes and values") {
  FASTINFER_REQUIRE_SHARED(path, "models/tinystories-656k/model.safetensors");
  const auto f = SafetensorsFile::open(path.string());
  CHECK(f.size() == 20);  // lm_head, model.norm, 9 per layer x 2
  CHECK(f.metadata().at("model.embed_tokens.weight") == "lm_head.weight");
  CHECK_FALSE(f.contains("model.embed_tokens.weight"));
  const auto& head = f.tensor("lm_head.weight");
  CHECK(head.dtype() == DType::F32);
  CHECK(head.shape == std::vector<std::int64_t>{2048, 128});
  CHECK(head.nbytes == 2048u * 128u * 4u);
  CHECK(head.file_offset == 8 + 2160);
  auto value = [&](const char* name, std::size_t i) {
    float v;
    std::memcpy(&v, f.tensor(name).data + 4 * i, 4);
    return v;
  };
  // Reference values read with Python's struct module.
  CHECK(value("lm_head.weight", 0) == -0.68359375f);
  CHECK(value("lm_head.weight", 2048 * 128 - 1) == -0.421875f);
  CHECK(value("model.norm.weight", 0) == 0.640625f);
  CHECK(value("model.layers.1.mlp.down_proj.weight", 128 * 384 - 1) == -0.1376953125f);
  CHECK(value("model.layers.0.self_attn.q_proj.weight", 5 * 128 + 7) == -0.298828125f);
  CHECK(f.tensor("model.layers.0.self_attn.k_proj.weight").shape == std::vector<std::int64_t>{64, 128});
  CHECK(f.tensor("model.layers.1.mlp.down_proj.weight").shape == std::vector<std::int64_t>{128, 384});

  const auto ckpt = SafetensorsCheckpoint::open(path.parent_path());
  CHECK(ckpt.names().size() == 20);
  CHECK(std::memcmp(ckpt.tensor("model.norm.weight").data, f.tensor("model.norm.weight").data, 512) == 0);
}

TEST_CASE("safetensors: synthetic F32/F16/BF16 tensors are read zero-copy with their shapes") {
  const fs::path p = temp_dir() / "ok.safetensors";
  const Synthetic s = synthetic();
  write_file(p, s.header, s.data);
  const auto f = SafetensorsFile::open(p.string());
  CHECK(f.size() == 5);
  CHECK(f.metadata().at("format") == "pt");
  const std::uint64_t base = 8 + s.header.size();

  const auto& w = f.tensor("w");
  CHECK(w.dtype() == DType::F32);
  CHECK(w.shape == std::vector<std::int64_t>{2, 3});
  CHECK(w.numel() == 6);
  CHECK(w.file_offset == base);
  float wv[6];
  std::memcpy(wv, w.data, 24);
  CHECK(wv[2] == 3.5f);
  CHECK(wv[5] == 1e-3f);

  const auto& h = f.tensor("h");
  CHECK(h.dtype() == DType::F16);
  std::uint16_t hv[4];
  std::memcpy(hv, h.data, 8);
  CHECK(fastinfer::f16_to_f32(hv[1]) == -0.5f);
  CHECK(fastinfer::f16_to_f32(hv[2]) == 65504.f);

  const auto& b = f.tensor("b");
  CHECK(b.dtype() == DType::BF16);
  CHECK(b.shape == std::vector<std::int64_t>{2, 2});
  std::uint16_t bv[4];
  std::memcpy(bv, b.data, 8);
  CHECK(fastinfer::bf16_to_f32(bv[0]) == 3.f);
  CHECK(fastinfer::bf16_to_f32(bv[3]) == 2.f);

  // An I64 tensor is checked and listed, but is not something we compute with.
  const auto& step = f.tensor("step");
  CHECK(step.shape.empty());
  CHECK(step.numel() == 1);
  CHECK_FALSE(step.has_supported_dtype());
  CHECK_THROWS_WITH(step.dtype(), Catch::Contains("I64") && Catch::Contains("step"));
  CHECK(f.tensor("empty").nbytes == 0);
  CHECK(f.tensor("empty").numel() == 0);
  CHECK_THROWS_WITH(f.tensor("nope"), Catch::Contains("nope"));
  // Views stay valid after the file object is gone while a keep-alive lives.
  fastinfer::KeepAlive keep = f.keep_alive();
  const std::uint8_t* data = w.data;
  { const auto copy = f; }
  CHECK(std::memcmp(data, s.data.data(), 24) == 0);
}

TEST_CASE("safetensors: malformed headers are FormatErrors naming the problem") {
  const Synthetic s = synthetic();
  const fs::path dir = temp_dir();

  SECTION("file shorter than the length field") {
    std::ofstream(dir / "short.safetensors", std::ios::binary) << "abc";
    CHECK_THAT(error_of(dir / "short.safetensors"), Catch::Contains("too short"));
  }
  SECTION("header length beyond the file") {
    write_raw(dir / "b.safetensors", s.header, s.data, s.header.size() + s.data.size() + 1);
    CHECK_THAT(error_of(dir / "b.safetensors"), Catch::Contains("past the end"));
  }
  SECTION("absurd header length") {
    write_raw(dir / "b.safetensors", s.header, s.data, ~0ull);
    CHECK_THAT(error_of(dir / "b.safetensors"), Catch::Contains("absurd"));
  }
  SECTION("invalid JSON") {
    CHECK_THAT(error_with_header("{\"w\": {\"dtype\": "), Catch::Contains("invalid JSON"));
    CHECK_THAT(error_with_header(std::string(5000, '[') + std::string(5000, ']')),
               Catch::Contains("nested deeper"));
  }
  SECTION("header not an object") { CHECK_THAT(error_with_header("[1, 2]"), Catch::Contains("not a JSON object")); }
  SECTION("offsets outside the data section") {
    CHECK_THAT(error_with_header(R"({"w":{"dtype":"F32","shape":[2,4],"data_offsets":[16,48]}})", 40),
               Catch::Contains("beyond the data section") && Catch::Contains("'w'"));
  }
  SECTION("offsets that run backwards") {
    CHECK_THAT(error_with_header(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})"),
               Catch::Contains("backwards"));
  }
  SECTION("overlapping tensors") {
    CHECK_THAT(error_with_header(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                 R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})"),
               Catch::Contains("overlap") && Catch::Contains("'a'") && Catch::Contains("'b'"));
  }
  SECTION("byte count that does not match dtype and shape") {
    CHECK_THAT(error_with_header(R"({"w":{"dtype":"F16","shape":[2,3],"data_offsets":[0,24]}})"),
               Catch::Contains("need 12 bytes") && Catch::Contains("hold 24"));
    CHECK_THAT(error_with_header(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}})"),
               Catch::Contains("more than 2^64"));
  }
  SECTION("unknown dtype") {
    CHECK_THAT(error_with_header(R"({"w":{"dtype":"Q4","shape":[4],"data_offsets":[0,2]}})"),
               Catch::Contains("unknown dtype 'Q4'"));
  }
  SECTION("negative or fractional shapes and missing fields") {
    CHECK_THAT(error_with_header(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})"),
               Catch::Contains("non-negative integer"));
    CHECK_THAT(error_with_header(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})"),
               Catch::Contains("non-negative integer"));
    CHECK_THAT(error_with_header(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})"), Catch::Contains("shape"));
    CHECK_THAT(error_with_header(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})"),
               Catch::Contains("data_offsets"));
    CHECK_THAT(error_with_header(R"({"w":{"shape":[1],"data_offsets":[0,4]}})"), Catch::Contains("dtype"));
    CHECK_THAT(error_with_header(R"({"w":7})"), Catch::Contains("not a JSON object"));
  }
}

TEST_CASE("safetensors: sharded checkpoints through model.safetensors.index.json") {
  const fs::path dir = temp_dir() / "sharded";
  fs::create_directories(dir);
  // Shard 1 holds a and b, shard 2 holds c; values identify the tensor.
  std::vector<std::uint8_t> d1, d2;
  append(d1, std::vector<float>{1, 2, 3, 4});
  append(d1, std::vector<float>{5, 6});
  append(d2, std::vector<float>{7, 8, 9});
  write_file(dir / "model-00001-of-00002.safetensors",
             json{{"a", {{"dtype", "F32"}, {"shape", {2, 2}}, {"data_offsets", {0, 16}}}},
                  {"b", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {16, 24}}}}}.dump(), d1);
  write_file(dir / "model-00002-of-00002.safetensors",
             json{{"c", {{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {0, 12}}}}}.dump(), d2);
  json index = {{"metadata", {{"total_size", 36}}},
                {"weight_map", {{"a", "model-00001-of-00002.safetensors"},
                                {"b", "model-00001-of-00002.safetensors"},
                                {"c", "model-00002-of-00002.safetensors"}}}};
  std::ofstream(dir / "model.safetensors.index.json") << index.dump();

  const auto ckpt = SafetensorsCheckpoint::open(dir);
  CHECK(ckpt.shards().size() == 2);
  CHECK(ckpt.names() == std::vector<std::string>{"a", "b", "c"});
  float v;
  std::memcpy(&v, ckpt.tensor("c").data + 8, 4);
  CHECK(v == 9.f);
  std::memcpy(&v, ckpt.tensor("b").data, 4);
  CHECK(v == 5.f);
  CHECK(*ckpt.tensor("c").path == (dir / "model-00002-of-00002.safetensors").string());
  CHECK(ckpt.storage().size() == 2);
  CHECK_THROWS_WITH(ckpt.tensor("d"), Catch::Contains("missing tensor 'd'"));

  SECTION("a tensor the index lists but its shard lacks") {
    index["weight_map"]["d"] = "model-00002-of-00002.safetensors";
    std::ofstream(dir / "model.safetensors.index.json") << index.dump();
    CHECK_THROWS_WITH(SafetensorsCheckpoint::open(dir), Catch::Contains("'d'") && Catch::Contains("missing from"));
  }
  SECTION("a shard that does not exist") {
    index["weight_map"]["c"] = "model-00003-of-00002.safetensors";
    std::ofstream(dir / "model.safetensors.index.json") << index.dump();
    CHECK_THROWS_AS(SafetensorsCheckpoint::open(dir), FormatError);
  }
  SECTION("a shard path that leaves the directory") {
    index["weight_map"]["c"] = "../model-00002-of-00002.safetensors";
    std::ofstream(dir / "model.safetensors.index.json") << index.dump();
    CHECK_THROWS_WITH(SafetensorsCheckpoint::open(dir), Catch::Contains("not a file beside the index"));
  }
  SECTION("an index without weight_map") {
    std::ofstream(dir / "model.safetensors.index.json") << R"({"metadata": {}})";
    CHECK_THROWS_WITH(SafetensorsCheckpoint::open(dir), Catch::Contains("weight_map"));
  }
  SECTION("a directory with no checkpoint") {
    fs::create_directories(temp_dir() / "empty");
    CHECK_THROWS_WITH(SafetensorsCheckpoint::open(temp_dir() / "empty"), Catch::Contains("model.safetensors"));
  }
}
