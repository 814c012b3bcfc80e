// The CPU backend's kernel interface: what the model calls. Each kernel has a
// scalar twin in reference.hpp that the tests compare it with.
//
//   load_row(dtype, src, dst, n)           widen a stored row to f32
//   load_matrix_row(W, r, dst)             row r of W in f32, any layout
//   matvec(W, x, y, threads)               y = W x          (decode)   gemv.hpp
//   matmul(W, X, n, Y, threads)            Y = X W^T, n rows (prefill) gemm.hpp
//   rmsnorm, rope, swiglu, softmax, argmax, add                        elementwise.hpp
//
// `threads` is the most threads the caller grants; a kernel uses fewer when
// its work is too small to pay for an OpenMP hand-off (threading.hpp), and
// its results never depend on how many it used. matvec and matmul run the
// kernels of the CPU level chosen at run time (cpu_level.hpp); the
// elementwise and attention kernels those of the compiler's flags (arch.hpp).
#pragma once

#include <string>

#include "fastinfer/backend/cpu/arch.hpp"
#include "fastinfer/backend/cpu/attention.hpp"
#include "fastinfer/backend/cpu/batch_invariance.hpp"
#include "fastinfer/backend/cpu/bf16_dot.hpp"
#include "fastinfer/backend/cpu/elementwise.hpp"
#include "fastinfer/backend/cpu/gemm.hpp"
#include "fastinfer/backend/cpu/gemv.hpp"
#include "fastinfer/backend/cpu/one_row_walk.hpp"
#include "fastinfer/backend/cpu/q8_0.hpp"
#include "fastinfer/backend/cpu/threading.hpp"

namespace fastinfer::cpu {

// dst = row r of W widened to f32, whatever W's layout (an embedding lookup
// in a matrix the backend may have regrouped).
inline void load_matrix_row(const MatrixView& w, std::int64_t r, float* dst) {
  if (w.layout == MatrixLayout::q8_0_row_groups) return q8_0::load_grouped_row(w, r, dst);
  load_row(w.dtype, w.row_ptr(r), dst, w.cols);
}

// The bf16 dot mode that runs at `level` (bf16_dot.hpp): "bf16" where asked
// and the level has the kernels, else "widen".
inline const char* bf16_dot_running(CpuLevel level = cpu_level()) {
  return bf16_dot_name(bf16_dot_active(level) ? Bf16Dot::bf16 : Bf16Dot::widen);
}

// Reads every kernel mode once, so that a bad FASTINFER_CPU_LEVEL,
// FASTINFER_BF16_DOT, FASTINFER_BATCH_INVARIANT or FASTINFER_ONE_ROW_WALK
// throws InvalidArgument here (a CpuBackend does this when it is made), not
// in the first pass that happens to read it.
inline void check_kernel_modes() {
  (void)cpu_level();
  (void)bf16_dot();
  (void)batch_invariant();
  (void)one_row_walk();
}

// "cpu level avx512 (detected avx512; float kernels avx512, q8_0 avx512-vnni,
// attention avx512, elementwise avx512bw, bf16 dot widen, one-row walk
// tiles)": which kernels run ("bf16 dot bf16 on amx tiles" at level amx in
// that mode; the one-row walk is one_row_walk.hpp's mode; ", batch
// invariant" at the end when batch_invariance.hpp's mode is on), for logs
// and --version. Reads every kernel mode, so a bad environment variable for
// one throws here. Attention is named for head sizes that are
// multiples of 16 (at the avx512 level the others take the avx2 kernel); the
// elementwise kernels are xsimd's, chosen when the program was compiled, not
// at run time.
inline std::string kernel_isa_summary() {
  return std::string("cpu level ") + cpu_level_name(cpu_level()) + " (detected " +
         cpu_level_name(detected_cpu_level()) + "; float kernels " + float_kernel_isa() + ", q8_0 " +
         q8_0::kernel_isa() + ", attention " + attention_kernel_isa(cpu_level(), 16) + ", elementwise " +
         isa_name() + ", bf16 dot " + bf16_dot_running() +
         (bf16_dot_on_amx(cpu_level()) ? " on amx tiles" : "") + ", one-row walk " +
         one_row_walk_name(one_row_walk()) + (batch_invariant() ? ", batch invariant" : "") + ")";
}

}  // namespace fastinfer::cpu
