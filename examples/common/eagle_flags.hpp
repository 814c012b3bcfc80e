// The feature drafters' command-line words (fastinfer-generate --eagle-heads,
// --mtp-heads): text to the library's typed EagleHead / MtpHeads.
// Command-line grammar, so it lives with the programs, beside
// medusa_flags.hpp whose spellings it follows.
#pragma once

#include <cstdint>
#include <string>

#include "fastinfer/core/error.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/speculative/eagle_head.hpp"
#include "fastinfer/speculative/mtp_heads.hpp"

namespace fastinfer::examples {

// "random:SEED" (make_random(seed)), "pad:FILE" (a head file zero-padded to
// the model's hidden size: a head trained on a model, used on its inflate:
// stand-in) or a path to a head file (checked against the model). `what`
// names the drafter in errors.
template <typename Head, typename MakeRandom>
Head feature_head_from_flag(const std::string& spec, const LlamaConfig& c, const char* what, MakeRandom make_random) {
  if (spec.compare(0, 4, "pad:") == 0) {
    const Head head = Head::load(spec.substr(4));
    FASTINFER_CHECK(head.dim() <= c.dim, InvalidArgument, what, " '", spec, "' has dim ", head.dim(),
                    ", wider than the model's ", c.dim);
    Head padded = head.padded_to(c.dim);
    padded.check_compatible(c);
    return padded;
  }
  if (spec.compare(0, 7, "random:") == 0) {
    const std::string s = spec.substr(7);
    FASTINFER_CHECK(!s.empty() && s.size() <= 19 && s.find_first_not_of("0123456789") == std::string::npos,
                    InvalidArgument, what, " '", spec, "': the seed must be a decimal number");
    return make_random(std::uint64_t(std::stoull(s)));
  }
  Head head = Head::load(spec);
  head.check_compatible(c);
  return head;
}

inline speculative::EagleHead eagle_head_from_flag(const std::string& spec, const LlamaConfig& c) {
  return feature_head_from_flag<speculative::EagleHead>(spec, c, "EAGLE head", [&](std::uint64_t seed) {
    return speculative::EagleHead::random(seed, speculative::EagleHeadShape::like(c));
  });
}

// random:SEED builds `random_modules` modules of the model's layer shape.
inline speculative::MtpHeads mtp_heads_from_flag(const std::string& spec, const LlamaConfig& c,
                                                 int random_modules = 4) {
  return feature_head_from_flag<speculative::MtpHeads>(spec, c, "MTP heads", [&](std::uint64_t seed) {
    return speculative::MtpHeads::random(seed, random_modules, speculative::EagleHeadShape::like(c));
  });
}

}  // namespace fastinfer::examples
