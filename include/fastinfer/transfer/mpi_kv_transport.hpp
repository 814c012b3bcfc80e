// MpiKVTransport: the KV-transfer interface over MPI (needs <mpi.h> and the
// MPI library: CMake's MPI::MPI_CXX; fastinfer's own build adds it when
// FASTINFER_WITH_MPI finds MPI). Each rank is one engine process.
//
// Two communicators, duplicated from the one given, keep the two kinds of
// traffic apart: control messages (tag = MessageKind, probed with
// MPI_Iprobe on any source) and bulk KV (tag derived from the transfer id,
// never probed, always matched by a posted receive). The receiver posts an
// MPI_Irecv straight into its destination block memory for every
// descriptor BEFORE it answers Ready, and the sender posts one MPI_Isend per
// descriptor in list (layer-major) order: no staging copy on either side,
// and since MPI keeps the order of messages with one (source, tag,
// communicator), layers complete in order; test() reports how many leading
// layers have landed (MPI_Testsome over the requests).
//
// Failure: the communicators return errors instead of aborting
// (MPI_ERRORS_RETURN), and a transfer with a dead peer simply never
// completes: the caller's timeout cancels it (MPI_Cancel + MPI_Request_free;
// the KV arena outlives the transport, so a late read of a reused block is
// harmless). Run with `mpirun --enable-recovery` so that Open MPI keeps the
// other ranks alive when one is killed.
// Not thread-safe (MPI_THREAD_SINGLE is enough): one thread per rank.
#pragma once

// Only MPI's C API is used: keep Open MPI's and MPICH's deprecated C++
// bindings (and their warnings) out.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/transfer/kv_transport.hpp"

namespace fastinfer::transfer {

class MpiKVTransport final : public KVTransport {
 public:
  // Transfer ids map to tags modulo this (MPI guarantees tags up to 32767):
  // two transfers between one pair of ranks collide only when this many are
  // in flight at once.
  static constexpr int kTagSpace = 16384;

  explicit MpiKVTransport(MPI_Comm comm = MPI_COMM_WORLD) {
    check_(MPI_Comm_dup(comm, &control_), "MPI_Comm_dup");
    check_(MPI_Comm_dup(comm, &data_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(control_, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(data_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(control_, &rank_);
    MPI_Comm_size(control_, &size_);
  }
  ~MpiKVTransport() override {
    for (auto& kv : transfers_) drop_(kv.second);
    for (auto& s : sends_) {
      MPI_Cancel(&s.req);
      MPI_Request_free(&s.req);
    }
    MPI_Comm_free(&control_);
    MPI_Comm_free(&data_);
  }
  MpiKVTransport(const MpiKVTransport&) = delete;
  MpiKVTransport& operator=(const MpiKVTransport&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void send(int peer, MessageKind kind, std::vector<std::uint64_t> words) override {
    reap_sends_();
    sends_.push_back(Send{std::move(words), MPI_REQUEST_NULL});
    Send& s = sends_.back();
    // An error (dead peer) drops the message: the protocol's timeouts cover it.
    if (MPI_Isend(s.words.data(), int(s.words.size()), MPI_UINT64_T, peer, int(kind), control_, &s.req) !=
        MPI_SUCCESS)
      sends_.pop_back();
  }

  std::optional<Message> receive() override {
    reap_sends_();
    int flag = 0;
    MPI_Status st;
    if (MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, control_, &flag, &st) != MPI_SUCCESS || !flag) return std::nullopt;
    int count = 0;
    MPI_Get_count(&st, MPI_UINT64_T, &count);
    Message m;
    m.peer = st.MPI_SOURCE;
    m.kind = MessageKind(st.MPI_TAG);
    m.words.resize(std::size_t(std::max(count, 0)));
    check_(MPI_Recv(m.words.data(), count, MPI_UINT64_T, st.MPI_SOURCE, st.MPI_TAG, control_, MPI_STATUS_IGNORE),
           "MPI_Recv");
    return m;
  }

  TransferHandle post_send(int peer, std::uint64_t id, const std::vector<MemoryDescriptor>& src) override {
    return post_(peer, id, src, true);
  }
  TransferHandle post_recv(int peer, std::uint64_t id, const std::vector<MemoryDescriptor>& dst) override {
    return post_(peer, id, dst, false);
  }

  TransferStatus test(TransferHandle h) override {
    auto it = transfers_.find(h);
    FASTINFER_CHECK(it != transfers_.end(), UsageError, "MpiKVTransport::test: unknown handle ", h);
    Transfer& t = it->second;
    if (t.left > 0) {
      int out = 0;
      idx_.resize(t.reqs.size());
      if (MPI_Testsome(int(t.reqs.size()), t.reqs.data(), &out, idx_.data(), MPI_STATUSES_IGNORE) == MPI_SUCCESS &&
          out != MPI_UNDEFINED) {
        for (int k = 0; k < out; ++k) t.done[std::size_t(idx_[std::size_t(k)])] = 1;
        t.left -= out;
      }
    }
    TransferStatus s;
    s.done = t.left == 0;
    s.layers_done = leading_layers_done(t.desc, t.done, t.n_layers);
    return s;
  }

  void cancel(TransferHandle h) override {
    auto it = transfers_.find(h);
    if (it == transfers_.end()) return;
    drop_(it->second);
    transfers_.erase(it);
  }

 private:
  struct Send {
    std::vector<std::uint64_t> words;
    MPI_Request req;
  };
  struct Transfer {
    std::vector<MemoryDescriptor> desc;
    std::vector<MPI_Request> reqs;
    std::vector<char> done;
    int left = 0;
    std::int32_t n_layers = 0;
  };

  static void check_(int rc, const char* what) {
    FASTINFER_CHECK(rc == MPI_SUCCESS, Error, "MpiKVTransport: ", what, " failed (MPI error ", rc, ")");
  }

  TransferHandle post_(int peer, std::uint64_t id, const std::vector<MemoryDescriptor>& d, bool sender) {
    FASTINFER_CHECK(peer >= 0 && peer < size_ && peer != rank_, InvalidArgument, "MpiKVTransport: rank ", rank_,
                    " cannot address peer ", peer);
    Transfer t;
    t.desc = d;
    t.reqs.assign(d.size(), MPI_REQUEST_NULL);
    t.done.assign(d.size(), 0);
    const int tag = int(id % std::uint64_t(kTagSpace));
    for (std::size_t i = 0; i < d.size(); ++i) {
      FASTINFER_CHECK(d[i].bytes <= std::int64_t(INT32_MAX), InvalidArgument, "MpiKVTransport: descriptor of ",
                      d[i].bytes, " bytes exceeds one MPI message");
      t.n_layers = std::max(t.n_layers, d[i].layer + 1);
      const int rc = sender ? MPI_Isend(d[i].address, int(d[i].bytes), MPI_BYTE, peer, tag, data_, &t.reqs[i])
                            : MPI_Irecv(d[i].address, int(d[i].bytes), MPI_BYTE, peer, tag, data_, &t.reqs[i]);
      // A dead peer: leave the rest unposted; the transfer never completes.
      if (rc != MPI_SUCCESS) {
        t.reqs.resize(i);
        t.left = int(d.size()) + 1;
        break;
      }
      ++t.left;
    }
    const TransferHandle h = next_++;
    transfers_.emplace(h, std::move(t));
    return h;
  }

  static void drop_(Transfer& t) {
    for (std::size_t i = 0; i < t.reqs.size(); ++i) {
      if (t.reqs[i] == MPI_REQUEST_NULL) continue;
      MPI_Cancel(&t.reqs[i]);
      MPI_Request_free(&t.reqs[i]);
    }
  }

  // Control sends whose buffers MPI no longer needs.
  void reap_sends_() {
    sends_.erase(std::remove_if(sends_.begin(), sends_.end(),
                                [](Send& s) {
                                  int flag = 0;
                                  MPI_Test(&s.req, &flag, MPI_STATUS_IGNORE);
                                  return flag != 0;
                                }),
                 sends_.end());
  }

  MPI_Comm control_ = MPI_COMM_NULL, data_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::map<TransferHandle, Transfer> transfers_;
  // Control messages in flight; moving a Send keeps its words' heap buffer,
  // which is what MPI reads.
  std::vector<Send> sends_;
  std::vector<int> idx_;
  TransferHandle next_ = 1;
};

}  // namespace fastinfer::transfer
