// Umbrella header: everything fastinfer offers, in layer order.
#pragma once

#include "fastinfer/version.hpp"

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/philox.hpp"
#include "fastinfer/core/tensor.hpp"

#include "fastinfer/memory/paged_allocator.hpp"
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/kv/kv_layout.hpp"
#include "fastinfer/kv/paged_kv_view.hpp"
#include "fastinfer/kv/kv_cache.hpp"
#include "fastinfer/prefix/radix_prefix_cache.hpp"
#include "fastinfer/sched/continuous_batcher.hpp"
#include "fastinfer/sched/radix_prefix_provider.hpp"

#include "fastinfer/backend/cpu/convert.hpp"
#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/backend/cpu/q8_0.hpp"
#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/backend/cpu/attention_plan.hpp"
#include "fastinfer/backend/cpu/attention_reference.hpp"
#include "fastinfer/backend/cpu/attention.hpp"

#include "fastinfer/model/config.hpp"
#include "fastinfer/model/weights.hpp"
#include "fastinfer/model/weight_convert.hpp"
#include "fastinfer/model/llama2c_loader.hpp"
#include "fastinfer/model/synthetic.hpp"
#include "fastinfer/model/safetensors.hpp"
#include "fastinfer/model/hf_loader.hpp"
#include "fastinfer/model/gguf.hpp"
#include "fastinfer/model/gguf_loader.hpp"
#include "fastinfer/model/inflate.hpp"
#include "fastinfer/model/safetensors_writer.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/generate.hpp"

#include "fastinfer/tokenizer/hf_bpe_tokenizer.hpp"
#include "fastinfer/tokenizer/sentencepiece_tokenizer.hpp"
