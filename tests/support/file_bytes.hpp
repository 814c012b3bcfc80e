// Scratch directories, whole files as bytes, and where a GGUF key or tensor
// sits in them: for the tests that corrupt one field of a real model file
// and the tests that run programs.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>

namespace fastinfer::testing {

// A fresh directory under the system temp dir, removed with everything in it.
struct ScratchDir {
  std::filesystem::path dir;
  ScratchDir() {
    dir = std::filesystem::temp_directory_path() / ("fastinfer_test_" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(dir);
  }
  ~ScratchDir() { std::filesystem::remove_all(dir); }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
};

inline std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

inline void write_bytes(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc).write(bytes.data(), std::streamsize(bytes.size()));
}

template <typename T>
void put_at(std::string& file, std::size_t at, T v) {
  std::memcpy(&file[at], &v, sizeof v);
}
template <typename T>
T get_at(const std::string& file, std::size_t at) {
  T v;
  std::memcpy(&v, &file[at], sizeof v);
  return v;
}

// Offset just past the GGUF string `s` (u64 length, then its bytes) in a GGUF
// file: found with its length prefix, so a longer key holding `s` does not match.
inline std::size_t gguf_string_end(const std::string& file, const std::string& s) {
  std::string needle(8, '\0');
  const std::uint64_t n = s.size();
  std::memcpy(&needle[0], &n, 8);
  needle += s;
  const std::size_t at = file.find(needle);
  if (at == std::string::npos) throw std::runtime_error("no GGUF string '" + s + "' in the file");
  return at + needle.size();
}

// Offset of the value of metadata `key` (past its u32 value type).
inline std::size_t gguf_value_offset(const std::string& file, const std::string& key) {
  return gguf_string_end(file, key) + 4;
}

// Offset of the u64 data offset in the info of tensor `name` (past its dims and type).
inline std::size_t gguf_tensor_offset_field(const std::string& file, const std::string& name) {
  const std::size_t dims_at = gguf_string_end(file, name);
  return dims_at + 4 + 8 * std::size_t(get_at<std::uint32_t>(file, dims_at)) + 4;
}

}  // namespace fastinfer::testing
