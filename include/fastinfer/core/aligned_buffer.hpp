// Heap buffers for model weights: 64-byte aligned, and from 2 MiB up aligned
// to 2 MiB and advised to live in transparent huge pages.
//
// Why huge pages: decode reads every weight once per token, a stream of
// hundreds of MB through the TLB. With 4 KiB pages every 4 KiB of weights
// costs a page walk, and the walks, not the DRAM, set the pace: on a Zen 4
// (2 vCPUs) a 438 MB f32 matvec streamed 27 GB/s from 4 KiB pages and 37 GB/s
// from 2 MiB ones (one thread: 19 and 32). Linux's default THP mode is often
// "madvise", so the buffer has to ask. The advice never fails a load: where
// the kernel refuses it (THP off, not Linux), the buffer keeps small pages.
// Only whole 2 MiB pages inside the buffer become huge, so advising costs no
// memory beyond the buffer's own bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

#include <sys/mman.h>

namespace fastinfer::detail {

inline constexpr std::size_t kHugePageBytes = std::size_t(2) << 20;

// A buffer of `bytes` (at least 64) that a KeepAlive can own: 64-byte aligned,
// 2 MiB aligned and huge-page advised from kHugePageBytes up. Throws
// std::bad_alloc when the memory is not there.
inline std::shared_ptr<std::uint8_t> aligned_buffer(std::size_t bytes) {
  const bool huge = bytes >= kHugePageBytes;
  const std::size_t rounded = bytes == 0 ? 64 : (bytes + 63) / 64 * 64;
  void* p = nullptr;
  if (::posix_memalign(&p, huge ? kHugePageBytes : 64, rounded) != 0 || p == nullptr) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
  if (huge) (void)::madvise(p, rounded, MADV_HUGEPAGE);  // advice: refused, the pages stay small
#endif
  return std::shared_ptr<std::uint8_t>(static_cast<std::uint8_t*>(p), [](std::uint8_t* q) { std::free(q); });
}

}  // namespace fastinfer::detail
