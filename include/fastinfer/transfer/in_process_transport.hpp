// InProcessTransport: every "rank" is an endpoint of one InProcessHub in one
// process, for tests and single-machine runs. Bulk transfers are memcpy of
// the paired descriptors, ONE LAYER per test() call once both sides have
// posted, so a receiver really sees layers land one after another.
// kill(rank) plays a process that died: nothing it sends or is sent arrives,
// and transfers with it never finish (its peers must time out).
// Not thread-safe: one thread drives every endpoint.
// Backend-free (standard library only).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/transfer/kv_transfer.hpp"
#include "fastinfer/transfer/kv_transport.hpp"

namespace fastinfer::transfer {

class InProcessHub {
 public:
  explicit InProcessHub(int ranks) : inbox_(std::size_t(ranks)), dead_(std::size_t(ranks), false) {
    FASTINFER_CHECK(ranks >= 1, InvalidArgument, "InProcessHub: needs at least one rank, got ", ranks);
  }
  int size() const { return int(inbox_.size()); }
  void kill(int rank) { dead_.at(std::size_t(rank)) = true; }
  bool dead(int rank) const { return dead_.at(std::size_t(rank)); }
  // Bulk transfers not yet finished or cancelled on both sides (0 after a
  // clean run: nothing dangles).
  std::size_t open_transfers() const { return transfers_.size(); }

 private:
  friend class InProcessTransport;
  struct Transfer {
    std::vector<MemoryDescriptor> src, dst;
    bool has_src = false, has_dst = false;
    bool src_open = false, dst_open = false;
    std::size_t next = 0;  // first descriptor not copied
    std::int32_t n_layers = 0;
  };
  using Key = std::tuple<int, int, std::uint64_t>;  // sender, receiver, id

  Transfer& transfer(const Key& k) { return transfers_[k]; }

  std::vector<std::deque<Message>> inbox_;
  std::vector<bool> dead_;
  std::map<Key, Transfer> transfers_;
  std::map<TransferHandle, std::pair<Key, bool>> handles_;  // handle -> (transfer, is sender)
  TransferHandle next_handle_ = 1;
};

class InProcessTransport final : public KVTransport {
 public:
  InProcessTransport(InProcessHub& hub, int rank) : hub_(hub), rank_(rank) {
    FASTINFER_CHECK(rank >= 0 && rank < hub.size(), InvalidArgument, "InProcessTransport: rank ", rank,
                    " outside [0, ", hub.size(), ")");
  }

  int rank() const override { return rank_; }
  int size() const override { return hub_.size(); }

  void send(int peer, MessageKind kind, std::vector<std::uint64_t> words) override {
    check_peer(peer);
    if (hub_.dead(rank_) || hub_.dead(peer)) return;
    hub_.inbox_[std::size_t(peer)].push_back(Message{rank_, kind, std::move(words)});
  }

  std::optional<Message> receive() override {
    auto& q = hub_.inbox_[std::size_t(rank_)];
    if (hub_.dead(rank_) || q.empty()) return std::nullopt;
    Message m = std::move(q.front());
    q.pop_front();
    return m;
  }

  TransferHandle post_send(int peer, std::uint64_t id, const std::vector<MemoryDescriptor>& src) override {
    return post(InProcessHub::Key{rank_, check_peer(peer), id}, src, true);
  }
  TransferHandle post_recv(int peer, std::uint64_t id, const std::vector<MemoryDescriptor>& dst) override {
    return post(InProcessHub::Key{check_peer(peer), rank_, id}, dst, false);
  }

  TransferStatus test(TransferHandle h) override {
    auto it = hub_.handles_.find(h);
    FASTINFER_CHECK(it != hub_.handles_.end(), UsageError, "InProcessTransport::test: unknown handle ", h);
    const InProcessHub::Key key = it->second.first;
    InProcessHub::Transfer& t = hub_.transfer(key);
    const bool alive = !hub_.dead(std::get<0>(key)) && !hub_.dead(std::get<1>(key));
    if (t.has_src && t.has_dst && alive && t.next < t.src.size()) {
      if (t.next == 0) check_descriptor_pairs(t.src, t.dst);
      // One layer per call: the receiver sees them land in order.
      const std::int32_t layer = t.src[t.next].layer;
      for (; t.next < t.src.size() && t.src[t.next].layer == layer; ++t.next)
        std::memcpy(t.dst[t.next].address, t.src[t.next].address, std::size_t(t.src[t.next].bytes));
    }
    TransferStatus s;
    const auto& list = it->second.second ? t.src : t.dst;
    if (!(t.has_src && t.has_dst) || !alive) return s;
    s.done = t.next == list.size();
    s.layers_done = s.done ? t.n_layers : list[t.next].layer;
    return s;
  }

  void cancel(TransferHandle h) override {
    auto it = hub_.handles_.find(h);
    if (it == hub_.handles_.end()) return;
    const InProcessHub::Key key = it->second.first;
    InProcessHub::Transfer& t = hub_.transfer(key);
    (it->second.second ? t.src_open : t.dst_open) = false;
    hub_.handles_.erase(it);
    if (!t.src_open && !t.dst_open) hub_.transfers_.erase(key);
  }

 private:
  int check_peer(int peer) const {
    FASTINFER_CHECK(peer >= 0 && peer < hub_.size() && peer != rank_, InvalidArgument, "InProcessTransport: rank ",
                    rank_, " cannot address peer ", peer);
    return peer;
  }

  TransferHandle post(const InProcessHub::Key& key, const std::vector<MemoryDescriptor>& d, bool sender) {
    InProcessHub::Transfer& t = hub_.transfer(key);
    FASTINFER_CHECK(!(sender ? t.has_src : t.has_dst), UsageError, "InProcessTransport: transfer ",
                    std::get<2>(key), " posted twice by rank ", rank_);
    (sender ? t.src : t.dst) = d;
    (sender ? t.has_src : t.has_dst) = true;
    (sender ? t.src_open : t.dst_open) = true;
    std::int32_t layers = 0;
    for (const MemoryDescriptor& m : d) layers = std::max(layers, m.layer + 1);
    t.n_layers = std::max(t.n_layers, layers);
    const TransferHandle h = hub_.next_handle_++;
    hub_.handles_[h] = {key, sender};
    return h;
  }

  InProcessHub& hub_;
  int rank_;
};

}  // namespace fastinfer::transfer
