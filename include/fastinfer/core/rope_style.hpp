// How RoPE pairs the dimensions of a head. A core type because both the model
// configuration (model/config.hpp, which re-exports it) and the kernels that
// rotate (backend/cpu/elementwise.hpp) name it: a kernel must not include the
// model layer above it.
#pragma once

#include <cstdint>

namespace fastinfer {

//  Interleaved: (0,1), (2,3), ... — llama2.c, Meta's original, GGUF "llama".
//  HalfSplit:   (i, i + head_dim/2) — Hugging Face rotate_half (GPT-NeoX).
enum class RopeStyle : std::uint8_t { Interleaved, HalfSplit };

}  // namespace fastinfer
