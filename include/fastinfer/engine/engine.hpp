// Engine: serves many requests at once on one model. Each step it asks the
// ContinuousBatcher for a plan, executes it (swaps, copy-on-write copies, then
// ONE forward pass over the ragged batch of every scheduled sequence),
// samples each sampling row with its request's own parameters and random
// stream, streams the tokens to per-request callbacks and commits them.
//
// How the books line up. The batcher, the KV cache and the prefix cache share
// one PagedAllocator (model.kv().allocator()): the batcher creates, grows,
// preempts and frees sequences (sequence id = request id), the prefix cache
// holds its own references, and the KV cache only stores bytes. When a plan
// arrives the batcher has already reserved and appended the step's tokens,
// so the engine feeds every entry at its explicit start position
// (ForwardBatch start_pos = entry.position): the model rolls the sequence
// back to that position and extends it again by the same count, writing K/V
// into blocks of the same sequence. Under NoEviction the batcher had
// reserved a request's whole life; the rollback returns that reservation, so
// the engine takes it back right after the forward (the pool cannot have
// lost those blocks in between: nothing else allocates).
//
// Block bytes (swap and copy-on-write) are moved by the model's KV store
// (KVStore::copy_blocks, swap_out, swap_in: the backend's), one block id
// covering every layer; the engine holds only the host swap pool.
//
// Prefix caching: with EngineConfig::prefix_cache, a RadixPrefixCache over
// the same allocator is plugged into the batcher (make_prefix_provider). A
// request that shares a cached prefix adopts those blocks and computes only
// the rest (a full-prompt hit still computes the last prompt token, for its
// logits). The engine inserts a request's full blocks when its prefill ends
// (so requests running beside it share the prompt at once), and the batcher
// inserts again when the request ends.
//
// Determinism: the token sampled at a request's generated index i uses the
// coin uniform(seed, i) (cpu::sample_at_index); greedy rows take the first
// maximum. Neither depends on the batch, so, up to the summation order of the
// batched matmul (same for every row), a request's output does not depend on
// what rides with it.
//
// Speculation (spec_policy.hpp; docs/speculative.md "Speculation inside
// continuous batching"): a request may carry a drafter (RequestSpec: prompt
// lookup, a draft model or the target's own first layers (early exit: its
// draft pass writes the request's reserved draft slots, which the verifying
// pass rewrites), and k). Requests that draft with the draft model share one
// (batched_draft.hpp): a step drafts for all of them in a few batched passes.
// Before each schedule() the engine's policy decides how many draft slots each running speculating request
// asks for (ContinuousBatcher::set_draft_tokens); the batcher budgets them (tokens and KV blocks). A decode
// entry with slots feeds [its token, d1..dm] (m <= the slots, as many as the drafter proposed) as one ragged
// entry of the SAME forward pass as every other row; its m + 1 logits rows go through the request's
// SpeculativeVerifier (greedy: the argmax chain; temperature > 0: by default the coupled rule,
// speculative::AcceptanceRule::Coupled: row i is sampled exactly as a plain row samples that token index, and
// drafts are kept while they match, so a sampled request emits plain sampling's tokens whatever drafts the
// switch or the budget gave it in each step, which keeps its tokens independent of its batch-mates;
// SpecConfig::sampled_rule = Exact selects Leviathan rejection sampling with coins Philox(seed, Speculative,
// token index), exact in distribution but with tokens that depend on the draft counts), and the row
// emits 1..m+1 tokens. Greedy and coupled chains need only the target's picks: on a device backend their
// rows are picked there with the plain rows (LlamaModel::sample_logits) and matched on the host, so it sends
// back ids, not rows (speculative::verify_from_samples; greedy and coupled trees without a lookahead window
// likewise, each row at the index of its depth; the exact rule over a deterministic drafter's chain through
// the backend's accept_rows); draft-model distributions, exact trees, typical acceptance and lookahead
// windows are read on the host. The accepted drafts' KV is kept (StepResult::kv_kept), the rejected slots and
// their blocks go back at commit(). A row with no drafts samples exactly as a plain row. Stop ids,
// max_new_tokens and the context limit cut an accepted run token by token in commit(), where plain decoding
// would stop.
//
// Token trees (SpecDrafter::Eagle, Mtp, Medusa; docs/speculative.md "EAGLE,
// MTP and Medusa trees in the Engine"): such a request's entry feeds [its unfed tokens | the tree's
// nodes] in the same pass, its mask and positions those of tree_batch.hpp
// (every other entry of that pass gets its causal block spelled out); the
// request's SpeculativeVerifier walks the tree, and only the accepted nodes
// already at their final KV slots (the tree's first chain) are kept: the
// others are fed again, before the next tree, as unfed tokens of the next
// entry (ContinuousBatcher::set_draft_tokens' max_unfed). The request's
// FeatureStream gets the target's feature of every row the engine computes
// for it (prefill chunks, decodes, accepted nodes) and drafts from them; the
// step's trees grow together (speculative::FeatureTreeBatch: each level of
// every EAGLE request's tree is one head forward and one LM-head product,
// likewise MTP's), so the head's weights stream once a level, not once per
// request; Medusa's heads run once a step for every Medusa request's row
// (MedusaStream::draft_staged; speculative/feature_tree_batch.hpp).
// Lookahead (SpecDrafter::Lookahead) drafts its tree from the request's
// n-gram pool and feeds its Jacobi window after the nodes: [unfed tokens |
// nodes | window], the window's rows seeing the unfed tokens and each other
// as lookahead_pool.hpp says, never a node (so verification stays blind to
// it); their logits come back with the nodes' and make the window's Jacobi
// step. The window's slots are asked of the batcher with the drafts' and
// given back at commit, as rejected drafts' are.
//
// Logits: the forward pass returns only the rows someone reads
// (LogitsRows::PerEntry): 1 + drafts for a speculating row, 1 for a row that
// samples, none for a prefill chunk that does not end its prompt; the
// classifier runs over those rows alone.
//
// Not thread-safe: one thread calls submit/cancel/step; callbacks run on it.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/core/sampling_params.hpp"
#include "fastinfer/engine/batched_draft.hpp"
#include "fastinfer/engine/request_speculation.hpp"
#include "fastinfer/engine/spec_policy.hpp"
#include "fastinfer/kv/kv_cache.hpp"
#include "fastinfer/model/forward_batch.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/prefix/radix_prefix_cache.hpp"
#include "fastinfer/sched/continuous_batcher.hpp"
#include "fastinfer/sched/radix_prefix_provider.hpp"
#include "fastinfer/speculative/feature_draft_stream.hpp"
#include "fastinfer/speculative/feature_tree_batch.hpp"
#include "fastinfer/speculative/tree_batch.hpp"
#include "fastinfer/transfer/kv_descriptor.hpp"

namespace fastinfer::engine {

using sched::FinishReason;
using sched::Request;
using sched::RequestId;
using sched::TokenId;

struct EngineConfig {
  // max_context 0 / vocab_size 0: the model's. max_tokens_per_step is capped
  // at the model's max_batch (rows of one forward pass).
  sched::SchedulerConfig scheduler{};
  bool prefix_cache = false;        // reuse the KV of shared prefixes
  bool cache_at_prefill_end = true; // also insert a prompt's blocks when its prefill ends
  SpecConfig spec{};
};

// Called once per generated token (stop tokens excluded), in order.
using TokenCallback = std::function<void(RequestId id, TokenId token)>;
// Called once when a request ends (finished, stopped, cancelled).
using FinishCallback = std::function<void(RequestId id, FinishReason reason)>;

// One request's latency, in seconds of the engine clock.
struct RequestMetrics {
  double ttft = 0;          // first token - arrival
  double e2e = 0;           // finish - arrival
  double itl_p50 = 0, itl_p99 = 0;
  std::int64_t prompt_tokens = 0;
  std::int64_t generated_tokens = 0;
  std::int64_t cached_prompt_tokens = 0;  // prompt tokens adopted from the prefix cache at admission
  std::int32_t preemptions = 0;
  std::int64_t spec_rows = 0;      // decode rows that fed drafts
  std::int64_t drafted = 0;        // drafts fed
  std::int64_t accepted = 0;       // drafts kept
  double acceptance_estimate = 0;  // the adaptive switch's per-draft estimate (speculating requests)
};

// Aggregate: the scheduler's summary plus where the engine's time went.
struct EngineMetrics : sched::MetricsSummary {
  double schedule_seconds = 0;  // schedule() + commit()
  double execute_seconds = 0;   // swaps, copies, forward
  double sample_seconds = 0;
  std::int64_t forward_tokens = 0;  // query tokens fed (recompute included)
  std::int64_t prefix_cached_blocks = 0;
  // Speculation: the switch's decisions and what they gave.
  double draft_seconds = 0;          // drafters' time (inside execute_seconds)
  std::int64_t spec_steps = 0;       // steps with at least one speculating row
  std::int64_t spec_candidates = 0;  // decode rows of speculating requests the policy was asked about
  std::int64_t spec_switched_off = 0;  // of those, rows the policy gave no drafts
  std::int64_t spec_rows = 0;        // rows that fed drafts
  std::int64_t spec_drafted = 0;     // drafts fed
  std::int64_t spec_accepted = 0;    // drafts kept
  std::int64_t spec_emitted = 0;     // tokens emitted by speculating rows
  std::int64_t spec_refed = 0;       // accepted tree nodes off the tree's first chain, fed again next step
  std::int64_t spec_window_rows = 0;  // lookahead's Jacobi window rows fed beside the drafts
  // Forward passes of the engine's draft model and of the heads (EAGLE,
  // MTP, Medusa), and the rows they fed: catch-ups, commits, tree levels.
  std::int64_t draft_passes = 0;
  std::int64_t draft_rows = 0;
  StepCostModel cost_model{};        // the adaptive switch's last fit
  double mean_accepted_per_spec_row() const { return spec_rows > 0 ? double(spec_accepted) / double(spec_rows) : 0; }
  double acceptance_rate() const { return spec_drafted > 0 ? double(spec_accepted) / double(spec_drafted) : 0; }
};

template <typename Backend = CpuBackend>
class Engine {
 public:
  // The model's KV cache must use the paged layout. The engine keeps a
  // reference to the model; nothing else may drive the model's KV while the
  // engine has live requests.
  explicit Engine(LlamaModel<Backend>& model, EngineConfig config = {}, sched::SchedulerClock clock = {})
      : model_(model),
        cfg_(config),
        clock_(clock ? std::move(clock) : sched::steady_seconds_clock()),
        vocab_(model.config().vocab_size),
        fit_(std::holds_alternative<SpecAdaptive>(config.spec.policy)
                 ? std::get<SpecAdaptive>(config.spec.policy).forget
                 : 0.95,
             std::holds_alternative<SpecAdaptive>(config.spec.policy)
                 ? std::max(std::get<SpecAdaptive>(config.spec.policy).warmup_steps, 2)
                 : 8) {
    FASTINFER_CHECK(model_.kv().layout() == KVLayoutKind::Paged, InvalidArgument,
                    "Engine: the model's KV cache must use the paged layout, got '", model_.kv().layout_name(), "'");
    sched::SchedulerConfig& sc = cfg_.scheduler;
    if (sc.max_context == 0 || sc.max_context > model.config().max_seq_len) sc.max_context = model.config().max_seq_len;
    if (sc.vocab_size == 0) sc.vocab_size = vocab_;
    sc.max_tokens_per_step = std::min(sc.max_tokens_per_step, model.max_batch());
    PagedAllocator& alloc = model_.kv().allocator();
    FASTINFER_CHECK(alloc.num_sequences() == 0, UsageError, "Engine: the model's KV cache already holds ",
                    alloc.num_sequences(), " sequences (reset() the model first)");
    sched::PrefixProvider provider;
    if (cfg_.prefix_cache) {
      cache_ = std::make_unique<prefix::RadixPrefixCache>(alloc);
      provider = sched::make_prefix_provider(*cache_);
    }
    batcher_ = std::make_unique<sched::ContinuousBatcher>(alloc, sc, std::move(provider), clock_);
    if (cfg_.spec.draft_weights) {
      const LlamaConfig& dc = cfg_.spec.draft_weights->config;
      FASTINFER_CHECK(dc.vocab_size == vocab_, InvalidArgument, "Engine: the draft model's vocabulary (",
                      dc.vocab_size, " tokens) differs from the target's (", vocab_, ")");
    }
    if (cfg_.spec.eagle_head) cfg_.spec.eagle_head->check_compatible(model.config());
    if (cfg_.spec.mtp_heads) cfg_.spec.mtp_heads->check_compatible(model.config());
    if (cfg_.spec.eagle_head || cfg_.spec.mtp_heads) cfg_.spec.eagle_tree.validate();
    if (cfg_.spec.medusa_heads) {
      cfg_.spec.medusa_heads->check_compatible(model.config());
      cfg_.spec.medusa_tree.validate_shape("EngineConfig::spec.medusa_tree");
    }
    validate_spec_(cfg_.spec.defaults);  // after max_tokens_per_step is capped
    // The draft model is set up with the engine, as the target was: its
    // weights' conversion and KV pool (0.13 s for the 15M stand-in in bf16)
    // are not the first drafting request's stall, nor a step the switch times.
    if (cfg_.spec.draft_weights) draft_never_pays_ = draft_costs_at_least(draft_model_().model(), model_);
    // The KV store's own slots: page-locked on a device, so swaps are queued copies.
    if (sc.swap_blocks > 0) host_pool_ = model_.kv().allocate_swap_slots(sc.swap_blocks);
  }

  ~Engine() {
    // Live requests give their blocks back, so that the model's pool is whole
    // for the next user (a batcher left mid-step cannot cancel: skipped).
    if (batcher_ && !batcher_->in_flight()) {
      for (const auto& kv : live_) {
        try {
          if (batcher_->status(kv.first) != sched::RequestStatus::Finished) batcher_->cancel(kv.first);
        } catch (const Error&) {
          // retired or unknown: nothing held
        }
      }
    }
    // Pins in the batcher unlock nodes of the cache: the batcher goes first;
    // the cache then drops its own references.
    batcher_.reset();
    cache_.reset();
  }

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // ---- requests --------------------------------------------------------------

  // Queues a request under a fresh id (r.id is ignored) and returns the id.
  // Bad input (empty prompt, prompt that leaves no room in the context,
  // max_new_tokens <= 0, token outside the vocabulary, bad sampling values)
  // throws InvalidArgument naming the value; nothing changes and every other
  // request is unaffected. arrival_time < 0 means now.
  RequestId submit(Request r, TokenCallback on_token = {}, FinishCallback on_finish = {}) {
    return submit(std::move(r), cfg_.spec.defaults, std::move(on_token), std::move(on_finish));
  }

  // As above, with the request's own speculation settings. A bad RequestSpec
  // (k < 1 or k + 1 above the step budget, a draft model without
  // EngineConfig::spec.draft_weights, bad n-gram sizes) throws
  // InvalidArgument and nothing changes.
  RequestId submit(Request r, const RequestSpec& spec, TokenCallback on_token = {}, FinishCallback on_finish = {}) {
    validate_spec_(spec);
    const RequestId id = next_id_;
    r.id = id;
    if (r.arrival_time < 0.0) r.arrival_time = clock_();
    std::unique_ptr<RequestSpeculation> sp;
    if (spec.drafter != SpecDrafter::None)
      sp = std::make_unique<RequestSpeculation>(spec, r.sampling, SeqId(id), model_, cfg_.spec);
    batcher_->submit(std::move(r));
    ++next_id_;
    Live& l = live_[id];
    l.on_token = std::move(on_token);
    l.on_finish = std::move(on_finish);
    l.spec = std::move(sp);
    return id;
  }

  // Takes over a request prefilled by another engine (disaggregated serving,
  // engine/disaggregation.hpp): load_kv(seq) must create sequence `seq` in
  // the model's allocator holding the KV of the prompt and of all but the
  // last of `generated` (transfer::KVImport::commit). The request then
  // decodes exactly as it would have here after its prefill: same positions,
  // same sampling stream (its next coin is token index generated.size()).
  // nullopt, load_kv not called, when the running set is full; nullopt after
  // load_kv, with the loaded sequence freed, when NoEviction cannot reserve
  // the rest of the request's life. Bad input throws and leaves no sequence
  // behind.
  std::optional<RequestId> submit_prefilled(Request r, std::vector<TokenId> generated,
                                            const std::function<void(SeqId)>& load_kv, TokenCallback on_token = {},
                                            FinishCallback on_finish = {}) {
    if (batcher_->num_running() >= std::size_t(cfg_.scheduler.max_seqs)) return std::nullopt;
    const RequestId id = next_id_;
    r.id = id;
    if (r.arrival_time < 0.0) r.arrival_time = clock_();
    PagedAllocator& alloc = model_.kv().allocator();
    bool ok = false;
    try {
      load_kv(id);
      ok = batcher_->adopt_running(std::move(r), std::move(generated));
    } catch (...) {
      if (alloc.contains(id)) alloc.free_sequence(id);
      throw;
    }
    if (!ok) {
      alloc.free_sequence(id);
      return std::nullopt;
    }
    ++next_id_;
    Live& l = live_[id];
    l.on_token = std::move(on_token);
    l.on_finish = std::move(on_finish);
    return id;
  }

  // The model's KV pool as the transfer layer sees it (transfer/kv_transfer.hpp).
  transfer::KVPoolView kv_pool() {
    transfer::KVPoolView v;
    const KVBlockStorage storage = model_.kv().block_storage();
    v.allocator = &model_.kv().allocator();
    v.codes = storage.codes;
    v.params = storage.params;
    v.n_layers = model_.config().n_layers;
    v.block_bytes = storage.block_bytes;
    v.block_params = storage.block_params;
    v.quant = std::string(model_.kv().quant_name());
    return v;
  }

  // Ends a request and frees its blocks; true if it was still live. Unknown
  // ids throw UsageError. A request in the step being executed ends at its
  // commit (cancel from a callback is fine: callbacks run after commit).
  bool cancel(RequestId id) {
    const bool live = batcher_->cancel(id);
    if (live && batcher_->status(id) == sched::RequestStatus::Finished) notify_finish_(id);
    return live;
  }

  // Forgets a finished request's output and timing.
  void retire(RequestId id) {
    batcher_->retire(id);
    if (draft_) draft_->release(id);
    live_.erase(id);
  }

  // ---- running ---------------------------------------------------------------

  bool has_work() const { return batcher_->has_work(); }

  // One scheduler step. Returns false when there was nothing to do.
  bool step() {
    if (!batcher_->has_work()) return false;
    const double t0 = now_();
    plan_drafts_();
    const sched::StepPlan& plan = batcher_->schedule();
    const double t1 = now_();
    execute_(plan);
    const double t2 = now_();
    sample_(plan);
    const double t3 = now_();
    if (!plan.entries.empty()) {
      // The step's cost as the adaptive switch models it: drafting, forward, verification.
      fit_.add(double(batch_.rows()), double(step_model_drafts_), double(step_draft_passes_),
               double(step_draft_rows_), double(step_keys_), t3 - t1, step_draft_seconds_);
      last_plain_tokens_ = plan.num_tokens();
      last_plain_keys_ = step_plain_keys_;
      // Any row beyond the plan's tokens is a draft or a lookahead window's
      // (step_model_drafts_ misses drafts that cost no draft pass: prompt
      // lookup's and lookahead's, which kept the revisit firing every step).
      steps_without_drafts_ = batch_.rows() > plan.num_tokens() ? 0 : steps_without_drafts_ + 1;
    }
    if (cache_ && cfg_.cache_at_prefill_end) cache_prefills_(plan);
    const std::vector<RequestId>& done = batcher_->commit(result_);
    const double t4 = now_();
    stats_.schedule_seconds += (t1 - t0) + (t4 - t3);
    stats_.execute_seconds += t2 - t1;
    stats_.sample_seconds += t3 - t2;
    stream_(plan);
    for (RequestId id : done) notify_finish_(id);
    return true;
  }

  // Steps until every submitted request has ended.
  void run() {
    while (step()) {
    }
  }

  // ---- results ---------------------------------------------------------------

  const std::vector<TokenId>& output(RequestId id) const { return batcher_->output(id); }
  FinishReason finish_reason(RequestId id) const { return batcher_->finish_reason(id); }
  sched::RequestStatus status(RequestId id) const { return batcher_->status(id); }
  const sched::RequestTiming& timing(RequestId id) const { return batcher_->timing(id); }

  RequestMetrics request_metrics(RequestId id) const {
    const sched::RequestTiming& t = batcher_->timing(id);
    RequestMetrics m;
    if (t.first_token >= 0) m.ttft = t.first_token - t.arrival;
    if (t.finish >= 0) m.e2e = t.finish - t.arrival;
    std::vector<double> gaps;
    for (std::size_t i = 1; i < t.token_times.size(); ++i) gaps.push_back(t.token_times[i] - t.token_times[i - 1]);
    m.itl_p50 = sched::percentile(gaps, 0.5);
    m.itl_p99 = sched::percentile(gaps, 0.99);
    m.prompt_tokens = std::int64_t(batcher_->request(id).prompt.size());
    m.generated_tokens = std::int64_t(batcher_->output(id).size());
    auto it = live_.find(id);
    if (it != live_.end()) m.cached_prompt_tokens = std::max<std::int64_t>(it->second.first_position, 0);
    m.preemptions = batcher_->preemptions(id);
    if (it != live_.end() && it->second.spec) {
      const RequestSpeculation& sp = *it->second.spec;
      m.spec_rows = sp.rows();
      m.drafted = sp.drafted();
      m.accepted = sp.accepted();
      m.acceptance_estimate = sp.acceptance_estimate();
    }
    return m;
  }

  EngineMetrics metrics() const {
    EngineMetrics m = stats_;
    static_cast<sched::MetricsSummary&>(m) = batcher_->metrics();
    if (cache_) m.prefix_cached_blocks = cache_->cached_blocks();
    m.cost_model = fit_.model();
    return m;
  }

  // The adaptive switch's current step-cost fit.
  StepCostModel cost_model() const { return fit_.model(); }

  double now() const { return clock_(); }
  sched::ContinuousBatcher& batcher() { return *batcher_; }
  const sched::ContinuousBatcher& batcher() const { return *batcher_; }
  prefix::RadixPrefixCache* prefix_cache() { return cache_.get(); }
  LlamaModel<Backend>& model() { return model_; }
  const EngineConfig& config() const { return cfg_; }
  // Whether the draft model (EngineConfig::spec.draft_weights) costs the
  // target a pass or more (draft_costs_at_least), so that SpecAdaptive never
  // drafts with it; false without one.
  bool draft_never_pays() const { return draft_never_pays_; }

  // Drops every cached prefix block (e.g. to check that the pool is whole).
  void clear_prefix_cache() {
    if (cache_) cache_->evict(cache_->evictable_blocks());
  }

 private:
  struct Live {
    TokenCallback on_token;
    FinishCallback on_finish;
    std::int64_t first_position = -1;  // position of its first plan entry (cached prompt tokens)
    bool notified = false;
    std::unique_ptr<RequestSpeculation> spec;  // null: plain decoding
  };

  void validate_spec_(const RequestSpec& s) const {
    validate_request_spec(s, cfg_.spec, cfg_.scheduler.max_tokens_per_step, model_.config().n_layers);
    // The heads read the target's classifier and final norm where the host
    // can (EagleHead::lm_logits, MedusaStream): a device backend's weights
    // are not there.
    if constexpr (!Backend::kHostVisible)
      FASTINFER_CHECK(!detail::is_tree_drafter(s.drafter), InvalidArgument,
                      "EAGLE, MTP and Medusa trees run on host-visible backends only (the heads read the "
                      "target's weights on the host); this engine's backend is ",
                      Backend::kName);
  }

  // Asks the batcher for each speculating request's draft slots in the
  // coming step, as the policy decides.
  void plan_drafts_() {
    if (!any_spec_) {
      for (const auto& kv : live_)
        if (kv.second.spec) any_spec_ = true;
      if (!any_spec_) return;
    }
    cand_ids_.clear();
    cand_unfed_.clear();
    cands_.clear();
    for (auto& kv : live_) {
      if (!kv.second.spec || batcher_->status(kv.first) != sched::RequestStatus::Running) continue;
      const RequestId id = kv.first;
      const std::int64_t len =
          std::int64_t(batcher_->request(id).prompt.size() + batcher_->output(id).size());
      const std::int64_t unfed = len - batcher_->computed_tokens(id);
      // A chain drafts after a decode; a tree also after the accepted nodes
      // its last pass could not keep, once its stream holds every feature
      // its head must read.
      const speculative::FeatureStream* stream = kv.second.spec->feature_stream();
      const bool tree = stream || kv.second.spec->is_lookahead();
      const bool can =
          tree ? unfed >= 1 && unfed < cfg_.scheduler.max_tokens_per_step && (!stream || stream->ready(len))
               : unfed == 1;
      if (!can) {
        batcher_->set_draft_tokens(id, 0);
        continue;
      }
      cand_ids_.push_back(id);
      cand_unfed_.push_back(std::int32_t(unfed));
      const Request& r = batcher_->request(id);
      const std::vector<TokenId>& out = batcher_->output(id);
      if (kv.second.spec->is_lookahead()) {
        // Its candidacy reads its pool: bring the pool up to the text first.
        catch_up_context_.assign(r.prompt.begin(), r.prompt.end());
        catch_up_context_.insert(catch_up_context_.end(), out.begin(), out.end());
        kv.second.spec->sync_lookahead(catch_up_context_, std::uint64_t(out.size()));
      }
      cands_.push_back(kv.second.spec->candidate(out.empty() ? r.prompt.back() : out.back()));
      cands_.back().remaining_tokens = double(r.max_new_tokens) - double(out.size());
      cands_.back().context = double(len);
      if (kv.second.spec->uses_draft_model() && draft_) {
        // Beyond the one row a drafting step always feeds (the last token).
        catch_up_context_.assign(r.prompt.begin(), r.prompt.end());
        catch_up_context_.insert(catch_up_context_.end(), out.begin(), out.end());
        cands_.back().catch_up_rows =
            double(std::max<std::int64_t>(0, draft_->catch_up_tokens(id, catch_up_context_) - 1));
        cands_.back().never_pays = draft_never_pays_;
      } else if (stream) {
        // The head's rows since it last drafted, beyond the one a drafting step commits anyway.
        cands_.back().catch_up_rows = double(std::max<std::int64_t>(0, stream->rows_to_commit(len) - 1));
      }
    }
    // Deterministic order (the map's is not).
    order_.resize(cand_ids_.size());
    for (std::size_t i = 0; i < order_.size(); ++i) order_[i] = i;
    std::sort(order_.begin(), order_.end(), [&](std::size_t a, std::size_t b) { return cand_ids_[a] < cand_ids_[b]; });
    sorted_.clear();
    for (std::size_t i : order_) sorted_.push_back(cands_[i]);
    const std::vector<std::int32_t> k = drafts_under_policy(
        cfg_.spec.policy, fit_.model(), double(last_plain_tokens_), std::int64_t(batcher_->num_running()),
        sorted_, fit_.steps(), double(last_plain_keys_), steps_without_drafts_);
    for (std::size_t j = 0; j < order_.size(); ++j) {
      // Slots for the drafts and for the window a drafting lookahead step feeds beside them.
      const std::int32_t window = k[j] > 0 ? std::int32_t(sorted_[j].window_rows) : 0;
      batcher_->set_draft_tokens(cand_ids_[order_[j]], k[j] + window, cand_unfed_[order_[j]]);
      ++stats_.spec_candidates;
      if (k[j] == 0) {
        ++stats_.spec_switched_off;
        live_.at(cand_ids_[order_[j]]).spec->idle();
      }
    }
  }

  double now_() const { return clock_(); }

  void execute_(const sched::StepPlan& plan) {
    KVStore& kv = model_.kv();
    for (const sched::BlockSwap& s : plan.swap_out) kv.swap_out(s.device, host_pool_.slot(s.host));
    for (const sched::BlockSwap& s : plan.swap_in) kv.swap_in(host_pool_.slot(s.host), s.device);
    if (!plan.copies.empty()) kv.copy_blocks(plan.copies);
    if (plan.entries.empty()) {
      logits_ = nullptr;
      return;
    }
    PagedAllocator& alloc = model_.kv().allocator();
    batch_.clear();
    capacity_.clear();
    propose_(plan);
    bool speculating = false, host_rows = false;
    step_keys_ = step_plain_keys_ = 0;
    for (std::size_t i = 0; i < plan.entries.size(); ++i) {
      const sched::PlanEntry& e = plan.entries[i];
      auto it = live_.find(e.id);
      const std::vector<TokenId>& drafts = trees_[i] ? trees_[i]->tokens : drafts_[i].tokens;
      const std::vector<TokenId>& window = drafts_[i].extra;  // lookahead's, after the drafts
      feed_.assign(plan.tokens.begin() + plan.token_indptr[i], plan.tokens.begin() + plan.token_indptr[i + 1]);
      feed_.insert(feed_.end(), drafts.begin(), drafts.end());
      feed_.insert(feed_.end(), window.begin(), window.end());
      speculating = speculating || !drafts.empty();
      host_rows = host_rows || (e.samples && (trees_[i] || !drafts.empty() || !window.empty()) &&
                                verifies_on_backend_(e, i) == BackendVerify::No);
      stats_.spec_window_rows += std::int64_t(window.size());
      batch_.add(e.id, feed_.data(), std::int32_t(feed_.size()), e.position);
      batch_.logits_tail.push_back(e.samples ? 1 + std::int32_t(drafts.size() + window.size()) : 0);
      capacity_.push_back(alloc.capacity(e.id));
      if (it != live_.end() && it->second.first_position < 0) it->second.first_position = e.position;
      stats_.forward_tokens += std::int64_t(feed_.size());
      step_keys_ += attention_key_reads(double(e.position), double(feed_.size()));
      step_plain_keys_ += attention_key_reads(double(e.position), double(e.num_tokens));
    }
    // Only the rows that are read: a sampling entry's last real token and
    // its drafts; nothing for a prefill chunk that does not end its prompt.
    batch_.logits = LogitsRows::PerEntry;
    if (any_masked_) tree_layout_(plan);
    if (speculating) ++stats_.spec_steps;
    // Rows are read on the host only to verify drafts against distributions
    // or feed a lookahead window; a step that only picks (plain rows, greedy
    // and coupled chains, exact chains of deterministic drafts) leaves them
    // on the backend (a device backend then returns a token per row).
    if (host_rows) {
      logits_ = model_.forward(batch_);
    } else {
      model_.forward_to_sample(batch_);
      logits_ = nullptr;
    }
    features_ = any_stream_ ? model_.last_features() : nullptr;
    observe_fed_rows_(plan);
    // Take back reservations beyond the step (NoEviction reserves a
    // request's whole life at admission) that the rollback returned.
    for (std::size_t i = 0; i < plan.entries.size(); ++i) {
      const SeqId s = plan.entries[i].id;
      const std::int64_t missing = capacity_[i] - alloc.capacity(s);
      if (missing > 0) {
        const bool ok = alloc.reserve(s, capacity_[i] - alloc.length(s));
        FASTINFER_CHECK(ok, Error, "Engine: could not restore the reservation of request ", s, " (bug)");
      }
    }
  }

  // Every entry's drafts for this step: each request's own drafter, and the
  // engine's draft model for all that use it at once (batched_draft.hpp).
  void propose_(const sched::StepPlan& plan) {
    drafts_.resize(plan.entries.size());
    trees_.assign(plan.entries.size(), nullptr);
    lookahead_trees_.resize(plan.entries.size());  // before any pointer into it is taken
    contexts_.resize(plan.entries.size());
    draft_jobs_.clear();
    tree_batch_.clear();
    step_model_drafts_ = 0;
    any_masked_ = false;
    any_stream_ = false;
    const double d0 = now_();
    bool drafted = false;
    // Before add(): it counts the rows each tree commits.
    const std::int64_t head_passes = tree_batch_.forwards(), head_rows = tree_batch_.rows_fed();
    for (std::size_t i = 0; i < plan.entries.size(); ++i) {
      const sched::PlanEntry& e = plan.entries[i];
      drafts_[i].clear();
      auto it = live_.find(e.id);
      if (it != live_.end() && it->second.spec && it->second.spec->feature_stream()) any_stream_ = true;
      if (e.num_drafts <= 0 || it == live_.end() || !it->second.spec) continue;
      drafted = true;
      RequestSpeculation& sp = *it->second.spec;
      const Request& r = batcher_->request(e.id);
      const std::vector<TokenId>& out = batcher_->output(e.id);
      std::vector<TokenId>& context = contexts_[i];
      context.assign(r.prompt.begin(), r.prompt.end());
      context.insert(context.end(), out.begin(), out.end());
      if (speculative::FeatureStream* stream = sp.feature_stream()) {
        trees_[i] = tree_batch_.add(*stream, model_.weights(), context.data(), std::int64_t(context.size()),
                                    e.num_drafts, model_.threads());
      } else if (sp.is_lookahead()) {
        // The window goes in whole or not at all (its Jacobi step reads its
        // last level); the slots beyond it are the tree's, at most the nodes
        // the policy chose (plan_drafts_ asked for them plus the window).
        const int window = sp.window_rows();
        const int chosen = batcher_->draft_tokens(e.id) - window;
        const bool with_window = window > 0 && e.num_drafts > window;
        const int nodes = std::min(chosen, with_window ? e.num_drafts - window : e.num_drafts);
        sp.propose_lookahead(context, std::uint64_t(out.size()), nodes, with_window, lookahead_trees_[i],
                             drafts_[i], e.id);
        trees_[i] = &lookahead_trees_[i];
      } else if (sp.uses_draft_model())
        draft_jobs_.push_back(
            {e.id, &context, e.num_drafts, std::uint64_t(out.size()), r.sampling, &drafts_[i]});
      else
        sp.propose(context, e.num_drafts, std::uint64_t(out.size()), drafts_[i], e.id);
    }
    // The feature drafters' trees, level by level for all requests at once:
    // their heads' passes are shared as the draft model's are, and priced
    // in the same columns (per_draft_pass, per_draft_row).
    tree_batch_.draft(model_.weights(), model_.threads());
    step_draft_passes_ = tree_batch_.forwards() - head_passes;
    step_draft_rows_ = tree_batch_.rows_fed() - head_rows;
    for (std::size_t i = 0; i < trees_.size(); ++i) {
      if (trees_[i] && trees_[i]->tokens.empty()) trees_[i] = nullptr;
      any_masked_ = any_masked_ || trees_[i] != nullptr || !drafts_[i].extra.empty();
    }
    if (!draft_jobs_.empty()) {
      BatchedDraftModel<Backend>& dm = draft_model_();
      const std::int64_t passes = dm.forwards(), rows = dm.rows_fed();
      dm.propose(draft_jobs_);
      step_draft_passes_ += dm.forwards() - passes;
      step_draft_rows_ += dm.rows_fed() - rows;
    }
    for (std::size_t i = 0; i < plan.entries.size(); ++i) {
      auto it = live_.find(plan.entries[i].id);
      if (it != live_.end() && it->second.spec && it->second.spec->drafts_cost_passes())
        step_model_drafts_ += std::int64_t(drafts_[i].tokens.size());
    }
    step_draft_seconds_ = drafted ? now_() - d0 : 0.0;
    stats_.draft_seconds += step_draft_seconds_;
    stats_.draft_passes += step_draft_passes_;
    stats_.draft_rows += step_draft_rows_;
  }

  // The engine's draft model (built by the constructor when
  // EngineConfig::spec.draft_weights is set).
  BatchedDraftModel<Backend>& draft_model_() {
    if (!draft_) {
      detail::require_draft_weights(cfg_.spec);
      const int seqs = cfg_.spec.draft_max_sequences > 0 ? cfg_.spec.draft_max_sequences : cfg_.scheduler.max_seqs;
      draft_ = std::make_unique<BatchedDraftModel<Backend>>(*cfg_.spec.draft_weights, cfg_.spec.draft_threads,
                                                            cfg_.spec.draft_max_batch, seqs, model_.backend(),
                                                            cfg_.spec.sampled_rule);
    }
    return *draft_;
  }

  void sample_(const sched::StepPlan& plan) {
    result_.clear();
    result_index_.clear();
    // Per-entry rows come back in entry order: entry i's first row.
    first_row_.resize(plan.entries.size());
    for (std::size_t i = 0, next = 0; i < plan.entries.size(); ++i) {
      first_row_[i] = next;
      next += std::size_t(batch_.logits_tail[i]);
    }
    pick_rows_(plan);
    for (std::size_t i = 0; i < plan.entries.size(); ++i) {
      const sched::PlanEntry& e = plan.entries[i];
      const std::size_t row0 = first_row_[i];
      if (!e.samples) continue;
      result_index_.push_back(e.sample_index);
      // The logits row of the entry's last real token; its drafts' rows follow
      // (then lookahead's window's). On the host only when a draft or window
      // reads it (execute_).
      const auto row = [&] { return logits_ + row0 * std::size_t(vocab_); };
      if (trees_[i]) {
        verify_tree_row_(plan, i, logits_ ? row() : nullptr);
        continue;
      }
      const speculative::DraftProposal& prop = i < drafts_.size() ? drafts_[i] : empty_proposal_;
      if (!prop.tokens.empty()) {
        const int m = int(prop.tokens.size());
        RequestSpeculation& sp = *live_.at(e.id).spec;
        const BackendVerify on_backend = verifies_on_backend_(e, i);
        const speculative::VerifyOutcome v =
            on_backend == BackendVerify::FromSamples
                ? sp.verify_samples(plain_.tokens.data() + plain_.at[i], prop)
            : on_backend == BackendVerify::FromExactPicks
                ? sp.verify_exact_picks(exact_.tokens.data() + exact_.at[i], prop)
                : sp.verify(row(), prop, std::uint64_t(e.sample_index));
        result_.add(e.id, v.tokens.data(), v.tokens.size(), v.accepted);
        ++stats_.spec_rows;
        stats_.spec_drafted += m;
        stats_.spec_accepted += v.accepted;
        stats_.spec_emitted += std::int64_t(v.tokens.size());
        continue;
      }
      const TokenId token = plain_.tokens[plain_.at[i]];
      result_.add(e.id, token);
      if (!drafts_[i].extra.empty()) observe_lookahead_(e, i, row(), &token, 1, 0);
    }
  }

  // A lookahead entry that fed its tree or window: the pool learns the
  // step's tokens (`n` emitted, `accepted` of them drafts) and the window's
  // rows, which follow the root's and the nodes'.
  void observe_lookahead_(const sched::PlanEntry& e, std::size_t i, const float* row, const TokenId* emitted,
                          std::size_t n, int accepted) {
    RequestSpeculation& sp = *live_.at(e.id).spec;
    const std::size_t nodes = trees_[i] ? trees_[i]->tokens.size() : 0;
    const int n_window = int(drafts_[i].extra.size());
    std::vector<TokenId>& context = contexts_[i];  // prompt and output before the step (propose_)
    context.insert(context.end(), emitted, emitted + n);
    sp.observe_lookahead(context, accepted, n_window > 0 ? row + (1 + nodes) * std::size_t(vocab_) : nullptr,
                         n_window);
  }

  // How entry i's drafts are verified where the rows are (then its rows, a
  // chain's m + 1 or a tree's size + 1, are picked on the backend with the
  // plain rows and never come to the host): FromSamples when the rule
  // matches the target's own picks (RequestSpeculation::verifies_from_samples),
  // chains and trees; FromExactPicks for the exact rule over a deterministic
  // drafter's chain on a backend with accept_rows; No with a lookahead window
  // to feed, or over host rows, where the verifier stops picking at the first
  // mismatch.
  enum class BackendVerify { No, FromSamples, FromExactPicks };
  BackendVerify verifies_on_backend_(const sched::PlanEntry& e, std::size_t i) const {
    if constexpr (Backend::kHostVisible) return BackendVerify::No;
    if (!e.samples || i >= drafts_.size() || !drafts_[i].extra.empty()) return BackendVerify::No;
    const bool tree = trees_[i] != nullptr;
    if (!tree && drafts_[i].tokens.empty()) return BackendVerify::No;
    const auto it = live_.find(e.id);
    if (it == live_.end() || !it->second.spec) return BackendVerify::No;
    if (it->second.spec->verifies_from_samples()) return BackendVerify::FromSamples;
    if constexpr (backend_detail::has_accept_rows<Backend>::value)
      if (!tree && it->second.spec->verifies_from_exact_picks(drafts_[i]))
        return BackendVerify::FromExactPicks;
    return BackendVerify::No;
  }

  // The rows picked on the backend (a device backend sends back ids, not
  // rows), in one call per kind: every row that samples without
  // speculation and the rows of a chain or tree verified from samples
  // (chain row j at request index sample_index + j, tree row r at
  // sample_index + its depth) into plain_; the m + 1 rows of an
  // exact chain with its drafts (-1 for the bonus row) and coins into
  // exact_. The other speculating rows are verified on the host against
  // their drafts' distributions. plain_.at[i] / exact_.at[i]: entry i's
  // first pick. Reads first_row_, which sample_ fills.
  void pick_rows_(const sched::StepPlan& plan) {
    plain_.rows.clear(), plain_.params.clear(), plain_.indices.clear();
    plain_.at.assign(plan.entries.size(), 0);
    exact_.rows.clear(), exact_.params.clear(), exact_.drafts.clear();
    exact_.accept_coins.clear(), exact_.residual_coins.clear();
    exact_.at.assign(plan.entries.size(), 0);
    for (std::size_t i = 0; i < plan.entries.size(); ++i) {
      const sched::PlanEntry& e = plan.entries[i];
      const BackendVerify on_backend = verifies_on_backend_(e, i);
      if (!e.samples) continue;
      const SamplingParams& params = batcher_->request(e.id).sampling;
      if (on_backend == BackendVerify::FromExactPicks) {
        const RequestSpeculation& sp = *live_.at(e.id).spec;
        const std::vector<TokenId>& drafts = drafts_[i].tokens;
        exact_.at[i] = exact_.rows.size();
        for (std::size_t j = 0; j <= drafts.size(); ++j) {
          const auto [accept, residual] = sp.exact_coins(std::uint64_t(e.sample_index) + j);
          exact_.rows.push_back(std::int32_t(first_row_[i] + j));
          exact_.params.push_back(params);
          exact_.drafts.push_back(j < drafts.size() ? drafts[j] : -1);
          exact_.accept_coins.push_back(accept);
          exact_.residual_coins.push_back(residual);
        }
        continue;
      }
      const bool from_samples = on_backend == BackendVerify::FromSamples;
      if (!from_samples && i < drafts_.size() && (!drafts_[i].tokens.empty() || trees_[i])) continue;
      plain_.at[i] = plain_.rows.size();
      // A tree's row r decides the token at depth row_depths()[r]; a chain's row j, at j.
      if (from_samples && trees_[i]) row_depths_ = trees_[i]->row_depths();
      const std::size_t picks = !from_samples ? 1
                                : trees_[i]   ? row_depths_.size()
                                              : 1 + drafts_[i].tokens.size();
      for (std::size_t j = 0; j < picks; ++j) {
        plain_.rows.push_back(std::int32_t(first_row_[i] + j));
        plain_.params.push_back(params);
        plain_.indices.push_back(std::uint64_t(e.sample_index) +
                                 (from_samples && trees_[i] ? std::uint64_t(row_depths_[j]) : j));
      }
    }
    plain_.tokens.resize(plain_.rows.size());
    model_.sample_logits(plain_.rows.data(), std::int64_t(plain_.rows.size()), plain_.params.data(),
                         plain_.indices.data(), plain_.tokens.data());
    exact_.tokens.resize(exact_.rows.size());
    if constexpr (backend_detail::has_accept_rows<Backend>::value)
      if (!exact_.rows.empty())
        model_.accept_logits(exact_.rows.data(), std::int64_t(exact_.rows.size()), exact_.params.data(),
                             exact_.drafts.data(), exact_.accept_coins.data(), exact_.residual_coins.data(),
                             exact_.tokens.data());
  }

  // A pass with a token tree or a lookahead window spells out every entry's
  // positions and mask: a tree entry's as tree_batch.hpp lays them out (its
  // unfed tokens causal, then the nodes, then the window), every other
  // entry's causal block (its chain drafts, if any, are causal rows too).
  void tree_layout_(const sched::StepPlan& plan) {
    batch_.positions.resize(std::size_t(batch_.rows()));
    std::size_t mask_bytes = 0;
    for (std::int32_t b = 0; b < batch_.batch(); ++b)
      mask_bytes += std::size_t(batch_.count(b)) * std::size_t(batch_.count(b));
    batch_.mask.assign(mask_bytes, 0);
    std::size_t at = 0;
    for (std::size_t i = 0; i < plan.entries.size(); ++i) {
      const std::int32_t n = batch_.count(std::int32_t(i));
      const sched::PlanEntry& e = plan.entries[i];
      const speculative::DraftProposal& window = drafts_[i];
      const int n_window = int(window.extra.size());
      const bool tree = trees_[i] != nullptr;
      const speculative::TokenTree& t = tree ? *trees_[i] : no_tree_;
      tree_depth_ = speculative::tree_depths(t);
      std::int64_t* positions = batch_.positions.data() + batch_.qo_indptr[i];
      std::uint8_t* mask = batch_.mask.data() + at;
      speculative::tree_entry_layout(e.position, tree || n_window > 0 ? e.num_tokens : n, t, tree_depth_,
                                     positions, mask, n);
      if (n_window > 0)
        speculative::extra_entry_layout(e.position + e.num_tokens - 1, e.num_tokens + t.size(),
                                        window.extra_depth.data(), window.extra_mask.data(), n_window,
                                        n_window, positions, mask, n);
      at += std::size_t(n) * std::size_t(n);
    }
  }

  // Every EAGLE or MTP request's fed tokens were computed with their true context:
  // their features go to its stream (prefill chunks, decodes, the unfed
  // tokens before a tree; a tree's nodes are known only after verification).
  void observe_fed_rows_(const sched::StepPlan& plan) {
    if (!features_) return;
    const std::size_t dim = std::size_t(model_.config().dim);
    for (std::size_t i = 0; i < plan.entries.size(); ++i) {
      const sched::PlanEntry& e = plan.entries[i];
      auto it = live_.find(e.id);
      if (it == live_.end() || !it->second.spec || !it->second.spec->feature_stream()) continue;
      it->second.spec->feature_stream()->observe(
          e.position, features_ + std::size_t(batch_.qo_indptr[i]) * dim, e.num_tokens);
    }
  }

  // Verifies entry i's tree against its rows (row: the root's, the last
  // unfed token's; nullptr when the rows stayed on the backend and its
  // picks decide), emits the accepted path and the target's token, keeps
  // the KV of the nodes already at their final slots and hands the accepted
  // nodes' features to the request's stream (lookahead: the step's tokens
  // and window rows to its pool).
  void verify_tree_row_(const sched::StepPlan& plan, std::size_t i, const float* row) {
    const sched::PlanEntry& e = plan.entries[i];
    RequestSpeculation& sp = *live_.at(e.id).spec;
    const speculative::TokenTree& tree = *trees_[i];
    const speculative::VerifyOutcome v =
        verifies_on_backend_(e, i) == BackendVerify::FromSamples
            ? sp.verify_tree_samples(plain_.tokens.data() + plain_.at[i], tree)
            : sp.verify_tree(row, tree, std::uint64_t(e.sample_index));
    const int kept = speculative::kept_in_place(v.path);
    result_.add(e.id, v.tokens.data(), v.tokens.size(), kept);
    if (sp.is_lookahead()) observe_lookahead_(e, i, row, v.tokens.data(), v.tokens.size(), v.accepted);
    const std::size_t dim = std::size_t(model_.config().dim);
    const std::int64_t first_node_row = std::int64_t(batch_.qo_indptr[i]) + e.num_tokens;
    if (speculative::FeatureStream* stream = sp.feature_stream())
      for (std::size_t j = 0; j < v.path.size(); ++j) {
        const float* f = features_ + std::size_t(first_node_row + v.path[j]) * dim;
        stream->observe(e.position + e.num_tokens + std::int64_t(j), f, 1);
      }
    ++stats_.spec_rows;
    stats_.spec_drafted += tree.size();
    stats_.spec_accepted += v.accepted;
    stats_.spec_emitted += std::int64_t(v.tokens.size());
    stats_.spec_refed += v.accepted - kept;
  }

  // Inserts the full blocks of every prompt (or recompute) whose prefill
  // ended in this step, so that requests admitted next share them now.
  void cache_prefills_(const sched::StepPlan& plan) {
    const PagedAllocator& alloc = model_.kv().allocator();
    const std::int64_t bs = alloc.block_size();
    for (const sched::PlanEntry& e : plan.entries) {
      if (!e.samples || e.num_tokens <= 1) continue;
      const std::int64_t full = (e.position + e.num_tokens) / bs;
      if (full == 0) continue;
      const Request& r = batcher_->request(e.id);
      const std::vector<TokenId>& out = batcher_->output(e.id);
      tokens_.assign(r.prompt.begin(), r.prompt.end());
      tokens_.insert(tokens_.end(), out.begin(), out.end());
      tokens_.resize(std::size_t(full * bs));
      const std::vector<BlockId>& table = alloc.block_table(e.id);
      blocks_.assign(table.begin(), table.begin() + std::ptrdiff_t(full));
      cache_->insert(tokens_, blocks_, r.prefix_namespace);
    }
  }

  // Hands the committed tokens to their callbacks (a stop token is not part
  // of the output and is not streamed).
  void stream_(const sched::StepPlan&) {
    for (std::size_t r = 0; r < result_.rows(); ++r) {
      const RequestId id = result_.ids[r];
      auto it = live_.find(id);
      if (it == live_.end() || !it->second.on_token) continue;
      const std::vector<TokenId>& out = batcher_->output(id);
      // Every token this row added (several when drafts were accepted).
      for (std::size_t k = std::size_t(result_index_[r]); k < out.size(); ++k) it->second.on_token(id, out[k]);
    }
  }

  void notify_finish_(RequestId id) {
    auto it = live_.find(id);
    if (it == live_.end() || it->second.notified) return;
    it->second.notified = true;
    if (draft_) draft_->release(id);
    if (it->second.on_finish) it->second.on_finish(id, batcher_->finish_reason(id));
  }

  LlamaModel<Backend>& model_;
  EngineConfig cfg_;
  sched::SchedulerClock clock_;
  std::int32_t vocab_;
  struct PlainRows {  // pick_rows_'s arrays, kept to avoid per-step allocation
    std::vector<std::int32_t> rows;
    std::vector<SamplingParams> params;
    std::vector<std::uint64_t> indices;
    std::vector<TokenId> tokens;
    std::vector<std::size_t> at;  // per plan entry: its first pick in tokens
  } plain_;
  struct ExactRows {  // pick_rows_'s exact chains, kept likewise
    std::vector<std::int32_t> rows;
    std::vector<SamplingParams> params;
    std::vector<TokenId> drafts;
    std::vector<float> accept_coins, residual_coins;
    std::vector<TokenId> tokens;
    std::vector<std::size_t> at;  // per plan entry: its first pick in tokens
  } exact_;
  std::vector<std::size_t> first_row_;  // sample_: entry i's first logits row
  std::vector<int> row_depths_;         // pick_rows_: a tree's TokenTree::row_depths()
  std::unique_ptr<prefix::RadixPrefixCache> cache_;
  std::unique_ptr<sched::ContinuousBatcher> batcher_;
  HostSwapSlots host_pool_;  // swap_blocks slots of kv().host_block_bytes()
  std::unordered_map<RequestId, Live> live_;
  RequestId next_id_ = 1;  // 0 is the model's solo sequence

  ForwardBatch batch_;
  std::vector<std::int64_t> capacity_;
  const float* logits_ = nullptr;
  sched::StepResult result_;
  std::vector<std::int32_t> result_index_;  // per result row: the request's output size before it
  std::vector<TokenId> tokens_;
  std::vector<BlockId> blocks_;
  EngineMetrics stats_;

  // Speculation.
  StepCostFit fit_;
  bool any_spec_ = false;
  std::int64_t last_plain_tokens_ = 0;
  // Keys this step's attention reads (attention_key_reads), all and without
  // the drafts (the step-cost fit's attention column), and the last step's
  // plain ones.
  double step_keys_ = 0, step_plain_keys_ = 0, last_plain_keys_ = 0;
  // Steps in a row that drafted nothing (SpecAdaptive::revisit_every).
  std::int64_t steps_without_drafts_ = 0;
  std::int64_t step_model_drafts_ = 0;
  std::vector<TokenId> catch_up_context_;  // plan_drafts_' scratch
  bool draft_never_pays_ = false;  // the draft model costs at least the target a pass (draft_costs_at_least)
  std::int64_t step_draft_passes_ = 0;     // the batched draft model's and the heads' passes this step
  std::int64_t step_draft_rows_ = 0;    // and the rows they fed
  double step_draft_seconds_ = 0;       // the step's drafting, timed (propose_)
  std::vector<speculative::DraftProposal> drafts_;  // per plan entry
  speculative::DraftProposal empty_proposal_;
  std::vector<TokenId> feed_;
  std::vector<std::vector<TokenId>> contexts_;  // per plan entry: prompt + output, for its drafter
  std::vector<typename BatchedDraftModel<Backend>::Job> draft_jobs_;
  std::unique_ptr<BatchedDraftModel<Backend>> draft_;  // SpecDrafter::DraftModel's, built on first use
  std::vector<RequestId> cand_ids_;
  std::vector<std::int32_t> cand_unfed_;  // per candidate: its unfed tokens (the batcher's max_unfed)
  // Token trees: per plan entry the EAGLE or MTP tree it feeds (null: none; owned
  // by the request's FeatureStream until its next draft).
  std::vector<const speculative::TokenTree*> trees_;
  speculative::FeatureTreeBatch tree_batch_;  // this step's feature-drafted trees
  std::vector<speculative::TokenTree> lookahead_trees_;  // per plan entry: a lookahead request's tree
  bool any_masked_ = false, any_stream_ = false;  // a tree or a window this step; an EAGLE/MTP/Medusa request
  const float* features_ = nullptr;  // the last pass's features (when a feature-drafting request rode in it)
  speculative::TokenTree no_tree_;
  std::vector<int> tree_depth_;
  std::vector<SpecCandidate> cands_, sorted_;
  std::vector<std::size_t> order_;
};

// Opt-in (build time only), like model/llama_model.hpp's
// FASTINFER_LLAMA_MODEL_INSTANCES: with FASTINFER_EXTERN_TEMPLATES,
// translation units call one compiled Engine<CpuBackend> (and its draft
// model) instead of each compiling the step again (a fifth of an engine
// test's object code); exactly one of them must instantiate it:
//   namespace fastinfer::engine { FASTINFER_ENGINE_INSTANCES() }
#define FASTINFER_ENGINE_INSTANCES(EXTERN)             \
  EXTERN template class BatchedDraftModel<CpuBackend>; \
  EXTERN template class Engine<CpuBackend>;
#if defined(FASTINFER_EXTERN_TEMPLATES)
FASTINFER_ENGINE_INSTANCES(extern)
#endif

}  // namespace fastinfer::engine
