// How a bf16 weight meets an f32 activation in the matvec and the small-row
// matmul (1..32 activation rows: decode, the verify pass, batched decode):
//
//   widen  (default) the weights widened to f32, f32 FMAs, the activations
//          exact: the documented 8/16-lane order of gemv.hpp at every level.
//   bf16   the activations rounded to bf16 (round to nearest even, denormal
//          inputs to zero: vcvtneps2bf16), and pairs of bf16 products summed
//          into f32 lanes by AVX512-BF16's vdpbf16ps (the products are exact;
//          each lane adds the odd product, then the even one). Twice the
//          multiply-adds an instruction of the FMA path, so a pass over 8-16
//          rows costs about half its arithmetic (llama.cpp's bf16 path rounds
//          activations the same way). What it does to numerics: each
//          activation keeps 8 significant bits instead of 24 (a relative
//          error up to 2^-9 per input), measured on the models in
//          docs/backend_cpu.md.
//
// bf16 runs where the CPU has AVX512-BF16 (Zen 4 and later, Intel Cooper
// Lake / Sapphire Rapids and later) and the CPU level is avx512 or higher
// (cpu_level.hpp); elsewhere the widening kernels run. In the bf16 mode bf16
// weights take the mode's tiles at every pass size, prefill included (AMX at
// level amx, the vdpbf16ps tiles at avx512: gemm.hpp), so a row's bits never
// depend on the pass. In the widen mode that holds up to 32 rows; past them
// prefill's packed GEMM sums in its own order, unless batch invariance is on
// (batch_invariance.hpp).
//
// FASTINFER_BF16_DOT=widen|bf16 sets the starting mode (bf16 on a CPU
// without it falls back to widen, as FASTINFER_CPU_LEVEL never raises a
// level); set_bf16_dot / Bf16DotScope change it for later calls.
#pragma once

#include <string_view>

#include "fastinfer/backend/cpu/cpu_level.hpp"
#include "fastinfer/backend/cpu/kernel_mode.hpp"
#include "fastinfer/core/error.hpp"

namespace fastinfer::cpu {

enum class Bf16Dot : int { widen = 0, bf16 = 1 };

inline const char* bf16_dot_name(Bf16Dot mode) { return mode == Bf16Dot::bf16 ? "bf16" : "widen"; }

// The CPU can run the bf16 mode (AVX512-BF16 with the OS's AVX-512 state).
inline bool bf16_dot_supported() {
  return FASTINFER_CPU_DISPATCH && detected_cpu_level() >= CpuLevel::avx512 && cpu_features().avx512bf16;
}

inline Bf16Dot parse_bf16_dot(std::string_view text, std::string_view source) {
  static const ModeName<Bf16Dot> kNames[] = {{Bf16Dot::widen, bf16_dot_name(Bf16Dot::widen)},
                                             {Bf16Dot::bf16, bf16_dot_name(Bf16Dot::bf16)}};
  return parse_mode(text, source, "bf16 dot mode", kNames);
}

namespace bf16_dot_detail {
inline Bf16Dot initial_mode() {
  const char* env = mode_variable("FASTINFER_BF16_DOT");
  if (env == nullptr) return Bf16Dot::widen;
  const Bf16Dot mode = parse_bf16_dot(env, "FASTINFER_BF16_DOT");
  return bf16_dot_supported() ? mode : Bf16Dot::widen;
}
using Mode = KernelMode<Bf16Dot, initial_mode>;
}  // namespace bf16_dot_detail

// The mode set (whether it runs also depends on the level: bf16_dot_active).
inline Bf16Dot bf16_dot() { return bf16_dot_detail::Mode::get(); }

// The bf16 kernels run at `level` now.
inline bool bf16_dot_active(CpuLevel level) {
  return bf16_dot() == Bf16Dot::bf16 && level >= CpuLevel::avx512;
}

// The bf16 mode runs on AMX tiles at `level` (gemm_amx.hpp): every pass
// size, decode included, takes them.
inline bool bf16_dot_on_amx(CpuLevel level) { return bf16_dot_active(level) && level >= CpuLevel::amx; }

// Sets the mode for every thread's later kernel calls; refuses bf16 on a CPU
// without AVX512-BF16, leaving the mode unchanged.
inline void set_bf16_dot(Bf16Dot mode) {
  FASTINFER_CHECK(mode == Bf16Dot::widen || mode == Bf16Dot::bf16, InvalidArgument,
                  "set_bf16_dot: ", int(mode), " is not a bf16 dot mode");
  FASTINFER_CHECK(mode == Bf16Dot::widen || bf16_dot_supported(), InvalidArgument,
                  "set_bf16_dot(bf16): this CPU lacks AVX512-BF16 (", cpu_features_summary(), ")");
  bf16_dot_detail::Mode::store(mode);
}

// Sets a mode for a scope (a test, a benchmark), then restores the previous one.
class Bf16DotScope : public bf16_dot_detail::Mode::Scope {
 public:
  explicit Bf16DotScope(Bf16Dot mode) : Scope(mode, set_bf16_dot) {}
};

}  // namespace fastinfer::cpu
