// How RoPE pairs the dimensions of a head. A core type because both the model
// configuration (model/config.hpp, which re-exports it) and the kernels that
// rotate (backend/cpu/elementwise.hpp) name it: a kernel must not include the
// model layer above it.
#pragma once

#include <cmath>
#include <cstdint>

namespace fastinfer {

//  Interleaved: (0,1), (2,3), ... — llama2.c, Meta's original, GGUF "llama".
//  HalfSplit:   (i, i + head_dim/2) — Hugging Face rotate_half (GPT-NeoX).
enum class RopeStyle : std::uint8_t { Interleaved, HalfSplit };

// The rotation angle of pair i of a head at position pos, in f32 exactly as
// llama2.c computes it: every backend's angle table uses this one
// expression, so their rotations agree bit for bit.
inline float rope_angle(int pos, int i, int head_dim, float theta) {
  const float freq = 1.0f / std::pow(theta, float(2 * i) / float(head_dim));
  return float(pos) * freq;
}

}  // namespace fastinfer
