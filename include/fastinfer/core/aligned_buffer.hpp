// Heap buffers for model weights: 64-byte aligned, packed side by side in
// 2 MiB-aligned chunks that are advised to live in transparent huge pages.
//
// Why huge pages: decode reads every weight once per token, a stream of
// hundreds of MB through the TLB. With 4 KiB pages every 4 KiB of weights
// costs a page walk, and the walks, not the DRAM, set the pace: on a Zen 4
// (2 vCPUs) a 438 MB f32 matvec streamed 27 GB/s from 4 KiB pages and 37 GB/s
// from 2 MiB ones (one thread: 19 and 32). Linux's default THP mode is often
// "madvise", so the buffer has to ask. The advice never fails a load: where
// the kernel refuses it (THP off, not Linux), the buffer keeps small pages.
//
// Why chunks: only whole 2 MiB pages can be huge, and most matrices of a
// small model are smaller than that (a 110M Q8_0 model's 768x768 projection
// is 627 KB). Each in its own allocation, they stayed in 4 KiB pages: the
// 110M Q8_0 decode kernels streamed 28-33 GB/s from them and 35-40 GB/s from
// one huge-page arena (Intel Xeon, 2 vCPUs, same hour). So buffers are carved
// one after another out of shared chunks; a chunk is freed when the last
// buffer carved from it is (the arena only watches it). The price: a chunk
// stays mapped while any of its buffers lives; its untouched tail costs
// address space, not memory.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <memory_resource>
#include <mutex>
#include <new>

#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#define FASTINFER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FASTINFER_ASAN 1
#endif
#endif
#if defined(FASTINFER_ASAN)
#include <sanitizer/asan_interface.h>
#endif

namespace fastinfer::detail {

inline constexpr std::size_t kHugePageBytes = std::size_t(2) << 20;

// `bytes` rounded up to whole huge pages.
inline std::size_t whole_huge_pages(std::size_t bytes) {
  return (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
}

// `bytes` (whole huge pages) at a 2 MiB boundary, advised to be huge; free it
// with std::free. Throws std::bad_alloc when the memory is not there.
inline void* huge_page_allocation(std::size_t bytes) {
  void* p = nullptr;
  if (::posix_memalign(&p, kHugePageBytes, bytes) != 0 || p == nullptr) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
  (void)::madvise(p, bytes, MADV_HUGEPAGE);  // advice: refused, the pages stay small
#endif
  return p;
}

// Carves buffers out of 2 MiB-aligned, huge-page advised chunks of at least
// `chunk_bytes` (a buffer larger than that gets a chunk of its own, whose
// tail later buffers use). Thread-safe. Under AddressSanitizer the bytes
// between buffers stay poisoned, so an overrun into a neighbour is reported
// as it would be between separate allocations.
class WeightArena {
 public:
  static constexpr std::size_t kAlignment = 64;
  static constexpr std::size_t kDefaultChunkBytes = 16 * kHugePageBytes;

  explicit WeightArena(std::size_t chunk_bytes = kDefaultChunkBytes)
      : chunk_bytes_(whole_huge_pages(std::max(chunk_bytes, kHugePageBytes))) {}
  WeightArena(const WeightArena&) = delete;
  WeightArena& operator=(const WeightArena&) = delete;

  // `bytes` (at least 1) of writable memory, 64-byte aligned, owned by the
  // returned pointer. Throws std::bad_alloc when the memory is not there (or
  // `bytes` is so large that rounding it up would wrap).
  std::shared_ptr<std::uint8_t> allocate(std::size_t bytes) {
    if (bytes > std::numeric_limits<std::size_t>::max() / 2) throw std::bad_alloc();
    const std::size_t need = round_up(std::max<std::size_t>(bytes, 1), kAlignment) + kRedzone;
    std::lock_guard<std::mutex> lock(mutex_);
    std::shared_ptr<std::uint8_t> chunk = current_.lock();
    std::size_t offset = used_;
    if (!chunk || size_ - used_ < need) {
      const std::size_t size = std::max(chunk_bytes_, whole_huge_pages(need));
      std::shared_ptr<std::uint8_t> fresh = make_chunk(size);
      ++chunks_made_;
      offset = 0;
      // Keep carving from whichever chunk has more room left.
      if (!chunk || size - need > size_ - used_) {
        current_ = fresh;
        size_ = size;
        used_ = need;
      }
      chunk = std::move(fresh);
    } else {
      used_ += need;
    }
    std::uint8_t* p = chunk.get() + offset;
#if defined(FASTINFER_ASAN)
    ASAN_UNPOISON_MEMORY_REGION(p, bytes == 0 ? 1 : bytes);
#endif
    return std::shared_ptr<std::uint8_t>(std::move(chunk), p);  // shares the chunk's ownership
  }

  // Chunks this arena has mapped so far (for tests).
  std::size_t chunks_made() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return chunks_made_;
  }

 private:
#if defined(FASTINFER_ASAN)
  static constexpr std::size_t kRedzone = kAlignment;
#else
  static constexpr std::size_t kRedzone = 0;
#endif

  static std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

  static std::shared_ptr<std::uint8_t> make_chunk(std::size_t size) {
    void* p = huge_page_allocation(size);
#if defined(FASTINFER_ASAN)
    ASAN_POISON_MEMORY_REGION(p, size);
#endif
    return std::shared_ptr<std::uint8_t>(static_cast<std::uint8_t*>(p), [size](std::uint8_t* q) {
#if defined(FASTINFER_ASAN)
      ASAN_UNPOISON_MEMORY_REGION(q, size);
#endif
      (void)size;
      std::free(q);
    });
  }

  const std::size_t chunk_bytes_;
  mutable std::mutex mutex_;
  std::weak_ptr<std::uint8_t> current_;  // weak: the buffers own their chunk
  std::size_t size_ = 0, used_ = 0, chunks_made_ = 0;
};

// The process's arena for weight buffers.
inline WeightArena& weight_arena() {
  static WeightArena arena;
  return arena;
}

// A weight buffer of `bytes` from the process's arena (see above).
inline std::shared_ptr<std::uint8_t> aligned_buffer(std::size_t bytes) {
  return weight_arena().allocate(bytes);
}

// A memory resource for the large working buffers a kernel streams through
// every step (the CPU KV cache's blocks): from 2 MiB up, 2 MiB aligned, whole
// huge pages (the size rounded up) and advised to be huge. A decode step
// reads each head's rows of each cached block, 4 KiB at a time at the 110M
// shape: in small pages every one of those reads was a page walk.
class HugePageResource final : public std::pmr::memory_resource {
 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    if (bytes >= kHugePageBytes) return huge_page_allocation(whole_huge_pages(bytes));
    const std::size_t align = std::max({alignment, alignof(std::max_align_t), sizeof(void*)});
    void* p = nullptr;
    if (::posix_memalign(&p, align, std::max<std::size_t>(bytes, 1)) != 0 || p == nullptr)
      throw std::bad_alloc();
    return p;
  }
  void do_deallocate(void* p, std::size_t, std::size_t) override { std::free(p); }
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override { return this == &other; }
};

// The process's HugePageResource.
inline std::pmr::memory_resource* huge_page_resource() {
  static HugePageResource resource;
  return &resource;
}

}  // namespace fastinfer::detail
