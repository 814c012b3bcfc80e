// KVStore: a model's KV cache as the model and the engine see it — sequence
// bookkeeping (kv::KVCache's verbs) plus the operations on its bytes (append,
// attention, block copies and swaps), behind one small virtual interface.
//
// The bytes belong to a compute backend: a backend's make_kv_store() returns
// its implementation (the CPU's: backend/cpu/kv_store.hpp), and nothing above
// it reads or writes KV bytes except through these verbs. Pointers passed to
// append() and attend() point into the backend's own activation buffers;
// read() and swap_out()/swap_in() are the host's way in and out.
//
// Why type erasure and not LlamaModel<Layout, Quant>: the layout and the
// quantization are chosen at run time (--kv, --kv-layout), and the model's
// matmuls, norms and loaders do not depend on them; only the cache and the
// attention kernels do, behind one virtual call per layer and step.
//
// Compression (kv/kv_press.hpp): observe_queries(seq) before a prompt's
// prefill keeps the queries a press votes with, compress(seq, press, ratio)
// after it scores, plans and compacts; position_offset(seq) is what the
// model adds to length(seq) for the next RoPE position.
//
// Cross-layer KV sharing (KVOptions::share_layers = g, CLA): layers
// g*i .. g*i+g-1 share one KV layer, written by layer g*i and read by all of
// them; the others' append() is ignored. Exact only for a model trained (or
// built) that way; on any other model it changes the function.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "fastinfer/core/checked_math.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/kv_cache.hpp"
#include "fastinfer/kv/kv_press.hpp"
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/memory/paged_allocator.hpp"

namespace fastinfer {

struct KVOptions {
  kv::QuantKind quant = kv::QuantKind::F32;
  KVLayoutKind layout = KVLayoutKind::Contiguous;
  std::int32_t block_size = 16;  // paged and window; a power of two
  std::int32_t window = 0;       // window layout: tokens of the window (> 0)
  std::int32_t sinks = 0;        // window layout: first tokens always kept
  int max_sequences = 1;         // sequences the pool is sized for
  // Blocks in the pool; 0: enough for max_sequences sequences of max_seq_len
  // tokens (paged), or of a window plus one step (window), plus one spare
  // block per sequence for copy-on-write.
  std::int32_t num_blocks = 0;
  // Cross-layer KV sharing: adjacent layers per KV layer (1: none).
  int share_layers = 1;
};

// What one compress() did.
struct CompressionStats {
  std::int64_t original_length = 0, length = 0;  // slots before and after
  std::int64_t kept_entries = 0, total_entries = 0;  // (layer, KV head, token) entries, live
  std::int32_t blocks_freed = 0;
};

// Where the bytes of block b live in a pool that the host can address (the
// CPU backend's): codes + b * block_bytes and params + b * block_params,
// every layer, K and V (kv_cache.hpp's block-major arena). What the transfer
// layer describes to a peer; a device backend answers with device addresses.
struct KVBlockStorage {
  std::uint8_t* codes = nullptr;
  std::int64_t block_bytes = 0;
  float* params = nullptr;
  std::int64_t block_params = 0;
};

// Host memory for swapped-out blocks: `slots` slots of `slot_bytes` bytes
// each, zeroed, freed by the deleter of whoever allocated them
// (KVStore::allocate_swap_slots: plain memory for the CPU, page-locked for
// a device so that its swaps are asynchronous copies).
class HostSwapSlots {
 public:
  HostSwapSlots() = default;
  HostSwapSlots(std::shared_ptr<std::uint8_t> bytes, std::size_t slot_bytes, std::int32_t slots)
      : bytes_(std::move(bytes)), slot_bytes_(slot_bytes), slots_(slots) {}

  std::int32_t size() const { return slots_; }
  std::size_t slot_bytes() const { return slot_bytes_; }
  std::uint8_t* slot(std::int32_t h) const {
    FASTINFER_CHECK(h >= 0 && h < slots_, UsageError, "host swap slot ", h, " out of range [0, ", slots_,
                    ")");
    return bytes_.get() + std::size_t(h) * slot_bytes_;
  }

 private:
  std::shared_ptr<std::uint8_t> bytes_;
  std::size_t slot_bytes_ = 0;
  std::int32_t slots_ = 0;
};

class KVStore {
 public:
  virtual ~KVStore() = default;

  virtual std::string_view layout_name() const = 0;
  virtual KVLayoutKind layout() const = 0;
  virtual std::string_view quant_name() const = 0;
  virtual std::size_t bytes_per_token() const = 0;
  virtual std::size_t memory_bytes() const = 0;
  virtual std::int32_t block_size() const = 0;

  // Sequence verbs (kv::KVCache's).
  virtual PagedAllocator& allocator() = 0;
  virtual const PagedAllocator& allocator() const = 0;
  virtual bool contains(SeqId seq) const = 0;
  virtual std::int64_t length(SeqId seq) const = 0;
  virtual bool add_sequence(SeqId seq) = 0;
  virtual void adopt(SeqId seq, const std::vector<BlockId>& blocks, std::int64_t length) = 0;
  virtual void fork(SeqId src, SeqId dst) = 0;
  virtual void free_sequence(SeqId seq) = 0;
  virtual void truncate(SeqId seq, std::int64_t new_length) = 0;
  virtual bool extend_all(const std::vector<ReserveRequest>& reqs) = 0;
  // k, v: [n][n_kv_heads][head_dim] in the backend's memory.
  virtual void append(int layer, SeqId seq, const float* k, const float* v, std::int64_t n) = 0;
  // One step's new tokens of several sequences: rows qo_indptr[b] ..
  // qo_indptr[b + 1] of k and v (row_floats = n_kv_heads x head_dim floats
  // each, backend memory) are the last tokens of seqs[b]. The same as an
  // append per sequence (the default); a device store writes them in one
  // launch and reuses the slots it staged while they stay the same (every
  // layer of one pass).
  virtual void append_rows(int layer, const std::vector<SeqId>& seqs, const std::int32_t* qo_indptr,
                           const float* k, const float* v, std::int64_t row_floats) {
    for (std::size_t b = 0; b < seqs.size(); ++b) {
      const std::int64_t r0 = qo_indptr[b];
      append(layer, seqs[b], k + r0 * row_floats, v + r0 * row_floats, qo_indptr[b + 1] - r0);
    }
  }
  // One position decoded to the host: k, v [n_kv_heads][head_dim].
  virtual void read(int layer, SeqId seq, std::int64_t pos, float* k, float* v) const = 0;

  // Block bytes (the engine's copy-on-write copies and host swaps; one block
  // id covers every layer). A host swap slot holds host_block_bytes() bytes.
  virtual void copy_blocks(const std::vector<BlockCopy>& copies) = 0;
  virtual std::size_t host_block_bytes() const = 0;
  virtual void swap_out(BlockId block, std::uint8_t* host) = 0;
  virtual void swap_in(const std::uint8_t* host, BlockId block) = 0;
  // Host slots for swap_out / swap_in. Any host memory works as a slot; this
  // store's own are the fastest it can use (a device store's are
  // page-locked: its swaps through them are queued, not waited for, and run
  // at the bus's full bandwidth). Here: plain zeroed host memory.
  virtual HostSwapSlots allocate_swap_slots(std::int32_t slots) {
    const std::size_t bytes = swap_slots_bytes_(slots);
    return HostSwapSlots(
        std::shared_ptr<std::uint8_t>(new std::uint8_t[bytes](), std::default_delete<std::uint8_t[]>()),
        host_block_bytes(), slots);
  }
  virtual KVBlockStorage block_storage() = 0;

  // Compression verbs (see the top of this file).
  virtual std::int64_t position_offset(SeqId seq) const = 0;
  virtual void observe_queries(SeqId seq) = 0;
  virtual CompressionStats compress(SeqId seq, const kv::Press& press, double ratio) = 0;

  // One step: the tables of `seqs` (after extend_all), then per layer the
  // attention of q ([rows][n_q_heads][head_dim], backend memory) into out.
  // `decode`: one query per sequence (flash-decoding, planned once per step).
  virtual void prepare(const std::vector<SeqId>& seqs, bool decode, int threads) = 0;
  virtual void attend(int layer, const float* q, const std::int32_t* qo_indptr, const std::uint8_t* mask,
                      float* out, int n_q_heads, int threads) = 0;

  // Typed access to the bookkeeping (a prefix cache adopting blocks, tests
  // reading the cache): the cache if this store holds a KVCache<Layout,
  // Quant> the host can address, else nullptr.
  template <typename Layout, typename Quant>
  kv::KVCache<Layout, Quant>* cache() {
    return static_cast<kv::KVCache<Layout, Quant>*>(typed_cache(typeid(kv::KVCache<Layout, Quant>)));
  }

 protected:
  virtual void* typed_cache(const std::type_info&) { return nullptr; }
  // Bytes of `slots` swap slots, checked (a count from a config, not trusted).
  std::size_t swap_slots_bytes_(std::int32_t slots) const {
    FASTINFER_CHECK(slots >= 0, InvalidArgument, "swap slots must be non-negative, got ", slots);
    return std::size_t(
        checked_mul(std::int64_t(slots), std::int64_t(host_block_bytes()), "host swap slots' bytes"));
  }
};

}  // namespace fastinfer
