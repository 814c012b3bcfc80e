// The seam a transport plugs into: small control messages plus bulk
// transfers of descriptor lists (NIXL's shape: register memory, exchange
// descriptors, post a transfer, poll it). Two implementations:
// InProcessTransport (transfer/in_process_transport.hpp: tests, one process
// playing every rank) and MpiKVTransport (transfer/mpi_kv_transport.hpp,
// only with MPI: non-blocking sends of the registered runs, layer by layer).
//
// Contract:
//  - send(peer, kind, words) queues a control message; receive() returns one
//    that has arrived, without waiting. Messages between one pair of ranks
//    arrive in order.
//  - post_send / post_recv start the bulk transfer `id` between two ranks:
//    the sender's and the receiver's descriptor lists pair index by index
//    (same sizes; check_descriptor_pairs). Descriptors are sent in list
//    order, which is layer-major, so test() can report layers_done: the
//    leading layers whose bytes have all landed.
//  - test(h) polls; a transfer whose peer died never reports done: the
//    caller's timeout decides. cancel(h) forgets it (the memory may be
//    reused; the transport stops writing or reading it as far as it can).
// Backend-free (standard library only).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "fastinfer/transfer/kv_descriptor.hpp"

namespace fastinfer::transfer {

// What a control message says (disaggregation protocol, docs/disaggregation.md).
enum class MessageKind : std::int32_t {
  Offer = 1,     // prefill -> decode: a manifest (its words)
  Ready = 2,     // decode -> prefill: {id}: blocks allocated, receives posted
  Busy = 3,      // decode -> prefill: {id}: no room now, try elsewhere or later
  Reject = 4,    // decode -> prefill: {id, reason chars...}: malformed, never retry
  Done = 5,      // decode -> prefill: {id}: bytes landed, sender may free its blocks
  Result = 6,    // decode -> prefill: {id, finish reason, tokens...}
  Shutdown = 7,  // prefill -> decode: no more offers
};

struct Message {
  int peer = -1;
  MessageKind kind = MessageKind::Offer;
  std::vector<std::uint64_t> words;
};

using TransferHandle = std::int64_t;

struct TransferStatus {
  bool done = false;
  std::int32_t layers_done = 0;  // leading layers fully landed (receiver) or sent (sender)
};

class KVTransport {
 public:
  virtual ~KVTransport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual void send(int peer, MessageKind kind, std::vector<std::uint64_t> words) = 0;
  virtual std::optional<Message> receive() = 0;
  virtual TransferHandle post_send(int peer, std::uint64_t id, const std::vector<MemoryDescriptor>& src) = 0;
  virtual TransferHandle post_recv(int peer, std::uint64_t id, const std::vector<MemoryDescriptor>& dst) = 0;
  virtual TransferStatus test(TransferHandle h) = 0;
  virtual void cancel(TransferHandle h) = 0;
};

// The leading layers of a layer-major descriptor list whose entries are all
// marked done (done[i] for descriptor i); n_layers when all are.
inline std::int32_t leading_layers_done(const std::vector<MemoryDescriptor>& d, const std::vector<char>& done,
                                        std::int32_t n_layers) {
  std::int32_t layer = 0;
  for (std::size_t i = 0; i < d.size(); ++i) {
    if (!done[i]) return d[i].layer;
    layer = d[i].layer + 1;
  }
  return d.empty() ? n_layers : layer;
}

}  // namespace fastinfer::transfer
