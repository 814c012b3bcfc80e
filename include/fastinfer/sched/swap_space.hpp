// Host-side swap space for preemption by swap: counts host blocks (each the
// size of one device KV block, all layers). Only ids are handed out; the
// engine owns the host bytes, as the KVCache owns the device bytes.
#pragma once

#include <cstdint>
#include <vector>

#include "fastinfer/core/error.hpp"

namespace fastinfer::sched {

class HostSwapSpace {
 public:
  explicit HostSwapSpace(std::int32_t num_blocks = 0) : used_(std::size_t(num_blocks > 0 ? num_blocks : 0), 0) {
    FASTINFER_CHECK(num_blocks >= 0, InvalidArgument, "HostSwapSpace: num_blocks must be >= 0, got ", num_blocks);
    free_.reserve(std::size_t(num_blocks));
    for (std::int32_t b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
  }

  std::int32_t num_blocks() const { return std::int32_t(used_.size()); }
  std::int32_t num_free_blocks() const { return std::int32_t(free_.size()); }

  // Appends n host block ids to `out`, all or nothing: false when short.
  bool allocate(std::int32_t n, std::vector<std::int32_t>& out) {
    FASTINFER_CHECK(n >= 0, InvalidArgument, "HostSwapSpace::allocate: cannot allocate ", n, " blocks");
    if (n > num_free_blocks()) return false;
    for (std::int32_t i = 0; i < n; ++i) {
      const std::int32_t b = free_.back();
      free_.pop_back();
      used_[std::size_t(b)] = 1;
      out.push_back(b);
    }
    return true;
  }

  // Gives the blocks back; checked as a whole first, so a bad id or double
  // free changes nothing.
  void release(const std::vector<std::int32_t>& blocks) {
    if (blocks.empty()) return;
    std::vector<char> seen(used_.size(), 0);
    for (std::int32_t b : blocks) {
      FASTINFER_CHECK(b >= 0 && b < num_blocks(), InvalidArgument, "HostSwapSpace::release: block ", b,
                      " is outside [0, ", num_blocks(), ")");
      FASTINFER_CHECK(used_[std::size_t(b)] && !seen[std::size_t(b)], UsageError, "HostSwapSpace::release: block ",
                      b, " is not in use (double free?)");
      seen[std::size_t(b)] = 1;
    }
    for (std::int32_t b : blocks) {
      used_[std::size_t(b)] = 0;
      free_.push_back(b);
    }
  }

 private:
  std::vector<char> used_;
  std::vector<std::int32_t> free_;
};

}  // namespace fastinfer::sched
