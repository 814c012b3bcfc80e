// Medusa's command-line words (fastinfer-generate --medusa-heads and
// --medusa-tree): text to the library's typed MedusaHeads and MedusaOptions.
// Command-line grammar, so it lives with the programs.
#pragma once

#include <cstdint>
#include <string>

#include "fastinfer/core/error.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/speculative/medusa_heads.hpp"
#include "fastinfer/speculative/medusa_tree.hpp"

namespace fastinfer::examples {

// "random:SEED" (random heads of the model's shape, num_heads of them,
// shared classifier), "pad:FILE" (a heads file zero-padded to the model's
// hidden size: heads trained on a model, used on its inflate: version) or a
// path to a heads file (checked against the model).
inline speculative::MedusaHeads medusa_heads_from_flag(const std::string& spec, const LlamaConfig& c,
                                                       int num_heads = 4) {
  using speculative::MedusaHeads;
  if (spec.compare(0, 4, "pad:") == 0) {
    MedusaHeads heads = MedusaHeads::load(spec.substr(4));
    FASTINFER_CHECK(heads.dim() <= c.dim, InvalidArgument, "Medusa heads '", spec, "' have dim ", heads.dim(),
                    ", wider than the model's ", c.dim);
    MedusaHeads padded = heads.padded_to(c.dim);
    padded.check_compatible(c);
    return padded;
  }
  const std::string prefix = "random:";
  if (spec.compare(0, prefix.size(), prefix) == 0) {
    const std::string s = spec.substr(prefix.size());
    FASTINFER_CHECK(!s.empty() && s.find_first_not_of("0123456789") == std::string::npos && s.size() <= 19,
                    InvalidArgument, "Medusa heads '", spec, "': the seed must be a decimal number");
    return MedusaHeads::random(std::stoull(s), num_heads, c.dim, c.vocab_size, true);
  }
  MedusaHeads heads = MedusaHeads::load(spec);
  heads.check_compatible(c);
  return heads;
}

// The options fastinfer-generate's --medusa-tree names: "choices"
// (FixedChoicesTree::default_for(num_heads)), "choices:FILE" (a tree file,
// read_choices_file), "dynamic" (DynamicTree{}) or "dynamic:BUDGET" /
// "dynamic:BUDGET:TOP_K".
inline speculative::MedusaOptions medusa_options_from_flag(const std::string& tree, int num_heads) {
  using namespace speculative;  // the tree policies
  MedusaOptions o;
  auto number = [&](const std::string& s) {
    FASTINFER_CHECK(!s.empty() && s.size() <= 6 && s.find_first_not_of("0123456789") == std::string::npos,
                    InvalidArgument, "Medusa tree '", tree, "': '", s, "' is not a number");
    return std::stoi(s);
  };
  if (tree == "choices") {
    o.tree = FixedChoicesTree::default_for(num_heads);
  } else if (tree.compare(0, 8, "choices:") == 0) {
    o.tree = read_choices_file(tree.substr(8));
  } else if (tree == "dynamic") {
    o.tree = DynamicTree{};
  } else if (tree.compare(0, 8, "dynamic:") == 0) {
    const std::string rest = tree.substr(8);
    const auto colon = rest.find(':');
    DynamicTree d;
    d.budget = number(rest.substr(0, colon));
    if (colon != std::string::npos) d.top_k = number(rest.substr(colon + 1));
    FASTINFER_CHECK(d.top_k >= 1, InvalidArgument, "Medusa tree '", tree, "': top_k must be >= 1");
    o.tree = d;
  } else {
    throw_error<InvalidArgument>("unknown Medusa tree '", tree,
                                 "' (choices, choices:FILE, dynamic, dynamic:BUDGET or dynamic:BUDGET:TOP_K)");
  }
  return o;
}

}  // namespace fastinfer::examples
