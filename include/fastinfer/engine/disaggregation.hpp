// Disaggregated prefill and decode (DistServe; vLLM's KV connector): a
// PrefillServer runs requests' prompts on its Engine, and as soon as a
// request has its first token it pins the request's KV (transfer::KVExport),
// ends it there and offers it to a DecodeServer on another rank, which
// imports the KV into its own pool and continues the request with
// Engine::submit_prefilled. Both sides are driven by step(); a
// transfer::KVTransport carries the messages and the bytes.
//
// The protocol (docs/disaggregation.md has the long form), per request:
//   prefill                                  decode
//   first token; export (block refs held)
//   Offer{manifest}                  ->      parse + validate (Reject if bad:
//                                            the pool is not touched); import
//                                            = allocate all blocks or Busy;
//                                   <-       post receives; Ready
//   post sends (layer-major)         =>      bytes land layer by layer
//                                   <-       Done (all landed): adopt into a
//   release the export's refs                sequence, submit_prefilled
//                                   <-       Result{reason, tokens} at its end
// Busy: the prefill side offers the request to the next decode rank after
// a short back-off. A peer silent past DisaggConfig::timeout_seconds fails
// the request (status Failed) and frees its blocks on the side that waits:
// the prefill side's export, the decode side's import. So a killed decode
// rank never hangs the prefill rank, and both pools end whole. A rank that
// timed out gets no more offers until it answers something.
//
// Identity with a single engine: the KV bytes are copied exactly, the decode
// engine feeds the first token at position prompt.size() like the single
// engine's second step, and the request's sampling stream continues at
// token index generated.size() (the manifest's sample_counter), so greedy
// and seeded sampling give the single-engine tokens for every KV format.
//
// Not thread-safe: one thread drives a server (and its engine).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/engine/engine.hpp"
#include "fastinfer/transfer/kv_transfer.hpp"
#include "fastinfer/transfer/kv_transport.hpp"

namespace fastinfer::engine {

struct DisaggConfig {
  // A peer that has not answered the current phase of a hand-off (offer,
  // bytes) within this long is given up on: the request fails, its blocks
  // go back.
  double timeout_seconds = 5.0;
  // Prefill side: how long to wait for the decode rank's Result after the
  // bytes landed (the whole decode); 0: forever.
  double result_timeout_seconds = 600.0;
  // Prefill side: pause before re-offering a request every decode rank
  // answered Busy.
  double busy_backoff_seconds = 0.002;
  // Decode side: offer imported full blocks to the decode engine's prefix
  // cache (when it has one).
  bool cache_imported = false;
};

enum class HandoffStatus { Prefilling, Offered, Sending, Decoding, Finished, Failed };

// A request's end as the prefill side (its client) sees it.
struct HandoffResult {
  HandoffStatus status = HandoffStatus::Prefilling;
  std::vector<TokenId> tokens;  // the whole output (prefill's first token included)
  FinishReason reason = FinishReason::None;
  std::string error;            // why it failed
  int decode_rank = -1;         // -1: finished on the prefill rank
  // Seconds on the prefill clock.
  double arrival = 0, first_token = 0, offered = 0, landed = 0, finish = 0;
  double decode_itl_p50 = 0, decode_itl_p99 = 0;  // reported by the decode rank
  std::int64_t kv_bytes = 0;                      // bytes of KV shipped
};

namespace disagg_detail {

inline double from_bits(std::uint64_t u) {
  double d;
  std::memcpy(&d, &u, sizeof d);
  return d;
}
inline std::uint64_t to_bits(double d) {
  std::uint64_t u;
  std::memcpy(&u, &d, sizeof u);
  return u;
}

}  // namespace disagg_detail

// What a server's run() does when a step found nothing to do: a short sleep,
// so that ranks sharing cores with busy ones do not spin.
inline void idle_pause() { std::this_thread::sleep_for(std::chrono::microseconds(50)); }

template <typename Backend = CpuBackend>
class PrefillServer {
 public:
  PrefillServer(Engine<Backend>& engine, transfer::KVTransport& transport, std::vector<int> decode_ranks,
                DisaggConfig cfg = {})
      : engine_(engine), transport_(transport), decode_ranks_(std::move(decode_ranks)), cfg_(cfg) {
    FASTINFER_CHECK(!decode_ranks_.empty(), InvalidArgument, "PrefillServer: no decode ranks");
  }

  // Queues a request; returns its key (the transfer id). Bad input throws
  // as Engine::submit does.
  std::uint64_t submit(Request r) {
    const std::uint64_t key = next_key_;
    Request kept = r;
    // The first token, or an end before any (a stop id sampled first).
    const RequestId eid = engine_.submit(
        std::move(r), [this, key](RequestId, TokenId) { first_token_.push_back(key); },
        [this, key](RequestId, FinishReason) { first_token_.push_back(key); });
    ++next_key_;
    ++live_;
    Pending& p = pending_[key];
    kept.id = eid;
    kept.arrival_time = engine_.timing(eid).arrival;
    p.request = std::move(kept);
    p.engine_id = eid;
    p.result.arrival = p.request.arrival_time;
    return key;
  }

  // Requests not yet finished or failed.
  std::size_t live() const { return live_; }
  bool has_work() const { return live_ > 0; }
  // Exports still holding prefill blocks (0 when nothing is in flight).
  std::size_t held_exports() const {
    std::size_t n = 0;
    for (const auto& kv : pending_) n += kv.second.x.held();
    return n;
  }

  // One engine step (when it has work), then hand-offs, messages, timeouts.
  // False when nothing happened (the caller may sleep a little).
  bool step() {
    bool busy = engine_.has_work() && engine_.step();
    busy = hand_off_() || busy;
    while (auto m = transport_.receive()) {
      on_message_(*m);
      busy = true;
    }
    check_timeouts_();
    return busy;
  }
  void run() {
    while (has_work())
      if (!step()) idle_pause();
  }
  // Tells every decode rank that no more offers come.
  void shutdown() {
    for (int r : decode_ranks_) transport_.send(r, transfer::MessageKind::Shutdown, {});
  }

  const HandoffResult& result(std::uint64_t key) const { return get_(key).result; }
  std::vector<std::uint64_t> keys() const {
    std::vector<std::uint64_t> k;
    for (const auto& kv : pending_) k.push_back(kv.first);
    return k;
  }
  Engine<Backend>& engine() { return engine_; }

 private:
  struct Pending {
    Request request;  // as submitted; id = the engine's
    RequestId engine_id = -1;
    transfer::KVExport x;
    transfer::TransferHandle handle = 0;
    int rank = -1;
    int busy = 0;            // Busy answers since the last Ready
    double deadline = 0;     // of the current phase
    double retry_at = -1;    // re-offer after Busy everywhere
    HandoffResult result;
  };

  double now_() const { return engine_.now(); }

  const Pending& get_(std::uint64_t key) const {
    auto it = pending_.find(key);
    FASTINFER_CHECK(it != pending_.end(), UsageError, "PrefillServer: unknown request ", key);
    return it->second;
  }

  bool hand_off_() {
    bool any = !first_token_.empty();
    std::vector<std::uint64_t> keys;
    keys.swap(first_token_);  // cancel() below calls back into first_token_
    for (std::uint64_t key : keys) {
      Pending& p = pending_.at(key);
      if (p.result.status != HandoffStatus::Prefilling) continue;
      const RequestId id = p.engine_id;
      p.result.first_token = engine_.timing(id).first_token;
      if (engine_.status(id) == sched::RequestStatus::Finished) {
        // Ended on its first token (stop id, max_new_tokens 1, full context).
        p.result.tokens = engine_.output(id);
        p.result.reason = engine_.finish_reason(id);
        p.result.finish = now_();
        p.result.status = HandoffStatus::Finished;
        --live_;
        engine_.retire(id);
        continue;
      }
      p.x = transfer::export_sequence(engine_.kv_pool(), id, p.request, engine_.output(id), key);
      p.result.kv_bytes = p.x.manifest().kv_bytes();
      engine_.cancel(id);  // the export's references keep the KV
      engine_.retire(id);
      offer_(p);
    }
    for (auto& kv : pending_) {
      if (kv.second.retry_at >= 0 && now_() >= kv.second.retry_at) {
        offer_(kv.second);
        any = true;
      }
    }
    return any;
  }

  void offer_(Pending& p) {
    p.retry_at = -1;
    // Round robin over the ranks not known to be down.
    std::size_t tries = 0;
    do {
      p.rank = decode_ranks_[next_rank_++ % decode_ranks_.size()];
    } while (down_.count(p.rank) != 0 && ++tries < decode_ranks_.size());
    if (down_.count(p.rank) != 0) {
      fail_(p, "no decode rank is answering");
      return;
    }
    p.result.status = HandoffStatus::Offered;
    p.result.offered = now_();
    p.deadline = now_() + cfg_.timeout_seconds;
    transport_.send(p.rank, transfer::MessageKind::Offer, transfer::serialize_manifest(p.x.manifest()));
  }

  void fail_(Pending& p, std::string why) {
    if (p.handle != 0) transport_.cancel(p.handle);
    p.handle = 0;
    p.x.release();
    p.result.status = HandoffStatus::Failed;
    p.result.error = std::move(why);
    p.result.finish = now_();
    --live_;
  }

  void on_message_(const transfer::Message& m) {
    down_.erase(m.peer);  // it answers again
    if (m.words.empty()) return;
    auto it = pending_.find(m.words[0]);
    // Late answers about requests already failed (or never ours): ignored;
    // the decode side times its own half out.
    if (it == pending_.end() || it->second.rank != m.peer) return;
    Pending& p = it->second;
    using K = transfer::MessageKind;
    switch (m.kind) {
      case K::Ready:
        if (p.result.status != HandoffStatus::Offered) return;
        p.busy = 0;
        p.handle = transport_.post_send(m.peer, it->first, p.x.descriptors());
        p.result.status = HandoffStatus::Sending;
        p.deadline = now_() + cfg_.timeout_seconds;
        return;
      case K::Busy:
        if (p.result.status != HandoffStatus::Offered) return;
        // Every decode rank said no: wait a little before going round again.
        if (++p.busy >= int(decode_ranks_.size())) {
          p.busy = 0;
          p.retry_at = now_() + cfg_.busy_backoff_seconds;
        } else {
          offer_(p);
        }
        return;
      case K::Reject:
        if (p.result.status != HandoffStatus::Offered) return;
        fail_(p, "decode rank " + std::to_string(m.peer) + " rejected the offer: " + text_(m.words, 1));
        return;
      case K::Done:
        if (p.result.status != HandoffStatus::Sending) return;
        transport_.cancel(p.handle);  // every byte has landed: nothing is read any more
        p.handle = 0;
        p.x.release();
        p.result.status = HandoffStatus::Decoding;
        p.result.landed = now_();
        p.deadline = cfg_.result_timeout_seconds > 0 ? now_() + cfg_.result_timeout_seconds : -1;
        return;
      case K::Result: {
        if (p.result.status != HandoffStatus::Decoding || m.words.size() < 5) return;
        p.result.reason = FinishReason(m.words[1]);
        p.result.decode_itl_p50 = disagg_detail::from_bits(m.words[2]);
        p.result.decode_itl_p99 = disagg_detail::from_bits(m.words[3]);
        const std::size_t n = std::size_t(m.words[4]);
        if (m.words.size() != 5 + n) return;
        p.result.tokens.clear();
        for (std::size_t i = 0; i < n; ++i) p.result.tokens.push_back(TokenId(std::int64_t(m.words[5 + i])));
        p.result.decode_rank = m.peer;
        p.result.status = HandoffStatus::Finished;
        p.result.finish = now_();
        --live_;
        return;
      }
      default: return;
    }
  }

  static std::string text_(const std::vector<std::uint64_t>& w, std::size_t from) {
    std::string s;
    for (std::size_t i = from; i < w.size(); ++i) s += char(std::uint8_t(w[i]));
    return s;
  }

  void check_timeouts_() {
    const double t = now_();
    for (auto& kv : pending_) {
      Pending& p = kv.second;
      const HandoffStatus s = p.result.status;
      const bool waiting = s == HandoffStatus::Offered || s == HandoffStatus::Sending ||
                           (s == HandoffStatus::Decoding && p.deadline >= 0);
      if (waiting && p.retry_at < 0 && t > p.deadline) {
        // Offer no more to it until it answers something.
        down_.insert(p.rank);
        fail_(p, "decode rank " + std::to_string(p.rank) + " did not answer within " +
                     std::to_string(s == HandoffStatus::Decoding ? cfg_.result_timeout_seconds : cfg_.timeout_seconds) +
                     " s");
      }
    }
  }

  Engine<Backend>& engine_;
  transfer::KVTransport& transport_;
  std::vector<int> decode_ranks_;
  DisaggConfig cfg_;
  std::map<std::uint64_t, Pending> pending_;
  std::vector<std::uint64_t> first_token_;  // keys whose first token came in the last step
  std::set<int> down_;                      // decode ranks that timed out and have not answered since
  std::uint64_t next_key_ = 1;
  std::size_t next_rank_ = 0;
  std::size_t live_ = 0;
};

template <typename Backend = CpuBackend>
class DecodeServer {
 public:
  DecodeServer(Engine<Backend>& engine, transfer::KVTransport& transport, DisaggConfig cfg = {})
      : engine_(engine), transport_(transport), cfg_(cfg) {}

  // Offers, landed transfers, one engine step, finished requests. False
  // when nothing happened (the caller may sleep a little).
  bool step() {
    bool busy = false;
    while (auto m = transport_.receive()) {
      on_message_(*m);
      busy = true;
    }
    busy = land_() || busy;
    if (engine_.has_work()) busy = engine_.step() || busy;
    busy = report_() || busy;
    return busy;
  }
  // Until the prefill side said Shutdown and everything here has ended.
  void run() {
    while (!done())
      if (!step()) idle_pause();
  }
  bool done() const { return shutdown_ && imports_.empty() && !engine_.has_work() && finished_.empty(); }

  std::size_t pending_imports() const { return imports_.size(); }
  std::int64_t rejected() const { return rejected_; }
  std::int64_t admitted() const { return admitted_; }
  Engine<Backend>& engine() { return engine_; }

 private:
  struct Import {
    int peer = -1;
    transfer::KVImport in;
    transfer::TransferHandle handle = 0;
    double deadline = 0;
  };
  struct Live {
    int peer = -1;
    std::uint64_t key = 0;
  };

  void on_message_(const transfer::Message& m) {
    using K = transfer::MessageKind;
    if (m.kind == K::Shutdown) {
      shutdown_ = true;
      return;
    }
    if (m.kind != K::Offer) return;
    transfer::KVManifest man;
    try {
      man = transfer::parse_manifest(m.words);
      const std::uint64_t key = man.transfer_id;
      const std::size_t busy = engine_.batcher().num_running() + imports_.size();
      if (busy >= std::size_t(engine_.config().scheduler.max_seqs)) {
        transport_.send(m.peer, K::Busy, {key});
        return;
      }
      const transfer::KVPoolView pool = engine_.kv_pool();
      transfer::validate_manifest(man, pool);  // before anything is evicted
      // Leave a block for each running request's next token; make room by
      // evicting cached prefixes first, as the batcher does for a new request.
      const std::int64_t reserve =
          std::int64_t(engine_.batcher().num_running()) + engine_.config().scheduler.watermark_blocks;
      const std::int64_t short_by = man.num_blocks() + reserve - pool.allocator->num_free_blocks();
      if (short_by > 0 && engine_.prefix_cache() != nullptr)
        engine_.prefix_cache()->evict(std::min(short_by, engine_.prefix_cache()->evictable_blocks()));
      Import im;
      im.in = transfer::KVImport(pool, std::move(man), reserve);
      if (!im.in.ok()) {
        transport_.send(m.peer, K::Busy, {key});
        return;
      }
      im.peer = m.peer;
      im.handle = transport_.post_recv(m.peer, key, im.in.descriptors());
      im.deadline = engine_.now() + cfg_.timeout_seconds;
      imports_.emplace(std::make_pair(m.peer, key), std::move(im));
      transport_.send(m.peer, K::Ready, {key});
    } catch (const Error& e) {
      // Malformed: refused before the pool was touched.
      ++rejected_;
      std::vector<std::uint64_t> w{m.words.size() > 2 ? m.words[2] : 0};
      for (char c : std::string(e.what())) w.push_back(std::uint64_t(std::uint8_t(c)));
      transport_.send(m.peer, K::Reject, std::move(w));
    }
  }

  bool land_() {
    bool any = false;
    for (auto it = imports_.begin(); it != imports_.end();) {
      Import& im = it->second;
      const transfer::TransferStatus s = transport_.test(im.handle);
      if (!s.done) {
        if (engine_.now() > im.deadline) {
          transport_.cancel(im.handle);
          im.in.abort();  // the sender went quiet: give the blocks back
          it = imports_.erase(it);
        } else {
          ++it;
        }
        continue;
      }
      transport_.cancel(im.handle);
      const transfer::KVManifest& man = im.in.manifest();
      prefix::RadixPrefixCache* cache = cfg_.cache_imported ? engine_.prefix_cache() : nullptr;
      Request r = man.request;
      r.arrival_time = -1;  // the decode engine's clock is its own
      const std::optional<RequestId> id = engine_.submit_prefilled(
          std::move(r), man.generated, [&](SeqId seq) { im.in.commit(seq, cache); }, {},
          [this](RequestId rid, FinishReason) { finished_.push_back(rid); });
      if (!id) {
        ++it;  // running set full: try again next step (the import keeps its blocks)
        continue;
      }
      ++admitted_;
      any = true;
      live_[*id] = Live{im.peer, man.transfer_id};
      transport_.send(im.peer, transfer::MessageKind::Done, {man.transfer_id});
      it = imports_.erase(it);
    }
    return any;
  }

  bool report_() {
    const bool any = !finished_.empty();
    for (RequestId id : finished_) {
      const Live l = live_.at(id);
      const std::vector<TokenId>& out = engine_.output(id);
      const RequestMetrics rm = engine_.request_metrics(id);
      std::vector<std::uint64_t> w{l.key, std::uint64_t(engine_.finish_reason(id)), disagg_detail::to_bits(rm.itl_p50),
                                   disagg_detail::to_bits(rm.itl_p99), out.size()};
      for (TokenId t : out) w.push_back(std::uint64_t(std::int64_t(t)));
      transport_.send(l.peer, transfer::MessageKind::Result, std::move(w));
      engine_.retire(id);
      live_.erase(id);
    }
    finished_.clear();
    return any;
  }

  Engine<Backend>& engine_;
  transfer::KVTransport& transport_;
  DisaggConfig cfg_;
  std::map<std::pair<int, std::uint64_t>, Import> imports_;
  std::map<RequestId, Live> live_;
  std::vector<RequestId> finished_;
  bool shutdown_ = false;
  std::int64_t rejected_ = 0, admitted_ = 0;
};

}  // namespace fastinfer::engine
