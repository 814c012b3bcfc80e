// The two ends of a KV hand-off, over the books of a PagedAllocator:
//
//   sender:   KVExport x = export_sequence(pool, seq, request, generated, id);
//             // x holds its own reference on every block: the engine may end
//             // the request now; the bytes stay put until x is released.
//             transport.post_send(peer, id, x.descriptors());
//   receiver: KVManifest m = parse_manifest(words);      // throws if garbled
//             KVImport in(pool, m);   // validates, then allocates all blocks or none
//             transport.post_recv(peer, id, in.descriptors());
//             ... transfer done ...
//             in.commit(seq, &prefix_cache);  // sequence `seq` holds the KV
//
// All-or-nothing: KVImport's constructor checks the manifest against the
// pool before touching it (a malformed manifest leaves the pool as it was)
// and takes every block or none (false from ok() when the pool is short).
// An import dropped before commit() gives its blocks back, so a transfer that
// fails half-way (peer died, timeout) leaves both pools whole.
//
// Backend-free (standard library, core/ memory/ prefix/ sched/ only).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/memory/paged_allocator.hpp"
#include "fastinfer/prefix/radix_prefix_cache.hpp"
#include "fastinfer/transfer/kv_descriptor.hpp"

namespace fastinfer::transfer {

// A sequence's KV pinned for sending: one reference per block, dropped by
// release() or the destructor. Move-only.
class KVExport {
 public:
  KVExport() = default;
  KVExport(const KVPoolView& pool, KVManifest manifest) : pool_(pool), manifest_(std::move(manifest)) {
    for (BlockId b : manifest_.blocks) pool_.allocator->incref(b);
    held_ = true;
    descriptors_ = describe_blocks(pool_, manifest_.blocks);
  }
  KVExport(KVExport&& o) noexcept { *this = std::move(o); }
  KVExport& operator=(KVExport&& o) noexcept {
    if (this != &o) {
      release();
      pool_ = o.pool_;
      manifest_ = std::move(o.manifest_);
      descriptors_ = std::move(o.descriptors_);
      held_ = std::exchange(o.held_, false);
    }
    return *this;
  }
  KVExport(const KVExport&) = delete;
  KVExport& operator=(const KVExport&) = delete;
  ~KVExport() { release(); }

  const KVManifest& manifest() const { return manifest_; }
  const std::vector<MemoryDescriptor>& descriptors() const { return descriptors_; }
  bool held() const { return held_; }

  // Drops the references (the blocks go back to the pool when nobody else
  // holds them). Call only when no transport still reads the bytes.
  void release() {
    if (!held_) return;
    for (BlockId b : manifest_.blocks) pool_.allocator->decref(b);
    held_ = false;
  }

 private:
  KVPoolView pool_;
  KVManifest manifest_;
  std::vector<MemoryDescriptor> descriptors_;
  bool held_ = false;
};

// Pins the KV of sequence `seq` (positions [0, length), all of its blocks)
// for a hand-off of `request` after it generated `generated` (the last of
// which has no KV yet: length == prompt + generated - 1). Throws
// InvalidArgument when the sequence does not hold exactly that.
inline KVExport export_sequence(const KVPoolView& pool, SeqId seq, const Request& request,
                                std::vector<TokenId> generated, std::uint64_t transfer_id) {
  PagedAllocator& alloc = *pool.allocator;
  KVManifest m;
  m.transfer_id = transfer_id;
  m.quant = pool.quant;
  m.n_layers = pool.n_layers;
  m.block_size = pool.block_size();
  m.layer_bytes = pool.layer_bytes();
  m.layer_params = pool.layer_params();
  m.length = alloc.length(seq);
  const std::int64_t want = std::int64_t(request.prompt.size() + generated.size()) - 1;
  FASTINFER_CHECK(m.length == want, InvalidArgument, "export_sequence: sequence ", seq, " holds ", m.length,
                  " tokens of KV, expected prompt + generated - 1 = ", want);
  const std::vector<BlockId>& table = alloc.block_table(seq);
  m.blocks.assign(table.begin(), table.begin() + std::ptrdiff_t(alloc.blocks_for(m.length)));
  for (BlockId b : m.blocks)
    FASTINFER_CHECK(b != kNoBlock, InvalidArgument, "export_sequence: sequence ", seq,
                    " has released blocks (window layout): only whole paged sequences can be exported");
  m.request = request;
  m.sample_counter = generated.size();
  m.generated = std::move(generated);
  return KVExport(pool, std::move(m));
}

// The receiving end: blocks allocated for a manifest, filled by a transport,
// then adopted into a sequence. Move-only; dropped before commit() it gives
// the blocks back.
class KVImport {
 public:
  KVImport() = default;
  // Validates `m` against `pool` (InvalidArgument, pool untouched) and then
  // takes m.num_blocks() + reserve_blocks free blocks or none: ok() tells.
  // `reserve_blocks` stay free for the receiver's running requests (its
  // watermark): an import never takes the pool's last blocks.
  KVImport(const KVPoolView& pool, KVManifest m, std::int64_t reserve_blocks = 0)
      : pool_(pool), manifest_(std::move(m)) {
    validate_manifest(manifest_, pool_);
    PagedAllocator& alloc = *pool_.allocator;
    if (alloc.num_free_blocks() < manifest_.num_blocks() + reserve_blocks) return;
    blocks_.reserve(manifest_.blocks.size());
    for (std::size_t i = 0; i < manifest_.blocks.size(); ++i) blocks_.push_back(*alloc.allocate());
    descriptors_ = describe_blocks(pool_, blocks_);
    ok_ = true;
  }
  KVImport(KVImport&& o) noexcept { *this = std::move(o); }
  KVImport& operator=(KVImport&& o) noexcept {
    if (this != &o) {
      abort();
      pool_ = o.pool_;
      manifest_ = std::move(o.manifest_);
      blocks_ = std::move(o.blocks_);
      descriptors_ = std::move(o.descriptors_);
      ok_ = std::exchange(o.ok_, false);
    }
    return *this;
  }
  KVImport(const KVImport&) = delete;
  KVImport& operator=(const KVImport&) = delete;
  ~KVImport() { abort(); }

  bool ok() const { return ok_; }
  const KVManifest& manifest() const { return manifest_; }
  const std::vector<BlockId>& blocks() const { return blocks_; }
  // Where the transport writes, paired index by index with the sender's
  // KVExport::descriptors() (same order, same sizes).
  const std::vector<MemoryDescriptor>& descriptors() const { return descriptors_; }

  // Creates sequence `seq` holding the KV (positions [0, length)) and, with
  // a cache, offers its full blocks to the prefix cache under the request's
  // namespace. The import's own references pass to the sequence.
  void commit(SeqId seq, prefix::RadixPrefixCache* cache = nullptr) {
    FASTINFER_CHECK(ok_, UsageError, "KVImport::commit: transfer ", manifest_.transfer_id,
                    " holds no blocks (the pool was short, or it was committed or aborted)");
    PagedAllocator& alloc = *pool_.allocator;
    alloc.adopt(seq, blocks_, manifest_.length);
    if (cache != nullptr) {
      const std::int64_t full = manifest_.length / alloc.block_size();
      if (full > 0) {
        std::vector<TokenId> key = manifest_.kv_tokens();
        key.resize(std::size_t(full * alloc.block_size()));
        const std::vector<BlockId> cached(blocks_.begin(), blocks_.begin() + std::ptrdiff_t(full));
        cache->insert(key, cached, manifest_.request.prefix_namespace);
      }
    }
    for (BlockId b : blocks_) alloc.decref(b);
    ok_ = false;
  }

  // Gives the blocks back (a failed or abandoned transfer).
  void abort() {
    if (!ok_) return;
    for (BlockId b : blocks_) pool_.allocator->decref(b);
    ok_ = false;
  }

 private:
  KVPoolView pool_;
  KVManifest manifest_;
  std::vector<BlockId> blocks_;
  std::vector<MemoryDescriptor> descriptors_;
  bool ok_ = false;
};

// Checks that two descriptor lists pair up (same count, same layer, block
// index, part and size at every index): what a transport verifies before it
// copies, so a mismatched pair never writes outside a block.
inline void check_descriptor_pairs(const std::vector<MemoryDescriptor>& src,
                                   const std::vector<MemoryDescriptor>& dst) {
  FASTINFER_CHECK(src.size() == dst.size(), InvalidArgument, "KV transfer: ", src.size(),
                  " source descriptors against ", dst.size(), " destination descriptors");
  for (std::size_t i = 0; i < src.size(); ++i)
    FASTINFER_CHECK(src[i].bytes == dst[i].bytes && src[i].layer == dst[i].layer &&
                        src[i].block_index == dst[i].block_index && src[i].part == dst[i].part,
                    InvalidArgument, "KV transfer: descriptor ", i, " (layer ", src[i].layer, ", block ",
                    src[i].block_index, ", ", src[i].bytes, " bytes) does not match its destination (layer ",
                    dst[i].layer, ", block ", dst[i].block_index, ", ", dst[i].bytes, " bytes)");
}

}  // namespace fastinfer::transfer
