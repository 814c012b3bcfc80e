// The Engine's speculation from command-line words, one set of spellings
// for the programs that run an Engine (fastinfer-serve-bench,
// fastinfer-server): --spec KIND, --spec-k, the heads (--eagle-head,
// --mtp-heads, --medusa-heads: FILE, pad:FILE or random:SEED), --lookahead
// W,N,G and the EAGLE/MTP tree's shape (--eagle-depth, --eagle-top-k).
// A draft model's weights (--spec draft) are the caller's to load: how it
// is found differs by program. Command-line grammar, so it lives with the
// programs, beside eagle_flags.hpp and medusa_flags.hpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "common/cli.hpp"
#include "common/drafter_flags.hpp"
#include "common/eagle_flags.hpp"
#include "common/medusa_flags.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/engine/engine.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/speculative/eagle_tree.hpp"
#include "fastinfer/speculative/lookahead_pool.hpp"
#include "fastinfer/speculative/speculative_verifier.hpp"

namespace fastinfer::examples {

struct EngineSpecFlags {
  std::string kind = "none";
  int k = 4;  // drafts per speculating step; a tree's nodes for eagle, mtp, medusa, lookahead
  std::string eagle_head, mtp_heads, medusa_heads, lookahead = "3,3,4";
  speculative::EagleTreeConfig tree;

  // The options, --spec offering `kinds` (a subset of none, prompt-lookup,
  // draft, eagle, mtp, medusa, lookahead).
  void add_to(CLI::App& app, const std::vector<std::string>& kinds, const std::string& spec_help) {
    app.add_option("--spec", kind, spec_help)->check(CLI::IsMember(kinds))->capture_default_str();
    app.add_option("--spec-k", k, "drafts per speculating step (eagle, mtp, medusa, lookahead: tree nodes)")
        ->check(CLI::Range(1, 62))
        ->capture_default_str();
    eagle_head_option_ =
        app.add_option("--eagle-head", eagle_head, "--spec eagle: the head, FILE, pad:FILE or random:SEED");
    mtp_heads_option_ =
        app.add_option("--mtp-heads", mtp_heads, "--spec mtp: the modules, FILE, pad:FILE or random:SEED");
    medusa_heads_option_ = app.add_option("--medusa-heads", medusa_heads,
                                          "--spec medusa: the heads, FILE, pad:FILE or random:SEED");
    lookahead_option_ = app.add_option("--lookahead", lookahead,
                                       "--spec lookahead: Jacobi window W, n-gram size N, guesses G")
                            ->capture_default_str();
    tree_depth_option_ = app.add_option("--eagle-depth", tree.depth, "--spec eagle|mtp: tree levels")
                             ->check(CLI::Range(1, 64))
                             ->capture_default_str();
    tree_top_k_option_ =
        app.add_option("--eagle-top-k", tree.top_k, "--spec eagle|mtp: children per expanded node")
            ->check(CLI::Range(1, speculative::kMaxTreeChildren))
            ->capture_default_str();
  }

  // Refuses an option given without its --spec, a --spec without its heads
  // and a bad --lookahead, each by name; returns the lookahead configuration.
  speculative::LookaheadConfig check() const {
    refuse_unused(kind != "eagle", {eagle_head_option_}, "without --spec eagle");
    refuse_unused(kind != "mtp", {mtp_heads_option_}, "without --spec mtp");
    refuse_unused(kind != "medusa", {medusa_heads_option_}, "without --spec medusa");
    refuse_unused(kind != "lookahead", {lookahead_option_}, "without --spec lookahead");
    refuse_unused(kind != "eagle" && kind != "mtp", {tree_depth_option_, tree_top_k_option_},
                  "without --spec eagle or mtp");
    FASTINFER_CHECK(kind != "eagle" || !eagle_head.empty(), InvalidArgument,
                    "--spec eagle needs --eagle-head FILE|pad:FILE|random:SEED");
    FASTINFER_CHECK(kind != "mtp" || !mtp_heads.empty(), InvalidArgument,
                    "--spec mtp needs --mtp-heads FILE|pad:FILE|random:SEED");
    FASTINFER_CHECK(kind != "medusa" || !medusa_heads.empty(), InvalidArgument,
                    "--spec medusa needs --medusa-heads FILE|pad:FILE|random:SEED");
    const speculative::LookaheadConfig config = parse_lookahead(lookahead);
    config.validate();
    return config;
  }

  // The engine's drafter, its k and what it drafts with (the heads loaded
  // and checked against `model`); nothing for --spec none. check() first.
  void apply(engine::EngineConfig& ec, const LlamaConfig& model) const {
    if (kind == "none") return;
    ec.spec.defaults.drafter = drafter();
    ec.spec.defaults.k = k;
    ec.spec.lookahead = parse_lookahead(lookahead);
    ec.spec.eagle_tree = tree;
    if (kind == "eagle") ec.spec.eagle_head = eagle_head_from_flag(eagle_head, model);
    if (kind == "mtp") ec.spec.mtp_heads = mtp_heads_from_flag(mtp_heads, model);
    if (kind == "medusa")
      ec.spec.medusa_heads =
          std::make_shared<speculative::MedusaHeads>(medusa_heads_from_flag(medusa_heads, model));
  }

  engine::SpecDrafter drafter() const {
    if (kind == "prompt-lookup") return engine::SpecDrafter::PromptLookup;
    if (kind == "draft") return engine::SpecDrafter::DraftModel;
    if (kind == "eagle") return engine::SpecDrafter::Eagle;
    if (kind == "mtp") return engine::SpecDrafter::Mtp;
    if (kind == "medusa") return engine::SpecDrafter::Medusa;
    if (kind == "lookahead") return engine::SpecDrafter::Lookahead;
    FASTINFER_CHECK(kind == "none", InvalidArgument, "unknown --spec '", kind, "'");
    return engine::SpecDrafter::None;
  }

 private:
  CLI::Option* eagle_head_option_ = nullptr;
  CLI::Option* mtp_heads_option_ = nullptr;
  CLI::Option* medusa_heads_option_ = nullptr;
  CLI::Option* lookahead_option_ = nullptr;
  CLI::Option* tree_depth_option_ = nullptr;
  CLI::Option* tree_top_k_option_ = nullptr;
};

}  // namespace fastinfer::examples
