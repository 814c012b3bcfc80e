// A kernel mode: a process-wide setting that every kernel call reads once
// (a relaxed atomic: change it between passes, never during one), and the
// scope that sets one for a test or a benchmark and then restores the
// previous value. The CPU level (cpu_level.hpp), the bf16 dot mode
// (bf16_dot.hpp) and batch invariance (batch_invariance.hpp) are such modes.
#pragma once

#include <atomic>

namespace fastinfer::cpu {

template <typename T>
class KernelModeScope {
 public:
  // `set` checks and stores the new value in `slot` (and may refuse it:
  // then nothing changes and the scope is not made).
  KernelModeScope(std::atomic<int>& slot, T value, void (*set)(T))
      : slot_(slot), saved_(T(slot.load(std::memory_order_relaxed))) {
    set(value);
  }
  ~KernelModeScope() { slot_.store(int(saved_), std::memory_order_relaxed); }
  KernelModeScope(const KernelModeScope&) = delete;
  KernelModeScope& operator=(const KernelModeScope&) = delete;

 private:
  std::atomic<int>& slot_;
  T saved_;
};

}  // namespace fastinfer::cpu
