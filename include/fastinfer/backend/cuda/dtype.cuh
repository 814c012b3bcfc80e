// Stored weight and KV elements widened to f32 on the device: the device
// side of core/dtype.hpp (f16 and bf16 as IEEE half / bfloat16, exactly as
// f16_to_f32 and bf16_to_f32 decode them) and of the f32 -> f16 / bf16
// rounding (round to nearest even, as f32_to_f16 / f32_to_bf16 do).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"

namespace fastinfer::cuda {

template <DType D>
struct DeviceDType;

template <>
struct DeviceDType<DType::F32> {
  using Storage = float;
  __device__ static float load(const Storage* p, std::int64_t i) { return p[i]; }
  __device__ static Storage store(float x) { return x; }
};
template <>
struct DeviceDType<DType::F16> {
  using Storage = __half;
  __device__ static float load(const Storage* p, std::int64_t i) { return __half2float(p[i]); }
  __device__ static Storage store(float x) { return __float2half_rn(x); }
};
template <>
struct DeviceDType<DType::BF16> {
  using Storage = __nv_bfloat16;
  __device__ static float load(const Storage* p, std::int64_t i) { return __bfloat162float(p[i]); }
  __device__ static Storage store(float x) { return __float2bfloat16_rn(x); }
};

// Calls f(std::integral_constant<DType, D>{}) for the dtypes the CUDA
// kernels read (Q8_0 is refused before this, at upload).
template <typename F>
decltype(auto) visit_device_dtype(DType d, F&& f) {
  switch (d) {
    case DType::F16: return f(std::integral_constant<DType, DType::F16>{});
    case DType::BF16: return f(std::integral_constant<DType, DType::BF16>{});
    case DType::F32: break;
    case DType::Q8_0:
      throw_error<InvalidArgument>("cuda: Q8_0 weights are not yet supported on cuda (use f32, f16 or bf16)");
  }
  return f(std::integral_constant<DType, DType::F32>{});
}

}  // namespace fastinfer::cuda
