// Every kernel of the CUDA backend is launched here, with programmatic
// dependent launch where the device has it (compute capability 9.0 and up).
// A decode step is some ten small kernels a layer, one after another; at
// each boundary the next kernel's blocks are scheduled before this one ends:
//   FASTINFER_CUDA_RELEASE_NEXT()    lets the next kernel on the stream start
//                                    its blocks (they still wait, below);
//   FASTINFER_CUDA_WAIT_PREVIOUS()   waits until the kernel before has
//                                    finished and its writes are visible.
// Every kernel releases at its first line, so the next one's blocks take
// the SMs as this one's drain, and a GEMV streams its first weights (never
// written by a kernel) before it waits: the weight stream runs on across the
// boundary instead of restarting after it. Correctness does not depend on
// where the release sits: a kernel's wait returns only when the kernel
// before has finished, which itself waited for the one before it.
// Elsewhere the attribute is left off: a plain launch, the macros no-ops.
//
// Rule: a kernel launched through cuda::launch begins with
// FASTINFER_CUDA_KERNEL_PROLOGUE() (release, then wait), or releases, reads
// only weights, then waits; it reads nothing a kernel writes, and writes
// nothing, before its wait.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <mutex>
#include <string_view>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

#include "fastinfer/backend/cuda/cuda_check.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FASTINFER_CUDA_RELEASE_NEXT() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#define FASTINFER_CUDA_WAIT_PREVIOUS() asm volatile("griddepcontrol.wait;" ::: "memory")
#else
#define FASTINFER_CUDA_RELEASE_NEXT() \
  do {                                 \
  } while (0)
#define FASTINFER_CUDA_WAIT_PREVIOUS() \
  do {                                  \
  } while (0)
#endif
#define FASTINFER_CUDA_KERNEL_PROLOGUE() \
  do {                                    \
    FASTINFER_CUDA_RELEASE_NEXT();        \
    FASTINFER_CUDA_WAIT_PREVIOUS();       \
  } while (0)

namespace fastinfer::cuda {

// Whether launches on the current device are dependent: the device takes
// them (read once per device) and FASTINFER_CUDA_DEPENDENT_LAUNCH is not
// "0" (read once: the switch for measuring what they save, or for ruling
// them out when chasing a fault).
inline bool dependent_launch_supported() {
  static const bool allowed = [] {
    const char* e = std::getenv("FASTINFER_CUDA_DEPENDENT_LAUNCH");
    return e == nullptr || std::string_view(e) != "0";
  }();
  if (!allowed) return false;
  constexpr int kDevices = 64;
  static int known[kDevices] = {};  // 0 unknown, 1 no, 2 yes
  int device = 0;
  FASTINFER_CUDA_CHECK(cudaGetDevice(&device));
  if (device < 0 || device >= kDevices) return false;
  if (known[device] == 0) {
    int major = 0;
    FASTINFER_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    known[device] = major >= 9 ? 2 : 1;
  }
  return known[device] == 2;
}

namespace launch_detail {
struct ResidentBlocks {
  int device;
  const void* kernel;
  int threads;
  std::size_t smem;
  int blocks;
};
// Every (device, kernel, shape) asked so far: a handful per process.
inline std::vector<ResidentBlocks>& resident_table() {
  static std::vector<ResidentBlocks> table;
  return table;
}
inline std::mutex& resident_mutex() {
  static std::mutex m;
  return m;
}
}  // namespace launch_detail

// How many blocks of `kernel` (at `threads` threads and `smem` bytes of
// dynamic shared memory) one SM of the current device holds at once, at
// least 1: what the split planners fill whole waves of. Asked of the runtime
// once per device, kernel and shape. A kernel launched with more than the
// default 48 KiB of dynamic shared memory is allowed it here, so call this
// before its first launch (with the one size it is launched with).
template <typename... Params>
int resident_blocks_per_sm(void (*kernel)(Params...), int threads, std::size_t smem) {
  namespace ld = launch_detail;
  int device = 0;
  FASTINFER_CUDA_CHECK(cudaGetDevice(&device));
  const void* key = reinterpret_cast<const void*>(kernel);
  const std::lock_guard<std::mutex> lock(ld::resident_mutex());
  for (const ld::ResidentBlocks& r : ld::resident_table())
    if (r.device == device && r.kernel == key && r.threads == threads && r.smem == smem) return r.blocks;
  if (smem > 48 * 1024)
    FASTINFER_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  int blocks = 0;
  FASTINFER_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem));
  blocks = std::max(blocks, 1);
  ld::resident_table().push_back({device, key, threads, smem, blocks});
  return blocks;
}

// kernel<<<grid, block, smem, stream>>>(args...), dependent where supported;
// a failed launch throws with the kernel's name.
template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem,
            cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute dependent[1];
  dependent[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  dependent[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = dependent;
  config.numAttrs = dependent_launch_supported() ? 1 : 0;
  const cudaError_t e = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (e != cudaSuccess) throw_cuda(name, e, __FILE__, __LINE__);
}

}  // namespace fastinfer::cuda
