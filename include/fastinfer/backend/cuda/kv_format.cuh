// The KV formats read on the device: the device side of kv::QuantTraits'
// decode (kv/kv_quant.hpp), over the same bytes. A row is one (token, KV
// head): `codes` its head_dim codes, `params` its params_per_row floats in
// the parallel parameter arena (none for the float formats).
//
//   load(codes, params, j)         value j of the row, as QuantTraits::decode
//   load8(codes, params, j0, out)  values j0..j0+7 (j0 a multiple of 8): one
//                                  vector load where the codes allow it; the
//                                  attention kernels read K and V this way
//                                  when head_dim is a multiple of 8
//
// The attention kernels (attention.cuh) are written once over this
// interface; a format joins the CUDA store by specialising it here and
// giving the store's append kernel its encoder (kv_store.cuh).
#pragma once

#include <cstdint>

#include <cuda_fp16.h>

#include "fastinfer/kv/kv_quant.hpp"

namespace fastinfer::cuda {

template <typename Quant>
struct DeviceKVFormat;

template <>
struct DeviceKVFormat<kv::F32> {
  __device__ static float load(const std::uint8_t* codes, const float*, int j) {
    return reinterpret_cast<const float*>(codes)[j];
  }
  __device__ static void load8(const std::uint8_t* codes, const float*, int j0, float* out) {
    const float4* p = reinterpret_cast<const float4*>(codes + 4 * j0);
    const float4 a = p[0], b = p[1];
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
    out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
  }
};

template <>
struct DeviceKVFormat<kv::F16> {
  __device__ static float load(const std::uint8_t* codes, const float*, int j) {
    return __half2float(reinterpret_cast<const __half*>(codes)[j]);
  }
  __device__ static void load8(const std::uint8_t* codes, const float*, int j0, float* out) {
    const uint4 v = *reinterpret_cast<const uint4*>(codes + 2 * j0);
    const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __half22float2(h[i]);
      out[2 * i] = f.x, out[2 * i + 1] = f.y;
    }
  }
};

}  // namespace fastinfer::cuda
