// Compiling a kernel set for an instruction set the build flags do not
// enable: target regions. Every function defined between
// FASTINFER_CPU_TARGET_BEGIN("avx2,fma") and FASTINFER_CPU_TARGET_END is
// compiled for that instruction set whatever -march says (g++: `#pragma GCC
// target`; clang: `#pragma clang attribute`, which g++ lacks), so a program
// built for x86-64-v2/-v3 still carries the AVX2 and AVX-512 kernels and
// cpu_level.hpp picks one at run time (simdjson's header-only scheme).
//
// Rules for code inside a region (each broke a build when ignored):
// * include <immintrin.h> and the standard headers before the region;
// * no lambdas (clang's attribute skips them: their intrinsics fail to
//   inline), no xsimd batch types (xsimd fixes its arch from the flags);
// * no `#if defined(__AVX2__)` inside: clang does not define the ISA macros
//   in a region; test FASTINFER_CPU_DISPATCH instead;
// * a region's function may call one of a subset region (an AVX-512 kernel
//   calls the AVX2 helpers), never the other way.
#pragma once

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(FASTINFER_CPU_NO_DISPATCH)
// 1: the per-ISA kernels are compiled for every level and chosen at run time.
#define FASTINFER_CPU_DISPATCH 1
#include <immintrin.h>
#else
// Non-x86 targets and other compilers: only the build's generic kernels.
#define FASTINFER_CPU_DISPATCH 0
#endif

// g++ before 13 fills the unused source operand of many AVX-512 intrinsics
// with a self-initialised register (`__m512 __Y = __Y;`, <avx512fintrin.h>),
// and every kernel that inlines one then warns -Wuninitialized or
// -Wmaybe-uninitialized from inside the compiler's header (GCC bug 105593):
// 37,000 warnings in our build, and an error in a user's -Werror build on
// Debian 12. The regions silence those two warnings there; clang and g++ 13
// do not need it. (g++ 12 forgets these pragmas in a precompiled header.)
#if !defined(__clang__) && defined(__GNUC__) && __GNUC__ < 13
#define FASTINFER_CPU_INTRINSIC_WARNINGS_OFF                                           \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wuninitialized\"") \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define FASTINFER_CPU_INTRINSIC_WARNINGS_ON _Pragma("GCC diagnostic pop")
#else
#define FASTINFER_CPU_INTRINSIC_WARNINGS_OFF
#define FASTINFER_CPU_INTRINSIC_WARNINGS_ON
#endif

#define FASTINFER_CPU_PRAGMA(text) _Pragma(#text)
#if defined(__clang__)
#define FASTINFER_CPU_TARGET_BEGIN(isa) \
  FASTINFER_CPU_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define FASTINFER_CPU_TARGET_END _Pragma("clang attribute pop")
#else
#define FASTINFER_CPU_TARGET_BEGIN(isa) \
  _Pragma("GCC push_options") FASTINFER_CPU_PRAGMA(GCC target(isa)) FASTINFER_CPU_INTRINSIC_WARNINGS_OFF
#define FASTINFER_CPU_TARGET_END FASTINFER_CPU_INTRINSIC_WARNINGS_ON _Pragma("GCC pop_options")
#endif

// The instruction sets of each level (cpu_level.hpp detects the same set).
// avx512 is x86-64-v4's AVX-512 (F, CD, BW, DQ, VL); VNNI is a separate
// region, used by the Q8_0 tiles where the CPU has it; the AMX regions add
// the tile instructions to it (gemm_amx.hpp, q8_0_amx.hpp).
#define FASTINFER_CPU_ISA_AVX "avx"
#define FASTINFER_CPU_ISA_AVX2 "avx,avx2,fma,f16c"
#define FASTINFER_CPU_ISA_AVX512 "avx,avx2,fma,f16c,avx512f,avx512cd,avx512bw,avx512dq,avx512vl"
#define FASTINFER_CPU_ISA_AVX512_VNNI FASTINFER_CPU_ISA_AVX512 ",avx512vnni"
#define FASTINFER_CPU_ISA_AVX512_BF16 FASTINFER_CPU_ISA_AVX512 ",avx512bf16"
#define FASTINFER_CPU_ISA_AMX_BF16 FASTINFER_CPU_ISA_AVX512_BF16 ",amx-tile,amx-bf16"
#define FASTINFER_CPU_ISA_AMX_INT8 FASTINFER_CPU_ISA_AVX512 ",amx-tile,amx-int8"

// Unrolls the loop that follows (a tile's R x T loops: at -O2 g++ 12 leaves
// them rolled, every accumulator in memory). nvcc's front end does not know
// the pragma and warns, so a .cu translation unit that includes the CPU
// kernels compiles those loops as written.
#if (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define FASTINFER_CPU_UNROLL _Pragma("GCC unroll 32")
#else
#define FASTINFER_CPU_UNROLL
#endif
