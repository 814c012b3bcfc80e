// detail::aligned_buffer and WeightArena, the weights' heap buffers:
// alignment, the whole buffer usable (the sanitizer build checks the bounds),
// buffers packed into shared chunks that live exactly as long as their
// buffers, and, where the kernel offers transparent huge pages on request,
// huge pages under large buffers and under many small ones once they have been
// written (read back from /proc/self/smaps).
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <memory_resource>
#include <sstream>
#include <string>
#include <vector>

#include "fastinfer/core/aligned_buffer.hpp"

namespace {

using fastinfer::detail::aligned_buffer;
using fastinfer::detail::kHugePageBytes;
using fastinfer::detail::WeightArena;

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

// Under AddressSanitizer (the header's own test of it).
#if defined(FASTINFER_ASAN)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

// Whether this process can see huge pages under its buffers; warns (a
// visible skip) where it cannot.
bool huge_pages_observable() {
  const std::string mode = thp_mode();
  if (!kSanitized && (mode == "always" || mode == "madvise")) return true;
  WARN("skipped: transparent huge pages are '"
       << mode << "' here" << (kSanitized ? " (and the sanitizer's allocator owns the heap)" : ""));
  return false;
}

}  // namespace

TEST_CASE("aligned_buffer: 64-byte aligned, every byte writable", "[aligned_buffer]") {
  for (std::size_t bytes :
       {std::size_t(0), std::size_t(1), std::size_t(100), std::size_t(4096) + 3, kHugePageBytes - 1,
        kHugePageBytes, 3 * kHugePageBytes + 17, WeightArena::kDefaultChunkBytes + 5}) {
    INFO("bytes " << bytes);
    auto p = aligned_buffer(bytes);
    REQUIRE(p != nullptr);
    CHECK(address(p) % 64 == 0);
    std::memset(p.get(), 0x5a, bytes == 0 ? 1 : bytes);
    CHECK(p.get()[bytes == 0 ? 0 : bytes - 1] == 0x5a);
  }
}

TEST_CASE("WeightArena packs buffers into one chunk until it is full", "[aligned_buffer]") {
  WeightArena arena(kHugePageBytes);
  auto a = arena.allocate(100), b = arena.allocate(1000), c = arena.allocate(64);
  CHECK(arena.chunks_made() == 1);
  for (const auto* p : {&a, &b, &c}) {
    CHECK(address(*p) % 64 == 0);
    CHECK(address(*p) / kHugePageBytes == address(a) / kHugePageBytes);  // the same 2 MiB chunk
  }
  CHECK(address(a) < address(b));
  CHECK(address(b) >= address(a) + 128);  // 100 bytes rounded to 64s: no overlap
  CHECK(address(c) >= address(b) + 1024);
  std::memset(a.get(), 1, 100);
  std::memset(b.get(), 2, 1000);
  std::memset(c.get(), 3, 64);
  CHECK(a.get()[99] == 1);
  CHECK(b.get()[0] == 2);
  CHECK(b.get()[999] == 2);

  auto d = arena.allocate(kHugePageBytes - 512);  // more than the first chunk has left
  CHECK(arena.chunks_made() == 2);
  CHECK(address(d) % kHugePageBytes == 0);
}

TEST_CASE(
    "WeightArena gives a buffer larger than a chunk a 2 MiB-aligned chunk of its own and carves on from the "
    "chunk with more room",
    "[aligned_buffer]") {
  WeightArena arena(kHugePageBytes);
  auto small = arena.allocate(4096);
  const std::size_t big_bytes = 3 * kHugePageBytes - 256;
  auto big = arena.allocate(big_bytes);  // a 6 MiB chunk of its own
  CHECK(arena.chunks_made() == 2);
  CHECK(address(big) % kHugePageBytes == 0);
  std::memset(big.get(), 7, big_bytes);
  // The big chunk has at most 256 bytes left, so the next small buffer comes
  // from the first chunk.
  auto next = arena.allocate(4096);
  CHECK(arena.chunks_made() == 2);
  CHECK(address(next) / kHugePageBytes == address(small) / kHugePageBytes);
}

TEST_CASE("WeightArena refuses a size that would wrap when rounded up, and stays usable",
          "[aligned_buffer]") {
  WeightArena arena(kHugePageBytes);
  auto a = arena.allocate(100);
  CHECK_THROWS_AS(arena.allocate(std::numeric_limits<std::size_t>::max() - 10), std::bad_alloc);
  CHECK_THROWS_AS(arena.allocate(std::numeric_limits<std::size_t>::max() / 2 + 1), std::bad_alloc);
  auto b = arena.allocate(100);
  CHECK(arena.chunks_made() == 1);
  CHECK(address(b) / kHugePageBytes == address(a) / kHugePageBytes);
}

TEST_CASE("WeightArena frees a chunk with its last buffer and then maps a new one", "[aligned_buffer]") {
  WeightArena arena(kHugePageBytes);
  auto a = arena.allocate(1000);
  std::weak_ptr<std::uint8_t> watch = a;
  {
    auto b = arena.allocate(1000);
    a.reset();
    CHECK_FALSE(watch.expired());  // b still holds the chunk
    auto c = arena.allocate(1000);
    CHECK(arena.chunks_made() == 1);
  }
  CHECK(watch.expired());  // every buffer of the chunk is gone, and so is the chunk
  auto d = arena.allocate(1000);
  CHECK(arena.chunks_made() == 2);
  std::memset(d.get(), 9, 1000);
  CHECK(d.get()[999] == 9);
}

TEST_CASE("aligned_buffer: a written 8 MiB buffer sits in huge pages where the kernel grants them on request",
          "[aligned_buffer]") {
  if (!huge_pages_observable()) return;
  const std::size_t bytes = 4 * kHugePageBytes;
  auto p = aligned_buffer(bytes);
  std::memset(p.get(), 1, bytes);
  // At least one of the whole huge pages under it (the kernel may fall back to
  // small pages for a page when memory is fragmented; all never do here).
  CHECK(huge_kb_in(address(p), address(p) + bytes) >= 2048);
}

TEST_CASE("WeightArena: many buffers smaller than a huge page sit in huge pages once written",
          "[aligned_buffer]") {
  if (!huge_pages_observable()) return;
  // Sixteen 627 KB buffers (a 110M Q8_0 model's 768x768 projection): each in
  // an allocation of its own, none could be in a huge page.
  WeightArena arena;
  std::vector<std::shared_ptr<std::uint8_t>> buffers;
  const std::size_t bytes = 768 * 768 / 32 * 34;
  for (int i = 0; i < 16; ++i) {
    buffers.push_back(arena.allocate(bytes));
    std::memset(buffers.back().get(), 1, bytes);
  }
  CHECK(huge_kb_in(address(buffers.front()), address(buffers.back()) + bytes) >= 2048);
}

TEST_CASE(
    "huge_page_resource: 2 MiB aligned from 2 MiB up, the caller's alignment below, every byte writable",
    "[aligned_buffer]") {
  std::pmr::memory_resource* r = fastinfer::detail::huge_page_resource();
  for (std::size_t bytes :
       {std::size_t(1), std::size_t(100), kHugePageBytes - 1, kHugePageBytes, 3 * kHugePageBytes + 17}) {
    INFO("bytes " << bytes);
    void* p = r->allocate(bytes, 64);
    const auto at = reinterpret_cast<std::uintptr_t>(p);
    CHECK(at % 64 == 0);
    if (bytes >= kHugePageBytes) CHECK(at % kHugePageBytes == 0);
    std::memset(p, 0x5a, bytes);
    CHECK(static_cast<unsigned char*>(p)[bytes - 1] == 0x5a);
    r->deallocate(p, bytes, 64);
  }
  CHECK(r->is_equal(*fastinfer::detail::huge_page_resource()));
  CHECK_FALSE(r->is_equal(*std::pmr::new_delete_resource()));
}
