// Block bookkeeping for a paged KV cache: which fixed-size blocks are free,
// how many owners each block has, and which blocks each sequence uses.
//
// This class never touches KV bytes. It hands out block ids and tells the
// storage owner (kv::KVCache) when a shared block must be copied before a
// write (copy-on-write); the storage does the copy. One block id is valid in
// every layer, so one allocator and one block table per sequence serve the
// whole model.
//
// Running out of blocks is not an error: reserve()/extend() answer false and
// leave everything unchanged, so the scheduler can wait or preempt. Misuse
// (unknown sequence, double free, writing past a reservation) throws
// UsageError / InvalidArgument and also leaves everything unchanged.
//
// Reference counts count owners: each block-table entry that names a block
// is one owner, and incref() adds an owner that is not a sequence (a radix
// prefix-cache node). A block returns to the free list when its count falls
// to zero.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fastinfer/core/error.hpp"

namespace fastinfer {

using BlockId = std::int32_t;
using SeqId = std::int64_t;

// A block-table entry whose tokens were released (sliding-window eviction):
// positions stay where they were, the memory went back to the pool.
inline constexpr BlockId kNoBlock = -1;

// Copy the first `tokens` tokens of block `src` into block `dst` (every
// layer) before writing into `dst`: the copy-on-write of a shared,
// partially filled last block.
struct BlockCopy {
  BlockId src = kNoBlock;
  BlockId dst = kNoBlock;
  std::int32_t tokens = 0;
};

struct AllocatorStats {
  std::int32_t total = 0;   // blocks in the pool
  std::int32_t free = 0;    // on the free list
  std::int32_t used = 0;    // reference count >= 1
  std::int32_t shared = 0;  // reference count >= 2
};

// One sequence's request in a batch reservation.
struct ReserveRequest {
  SeqId seq = 0;
  std::int64_t tokens = 0;
};

class PagedAllocator {
 public:
  PagedAllocator(std::int32_t num_blocks, std::int32_t block_size)
      : block_size_(block_size), ref_(std::size_t(num_blocks > 0 ? num_blocks : 0), 0) {
    FASTINFER_CHECK(num_blocks > 0, InvalidArgument, "PagedAllocator: num_blocks must be positive, got ",
                    num_blocks);
    FASTINFER_CHECK(block_size > 0 && (block_size & (block_size - 1)) == 0, InvalidArgument,
                    "PagedAllocator: block_size must be a power of two, got ", block_size);
    while ((1 << shift_) < block_size) ++shift_;
    free_.reserve(std::size_t(num_blocks));
    // Low ids come out first: easier to read in tests and debuggers.
    for (BlockId b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
  }

  std::int32_t block_size() const { return block_size_; }
  std::int32_t num_blocks() const { return std::int32_t(ref_.size()); }
  std::int32_t num_free_blocks() const { return std::int32_t(free_.size()); }

  AllocatorStats stats() const {
    AllocatorStats s;
    s.total = num_blocks();
    s.free = num_free_blocks();
    s.used = s.total - s.free;
    s.shared = shared_;
    return s;
  }

  // ---- single blocks (also what a radix prefix cache uses) -----------------

  // A free block with reference count 1, or nullopt when the pool is empty.
  std::optional<BlockId> allocate() {
    if (free_.empty()) return std::nullopt;
    const BlockId b = free_.back();
    free_.pop_back();
    ref_[std::size_t(b)] = 1;
    return b;
  }

  void incref(BlockId b) {
    check_live(b, "incref");
    if (++ref_[std::size_t(b)] == 2) ++shared_;
  }

  // Drops one owner; the block is free again when none is left.
  void decref(BlockId b) {
    check_live(b, "decref");
    drop(b);
  }

  std::int32_t ref_count(BlockId b) const {
    check_id(b, "ref_count");
    return ref_[std::size_t(b)];
  }

  // ---- sequences -----------------------------------------------------------

  bool contains(SeqId seq) const { return seqs_.count(seq) != 0; }
  std::size_t num_sequences() const { return seqs_.size(); }

  void add_sequence(SeqId seq) {
    FASTINFER_CHECK(!contains(seq), UsageError, "PagedAllocator: sequence ", seq, " already exists");
    seqs_.emplace(seq, Sequence{});
  }

  // A new sequence whose table starts with `blocks` (shared: each gets one
  // more owner) holding `length` tokens, e.g. a prefix-cache hit.
  void adopt(SeqId seq, const std::vector<BlockId>& blocks, std::int64_t length) {
    FASTINFER_CHECK(!contains(seq), UsageError, "PagedAllocator: sequence ", seq, " already exists");
    FASTINFER_CHECK(length >= 0 && blocks_for(length) == std::int64_t(blocks.size()), InvalidArgument,
                    "PagedAllocator::adopt: ", blocks.size(), " blocks cannot hold exactly ", length,
                    " tokens at block size ", block_size_);
    for (BlockId b : blocks) check_live(b, "adopt");
    Sequence s;
    s.table = blocks;
    s.length = length;
    for (BlockId b : blocks) incref(b);
    seqs_.emplace(seq, std::move(s));
  }

  // `dst` starts as a copy of `src`: same tokens, same blocks (shared).
  // Blocks reserved by `src` beyond its length are not shared.
  void fork(SeqId src, SeqId dst) {
    const Sequence& s = get(src, "fork");
    FASTINFER_CHECK(!contains(dst), UsageError, "PagedAllocator::fork: sequence ", dst, " already exists");
    Sequence d;
    d.length = s.length;
    d.table.assign(s.table.begin(), s.table.begin() + blocks_for(s.length));
    for (BlockId b : d.table)
      if (b != kNoBlock) incref(b);
    seqs_.emplace(dst, std::move(d));
  }

  // Gives back every block the sequence owns and forgets the sequence.
  void free_sequence(SeqId seq) {
    Sequence& s = get(seq, "free_sequence");
    for (BlockId b : s.table)
      if (b != kNoBlock) drop(b);
    seqs_.erase(seq);
  }

  std::int64_t length(SeqId seq) const { return get(seq, "length").length; }
  // Tokens the sequence can hold without another reservation.
  std::int64_t capacity(SeqId seq) const {
    return std::int64_t(get(seq, "capacity").table.size()) << shift_;
  }
  const std::vector<BlockId>& block_table(SeqId seq) const { return get(seq, "block_table").table; }

  // ---- scheduler questions -------------------------------------------------

  // Blocks that reserve(seq, n) would take from the pool now (including the
  // copy of a shared, partially filled last block).
  std::int64_t blocks_to_append(SeqId seq, std::int64_t n) const {
    FASTINFER_CHECK(n >= 0, InvalidArgument, "PagedAllocator: cannot append ", n, " tokens");
    const Sequence& s = get(seq, "blocks_to_append");
    return missing_blocks(s, s.length + n) + (needs_copy(s, n) ? 1 : 0);
  }

  // Blocks needed to grow the sequence to `target` tokens from where it is.
  std::int64_t blocks_to_reach(SeqId seq, std::int64_t target) const {
    const Sequence& s = get(seq, "blocks_to_reach");
    return target <= s.length ? 0 : blocks_to_append(seq, target - s.length);
  }

  // Blocks a fresh sequence of `length` tokens needs.
  std::int64_t blocks_for(std::int64_t length) const { return (length + block_size_ - 1) >> shift_; }

  // ---- growing and shrinking -------------------------------------------------

  // Makes room for `n` more tokens, all or nothing: false (and nothing
  // changed) when the pool is short. Copy-on-write of a shared last block
  // is appended to `copies`; the caller copies the bytes before writing.
  bool reserve(SeqId seq, std::int64_t n, std::vector<BlockCopy>* copies = nullptr) {
    const std::int64_t need = blocks_to_append(seq, n);
    if (need > num_free_blocks()) return false;
    grow(seqs_.find(seq)->second, n, copies);
    return true;
  }

  // Batch reservation, all or nothing over the batch. The count is
  // conservative: two forks of one block that both append count a copy each,
  // although the second would find the block unshared.
  bool reserve_all(const std::vector<ReserveRequest>& reqs, std::vector<BlockCopy>* copies = nullptr) {
    std::int64_t need = 0;
    for (const auto& r : reqs) need += blocks_to_append(r.seq, r.tokens);
    if (need > num_free_blocks()) return false;
    for (const auto& r : reqs) grow(seqs_.find(r.seq)->second, r.tokens, copies);
    return true;
  }

  // Counts `n` reserved tokens as written.
  void append(SeqId seq, std::int64_t n) {
    Sequence& s = get(seq, "append");
    FASTINFER_CHECK(n >= 0, InvalidArgument, "PagedAllocator::append: cannot append ", n, " tokens");
    const std::int64_t cap = std::int64_t(s.table.size()) << shift_;
    FASTINFER_CHECK(s.length + n <= cap, UsageError, "PagedAllocator::append: sequence ", seq, " holds ",
                    s.length, " tokens with room for ", cap, "; appending ", n, " needs a reservation");
    FASTINFER_CHECK(n == 0 || s.length % block_size_ == 0 || !is_shared(s.table[std::size_t(s.length >> shift_)]),
                    UsageError, "PagedAllocator::append: sequence ", seq,
                    " would write into a shared block; reserve() first to copy it");
    s.length += n;
  }

  // reserve + append.
  bool extend(SeqId seq, std::int64_t n, std::vector<BlockCopy>* copies = nullptr) {
    if (!reserve(seq, n, copies)) return false;
    append(seq, n);
    return true;
  }

  // Rollback: keeps the first `new_length` tokens and gives back the blocks
  // past them (and any unused reservation).
  void truncate(SeqId seq, std::int64_t new_length) {
    Sequence& s = get(seq, "truncate");
    FASTINFER_CHECK(new_length >= 0 && new_length <= s.length, InvalidArgument,
                    "PagedAllocator::truncate: sequence ", seq, " has ", s.length, " tokens, cannot keep ",
                    new_length);
    const std::size_t keep = std::size_t(blocks_for(new_length));
    FASTINFER_CHECK(keep == 0 || s.table[keep - 1] != kNoBlock, UsageError, "PagedAllocator::truncate: length ",
                    new_length, " of sequence ", seq, " ends in a released block");
    for (std::size_t i = keep; i < s.table.size(); ++i)
      if (s.table[i] != kNoBlock) drop(s.table[i]);
    s.table.resize(keep);
    s.length = new_length;
  }

  // Gives back the blocks at table indices [first, last) and marks them
  // kNoBlock; positions of later tokens do not move (sliding window).
  void release_blocks(SeqId seq, std::int64_t first, std::int64_t last) {
    Sequence& s = get(seq, "release_blocks");
    FASTINFER_CHECK(0 <= first && first <= last && last <= (s.length >> shift_), InvalidArgument,
                    "PagedAllocator::release_blocks: [", first, ", ", last,
                    ") is not a range of full blocks of sequence ", seq, " (", s.length, " tokens)");
    for (std::int64_t i = first; i < last; ++i) {
      BlockId& b = s.table[std::size_t(i)];
      if (b != kNoBlock) drop(b);
      b = kNoBlock;
    }
  }

  // Throws if the books do not balance: free + referenced == capacity, the
  // free list holds exactly the unreferenced blocks, every table entry is
  // referenced, and the shared count is right.
  void check_invariants() const {
    std::vector<char> on_free(ref_.size(), 0);
    for (BlockId b : free_) {
      FASTINFER_CHECK(b >= 0 && std::size_t(b) < ref_.size() && !on_free[std::size_t(b)], Error,
                      "PagedAllocator: free list holds bad or duplicate block ", b);
      on_free[std::size_t(b)] = 1;
    }
    std::int32_t referenced = 0, shared = 0;
    for (std::size_t b = 0; b < ref_.size(); ++b) {
      FASTINFER_CHECK(ref_[b] >= 0, Error, "PagedAllocator: block ", b, " has count ", ref_[b]);
      FASTINFER_CHECK((ref_[b] == 0) == bool(on_free[b]), Error, "PagedAllocator: block ", b, " has count ",
                      ref_[b], on_free[b] ? " but is free" : " but is not free");
      referenced += ref_[b] > 0;
      shared += ref_[b] > 1;
    }
    FASTINFER_CHECK(referenced + num_free_blocks() == num_blocks(), Error,
                    "PagedAllocator: free + referenced != capacity");
    FASTINFER_CHECK(shared == shared_, Error, "PagedAllocator: shared count ", shared_, " != ", shared);
    std::vector<std::int32_t> table_refs(ref_.size(), 0);
    for (const auto& kv : seqs_) {
      const Sequence& s = kv.second;
      FASTINFER_CHECK(s.length <= (std::int64_t(s.table.size()) << shift_), Error, "PagedAllocator: sequence ",
                      kv.first, " longer than its table");
      for (BlockId b : s.table)
        if (b != kNoBlock) ++table_refs[std::size_t(b)];
    }
    for (std::size_t b = 0; b < ref_.size(); ++b)
      FASTINFER_CHECK(table_refs[b] <= ref_[b], Error, "PagedAllocator: block ", b, " is in ", table_refs[b],
                      " tables but has count ", ref_[b]);
  }

 private:
  struct Sequence {
    std::vector<BlockId> table;
    std::int64_t length = 0;
  };

  void check_id(BlockId b, const char* what) const {
    FASTINFER_CHECK(b >= 0 && b < num_blocks(), InvalidArgument, "PagedAllocator::", what, ": block id ", b,
                    " is outside [0, ", num_blocks(), ")");
  }
  void check_live(BlockId b, const char* what) const {
    check_id(b, what);
    FASTINFER_CHECK(ref_[std::size_t(b)] > 0, UsageError, "PagedAllocator::", what, ": block ", b,
                    " is free (double free?)");
  }
  bool is_shared(BlockId b) const { return b != kNoBlock && ref_[std::size_t(b)] > 1; }

  void drop(BlockId b) {
    std::int32_t& r = ref_[std::size_t(b)];
    if (r == 2) --shared_;
    if (--r == 0) free_.push_back(b);
  }

  const Sequence& get(SeqId seq, const char* what) const {
    auto it = seqs_.find(seq);
    FASTINFER_CHECK(it != seqs_.end(), UsageError, "PagedAllocator::", what, ": unknown sequence ", seq);
    return it->second;
  }
  Sequence& get(SeqId seq, const char* what) {
    return const_cast<Sequence&>(static_cast<const PagedAllocator*>(this)->get(seq, what));
  }

  std::int64_t missing_blocks(const Sequence& s, std::int64_t target) const {
    const std::int64_t need = blocks_for(target) - std::int64_t(s.table.size());
    return need > 0 ? need : 0;
  }
  // The next token goes into a block another owner also reads.
  bool needs_copy(const Sequence& s, std::int64_t n) const {
    return n > 0 && s.length % block_size_ != 0 && is_shared(s.table[std::size_t(s.length >> shift_)]);
  }

  // Caller checked that enough blocks are free.
  void grow(Sequence& s, std::int64_t n, std::vector<BlockCopy>* copies) {
    if (needs_copy(s, n)) {
      BlockId& last = s.table[std::size_t(s.length >> shift_)];
      const BlockId fresh = *allocate();
      if (copies) copies->push_back({last, fresh, std::int32_t(s.length & (block_size_ - 1))});
      drop(last);
      last = fresh;
    }
    for (std::int64_t k = missing_blocks(s, s.length + n); k > 0; --k) s.table.push_back(*allocate());
  }

  std::int32_t block_size_;
  int shift_ = 0;
  std::vector<std::int32_t> ref_;
  std::vector<BlockId> free_;
  std::int32_t shared_ = 0;
  std::unordered_map<SeqId, Sequence> seqs_;
};

}  // namespace fastinfer
