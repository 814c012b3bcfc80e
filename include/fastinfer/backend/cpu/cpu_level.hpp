// The CPU level the matmul kernels run at, chosen at run time: what the CPU
// and the OS allow (CPUID, and XGETBV for the register state the OS saves),
// lowered by FASTINFER_CPU_LEVEL=scalar|avx2|avx512|amx or cpu::set_cpu_level.
// A program built for x86-64-v3 thus uses the AVX-512 tiles on a CPU that has
// them, and the tests run every level the host supports in one process.
//
// Levels, each a superset of the one before:
//   scalar  the build's generic kernels: gemv.hpp's dot_tile (xsimd at the
//           compiler's flags, plain loops without SIMD) and the Q8_0 reference
//   avx2    AVX2 + FMA + F16C tiles (gemv_avx2.hpp, q8_0_avx2.hpp)
//   avx512  x86-64-v4's AVX-512 (F, CD, BW, DQ, VL) tiles (gemv_avx512.hpp);
//           Q8_0 uses the VNNI tiles where the CPU has AVX512-VNNI, else the
//           AVX2 kernel (the same bits)
//   amx     avx512's kernels, plus AMX tiles (gemm_amx.hpp) for bf16 weights
//           in the bf16-activation mode (bf16_dot.hpp): every pass size,
//           decode included. Needs AMX-TILE, AMX-BF16 and AVX512-BF16, the
//           OS's tile state and, on Linux, the process's permission to use
//           it (arch_prctl(ARCH_REQ_XCOMP_PERM), asked once at detection).
//           In the default widen mode it computes avx512's bits.
// At a given level a result has the same bits whichever flags built the
// program (avx2/avx512), so forcing a level reproduces another machine.
// Attention dispatches on the level too (attention.hpp: AVX-512 for head sizes
// that are multiples of 16, else AVX2; the scalar reference at level scalar).
// The elementwise kernels use xsimd, which fixes its ISA from the compiler's
// flags: they are not dispatched (cpu::isa_name() names them).
//
// Reading the level is a function-local static plus a relaxed atomic load;
// the matmul entry points read it once per call, before their threads start.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "fastinfer/backend/cpu/cpu_target.hpp"
#include "fastinfer/backend/cpu/kernel_mode.hpp"
#include "fastinfer/core/error.hpp"

namespace fastinfer::cpu {

enum class CpuLevel : int { scalar = 0, avx2 = 1, avx512 = 2, amx = 3 };

inline const char* cpu_level_name(CpuLevel level) {
  switch (level) {
    case CpuLevel::scalar: return "scalar";
    case CpuLevel::avx2: return "avx2";
    case CpuLevel::avx512: return "avx512";
    case CpuLevel::amx: return "amx";
  }
  return "unknown";
}

// What CPUID and XGETBV say (all false off x86). os_* : the OS saves that
// register state, without which the instructions fault.
struct CpuFeatures {
  bool avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512cd = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool avx512vnni = false, avx512bf16 = false, avx_vnni = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
  bool os_avx = false, os_avx512 = false, os_amx = false;
  bool amd = false;  // vendor "AuthenticAMD": a tuning hint (one_row_walk.hpp), never a feature
};

namespace level_detail {
#if FASTINFER_CPU_DISPATCH
inline bool bit(unsigned reg, int i) { return ((reg >> i) & 1u) != 0; }
// CPUID leaf / sub-leaf into {eax, ebx, ecx, edx}: the instruction itself,
// not <cpuid.h>, whose bit_* macros would land in every consumer's TU.
struct CpuidRegs {
  unsigned a = 0, b = 0, c = 0, d = 0;
};
inline CpuidRegs cpuid(unsigned leaf, unsigned sub_leaf = 0) {
  CpuidRegs r;
  __asm__ volatile("cpuid" : "=a"(r.a), "=b"(r.b), "=c"(r.c), "=d"(r.d) : "a"(leaf), "c"(sub_leaf));
  return r;
}
// Linux hands a process the 8 KiB AMX tile state only once it asks
// (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)); a tile instruction
// before that faults. Asked once, at detection; false where refused.
inline bool request_amx_permission() {
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}
// XCR0 without the xsave target: the instruction's bytes (0f 01 d0).
inline std::uint64_t xgetbv0() {
  unsigned lo = 0, hi = 0;
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
  return (std::uint64_t(hi) << 32) | lo;
}
inline CpuFeatures detect() {
  CpuFeatures f;
  const CpuidRegs l0 = cpuid(0);
  const unsigned max_leaf = l0.a;
  // The vendor string is ebx, edx, ecx: "Auth" "enti" "cAMD".
  f.amd = l0.b == 0x68747541u && l0.d == 0x69746e65u && l0.c == 0x444d4163u;
  if (max_leaf < 1) return f;
  const CpuidRegs l1 = cpuid(1);
  const bool osxsave = bit(l1.c, 27);
  f.avx = bit(l1.c, 28);
  f.fma = bit(l1.c, 12);
  f.f16c = bit(l1.c, 29);
  const std::uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  f.os_avx = (xcr0 & 0x6) == 0x6;          // SSE and AVX state
  f.os_avx512 = (xcr0 & 0xe6) == 0xe6;     // plus opmask, ZMM0-15 high halves, ZMM16-31
  f.os_amx = (xcr0 & 0x60000) == 0x60000;  // XTILECFG, XTILEDATA (Linux also wants arch_prctl)
  if (max_leaf < 7) return f;
  const CpuidRegs l7 = cpuid(7, 0);
  f.avx2 = bit(l7.b, 5);
  f.avx512f = bit(l7.b, 16);
  f.avx512dq = bit(l7.b, 17);
  f.avx512cd = bit(l7.b, 28);
  f.avx512bw = bit(l7.b, 30);
  f.avx512vl = bit(l7.b, 31);
  f.avx512vnni = bit(l7.c, 11);
  f.amx_bf16 = bit(l7.d, 22);
  f.amx_tile = bit(l7.d, 24);
  f.amx_int8 = bit(l7.d, 25);
  if (l7.a >= 1) {  // the highest sub-leaf of leaf 7
    const CpuidRegs l71 = cpuid(7, 1);
    f.avx_vnni = bit(l71.a, 4);
    f.avx512bf16 = bit(l71.a, 5);
  }
  f.os_amx = f.os_amx && f.amx_tile && request_amx_permission();
  return f;
}
#else
inline CpuFeatures detect() { return {}; }
#endif
}  // namespace level_detail

// The features of this CPU, detected once.
inline const CpuFeatures& cpu_features() {
  static const CpuFeatures features = level_detail::detect();
  return features;
}

// The highest level that `f` allows.
inline CpuLevel cpu_level_of(const CpuFeatures& f) {
  if (!FASTINFER_CPU_DISPATCH) return CpuLevel::scalar;
  const bool avx2 = f.avx && f.avx2 && f.fma && f.f16c && f.os_avx;
  if (!avx2) return CpuLevel::scalar;
  const bool avx512 = f.avx512f && f.avx512cd && f.avx512bw && f.avx512dq && f.avx512vl && f.os_avx512;
  if (!avx512) return CpuLevel::avx2;
  const bool amx = f.amx_tile && f.amx_bf16 && f.avx512bf16 && f.os_amx;
  return amx ? CpuLevel::amx : CpuLevel::avx512;
}

inline CpuLevel detected_cpu_level() {
  static const CpuLevel level = cpu_level_of(cpu_features());
  return level;
}

// The levels this host can run, lowest first (the tests run each).
inline std::vector<CpuLevel> supported_cpu_levels() {
  std::vector<CpuLevel> levels;
  for (int l = 0; l <= int(detected_cpu_level()); ++l) levels.push_back(CpuLevel(l));
  return levels;
}

// The level named `text`; `source` names where the text came from, for the error.
inline CpuLevel parse_cpu_level(std::string_view text, std::string_view source) {
  static const ModeName<CpuLevel> kNames[] = {{CpuLevel::scalar, cpu_level_name(CpuLevel::scalar)},
                                              {CpuLevel::avx2, cpu_level_name(CpuLevel::avx2)},
                                              {CpuLevel::avx512, cpu_level_name(CpuLevel::avx512)},
                                              {CpuLevel::amx, cpu_level_name(CpuLevel::amx)}};
  return parse_mode(text, source, "CPU level", kNames);
}

namespace level_detail {
// The detected level, lowered (never raised) by FASTINFER_CPU_LEVEL.
inline CpuLevel initial_level() {
  const char* env = mode_variable("FASTINFER_CPU_LEVEL");
  if (env == nullptr) return detected_cpu_level();
  return std::min(detected_cpu_level(), parse_cpu_level(env, "FASTINFER_CPU_LEVEL"));
}
using Mode = KernelMode<CpuLevel, initial_level>;
}  // namespace level_detail

// The level the matmul kernels dispatch on now.
inline CpuLevel cpu_level() { return level_detail::Mode::get(); }

// Sets the level for every thread's later kernel calls. Refuses a level this
// CPU (or OS) lacks, leaving the level unchanged.
inline void set_cpu_level(CpuLevel level) {
  FASTINFER_CHECK(level >= CpuLevel::scalar && level <= CpuLevel::amx, InvalidArgument,
                  "set_cpu_level: ", int(level), " is not a CPU level");
  FASTINFER_CHECK(level <= detected_cpu_level(), InvalidArgument, "set_cpu_level(", cpu_level_name(level),
                  "): this CPU supports up to ", cpu_level_name(detected_cpu_level()));
  level_detail::Mode::store(level);
}

// Sets a level for a scope (a test, a benchmark), then restores the previous one.
class CpuLevelScope : public level_detail::Mode::Scope {
 public:
  explicit CpuLevelScope(CpuLevel level) : Scope(level, set_cpu_level) {}
};

// "avx2 fma f16c avx512f ...": the detected features, for logs.
inline std::string cpu_features_summary() {
  const CpuFeatures& f = cpu_features();
  std::string s;
  const std::pair<bool, const char*> named[] = {
      {f.avx2, "avx2"},          {f.fma, "fma"},           {f.f16c, "f16c"},
      {f.avx512f, "avx512f"},    {f.avx512cd, "avx512cd"}, {f.avx512bw, "avx512bw"},
      {f.avx512dq, "avx512dq"},  {f.avx512vl, "avx512vl"}, {f.avx512vnni, "avx512vnni"},
      {f.avx512bf16, "avx512bf16"}, {f.avx_vnni, "avxvnni"}, {f.amx_tile, "amx-tile"},
      {f.amx_bf16, "amx-bf16"},  {f.amx_int8, "amx-int8"}};
  for (const auto& [has, name] : named)
    if (has) s += (s.empty() ? "" : " ") + std::string(name);
  if ((f.avx512f && !f.os_avx512) || (f.avx2 && !f.os_avx)) s += " (the OS does not enable all vector state)";
  return s.empty() ? "none" : s;
}

}  // namespace fastinfer::cpu
