// detail::aligned_buffer, the weights' heap buffers: alignment, the whole
// buffer usable (the sanitizer build checks the bounds), and, where the kernel
// offers transparent huge pages on request, huge pages under a large buffer
// once it has been written (read back from /proc/self/smaps).
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "fastinfer/core/aligned_buffer.hpp"

namespace {

using fastinfer::detail::aligned_buffer;
using fastinfer::detail::kHugePageBytes;

std::uintptr_t address(const std::shared_ptr<std::uint8_t>& p) {
  return reinterpret_cast<std::uintptr_t>(p.get());
}

// The mode the kernel is in ("always", "madvise", "never"), or "" where it
// does not say (no THP support, not Linux).
std::string thp_mode() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  if (!std::getline(f, line)) return "";
  const auto open = line.find('['), close = line.find(']');
  return open == std::string::npos || close == std::string::npos ? ""
                                                                 : line.substr(open + 1, close - open - 1);
}

// kB of AnonHugePages in the mappings that overlap [begin, end).
long huge_kb_in(std::uintptr_t begin, std::uintptr_t end) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  long kb = 0;
  while (std::getline(smaps, line)) {
    std::uintptr_t lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-') {
      inside = lo < end && begin < hi;
      continue;
    }
    if (inside && line.rfind("AnonHugePages:", 0) == 0) kb += std::stol(line.substr(14));
  }
  return kb;
}

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

}  // namespace

TEST_CASE("aligned_buffer: 64-byte aligned, 2 MiB aligned from 2 MiB up, every byte writable",
          "[aligned_buffer]") {
  for (std::size_t bytes : {std::size_t(0), std::size_t(1), std::size_t(100), std::size_t(4096) + 3,
                            kHugePageBytes - 1, kHugePageBytes, 3 * kHugePageBytes + 17}) {
    INFO("bytes " << bytes);
    auto p = aligned_buffer(bytes);
    REQUIRE(p != nullptr);
    CHECK(address(p) % 64 == 0);
    if (bytes >= kHugePageBytes) CHECK(address(p) % kHugePageBytes == 0);
    std::memset(p.get(), 0x5a, bytes == 0 ? 64 : bytes);
    CHECK(p.get()[bytes == 0 ? 0 : bytes - 1] == 0x5a);
  }
}

TEST_CASE("aligned_buffer: a written 8 MiB buffer sits in huge pages where the kernel grants them on request",
          "[aligned_buffer]") {
  const std::string mode = thp_mode();
  if (kSanitized || (mode != "always" && mode != "madvise")) {
    WARN("skipped: transparent huge pages are '"
         << mode << "' here" << (kSanitized ? " (and the sanitizer's allocator owns the heap)" : ""));
    return;
  }
  const std::size_t bytes = 4 * kHugePageBytes;
  auto p = aligned_buffer(bytes);
  std::memset(p.get(), 1, bytes);
  // At least one of the four whole huge pages (the kernel may fall back to
  // small pages for a page when memory is fragmented; all four never do here).
  CHECK(huge_kb_in(address(p), address(p) + bytes) >= 2048);
}
