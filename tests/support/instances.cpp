// The one compiled copy of the KV store variants, the model and the engine that every
// test, example and benchmark program links (they compile with
// FASTINFER_EXTERN_TEMPLATES, which declares these instantiations extern).
// Without it, each model-using program compiled all 21 cpu::CpuKVStore variants
// with their attention kernels and LlamaModel<> again: most of CI's build.
#include "fastinfer/backend/cpu/kv_store.hpp"
#include "fastinfer/engine/engine.hpp"
#include "fastinfer/model/llama_model.hpp"

#if !defined(FASTINFER_EXTERN_TEMPLATES)
#error "instances.cpp defines the instantiations that FASTINFER_EXTERN_TEMPLATES declares extern: compile it with the macro"
#endif

namespace fastinfer::cpu {
FASTINFER_KV_STORE_INSTANCES()
}  // namespace fastinfer::cpu
namespace fastinfer {
FASTINFER_LLAMA_MODEL_INSTANCES()
}  // namespace fastinfer
namespace fastinfer::engine {
FASTINFER_ENGINE_INSTANCES()
}  // namespace fastinfer::engine
