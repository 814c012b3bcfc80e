// Batch invariance for any pass size: whether the matmul of more than
// gemm_detail::kDotMaxTokens (32) rows keeps every row's bits.
//
// By default a row's bits do not depend on the pass it rides in up to 32
// rows (the small-row tiles give each row matvec's summation order); past
// that the packed GEMM takes over (prefill's speed) and sums each output in
// another order, so a decode row beside a long prefill chunk, or a verify
// pass of many requests' trees, may round differently from the same row
// alone. With batch invariance on (FASTINFER_BATCH_INVARIANT=1 at start, or
// set_batch_invariant / BatchInvariantScope), every matmul runs the
// small-row tiles, 32 rows at a time over each block of weights: a token's
// logits are then bit-identical whatever the pass, at a given CPU level and
// bf16 dot mode (the attention, norms, RoPE and SwiGLU already are), so a
// served request's output does not depend on what it was batched with. The
// price is prefill speed (docs/backend_cpu.md gives it per level).
#pragma once

#include "fastinfer/backend/cpu/kernel_mode.hpp"
#include "fastinfer/core/error.hpp"

namespace fastinfer::cpu {

namespace batch_invariance_detail {
inline bool initial_mode() {
  static constexpr ModeName<bool> kNames[] = {{false, "0"}, {true, "1"}};
  const char* env = mode_variable("FASTINFER_BATCH_INVARIANT");
  return env != nullptr && parse_mode(env, "FASTINFER_BATCH_INVARIANT", "batch invariance setting", kNames);
}
using Mode = KernelMode<bool, initial_mode>;
}  // namespace batch_invariance_detail

inline bool batch_invariant() { return batch_invariance_detail::Mode::get(); }

// For every thread's later kernel calls.
inline void set_batch_invariant(bool on) { batch_invariance_detail::Mode::store(on); }

class BatchInvariantScope : public batch_invariance_detail::Mode::Scope {
 public:
  explicit BatchInvariantScope(bool on) : Scope(on, set_batch_invariant) {}
};

}  // namespace fastinfer::cpu
