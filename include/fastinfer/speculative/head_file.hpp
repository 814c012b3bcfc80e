// Little-endian fields of the draft-head files (Medusa's FIMEDUSA, EAGLE's
// FIEAGLEH): one reader and writer for both, so that the two formats cannot
// drift apart in how they spell a number or quote a bad magic.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace fastinfer::speculative::head_file {

inline std::uint32_t load_u32(const std::uint8_t* p) {
  return std::uint32_t(p[0]) | std::uint32_t(p[1]) << 8 | std::uint32_t(p[2]) << 16 | std::uint32_t(p[3]) << 24;
}
inline std::uint64_t load_u64(const std::uint8_t* p) { return std::uint64_t(load_u32(p)) | std::uint64_t(load_u32(p + 4)) << 32; }
inline float load_f32(const std::uint8_t* p) {
  const std::uint32_t bits = load_u32(p);
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline void store_u32(char* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = char((v >> (8 * i)) & 0xffu);
}
inline void store_u64(char* p, std::uint64_t v) {
  store_u32(p, std::uint32_t(v & 0xffffffffu));
  store_u32(p + 4, std::uint32_t(v >> 32));
}
inline void store_f32(char* p, float f) {
  std::uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  store_u32(p, bits);
}

// A magic or name field as it may be quoted in an error line: non-printable
// bytes become '?'.
inline std::string printable(const std::uint8_t* p, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += (p[i] >= 32 && p[i] < 127) ? char(p[i]) : '?';
  return s;
}

}  // namespace fastinfer::speculative::head_file
