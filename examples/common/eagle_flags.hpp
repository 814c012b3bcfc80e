// EAGLE's command-line words (fastinfer-generate --eagle-heads): text to the
// library's typed EagleHead. Command-line grammar, so it lives with the
// programs, beside medusa_flags.hpp whose spellings it follows.
#pragma once

#include <cstdint>
#include <string>

#include "fastinfer/core/error.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/speculative/eagle_head.hpp"

namespace fastinfer::examples {

// "random:SEED" (a random head of the model's layer shape), "pad:FILE" (a
// head file zero-padded to the model's hidden size: a head trained on a
// model, used on its inflate: stand-in) or a path to a head file (checked
// against the model).
inline speculative::EagleHead eagle_head_from_flag(const std::string& spec, const LlamaConfig& c) {
  using speculative::EagleHead;
  if (spec.compare(0, 4, "pad:") == 0) {
    const EagleHead head = EagleHead::load(spec.substr(4));
    FASTINFER_CHECK(head.dim() <= c.dim, InvalidArgument, "EAGLE head '", spec, "' has dim ", head.dim(),
                    ", wider than the model's ", c.dim);
    EagleHead padded = head.padded_to(c.dim);
    padded.check_compatible(c);
    return padded;
  }
  if (spec.compare(0, 7, "random:") == 0) {
    const std::string s = spec.substr(7);
    FASTINFER_CHECK(!s.empty() && s.size() <= 19 && s.find_first_not_of("0123456789") == std::string::npos,
                    InvalidArgument, "EAGLE head '", spec, "': the seed must be a decimal number");
    return EagleHead::random(std::stoull(s), speculative::EagleHeadShape::like(c));
  }
  EagleHead head = EagleHead::load(spec);
  head.check_compatible(c);
  return head;
}

}  // namespace fastinfer::examples
