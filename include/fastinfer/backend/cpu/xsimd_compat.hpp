// SPDX-License-Identifier: Apache-2.0
// The xsimd names the kernels use, whatever xsimd the consumer has. Debian 12
// ships 8.1, Conan Center carries 13.0-14.2 and vcpkg 14.x; the API renamed
// what we call in between:
//
//   fastinfer               xsimd 8.x                   9.x-10.x   11.x-13.x         14.x
//   reduce_add(b)           hadd(b)                     reduce_add(b)
//   bitwise_cast<T>(b)      bitwise_cast<batch<T,A>>(b)            bitwise_cast<T>(b)
//   common (arch tag)       generic                                                  common
//
// (from xsimd's Changelog.rst: 9.0.0, 11.0.0 and 14.0.0). Everything else the
// kernels touch (batch, default_arch, fma3<avx2>, avx512f, select, min/max,
// exp, XSIMD_WITH_* macros) kept its name. Kernels
// call these names only, so a new rename is one line here. CI builds the CPU
// kernel tests against Debian's 8.1 and against 14.x (scripts/test-packaging.sh).
#pragma once

#include <xsimd/xsimd.hpp>

#if !defined(XSIMD_VERSION_MAJOR) || XSIMD_VERSION_MAJOR < 8 || \
    (XSIMD_VERSION_MAJOR == 8 && XSIMD_VERSION_MINOR < 1)
#error "fastinfer needs xsimd 8.1 or newer (found an older or unversioned <xsimd/xsimd.hpp>)"
#endif

namespace fastinfer::cpu::xsimd_compat {

// The arch tag every instruction set derives from: the overload a kernel
// writes for "any ISA without a specialised version".
#if XSIMD_VERSION_MAJOR >= 14
using common = xsimd::common;
#else
using common = xsimd::generic;
#endif

// Sum of a batch's lanes in xsimd's own reduction order (the kernels' bit-exact
// tiles replicate that order; the CPU kernel tests check them against it).
template <class T, class Arch>
inline T reduce_add(const xsimd::batch<T, Arch>& v) {
#if XSIMD_VERSION_MAJOR >= 9
  return xsimd::reduce_add(v);
#else
  return xsimd::hadd(v);
#endif
}

// The bits of v read as a batch of To (same lane count).
template <class To, class From, class Arch>
inline xsimd::batch<To, Arch> bitwise_cast(const xsimd::batch<From, Arch>& v) {
  static_assert(sizeof(To) == sizeof(From), "bitwise_cast keeps the lane count: To and From must be the same size");
#if XSIMD_VERSION_MAJOR >= 11
  return xsimd::bitwise_cast<To>(v);
#else
  return xsimd::bitwise_cast<xsimd::batch<To, Arch>>(v);
#endif
}

}  // namespace fastinfer::cpu::xsimd_compat
