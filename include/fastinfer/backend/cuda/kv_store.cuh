// The CUDA backend's KV store: paged (or contiguous: paged with one block
// per sequence) layout, f32 or f16 codes, in one device arena laid out as
// kv::KVCache's (block, layer, K|V, KV head, token, head_dim), so
// KVBlockStorage and host swap slots mean the same bytes as on the CPU. The
// books are kv::KVBook's, the very rules the CPU's KVCache follows (block
// tables, copy-on-write copies, length limits, batch tables): this store
// only moves bytes. The host never reads or writes the arena except in
// read() and swap_out()/swap_in(), which are the host's way in and out.
//
// Not yet supported on cuda (each refused with a one-line error at
// construction or at the verb): the window layout (the kernel has no
// window/sink masking yet), the int8/int4/bf16/fp8 formats, KV presses
// (observe_queries/compress).
// Cross-layer sharing works as on the CPU (KV layer = layer / group).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <type_traits>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fastinfer/backend/cuda/attention.cuh"
#include "fastinfer/backend/cuda/cuda_context.cuh"
#include "fastinfer/backend/cuda/device_buffer.cuh"
#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/kv_book.hpp"
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/kv/kv_store.hpp"
#include "fastinfer/memory/paged_allocator.hpp"

namespace fastinfer::cuda {

namespace kv_store_detail {

// cpu: kv::KVCache::write (QuantTraits::encode per row). One thread per
// value of the n new tokens' K and V: slot[i] is token i's (block, offset).
template <typename Quant>
__global__ void append_kernel(std::uint8_t* layer_codes, std::int64_t block_stride, std::int64_t head_stride,
                              std::int64_t row_bytes, int n_kv_heads, int d, const float* k, const float* v,
                              const std::int32_t* slot_block, const std::int32_t* slot_token, std::int64_t n) {
  const std::int64_t idx = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t per_token = std::int64_t(n_kv_heads) * d;
  if (idx >= 2 * n * per_token) return;
  const int kvsel = int(idx / (n * per_token));
  const std::int64_t r = idx % (n * per_token);
  const std::int64_t i = r / per_token;
  const int h = int((r / d) % n_kv_heads), j = int(r % d);
  const float x = (kvsel == 0 ? k : v)[r];
  std::uint8_t* row = layer_codes + std::int64_t(slot_block[i]) * block_stride +
                      (std::int64_t(kvsel) * n_kv_heads + h) * head_stride + std::int64_t(slot_token[i]) * row_bytes;
  if constexpr (std::is_same_v<Quant, kv::F16>)
    reinterpret_cast<__half*>(row)[j] = __float2half_rn(x);
  else
    reinterpret_cast<float*>(row)[j] = x;
}

}  // namespace kv_store_detail

template <typename Quant>
class CudaKVStore final : public KVStore {
  static_assert(std::is_same_v<Quant, kv::F32> || std::is_same_v<Quant, kv::F16>,
                "CudaKVStore: only kv::F32 and kv::F16 are implemented on cuda so far");
  using QT = kv::QuantTraits<Quant>;

 public:
  CudaKVStore(std::shared_ptr<CudaContext> ctx, const kv::KVCacheConfig& cfg, int share_layers)
      : ctx_(std::move(ctx)), book_(cfg), cfg_(book_.config()), group_(share_layers) {
    FASTINFER_CHECK(cfg_.layout != KVLayoutKind::Window, InvalidArgument,
                    "KV layout 'window' is not yet supported on cuda (use paged or contiguous)");
    FASTINFER_CHECK(share_layers >= 1, InvalidArgument, "KVOptions: share_layers must be at least 1, got ",
                    share_layers);
    row_bytes_ = std::int64_t(QT::code_bytes(cfg_.head_dim));
    head_stride_ = std::int64_t(cfg_.block_size) * row_bytes_;
    layer_stride_ = 2 * std::int64_t(cfg_.n_kv_heads) * head_stride_;
    block_stride_ = std::int64_t(cfg_.n_layers) * layer_stride_;
    arena_ = DeviceBuffer<std::uint8_t>(std::size_t(block_stride_) * std::size_t(cfg_.num_blocks));
  }

  std::string_view layout_name() const override { return book_.layout_name(); }
  KVLayoutKind layout() const override { return book_.layout(); }
  std::string_view quant_name() const override { return QT::kName; }
  std::size_t bytes_per_token() const override {
    return 2 * std::size_t(cfg_.n_layers) * std::size_t(cfg_.n_kv_heads) * std::size_t(row_bytes_);
  }
  std::size_t memory_bytes() const override { return std::size_t(block_stride_) * std::size_t(cfg_.num_blocks); }
  std::int32_t block_size() const override { return cfg_.block_size; }

  PagedAllocator& allocator() override { return book_.allocator(); }
  const PagedAllocator& allocator() const override { return book_.allocator(); }
  bool contains(SeqId seq) const override { return book_.contains(seq); }
  std::int64_t length(SeqId seq) const override { return book_.length(seq); }
  bool add_sequence(SeqId seq) override { return book_.add_sequence(seq); }
  void adopt(SeqId seq, const std::vector<BlockId>& blocks, std::int64_t length) override {
    book_.adopt(seq, blocks, length);
  }
  void fork(SeqId src, SeqId dst) override { book_.fork(src, dst); }
  void free_sequence(SeqId seq) override { book_.free_sequence(seq); }
  void truncate(SeqId seq, std::int64_t new_length) override { book_.truncate(seq, new_length); }
  // KVBook's rules; its copy-on-write copies are made on the device, in
  // stream order before any append of this step.
  bool extend_all(const std::vector<ReserveRequest>& reqs) override {
    if (!book_.extend_all(reqs, copies_)) return false;
    for (const BlockCopy& c : copies_) copy_prefix_(c);
    return true;
  }

  void append(int layer, SeqId seq, const float* k, const float* v, std::int64_t n) override {
    if (layer % group_ != 0) return;
    const int kl = layer / group_;
    book_.check_layer(kl);
    const std::int64_t len = book_.length(seq);
    FASTINFER_CHECK(n >= 0 && n <= len, InvalidArgument, "KVStore::append: sequence ", seq, " has ", len,
                    " tokens, cannot write the last ", n, " (extend_all first)");
    if (n == 0) return;
    book_.check_writable(seq, len - n, n);  // not released, not shared: a failed append changes nothing
    const auto& table = book_.allocator().block_table(seq);
    slot_block_.resize(std::size_t(n));
    slot_token_.resize(std::size_t(n));
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t p = len - n + i;
      slot_block_[std::size_t(i)] = table[std::size_t(p / cfg_.block_size)];
      slot_token_[std::size_t(i)] = std::int32_t(p % cfg_.block_size);
    }
    cudaStream_t s = ctx_->stream();
    const std::int32_t* sb = stage(dev_slot_block_, slot_block_.data(), slot_block_.size(), s);
    const std::int32_t* st = stage(dev_slot_token_, slot_token_.data(), slot_token_.size(), s);
    const std::int64_t total = 2 * n * cfg_.n_kv_heads * cfg_.head_dim;
    kv_store_detail::append_kernel<Quant><<<elementwise_detail::blocks_for(total), elementwise_detail::kThreads, 0,
                                            s>>>(arena_.data() + kl * layer_stride_, block_stride_, head_stride_,
                                                 row_bytes_, cfg_.n_kv_heads, cfg_.head_dim, k, v, sb, st, n);
    FASTINFER_CUDA_CHECK_LAUNCH(append_kernel);
  }

  void read(int layer, SeqId seq, std::int64_t pos, float* k, float* v) const override {
    const int kl = layer / group_;
    book_.check_layer(kl);
    const BlockId b = book_.block_of(seq, pos);
    std::vector<std::uint8_t> row(static_cast<std::size_t>(row_bytes_));
    const int d = cfg_.head_dim;
    for (int kvsel = 0; kvsel < 2; ++kvsel)
      for (int h = 0; h < cfg_.n_kv_heads; ++h) {
        const std::uint8_t* src = arena_.data() + std::int64_t(b) * block_stride_ + kl * layer_stride_ +
                                  (std::int64_t(kvsel) * cfg_.n_kv_heads + h) * head_stride_ +
                                  (pos % cfg_.block_size) * row_bytes_;
        copy_to_host(row.data(), src, row.size(), ctx_->stream());
        kv::decode_row<Quant>(row.data(), nullptr, d, (kvsel == 0 ? k : v) + h * d);
      }
  }

  void copy_blocks(const std::vector<BlockCopy>& copies) override {
    for (const BlockCopy& c : copies) {
      book_.checked_block(c.src);
      book_.checked_block(c.dst);
      FASTINFER_CUDA_CHECK(cudaMemcpyAsync(block_(c.dst), block_(c.src), std::size_t(block_stride_),
                                           cudaMemcpyDeviceToDevice, ctx_->stream()));
    }
  }
  std::size_t host_block_bytes() const override { return std::size_t(block_stride_); }
  void swap_out(BlockId block, std::uint8_t* host) override {
    book_.checked_block(block);
    copy_to_host(host, block_(block), std::size_t(block_stride_), ctx_->stream());
  }
  void swap_in(const std::uint8_t* host, BlockId block) override {
    book_.checked_block(block);
    copy_to_device(block_(block), host, std::size_t(block_stride_), ctx_->stream());
    ctx_->synchronize();  // the host slot may be reused when this returns
  }
  KVBlockStorage block_storage() override {
    KVBlockStorage s;
    s.codes = arena_.data();  // device addresses
    s.block_bytes = block_stride_;
    return s;
  }

  std::int64_t position_offset(SeqId seq) const override { return book_.position_offset(seq); }
  void observe_queries(SeqId) override {
    throw_error<UsageError>("KVStore: KV presses (observe_queries, compress) are not yet supported on cuda");
  }
  CompressionStats compress(SeqId, const kv::Press&, double) override {
    throw_error<UsageError>("KVStore: KV presses (observe_queries, compress) are not yet supported on cuda");
  }

  void prepare(const std::vector<SeqId>& seqs, bool decode, int) override {
    indptr_.assign(1, 0);
    blocks_.clear();
    lens_.clear();
    longest_ = 0;
    for (SeqId s : seqs) {
      const PagedAllocator& alloc = book_.allocator();
      const std::int64_t len = alloc.length(s);
      const auto& table = alloc.block_table(s);
      blocks_.insert(blocks_.end(), table.begin(), table.begin() + alloc.blocks_for(len));
      indptr_.push_back(std::int32_t(blocks_.size()));
      lens_.push_back(std::int32_t(len));
      longest_ = std::max(longest_, len);
    }
    cudaStream_t st = ctx_->stream();
    dev_indptr_ptr_ = stage(dev_indptr_, indptr_.data(), indptr_.size(), st);
    dev_blocks_ptr_ = stage(dev_blocks_, blocks_.data(), blocks_.size(), st);
    dev_lens_ptr_ = stage(dev_lens_, lens_.data(), lens_.size(), st);
    decode_ = decode;
    staged_layer_ = -1;
  }

  void attend(int layer, const float* q, const std::int32_t* qo_indptr, const std::uint8_t* mask, float* out,
              int n_q_heads, int) override {
    const int kl = layer / group_;
    book_.check_layer(kl);
    const std::int32_t batch = std::int32_t(lens_.size());
    const std::int64_t rows = qo_indptr[batch];
    // The step's query rows are the same for every layer: staged once.
    if (staged_layer_ < 0) stage_rows_(qo_indptr, mask, batch);
    staged_layer_ = layer;
    DevicePagedKV kv;
    kv.k_codes = arena_.data() + kl * layer_stride_;
    kv.v_codes = kv.k_codes + std::int64_t(cfg_.n_kv_heads) * head_stride_;
    kv.block_stride = block_stride_, kv.head_stride = head_stride_, kv.row_bytes = row_bytes_;
    kv.n_kv_heads = cfg_.n_kv_heads, kv.head_dim = cfg_.head_dim, kv.block_size = cfg_.block_size;
    kv.indptr = dev_indptr_ptr_, kv.block_indices = dev_blocks_ptr_, kv.seq_len = dev_lens_ptr_;
    DeviceQueryRows qr;
    qr.row_seq = dev_row_seq_.data();
    qr.qo_indptr = dev_qo_.data();
    qr.mask = mask ? dev_mask_.data() : nullptr;
    qr.mask_offset = dev_mask_off_.data();
paged_attention<Quant>(kv, qr, q, out, partial_, rows, n_q_heads, longest_, ctx_->sm_count(), ctx_->stream());
  }

 private:
  std::uint8_t* block_(BlockId b) { return arena_.data() + std::int64_t(b) * block_stride_; }

  // Copy-on-write: the first c.tokens rows of every (layer, K|V, head) run,
  // one strided copy (the runs are head_stride apart in a block).
  void copy_prefix_(const BlockCopy& c) {
    if (c.tokens <= 0) return;
    const std::size_t runs = std::size_t(cfg_.n_layers) * 2 * std::size_t(cfg_.n_kv_heads);
    FASTINFER_CUDA_CHECK(cudaMemcpy2DAsync(block_(c.dst), std::size_t(head_stride_), block_(c.src),
                                           std::size_t(head_stride_), std::size_t(c.tokens * row_bytes_), runs,
                                           cudaMemcpyDeviceToDevice, ctx_->stream()));
  }

  void stage_rows_(const std::int32_t* qo_indptr, const std::uint8_t* mask, std::int32_t batch) {
    for (std::int32_t b = 0; b < batch; ++b) {
      const std::int64_t n = qo_indptr[b + 1] - qo_indptr[b];
      FASTINFER_CHECK(n <= lens_[std::size_t(b)], InvalidArgument, "attention: sequence ", b, " has ", n,
                      " new tokens but length ", lens_[std::size_t(b)]);
    }
    row_seq_.clear();
    mask_off_.assign(std::size_t(batch), 0);
    std::int64_t mask_bytes = 0;
    for (std::int32_t b = 0; b < batch; ++b) {
      const std::int64_t n = qo_indptr[b + 1] - qo_indptr[b];
      for (std::int64_t i = 0; i < n; ++i) row_seq_.push_back(b);
      mask_off_[std::size_t(b)] = mask_bytes;
      mask_bytes += n * n;
    }
    cudaStream_t s = ctx_->stream();
    stage(dev_row_seq_, row_seq_.data(), row_seq_.size(), s);
    stage(dev_qo_, qo_indptr, std::size_t(batch) + 1, s);
    stage(dev_mask_off_, mask_off_.data(), mask_off_.size(), s);
    if (mask) stage(dev_mask_, mask, std::size_t(mask_bytes), s);
  }

  std::shared_ptr<CudaContext> ctx_;
  kv::KVBook book_;
  kv::KVCacheConfig cfg_;  // book_'s (validated), kept at hand for the byte arithmetic
  int group_ = 1;  // model layers per KV layer (CLA)
  std::int64_t row_bytes_ = 0, head_stride_ = 0, layer_stride_ = 0, block_stride_ = 0;
  DeviceBuffer<std::uint8_t> arena_;
  std::vector<BlockCopy> copies_;
  // This step's tables (host, then device) and query rows.
  std::vector<std::int32_t> indptr_, lens_, row_seq_, slot_block_, slot_token_;
  std::vector<BlockId> blocks_;
  std::vector<std::int64_t> mask_off_;
  std::int64_t longest_ = 0;
  bool decode_ = false;
  int staged_layer_ = -1;
  DeviceBuffer<std::int32_t> dev_indptr_, dev_lens_, dev_row_seq_, dev_qo_, dev_slot_block_, dev_slot_token_;
  DeviceBuffer<BlockId> dev_blocks_;
  DeviceBuffer<std::uint8_t> dev_mask_;
  DeviceBuffer<std::int64_t> dev_mask_off_;
  DeviceBuffer<float> partial_;
  const std::int32_t *dev_indptr_ptr_ = nullptr, *dev_lens_ptr_ = nullptr;
  const BlockId* dev_blocks_ptr_ = nullptr;
};

// The CUDA store for `options` over `config`; a layout or format cuda does
// not have yet is refused with a one-line error.
inline std::unique_ptr<KVStore> make_kv_store(std::shared_ptr<CudaContext> ctx, const KVOptions& options,
                                              const kv::KVCacheConfig& config) {
  FASTINFER_CHECK(options.layout != KVLayoutKind::Window, InvalidArgument,
                  "KV layout 'window' is not yet supported on cuda (use paged or contiguous)");
  FASTINFER_CHECK(config.layout == options.layout, InvalidArgument, "make_kv_store: the cache config's layout '",
                  kv_layout_name(config.layout), "' differs from the options' '", kv_layout_name(options.layout),
                  "'");
  switch (options.quant) {
    case kv::QuantKind::F32: return std::make_unique<CudaKVStore<kv::F32>>(std::move(ctx), config, options.share_layers);
    case kv::QuantKind::F16: return std::make_unique<CudaKVStore<kv::F16>>(std::move(ctx), config, options.share_layers);
    default: break;
  }
  throw_error<InvalidArgument>("KV format '", kv::quant_name(options.quant),
                               "' is not yet supported on cuda (use f32 or f16)");
}

}  // namespace fastinfer::cuda
