// Corrupted and truncated safetensors files: every one must either open with
// all tensor views inside the file, or fail with a fastinfer::Error. Anything
// else (another exception, a crash, a read outside the map under ASan) fails.
#include "fastinfer/model/safetensors.hpp"

#include <catch2/catch.hpp>

#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

using fastinfer::SafetensorsFile;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::vector<std::uint8_t> valid_file() {
  json j = {{"__metadata__", {{"format", "pt"}}}};
  std::vector<std::uint8_t> data;
  const char* dtypes[] = {"F32", "F16", "BF16", "I64", "U8"};
  const int sizes[] = {4, 2, 2, 8, 1};
  std::uint64_t off = 0;
  for (int t = 0; t < 8; ++t) {
    const int k = t % 5;
    const std::uint64_t rows = 1 + t, cols = 3 + (t % 3);
    const std::uint64_t bytes = rows * cols * std::uint64_t(sizes[k]);
    j["t" + std::to_string(t)] = {{"dtype", dtypes[k]}, {"shape", {rows, cols}}, {"data_offsets", {off, off + bytes}}};
    for (std::uint64_t b = 0; b < bytes; ++b) data.push_back(std::uint8_t(b * 37 + t));
    off += bytes;
  }
  std::string header = j.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  std::vector<std::uint8_t> file;
  for (int i = 0; i < 8; ++i) file.push_back(std::uint8_t((header.size() >> (8 * i)) & 0xff));
  file.insert(file.end(), header.begin(), header.end());
  file.insert(file.end(), data.begin(), data.end());
  return file;
}

// Element sizes, written out independently of the reader's table.
std::uint64_t elem_size(const std::string& d) {
  static const std::map<std::string, std::uint64_t> sizes = {
      {"F64", 8}, {"I64", 8}, {"U64", 8}, {"F32", 4}, {"I32", 4}, {"U32", 4}, {"F16", 2}, {"BF16", 2},
      {"I16", 2}, {"U16", 2}, {"U8", 1}, {"I8", 1}, {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  return sizes.at(d);
}

struct Outcome {
  int opened = 0;
  int rejected = 0;
};

// Opens `bytes` as a file; checks the views of a successful open.
void probe(const std::vector<std::uint8_t>& bytes, const fs::path& path, Outcome& outcome) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  }
  try {
    const auto f = SafetensorsFile::open(path.string());
    // Compare against the file we wrote, not the map, so that a wrong view is caught.
    std::uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[std::size_t(i)];
    for (const auto& [name, t] : f.tensors()) {
      REQUIRE(t.file_offset >= 8 + header_len);
      REQUIRE(t.file_offset <= bytes.size());
      REQUIRE(t.nbytes <= bytes.size() - t.file_offset);
      if (t.nbytes > 0) REQUIRE(std::memcmp(t.data, bytes.data() + t.file_offset, t.nbytes) == 0);
      if (t.has_supported_dtype()) (void)t.dtype();
      REQUIRE(std::uint64_t(t.numel()) * elem_size(t.dtype_name) == t.nbytes);
    }
    ++outcome.opened;
  } catch (const fastinfer::Error&) {
    ++outcome.rejected;
  } catch (const std::exception& e) {
    FAIL("not a fastinfer::Error: " << e.what());
  }
}

}  // namespace

TEST_CASE("safetensors fuzz: thousands of corruptions and truncations are each a clean error") {
  // Thousands of small files: in RAM (/dev/shm) when there is one, so the
  // test measures the reader, not the disk.
  const fs::path base = fs::is_directory("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
  const fs::path dir = base / ("fastinfer_fuzz_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path path = dir / "fuzz.safetensors";
  const std::vector<std::uint8_t> good = valid_file();
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | good[std::size_t(i)];
  std::mt19937_64 rng(20261122);
  Outcome outcome;
  int cases = 0;

  // Every truncation.
  for (std::size_t n = 0; n < good.size(); ++n, ++cases)
    probe(std::vector<std::uint8_t>(good.begin(), good.begin() + std::ptrdiff_t(n)), path, outcome);

  // Random byte edits in the length field and the header, biased towards JSON syntax.
  const std::string alphabet = "0123456789[]{}\",:-.eE \\u";
  for (int trial = 0; trial < 2500; ++trial, ++cases) {
    auto bytes = good;
    const int edits = 1 + int(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const std::size_t at = rng() % (8 + header_len);
      bytes[at] = rng() % 2 ? std::uint8_t(alphabet[rng() % alphabet.size()]) : std::uint8_t(rng());
    }
    probe(bytes, path, outcome);
  }

  // Numbers in the header replaced by hostile values (offsets, shapes).
  const std::string header(good.begin() + 8, good.begin() + 8 + std::ptrdiff_t(header_len));
  std::vector<std::size_t> digits;
  for (std::size_t i = 0; i < header.size(); ++i)
    if (header[i] >= '0' && header[i] <= '9' && (i == 0 || header[i - 1] < '0' || header[i - 1] > '9'))
      digits.push_back(i);
  const std::vector<std::string> hostile = {"0", "1", "-1", "4294967296", "9223372036854775807",
                                            "18446744073709551615", "18446744073709551616", "1e300",
                                            "0.5", "99999999999999999999999", "null", "[]", "{}", "\"7\""};
  for (int trial = 0; trial < 1500; ++trial, ++cases) {
    std::string h = header;
    const std::size_t at = digits[rng() % digits.size()];
    std::size_t end = at;
    while (end < h.size() && h[end] >= '0' && h[end] <= '9') ++end;
    h.replace(at, end - at, hostile[rng() % hostile.size()]);
    std::vector<std::uint8_t> bytes;
    for (int i = 0; i < 8; ++i) bytes.push_back(std::uint8_t((h.size() >> (8 * i)) & 0xff));
    bytes.insert(bytes.end(), h.begin(), h.end());
    bytes.insert(bytes.end(), good.begin() + 8 + std::ptrdiff_t(header_len), good.end());
    probe(bytes, path, outcome);
  }

  // Header lengths near and far from the truth, over the real bytes.
  for (int trial = 0; trial < 300; ++trial, ++cases) {
    auto bytes = good;
    std::uint64_t len = trial % 3 == 0 ? rng() : trial % 3 == 1 ? header_len + (rng() % 64) - 32 : rng() % 4096;
    for (int i = 0; i < 8; ++i) bytes[std::size_t(i)] = std::uint8_t((len >> (8 * i)) & 0xff);
    probe(bytes, path, outcome);
  }

  fs::remove_all(dir);
  INFO(cases << " cases: " << outcome.opened << " opened, " << outcome.rejected << " rejected");
  CHECK(outcome.opened + outcome.rejected == cases);
  CHECK(cases > 4000);
  // Both outcomes occur: the mutations neither all break the file nor all miss.
  CHECK(outcome.rejected > cases / 2);
  CHECK(outcome.opened > 50);
}
