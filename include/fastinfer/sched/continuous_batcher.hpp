// ContinuousBatcher: iteration-level scheduling of many requests over one
// paged KV pool. Each step, schedule() returns a StepPlan (which sequences
// feed which tokens, block copies and swaps to run first); the engine runs
// it and hands the sampled tokens back through commit(). Backend-free: it
// never touches KV bytes or logits.
//
// The scheduling model (docs/batching.md has the long form):
//  - Every live request has a place in one total *service order* (the
//    ordering policy: FCFS, priority, or prefix-aware; aged requests first).
//    A step walks running and waiting requests together in that order:
//    running ones get their next chunk (one token for a decode, up to the
//    chunk limit for a prompt), waiting ones are admitted while the token
//    budget, the sequence limit and the pool allow. The first waiting request
//    that does not fit closes admission for the step (head-of-line), so no
//    request is overtaken indefinitely.
//  - Chunked prefill: a long prompt is fed over several steps, mixed with
//    decodes. A chunk leaves one budget token for each later running decode.
//  - When a request needs blocks the pool lacks, the prefix cache is asked to
//    evict first; then the latest request in service order (lowest priority,
//    latest arrival) is preempted, by recompute or swap (never the request
//    itself while a later victim exists). NoEviction reserves a request's
//    whole life at admission and never preempts.
//  - Speculation: set_draft_tokens(id, k) asks for k draft slots after each
//    of the request's decodes. A decode then takes 1 + d budget tokens and
//    KV positions, d <= k, as many as fit while leaving one budget token and
//    one free block for every later running decode (and the watermark), and
//    room for the target's token after the drafts in max_new_tokens and the
//    context. Drafts never evict or preempt anything. At commit() the
//    accepted drafts' KV is kept (StepResult::kv_kept) and the rest of the
//    slots, with the blocks they took, go back to the pool (truncate: a block
//    shared with the prefix cache is never among them, since reserve() made
//    the sequence's partial last block its own before the step wrote it).
//    A token-tree drafter keeps only the accepted nodes already at their
//    final slots, so its next entry may feed several unfed tokens (accepted
//    nodes off the tree's first chain, then the target's token): with
//    set_draft_tokens(id, k, max_unfed) such an entry still gets draft slots
//    when all of its at most max_unfed tokens are scheduled in the step.
//  - Starvation-freedom: the first live request in service order is
//    scheduled in every step and never preempted, so it finishes within
//    prompt + 2 * max_new_tokens steps (its re-prefill after recompute plus
//    its decodes). Under FCFS a request therefore finishes within the sum of
//    that bound over itself and the live requests that arrived before it.
//    Priority and PrefixAware age: after `starvation_steps` steps of waiting
//    a request ranks ahead of every younger one, and the same bound applies
//    from then on. (Under NoEviction the head may also wait for running
//    requests to finish, which they do within their max_new_tokens.)
//
// Sequence ids in the PagedAllocator are the request ids. The allocator is
// shared with the KV storage (kv::KVCache::allocator()); the batcher is the
// only one creating and freeing sequences in it. Not thread-safe: one
// scheduler thread owns the batcher, the allocator and the prefix cache.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/memory/paged_allocator.hpp"
#include "fastinfer/sched/prefix_provider.hpp"
#include "fastinfer/sched/request.hpp"
#include "fastinfer/sched/scheduler_metrics.hpp"
#include "fastinfer/sched/scheduler_policy.hpp"
#include "fastinfer/sched/step_plan.hpp"
#include "fastinfer/sched/swap_space.hpp"

namespace fastinfer::sched {

struct SchedulerConfig {
  std::int32_t max_tokens_per_step = 512;  // token budget of one step (query tokens)
  std::int32_t max_seqs = 64;              // running sequences at most
  std::int64_t max_context = 2048;         // the model's context length
  std::int32_t max_prefill_chunk = 0;      // longest chunk of one sequence per step; 0 = the budget
  PreemptionPolicy preemption = Recompute{};
  OrderingPolicy ordering = Fcfs{};
  std::int32_t swap_blocks = 0;            // host swap space (Swap policy), in KV blocks
  std::int32_t watermark_blocks = 0;       // admission keeps this many blocks free for running sequences
  std::int64_t starvation_steps = 1000;    // Priority / PrefixAware: waiting this long ranks first
  std::int32_t prefix_lookahead = 64;      // PrefixAware: waiting requests probed per step
  std::int64_t vocab_size = 0;             // 0 = token ids not range-checked
};

class ContinuousBatcher {
 public:
  ContinuousBatcher(PagedAllocator& allocator, SchedulerConfig config = {}, PrefixProvider prefix = {},
                    SchedulerClock clock = {})
      : alloc_(allocator),
        cfg_(config),
        prefix_(std::move(prefix)),
        clock_(clock ? std::move(clock) : steady_seconds_clock()),
        swap_(config.swap_blocks > 0 ? config.swap_blocks : 0) {
    FASTINFER_CHECK(cfg_.max_tokens_per_step > 0, InvalidArgument,
                    "SchedulerConfig: max_tokens_per_step must be positive, got ", cfg_.max_tokens_per_step);
    FASTINFER_CHECK(cfg_.max_seqs > 0, InvalidArgument, "SchedulerConfig: max_seqs must be positive, got ",
                    cfg_.max_seqs);
    FASTINFER_CHECK(cfg_.max_context > 1, InvalidArgument, "SchedulerConfig: max_context must be > 1, got ",
                    cfg_.max_context);
    FASTINFER_CHECK(cfg_.max_prefill_chunk >= 0, InvalidArgument,
                    "SchedulerConfig: max_prefill_chunk must be >= 0, got ", cfg_.max_prefill_chunk);
    FASTINFER_CHECK(cfg_.swap_blocks >= 0, InvalidArgument, "SchedulerConfig: swap_blocks must be >= 0, got ",
                    cfg_.swap_blocks);
    FASTINFER_CHECK(cfg_.watermark_blocks >= 0, InvalidArgument,
                    "SchedulerConfig: watermark_blocks must be >= 0, got ", cfg_.watermark_blocks);
    FASTINFER_CHECK(cfg_.starvation_steps > 0, InvalidArgument,
                    "SchedulerConfig: starvation_steps must be positive, got ", cfg_.starvation_steps);
    FASTINFER_CHECK(cfg_.prefix_lookahead > 0, InvalidArgument,
                    "SchedulerConfig: prefix_lookahead must be positive, got ", cfg_.prefix_lookahead);
    // One request alone must always fit (plus a copy-on-write block and the
    // watermark), or the first in service order could be stuck.
    const std::int64_t one = alloc_.blocks_for(cfg_.max_context) + 1 + cfg_.watermark_blocks;
    FASTINFER_CHECK(alloc_.num_blocks() >= one, InvalidArgument, "ContinuousBatcher: a pool of ",
                    alloc_.num_blocks(), " blocks cannot hold one request of max_context ", cfg_.max_context,
                    " tokens (needs ", one, " blocks of ", alloc_.block_size(), " tokens)");
    std::visit(
        [this](auto p) {
          using T = decltype(p);
          preempts_ = PreemptionTraits<T>::preempts;
          swaps_ = PreemptionTraits<T>::swaps;
          reserve_all_ = PreemptionTraits<T>::reserves_to_completion;
        },
        cfg_.preemption);
    std::visit(
        [this](auto p) {
          using T = decltype(p);
          use_priority_ = OrderingTraits<T>::uses_priority;
          prefix_aware_ = OrderingTraits<T>::prefix_aware;
        },
        cfg_.ordering);
  }

  ContinuousBatcher(const ContinuousBatcher&) = delete;
  ContinuousBatcher& operator=(const ContinuousBatcher&) = delete;

  // ---- requests ------------------------------------------------------------

  // Queues a request. Bad input throws InvalidArgument (UsageError for a
  // duplicate id) and changes nothing; other requests are unaffected.
  void submit(Request r) {
    validate_request(r, cfg_.max_context, cfg_.vocab_size);
    FASTINFER_CHECK(all_.count(r.id) == 0, UsageError, "ContinuousBatcher::submit: request id ", r.id,
                    " is already in use");
    auto e = std::make_unique<Entry>();
    e->timing.arrival = r.arrival_time >= 0.0 ? r.arrival_time : clock_();
    e->tokens = r.prompt;
    e->order = next_order_++;
    e->submit_step = step_;
    e->req = std::move(r);
    Entry* p = e.get();
    all_.emplace(p->req.id, std::move(e));
    waiting_.push_back(p);
  }

  // Takes over a request prefilled elsewhere (disaggregated serving): the
  // allocator already holds sequence r.id with the KV of its prompt and of
  // all but the last of `generated` (the tokens it produced there, at least
  // one). It joins the running set as if admitted and decoded here: its next
  // entry feeds the last generated token, and its output (and so the sample
  // index of its next token) continues from `generated`. Under NoEviction
  // the rest of its life is reserved now. False, nothing changed, when the
  // running set is full or that reservation does not fit; bad input throws
  // (InvalidArgument, UsageError) and changes nothing. Not while a plan is
  // in flight.
  bool adopt_running(Request r, std::vector<TokenId> generated) {
    FASTINFER_CHECK(!in_flight_, UsageError, "ContinuousBatcher::adopt_running: a plan is in flight");
    validate_request(r, cfg_.max_context, cfg_.vocab_size);
    FASTINFER_CHECK(all_.count(r.id) == 0, UsageError, "ContinuousBatcher::adopt_running: request id ", r.id,
                    " is already in use");
    const std::int64_t total = std::int64_t(r.prompt.size() + generated.size());
    FASTINFER_CHECK(!generated.empty() && std::int64_t(generated.size()) < r.max_new_tokens && total < cfg_.max_context,
                    InvalidArgument, "ContinuousBatcher::adopt_running: request ", r.id, " with ", generated.size(),
                    " generated tokens (max_new_tokens ", r.max_new_tokens, ", ", total,
                    " tokens in a context of ", cfg_.max_context, ") has nothing left to decode");
    for (TokenId t : generated)
      FASTINFER_CHECK(t >= 0 && (cfg_.vocab_size == 0 || t < cfg_.vocab_size), InvalidArgument, "request ", r.id,
                      ": generated token ", t, " is outside the vocabulary");
    FASTINFER_CHECK(alloc_.contains(r.id) && alloc_.length(r.id) == total - 1, UsageError,
                    "ContinuousBatcher::adopt_running: sequence ", r.id, " must hold the KV of ", total - 1,
                    " tokens");
    if (running_.size() >= std::size_t(cfg_.max_seqs)) return false;
    if (reserve_all_) {
      const std::int64_t last =
          std::min<std::int64_t>(std::int64_t(r.prompt.size()) + r.max_new_tokens, cfg_.max_context);
      if (!alloc_.reserve(r.id, std::max<std::int64_t>(last - 1 - (total - 1), 0))) return false;
    }
    auto e = std::make_unique<Entry>();
    const double now = clock_();
    e->timing.arrival = r.arrival_time >= 0.0 ? r.arrival_time : now;
    e->timing.first_token = now;
    e->timing.token_times.assign(generated.size(), now);
    e->tokens = r.prompt;
    e->tokens.insert(e->tokens.end(), generated.begin(), generated.end());
    e->output = std::move(generated);
    e->computed = total - 1;
    e->status = RequestStatus::Running;
    e->order = next_order_++;
    e->submit_step = step_;
    e->req = std::move(r);
    Entry* p = e.get();
    all_.emplace(p->req.id, std::move(e));
    running_.push_back(p);
    return true;
  }

  // Ends a waiting, swapped or running request and frees its blocks. False
  // if it had already finished; UsageError for an id never submitted (or
  // retired). A request in the plan being executed is ended at commit().
  bool cancel(RequestId id) {
    Entry* e = find(id);
    FASTINFER_CHECK(e != nullptr, UsageError, "ContinuousBatcher::cancel: unknown request ", id);
    if (e->status == RequestStatus::Finished) return false;
    if (in_flight_ && e->plan_row >= 0) {
      e->cancel_pending = true;
      return true;
    }
    const RequestStatus was = e->status;
    finish(e, FinishReason::Cancelled, clock_());
    auto& list = was == RequestStatus::Running ? running_ : waiting_;
    list.erase(std::find(list.begin(), list.end(), e));
    return true;
  }

  // Asks for up to k draft slots after each of the request's decodes from
  // the next schedule() on (0: none): after an entry that feeds all of its
  // unfed tokens when they are at most max_unfed (1: a plain decode).
  // UsageError for an unknown id, InvalidArgument for k < 0 or max_unfed < 1.
  void set_draft_tokens(RequestId id, std::int32_t k, std::int32_t max_unfed = 1) {
    Entry* e = find(id);
    FASTINFER_CHECK(e != nullptr, UsageError, "ContinuousBatcher::set_draft_tokens: unknown request ", id);
    FASTINFER_CHECK(k >= 0 && max_unfed >= 1, InvalidArgument,
                    "ContinuousBatcher::set_draft_tokens: request ", id,
                    ": draft count must be >= 0 and max_unfed >= 1, got ", k, " and ", max_unfed);
    e->draft_want = k;
    e->draft_max_unfed = max_unfed;
  }
  std::int32_t draft_tokens(RequestId id) const { return get(id, "draft_tokens").draft_want; }

  // Forgets a finished request (its output and timing); its id may be reused.
  void retire(RequestId id) {
    const Entry& e = get(id, "retire");
    FASTINFER_CHECK(e.status == RequestStatus::Finished, UsageError, "ContinuousBatcher::retire: request ", id,
                    " has not finished");
    all_.erase(id);
  }

  // ---- the step --------------------------------------------------------------

  // Plans the next step. The plan stays valid (and owned by the batcher)
  // until commit().
  const StepPlan& schedule() {
    FASTINFER_CHECK(!in_flight_, UsageError, "ContinuousBatcher::schedule: step ", step_,
                    " was not committed yet");
    ++step_;
    plan_.clear();
    planned_.clear();
    plan_.step = step_;
    plan_.finished.swap(left_);
    left_.clear();
    build_order();

    budget_ = cfg_.max_tokens_per_step;
    num_running_ = std::int64_t(running_.size());
    decodes_left_ = 0;
    for (const Entry* e : running_) decodes_left_ += unfed(*e) == 1;
    admission_open_ = true;
    victim_cursor_ = order_.size();

    for (std::size_t i = 0; i < order_.size(); ++i) {
      Entry* e = order_[i];
      if (e->status == RequestStatus::Running) {
        if (e->preempted_step == step_) continue;
        schedule_running(e, i);
      } else if (admission_open_) {
        admit(e, i);
      }
    }

    // Rebuild the running list: preempted ones left it, admitted ones joined.
    running_.clear();
    waiting_.clear();
    for (Entry* e : order_) (e->status == RequestStatus::Running ? running_ : waiting_).push_back(e);
    metrics_.on_step(alloc_.num_blocks() - alloc_.num_free_blocks(), alloc_.num_blocks());
    in_flight_ = true;
    return plan_;
  }

  // Takes the tokens sampled for the plan's sampling entries (one row each,
  // one or more tokens per row), applies stop ids, max_new_tokens and the
  // context limit, and frees finished requests' blocks (handing full blocks
  // to the prefix cache first). Returns the requests that finished in it
  // (including cancellations deferred to it). A
  // malformed result throws UsageError and changes nothing.
  const std::vector<RequestId>& commit(const StepResult& result) {
    FASTINFER_CHECK(in_flight_, UsageError, "ContinuousBatcher::commit: no plan to commit (call schedule())");
    validate_result(result);
    swap_.release(host_to_release_);
    host_to_release_.clear();
    const double now = clock_();
    committed_.clear();
    for (std::size_t r = 0; r < result.rows(); ++r) {
      Entry* e = find(result.ids[r]);
      if (e->cancel_pending) continue;
      const std::size_t before = e->output.size();
      apply_tokens(e, result.tokens.data() + result.indptr[r], std::size_t(result.indptr[r + 1] - result.indptr[r]),
                   now);
      // Accepted drafts already have KV (only those that became output).
      if (e->status == RequestStatus::Running)
        e->computed += std::min<std::int64_t>(result.kept(r), std::int64_t(e->output.size() - before));
      if (e->status == RequestStatus::Finished) committed_.push_back(e->req.id);
    }
    for (std::size_t k = 0; k < planned_.size(); ++k) {
      Entry* e = planned_[k];
      // Draft slots past what was kept go back (with their blocks); under
      // NoEviction the request keeps its whole-life reservation.
      if (plan_.entries[k].num_drafts > 0 && e->status == RequestStatus::Running && !e->cancel_pending &&
          alloc_.length(e->req.id) > e->computed) {
        const RequestId id = e->req.id;
        const std::int64_t cap = alloc_.capacity(id);
        alloc_.truncate(id, e->computed);
        if (reserve_all_) {
          const bool ok = alloc_.reserve(id, cap - e->computed);
          FASTINFER_CHECK(ok, Error, "ContinuousBatcher: could not restore the reservation of request ", id,
                          " (bug)");
        }
      }
      e->plan_row = -1;
      if (e->cancel_pending) {
        e->cancel_pending = false;
        finish(e, FinishReason::Cancelled, now);
        committed_.push_back(e->req.id);
      }
    }
    running_.erase(std::remove_if(running_.begin(), running_.end(),
                                  [](const Entry* e) { return e->status == RequestStatus::Finished; }),
                   running_.end());
    in_flight_ = false;
    return committed_;
  }

  // ---- queries ---------------------------------------------------------------

  bool has_work() const { return !running_.empty() || !waiting_.empty(); }
  bool in_flight() const { return in_flight_; }
  std::size_t num_running() const { return running_.size(); }
  std::size_t num_waiting() const {
    return std::size_t(std::count_if(waiting_.begin(), waiting_.end(),
                                     [](const Entry* e) { return e->status == RequestStatus::Waiting; }));
  }
  std::size_t num_swapped() const { return waiting_.size() - num_waiting(); }
  std::int64_t step() const { return step_; }

  RequestStatus status(RequestId id) const { return get(id, "status").status; }
  FinishReason finish_reason(RequestId id) const { return get(id, "finish_reason").reason; }
  // Tokens produced so far (stop tokens excluded).
  const std::vector<TokenId>& output(RequestId id) const { return get(id, "output").output; }
  const Request& request(RequestId id) const { return get(id, "request").req; }
  const RequestTiming& timing(RequestId id) const { return get(id, "timing").timing; }
  std::int32_t preemptions(RequestId id) const { return get(id, "preemptions").preemptions; }
  // Tokens of the request whose KV is in the cache (or in swap space).
  std::int64_t computed_tokens(RequestId id) const { return get(id, "computed_tokens").computed; }

  MetricsSummary metrics() const { return metrics_.summary(); }
  const SchedulerConfig& config() const { return cfg_; }
  const PagedAllocator& allocator() const { return alloc_; }
  const HostSwapSpace& swap_space() const { return swap_; }

  // Throws if the batcher's books disagree with the allocator's: each running
  // request has a sequence of `computed` tokens, no other request has one,
  // swapped requests hold the host blocks their KV needs.
  void check_invariants() const {
    std::int64_t host = 0;
    std::size_t live = 0;
    for (const auto& kv : all_) {
      const Entry& e = *kv.second;
      const bool has_seq = alloc_.contains(e.req.id);
      if (e.status != RequestStatus::Finished) ++live;
      FASTINFER_CHECK(has_seq == (e.status == RequestStatus::Running), Error, "ContinuousBatcher: request ",
                      e.req.id, has_seq ? " holds a sequence but is not running" : " runs without a sequence");
      if (has_seq)
        FASTINFER_CHECK(alloc_.length(e.req.id) == e.computed, Error, "ContinuousBatcher: request ", e.req.id,
                        " computed ", e.computed, " tokens but its sequence holds ", alloc_.length(e.req.id));
      if (e.status == RequestStatus::Swapped)
        FASTINFER_CHECK(std::int64_t(e.host_blocks.size()) == alloc_.blocks_for(e.computed), Error,
                        "ContinuousBatcher: swapped request ", e.req.id, " holds ", e.host_blocks.size(),
                        " host blocks for ", e.computed, " tokens");
      host += std::int64_t(e.host_blocks.size());
      FASTINFER_CHECK(e.computed < std::int64_t(e.tokens.size()) || e.status == RequestStatus::Finished ||
                          (in_flight_ && e.plan_row >= 0),
                      Error, "ContinuousBatcher: request ", e.req.id, " has nothing left to feed");
    }
    host += std::int64_t(host_to_release_.size());
    FASTINFER_CHECK(host + swap_.num_free_blocks() == swap_.num_blocks(), Error,
                    "ContinuousBatcher: host swap blocks leak");
    FASTINFER_CHECK(live == running_.size() + waiting_.size(), Error, "ContinuousBatcher: ", live,
                    " live requests but ", running_.size(), " running + ", waiting_.size(), " waiting");
    FASTINFER_CHECK(running_.size() <= std::size_t(cfg_.max_seqs), Error, "ContinuousBatcher: ", running_.size(),
                    " running sequences exceed max_seqs ", cfg_.max_seqs);
  }

 private:
  struct Entry {
    Request req;
    std::vector<TokenId> tokens;  // prompt + generated
    std::vector<TokenId> output;
    std::int64_t computed = 0;    // tokens with KV (the allocator length while running)
    RequestStatus status = RequestStatus::Waiting;
    FinishReason reason = FinishReason::None;
    std::uint64_t order = 0;      // submission order: the last tie-break
    std::int64_t submit_step = 0;
    std::int64_t preempted_step = -1;
    std::int32_t preemptions = 0;
    std::shared_ptr<void> pin;    // prefix-cache lock on adopted blocks
    std::vector<std::int32_t> host_blocks;
    std::int32_t plan_row = -1;   // index in plan_.entries while in flight
    bool row_seen = false;
    bool cancel_pending = false;
    std::int32_t draft_want = 0;  // draft slots asked for after each decode
    std::int32_t draft_max_unfed = 1;  // ... after an entry feeding at most this many (all its unfed tokens)
    RequestTiming timing;
    // Service-order key, refreshed every step.
    int k_group = 0;
    std::int64_t k_rank = 0;
  };

  struct Before {
    bool operator()(const Entry* a, const Entry* b) const {
      if (a->k_group != b->k_group) return a->k_group < b->k_group;
      if (a->k_rank != b->k_rank) return a->k_rank < b->k_rank;
      if (a->timing.arrival != b->timing.arrival) return a->timing.arrival < b->timing.arrival;
      return a->order < b->order;
    }
  };

  // Sorts by service order; a queue that is already in order (FCFS, mostly)
  // costs one pass.
  static void sort_by_service(std::vector<Entry*>& v) {
    if (!std::is_sorted(v.begin(), v.end(), Before{})) std::sort(v.begin(), v.end(), Before{});
  }

  static std::int64_t unfed(const Entry& e) { return std::int64_t(e.tokens.size()) - e.computed; }

  Entry* find(RequestId id) const {
    auto it = all_.find(id);
    return it == all_.end() ? nullptr : it->second.get();
  }
  const Entry& get(RequestId id, const char* what) const {
    const Entry* e = find(id);
    FASTINFER_CHECK(e != nullptr, UsageError, "ContinuousBatcher::", what, ": unknown request ", id);
    return *e;
  }

  // Keys: (group, rank, arrival, submission order), smaller first.
  //   Fcfs        : (0, 0)
  //   Priority    : aged (0, 0), else (1, -priority)
  //   PrefixAware : aged (0, 0), running (1, -priority), waiting in the
  //                 lookahead window (2, -cached tokens), other waiting (3, 0)
  void build_order() {
    order_.clear();
    const auto aged = [this](const Entry* e) { return step_ - e->submit_step >= cfg_.starvation_steps; };
    for (Entry* e : running_) {
      const bool first = !use_priority_ || aged(e);
      e->k_group = first ? 0 : 1;
      e->k_rank = first ? 0 : -std::int64_t(e->req.priority);
      order_.push_back(e);
    }
    if (!prefix_aware_) {
      for (Entry* e : waiting_) {
        const bool first = !use_priority_ || aged(e);
        e->k_group = first ? 0 : 1;
        e->k_rank = first ? 0 : -std::int64_t(e->req.priority);
      }
    } else {
      // Probe the cache for the oldest non-aged waiting requests only: a
      // probe walks the prompt, and the queue may be long.
      for (Entry* e : waiting_) {
        e->k_group = aged(e) ? 0 : 3;
        e->k_rank = 0;
      }
      sort_by_service(waiting_);
      std::int32_t probed = 0;
      for (Entry* e : waiting_) {
        if (e->k_group != 3 || probed == cfg_.prefix_lookahead) continue;
        ++probed;
        e->k_group = 2;
        e->k_rank = -cached_hint(*e);
      }
    }
    // Running and waiting sorted apart and merged: the waiting queue may be
    // long, and between steps it rarely changes order.
    sort_by_service(order_);
    sort_by_service(waiting_);
    const std::size_t running = order_.size();
    order_.insert(order_.end(), waiting_.begin(), waiting_.end());
    std::inplace_merge(order_.begin(), order_.begin() + std::ptrdiff_t(running), order_.end(), Before{});
  }

  std::int64_t cached_hint(const Entry& e) const {
    if (e.status == RequestStatus::Swapped) return e.computed;
    if (prefix_.probe) return prefix_.probe(e.tokens, e.req.prefix_namespace);
    if (prefix_.match) return prefix_.match(e.tokens, e.req.prefix_namespace).tokens;
    return 0;
  }

  std::int64_t chunk_limit() const {
    return cfg_.max_prefill_chunk > 0 ? cfg_.max_prefill_chunk : cfg_.max_tokens_per_step;
  }

  // Tokens a request gets this step: all of a decode; a chunk leaves one
  // budget token per later decode, but gets at least one token.
  std::int64_t tokens_for(std::int64_t want) const {
    if (want == 1) return budget_ >= 1 ? 1 : 0;
    std::int64_t room = std::max<std::int64_t>(budget_ - decodes_left_, 1);
    return std::min({want, chunk_limit(), room, budget_});
  }

  void schedule_running(Entry* e, std::size_t i) {
    const std::int64_t want = unfed(*e);
    if (want == 1) --decodes_left_;
    const std::int64_t n = tokens_for(want);
    if (n <= 0) return;
    const RequestId id = e->req.id;
    if (!make_room(e, i, [&] { return alloc_.blocks_to_append(id, n); })) return;
    const std::int64_t d = n == want && want <= e->draft_max_unfed ? drafts_for(*e, n) : 0;
    const bool ok = alloc_.reserve(id, n + d, &plan_.copies);
    FASTINFER_CHECK(ok, Error, "ContinuousBatcher: reservation failed after making room (bug)");
    alloc_.append(id, n + d);
    add_entry(e, n, d);
  }

  // Draft slots after an entry of `e` feeding its n unfed tokens (they
  // already have room): as many of the asked ones as leave a budget token
  // and a free block for every later running decode plus the watermark, and
  // room in max_new_tokens and the context for the target's token after the
  // last draft.
  std::int64_t drafts_for(const Entry& e, std::int64_t n) const {
    if (e.draft_want <= 0) return 0;
    std::int64_t d = std::min<std::int64_t>(
        {std::int64_t(e.draft_want), std::int64_t(e.req.max_new_tokens) - std::int64_t(e.output.size()) - 1,
         cfg_.max_context - std::int64_t(e.tokens.size()) - 1, budget_ - n - decodes_left_});
    const std::int64_t spare = alloc_.num_free_blocks() - cfg_.watermark_blocks - decodes_left_;
    while (d > 0 && alloc_.blocks_to_append(e.req.id, n + d) > spare) --d;
    return std::max<std::int64_t>(d, 0);
  }

  // Frees blocks until need() fits: the prefix cache first, then victims
  // from the end of the service order (never before index i). False when
  // `e` itself had to be preempted or (NoEviction) cannot be served now.
  template <typename Need>
  bool make_room(Entry* e, std::size_t i, Need&& need, std::int64_t extra = 0) {
    for (;;) {
      const std::int64_t want = need() + extra;
      const std::int64_t free = alloc_.num_free_blocks();
      if (want <= free) return true;
      if (evict_cache(want - free)) continue;
      if (!preempts_) return false;
      Entry* v = next_victim(i);
      if (v == nullptr) {
        if (e->status == RequestStatus::Running) preempt(e, /*self=*/true);
        return false;
      }
      preempt(v, /*self=*/false);
    }
  }

  bool evict_cache(std::int64_t blocks) {
    if (!prefix_.evict) return false;
    const std::int64_t before_free = alloc_.num_free_blocks();
    prefix_.evict(blocks);
    return alloc_.num_free_blocks() > before_free;
  }

  // The latest running request after index i in service order.
  Entry* next_victim(std::size_t i) {
    while (victim_cursor_ > i + 1) {
      Entry* v = order_[victim_cursor_ - 1];
      if (v->status == RequestStatus::Running && v->preempted_step != step_ && v->plan_row < 0) return v;
      --victim_cursor_;
    }
    return nullptr;
  }

  // `self`: the request being served preempts itself (it was already
  // taken off decodes_left_); otherwise a later, not yet visited one.
  void preempt(Entry* v, bool self) {
    const RequestId id = v->req.id;
    if (!self && unfed(*v) == 1) --decodes_left_;
    bool swapped = false;
    if (swaps_) {
      const std::vector<BlockId>& table = alloc_.block_table(id);
      const std::int64_t nb = alloc_.blocks_for(v->computed);
      const std::size_t first = v->host_blocks.size();
      if (nb > 0 && swap_.allocate(std::int32_t(nb), v->host_blocks)) {
        for (std::int64_t k = 0; k < nb; ++k)
          plan_.swap_out.push_back({table[std::size_t(k)], v->host_blocks[first + std::size_t(k)]});
        swapped = true;
      }
    }
    v->pin.reset();
    alloc_.free_sequence(id);
    if (!swapped) v->computed = 0;
    v->status = swapped ? RequestStatus::Swapped : RequestStatus::Waiting;
    v->preempted_step = step_;
    ++v->preemptions;
    --num_running_;
    plan_.preempted.push_back(id);
    metrics_.on_preempt(swapped);
  }

  // Admits a waiting or swapped request if it fits (preempting later running
  // ones when the policy allows); closes admission for the step otherwise.
  void admit(Entry* e, std::size_t i) {
    // A request preempted in this very step does not come straight back;
    // the ones behind it are later in service order and wait too.
    if (e->preempted_step == step_ || budget_ <= 0) {
      admission_open_ = false;
      return;
    }
    if (num_running_ >= cfg_.max_seqs) {
      Entry* v = preempts_ ? next_victim(i) : nullptr;
      if (v == nullptr) {
        admission_open_ = false;
        return;
      }
      preempt(v, /*self=*/false);
    }
    if (!(e->status == RequestStatus::Swapped ? swap_in(e, i) : admit_fresh(e, i))) admission_open_ = false;
  }

  bool swap_in(Entry* e, std::size_t i) {
    const std::int64_t n = tokens_for(unfed(*e));
    if (n <= 0) return false;
    const std::int64_t need = alloc_.blocks_for(e->computed + n);
    if (!make_room(e, i, [&] { return need; }, cfg_.watermark_blocks)) return false;
    const RequestId id = e->req.id;
    alloc_.add_sequence(id);
    alloc_.extend(id, e->computed);
    const std::vector<BlockId>& table = alloc_.block_table(id);
    for (std::size_t k = 0; k < e->host_blocks.size(); ++k) plan_.swap_in.push_back({table[k], e->host_blocks[k]});
    // The host blocks are read when the plan runs, after any swap-out of
    // this step: they become reusable only at commit().
    host_to_release_.insert(host_to_release_.end(), e->host_blocks.begin(), e->host_blocks.end());
    e->host_blocks.clear();
    alloc_.reserve(id, n, &plan_.copies);
    alloc_.append(id, n);
    e->status = RequestStatus::Running;
    ++num_running_;
    add_entry(e, n);
    return true;
  }

  bool admit_fresh(Entry* e, std::size_t i) {
    const std::int64_t total = std::int64_t(e->tokens.size());
    PrefixMatch m;
    std::int64_t matched = 0;
    if (prefix_.match) {
      m = prefix_.match(e->tokens, e->req.prefix_namespace);
      // Always compute the last token ourselves: its logits pick the next one.
      matched = std::min<std::int64_t>(std::max<std::int64_t>(m.tokens, 0), total - 1);
      const std::int64_t keep = alloc_.blocks_for(matched);
      FASTINFER_CHECK(std::int64_t(m.blocks.size()) >= keep, InvalidArgument, "prefix provider matched ", m.tokens,
                      " tokens of request ", e->req.id, " but returned only ", m.blocks.size(), " blocks");
      m.blocks.resize(std::size_t(keep));
    }
    const std::int64_t n = tokens_for(total - matched);
    if (n <= 0) return false;
    std::int64_t reserve = n;
    if (reserve_all_) {
      // The whole life: every token that will ever be fed.
      const std::int64_t last = std::min<std::int64_t>(std::int64_t(e->req.prompt.size()) + e->req.max_new_tokens,
                                                       cfg_.max_context);
      reserve = std::max(last - 1 - matched, n);
    }
    const std::int64_t bs = alloc_.block_size();
    const std::int64_t need =
        alloc_.blocks_for(matched + reserve) - alloc_.blocks_for(matched) + (matched % bs != 0 ? 1 : 0);
    if (!make_room(e, i, [&] { return need; }, cfg_.watermark_blocks)) return false;
    const RequestId id = e->req.id;
    if (matched > 0) {
      alloc_.adopt(id, m.blocks, matched);
      e->pin = std::move(m.pin);
    } else {
      alloc_.add_sequence(id);
    }
    const bool ok = alloc_.reserve(id, reserve, &plan_.copies);
    FASTINFER_CHECK(ok, Error, "ContinuousBatcher: admission reservation failed after making room (bug)");
    alloc_.append(id, n);
    e->computed = matched;
    e->status = RequestStatus::Running;
    ++num_running_;
    metrics_.on_admit(total, matched);
    add_entry(e, n);
    return true;
  }

  void add_entry(Entry* e, std::int64_t n, std::int64_t drafts = 0) {
    PlanEntry pe;
    pe.id = e->req.id;
    pe.position = e->computed;
    pe.num_tokens = std::int32_t(n);
    pe.samples = e->computed + n == std::int64_t(e->tokens.size());
    pe.sample_index = std::int32_t(e->output.size());
    pe.num_drafts = std::int32_t(drafts);
    e->plan_row = std::int32_t(plan_.entries.size());
    e->row_seen = false;
    plan_.entries.push_back(pe);
    planned_.push_back(e);
    const auto first = e->tokens.begin() + std::ptrdiff_t(e->computed);
    plan_.tokens.insert(plan_.tokens.end(), first, first + std::ptrdiff_t(n));
    plan_.token_indptr.push_back(std::int32_t(plan_.tokens.size()));
    e->computed += n;
    budget_ -= n + drafts;
  }

  void validate_result(const StepResult& res) {
    FASTINFER_CHECK(res.indptr.size() == res.ids.size() + 1 && res.indptr.front() == 0 &&
                        std::size_t(res.indptr.back()) == res.tokens.size(),
                    UsageError, "StepResult: indptr does not describe ", res.ids.size(), " rows over ",
                    res.tokens.size(), " tokens");
    FASTINFER_CHECK(res.kv_kept.empty() || res.kv_kept.size() == res.ids.size(), UsageError, "StepResult: ",
                    res.kv_kept.size(), " kv_kept counts for ", res.ids.size(), " rows");
    std::vector<Entry*> seen;
    seen.reserve(res.rows());
    auto unmark = [&] {
      for (Entry* s : seen) s->row_seen = false;
    };
    for (std::size_t r = 0; r < res.rows(); ++r) {
      Entry* e = find(res.ids[r]);
      const bool sampled = e != nullptr && e->plan_row >= 0 && plan_.entries[std::size_t(e->plan_row)].samples;
      if (!sampled || e->row_seen || res.indptr[r + 1] <= res.indptr[r]) {
        const bool twice = sampled && e->row_seen;
        unmark();
        FASTINFER_CHECK(sampled, UsageError, "StepResult: request ", res.ids[r], " did not sample in step ", step_);
        FASTINFER_CHECK(!twice, UsageError, "StepResult: two rows for request ", res.ids[r]);
        throw_error<UsageError>("StepResult: the row of request ", res.ids[r], " holds no token");
      }
      const std::int32_t kept = res.kept(r);
      const std::int32_t slots = plan_.entries[std::size_t(e->plan_row)].num_drafts;
      if (kept < 0 || kept > slots || kept >= res.indptr[r + 1] - res.indptr[r]) {
        unmark();
        throw_error<UsageError>("StepResult: request ", res.ids[r], " keeps the KV of ", kept,
                                " tokens, but had ", slots, " draft slots and ", res.indptr[r + 1] - res.indptr[r],
                                " tokens in its row");
      }
      for (std::int32_t k = res.indptr[r]; k < res.indptr[r + 1]; ++k) {
        const TokenId t = res.tokens[std::size_t(k)];
        if (t < 0 || (cfg_.vocab_size > 0 && t >= cfg_.vocab_size)) {
          unmark();
          throw_error<InvalidArgument>("StepResult: token ", t, " for request ", res.ids[r],
                                       " is outside the vocabulary");
        }
      }
      e->row_seen = true;
      seen.push_back(e);
    }
    for (std::size_t k = 0; k < planned_.size(); ++k) {
      const Entry* e = planned_[k];
      if (plan_.entries[k].samples && !e->cancel_pending && !e->row_seen) {
        unmark();
        throw_error<UsageError>("StepResult: no row for request ", e->req.id, ", which sampled in step ", step_);
      }
    }
    unmark();
  }

  void apply_tokens(Entry* e, const TokenId* row, std::size_t n, double now) {
    const auto& stops = e->req.stop_ids;
    for (std::size_t k = 0; k < n; ++k) {
      const TokenId t = row[k];
      if (std::find(stops.begin(), stops.end(), t) != stops.end()) {
        finish(e, FinishReason::Stop, now);
        return;
      }
      e->tokens.push_back(t);
      e->output.push_back(t);
      if (e->timing.first_token < 0.0) e->timing.first_token = now;
      e->timing.token_times.push_back(now);
      if (std::int64_t(e->output.size()) >= e->req.max_new_tokens) {
        finish(e, FinishReason::MaxNewTokens, now);
        return;
      }
      if (std::int64_t(e->tokens.size()) >= cfg_.max_context) {
        finish(e, FinishReason::ContextFull, now);
        return;
      }
    }
  }

  // Releases what the request holds; the caller takes it off its list.
  void finish(Entry* e, FinishReason reason, double now) {
    const RequestId id = e->req.id;
    if (e->status == RequestStatus::Running) {
      const std::int64_t full = e->computed / alloc_.block_size();
      if (prefix_.insert && full > 0 && reason != FinishReason::Cancelled) {
        const std::vector<BlockId>& table = alloc_.block_table(id);
        const std::vector<TokenId> toks(e->tokens.begin(),
                                        e->tokens.begin() + std::ptrdiff_t(full * alloc_.block_size()));
        const std::vector<BlockId> blocks(table.begin(), table.begin() + std::ptrdiff_t(full));
        prefix_.insert(toks, blocks, e->req.prefix_namespace);
      }
      e->pin.reset();
      alloc_.free_sequence(id);
    } else if (e->status == RequestStatus::Swapped) {
      swap_.release(e->host_blocks);
      e->host_blocks.clear();
    }
    e->status = RequestStatus::Finished;
    e->reason = reason;
    e->timing.finish = now;
    if (reason == FinishReason::Cancelled)
      metrics_.on_cancel();
    else
      metrics_.on_finish(e->timing, std::int64_t(e->req.prompt.size()), std::int64_t(e->output.size()));
    left_.push_back(id);
  }

  PagedAllocator& alloc_;
  SchedulerConfig cfg_;
  PrefixProvider prefix_;
  SchedulerClock clock_;
  HostSwapSpace swap_;
  bool preempts_ = true, swaps_ = false, reserve_all_ = false;
  bool use_priority_ = false, prefix_aware_ = false;

  std::unordered_map<RequestId, std::unique_ptr<Entry>> all_;
  std::vector<Entry*> running_;
  std::vector<Entry*> waiting_;  // waiting and swapped
  std::vector<Entry*> order_;    // this step's service order
  std::uint64_t next_order_ = 0;
  std::int64_t step_ = 0;
  bool in_flight_ = false;

  // Per-step state of schedule().
  std::int64_t budget_ = 0;
  std::int64_t decodes_left_ = 0;
  std::int64_t num_running_ = 0;
  bool admission_open_ = true;
  std::size_t victim_cursor_ = 0;

  StepPlan plan_;
  std::vector<Entry*> planned_;  // parallel to plan_.entries
  std::vector<RequestId> left_;       // finished or cancelled since the last plan
  std::vector<RequestId> committed_;  // finished in the last commit
  std::vector<std::int32_t> host_to_release_;  // swapped in by the plan in flight
  SchedulerMetrics metrics_;
};

}  // namespace fastinfer::sched
