// The CUDA backend's KV store: paged (or contiguous: paged with one block
// per sequence) layout, every KV format (f32, f16, bf16, int8, int4,
// fp8-e4m3, fp8-e5m2), in two device arenas laid out as kv::KVCache's: the
// codes (block, layer, K|V, KV head, token, head_dim) and beside them the
// f32 parameters (scales, minima) in the same order, params_per_row per row.
// KVBlockStorage and host swap slots mean the same bytes as on the CPU (a
// slot: the block's codes, then its parameters). The append kernel encodes
// one row per warp with kv_format.cuh's encoders, which store the CPU
// encoder's very codes and parameters. The books are kv::KVBook's, the very
// rules the CPU's KVCache follows (block tables, copy-on-write copies,
// length limits, batch tables): this store only moves bytes. The host never
// reads or writes the arenas except in read() and swap_out()/swap_in(),
// which are the host's way in and out (through page-locked slots from
// allocate_swap_slots(), queued without waiting).
//
// Not yet supported on cuda (each refused with a one-line error at
// construction or at the verb): the window layout (the kernel has no
// window/sink masking yet), KV presses (observe_queries/compress).
// Cross-layer sharing works as on the CPU (KV layer = layer / group).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string_view>
#include <type_traits>
#include <vector>

#include <cuda_runtime.h>

#include "fastinfer/backend/cuda/attention.cuh"
#include "fastinfer/backend/cuda/cuda_context.cuh"
#include "fastinfer/backend/cuda/device_buffer.cuh"
#include "fastinfer/backend/cuda/elementwise.cuh"
#include "fastinfer/backend/cuda/kv_format.cuh"
#include "fastinfer/backend/cuda/launch.cuh"
#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/kv_book.hpp"
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/kv/kv_store.hpp"
#include "fastinfer/memory/paged_allocator.hpp"

namespace fastinfer::cuda {

namespace kv_store_detail {

// Where one layer's rows go: the codes and parameter arenas' strides
// (bytes and floats) and this layer's base in each.
struct LayerRows {
  std::uint8_t* codes = nullptr;
  float* params = nullptr;
  std::int64_t block_stride = 0, head_stride = 0, row_bytes = 0;           // bytes
  std::int64_t param_block_stride = 0, param_head_stride = 0;              // floats
  std::int32_t params_per_row = 0;
};

constexpr int kAppendWarps = 4;  // rows per block of the append kernel

// cpu: kv::KVCache::write (QuantTraits::encode per row). One warp per row
// (token i, K or V, KV head h) of the n new tokens: slot[i] is token i's
// (block, offset).
template <typename Quant>
__global__ void append_kernel(LayerRows dst, int n_kv_heads, int d, const float* k, const float* v,
                              const std::int32_t* slot_block, const std::int32_t* slot_token, std::int64_t n) {
  FASTINFER_CUDA_KERNEL_PROLOGUE();
  const std::int64_t row = std::int64_t(blockIdx.x) * kAppendWarps + threadIdx.x / 32;
  if (row >= 2 * n * n_kv_heads) return;  // the whole warp leaves together
  const int kvsel = int(row / (n * n_kv_heads));
  const std::int64_t r = row % (n * n_kv_heads);  // i * n_kv_heads + h
  const std::int64_t i = r / n_kv_heads;
  const int h = int(r % n_kv_heads);
  const std::int64_t b = slot_block[i], t = slot_token[i], run = std::int64_t(kvsel) * n_kv_heads + h;
  std::uint8_t* codes = dst.codes + b * dst.block_stride + run * dst.head_stride + t * dst.row_bytes;
  float* params = dst.params + b * dst.param_block_stride + run * dst.param_head_stride + t * dst.params_per_row;
  DeviceKVFormat<Quant>::encode_row((kvsel == 0 ? k : v) + r * d, d, codes, params);
}

}  // namespace kv_store_detail

template <typename Quant>
class CudaKVStore final : public KVStore {
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
    // kv::KVCache's parameter arena: same order, params_per_row floats a row.
    params_per_row_ = QT::params_per_row(cfg_.head_dim);
    param_head_stride_ = std::int64_t(cfg_.block_size) * params_per_row_;
    param_layer_stride_ = 2 * std::int64_t(cfg_.n_kv_heads) * param_head_stride_;
    param_block_stride_ = std::int64_t(cfg_.n_layers) * param_layer_stride_;
    arena_ = DeviceBuffer<std::uint8_t>(std::size_t(block_stride_) * std::size_t(cfg_.num_blocks));
    params_ = DeviceBuffer<float>(std::size_t(param_block_stride_) * std::size_t(cfg_.num_blocks));
  }

  std::string_view layout_name() const override { return book_.layout_name(); }
  KVLayoutKind layout() const override { return book_.layout(); }
  std::string_view quant_name() const override { return QT::kName; }
  // Parameters included, as kv::KVCache counts them.
  std::size_t bytes_per_token() const override {
    return 2 * std::size_t(cfg_.n_layers) * std::size_t(cfg_.n_kv_heads) *
           kv::bytes_per_token_head<Quant>(cfg_.head_dim);
  }
  std::size_t memory_bytes() const override { return host_block_bytes() * std::size_t(cfg_.num_blocks); }
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
    FASTINFER_CHECK(n >= 0 && n <= std::numeric_limits<std::int32_t>::max(), InvalidArgument,
                    "KVStore::append: sequence ", seq, ": cannot write ", n, " tokens");
    one_seq_.assign(1, seq);
    const std::int32_t qo[2] = {0, std::int32_t(n)};
    append_rows(layer, one_seq_, qo, k, v, std::int64_t(cfg_.n_kv_heads) * cfg_.head_dim);
  }

  // Every sequence checked before anything is written (a refused step
  // changes nothing), then one launch. The rows' slots are the same for
  // every layer of a pass: staged on the first, reused while unchanged.
  void append_rows(int layer, const std::vector<SeqId>& seqs, const std::int32_t* qo_indptr, const float* k,
                   const float* v, std::int64_t row_floats) override {
    if (layer % group_ != 0) return;
    const int kl = layer / group_;
    book_.check_layer(kl);
    FASTINFER_CHECK(row_floats == std::int64_t(cfg_.n_kv_heads) * cfg_.head_dim, InvalidArgument,
                    "KVStore::append_rows: rows of ", row_floats, " floats, the store's are ",
                    std::int64_t(cfg_.n_kv_heads) * cfg_.head_dim);
    const std::size_t batch = seqs.size();
    const std::int64_t first = batch > 0 ? qo_indptr[0] : 0;
    const std::int64_t n = batch > 0 ? qo_indptr[batch] - first : 0;
    slots_.resize(2 * std::size_t(std::max<std::int64_t>(n, 0)));
    for (std::size_t b = 0; b < batch; ++b) {
      const SeqId seq = seqs[b];
      const std::int64_t count = qo_indptr[b + 1] - qo_indptr[b];
      const std::int64_t len = book_.length(seq);
      FASTINFER_CHECK(count >= 0 && count <= len, InvalidArgument, "KVStore::append: sequence ", seq, " has ",
                      len, " tokens, cannot write the last ", count, " (extend_all first)");
      if (count == 0) continue;
      book_.check_writable(seq, len - count, count);  // not released, not shared
      const auto& table = book_.allocator().block_table(seq);
      for (std::int64_t i = 0; i < count; ++i) {
        const std::int64_t p = len - count + i, row = qo_indptr[b] - first + i;
        slots_[std::size_t(row)] = table[std::size_t(p / cfg_.block_size)];
        slots_[std::size_t(n + row)] = std::int32_t(p % cfg_.block_size);
      }
    }
    if (n <= 0) return;
    cudaStream_t s = ctx_->stream();
    // A copy between two kernels also ends their overlap (launch.cuh): one
    // a pass, not one a layer.
    if (slots_ != staged_slots_) {
      stage(dev_slots_, slots_.data(), slots_.size(), s);
      staged_slots_ = slots_;
    }
    namespace kd = kv_store_detail;
    kd::LayerRows dst;
    dst.codes = arena_.data() + kl * layer_stride_;
    dst.params = params_.data() + kl * param_layer_stride_;
    dst.block_stride = block_stride_, dst.head_stride = head_stride_, dst.row_bytes = row_bytes_;
    dst.param_block_stride = param_block_stride_, dst.param_head_stride = param_head_stride_;
    dst.params_per_row = params_per_row_;
    const std::int64_t rows = 2 * n * cfg_.n_kv_heads;
    launch("append_kernel", kd::append_kernel<Quant>,
           dim3(elementwise_detail::blocks_for(rows, kd::kAppendWarps)), dim3(32 * kd::kAppendWarps), 0, s,
           dst, cfg_.n_kv_heads, cfg_.head_dim, k + first * row_floats, v + first * row_floats,
           dev_slots_.data(), dev_slots_.data() + n, n);
  }

  void read(int layer, SeqId seq, std::int64_t pos, float* k, float* v) const override {
    const int kl = layer / group_;
    book_.check_layer(kl);
    const BlockId b = book_.block_of(seq, pos);
    std::vector<std::uint8_t> row(static_cast<std::size_t>(row_bytes_));
    std::vector<float> params(static_cast<std::size_t>(params_per_row_));
    const int d = cfg_.head_dim;
    const std::int64_t t = pos % cfg_.block_size;
    for (int kvsel = 0; kvsel < 2; ++kvsel)
      for (int h = 0; h < cfg_.n_kv_heads; ++h) {
        const std::int64_t run = std::int64_t(kvsel) * cfg_.n_kv_heads + h;
        const std::uint8_t* src =
            arena_.data() + std::int64_t(b) * block_stride_ + kl * layer_stride_ + run * head_stride_ + t * row_bytes_;
        const float* psrc = params_.data() + std::int64_t(b) * param_block_stride_ + kl * param_layer_stride_ +
                            run * param_head_stride_ + t * params_per_row_;
        copy_to_host(row.data(), src, row.size(), ctx_->stream());
        copy_to_host(params.data(), psrc, params.size(), ctx_->stream());
        kv::decode_row<Quant>(row.data(), params.data(), d, (kvsel == 0 ? k : v) + h * d);
      }
  }

  void copy_blocks(const std::vector<BlockCopy>& copies) override {
    for (const BlockCopy& c : copies) {
      book_.checked_block(c.src);
      book_.checked_block(c.dst);
      copy_bytes_(block_(c.dst), block_(c.src), std::size_t(block_stride_), cudaMemcpyDeviceToDevice);
      copy_bytes_(block_params_(c.dst), block_params_(c.src), param_bytes_(), cudaMemcpyDeviceToDevice);
    }
  }
  // A slot is the CPU store's: the block's codes, then its parameters.
  std::size_t host_block_bytes() const override { return std::size_t(block_stride_) + param_bytes_(); }
  // Swaps through this store's own slots (allocate_swap_slots': page-
  // locked) are queued on the stream and return at once: the stream orders
  // them after the kernels that wrote the block and before any that reuse
  // it, and the host touches those slots only through these calls, which
  // the stream also orders. Through any other host memory, page-locked by
  // the caller or not, they finish before returning: the caller may read
  // or reuse it then, as on the CPU.
  void swap_out(BlockId block, std::uint8_t* host) override {
    book_.checked_block(block);
    const bool queued = own_slot_(host);
    copy_bytes_(host, block_(block), std::size_t(block_stride_), cudaMemcpyDeviceToHost);
    copy_bytes_(host + block_stride_, block_params_(block), param_bytes_(), cudaMemcpyDeviceToHost);
    if (!queued) ctx_->synchronize();
  }
  void swap_in(const std::uint8_t* host, BlockId block) override {
    book_.checked_block(block);
    const bool queued = own_slot_(host);
    copy_bytes_(block_(block), host, std::size_t(block_stride_), cudaMemcpyHostToDevice);
    copy_bytes_(block_params_(block), host + block_stride_, param_bytes_(), cudaMemcpyHostToDevice);
    if (!queued) ctx_->synchronize();
  }
  // cudaHostAlloc'ed slots; freeing them waits for the swaps queued on them.
  HostSwapSlots allocate_swap_slots(std::int32_t slots) override {
    const std::size_t bytes = swap_slots_bytes_(slots);
    void* p = nullptr;
    if (bytes > 0) {
      FASTINFER_CUDA_CHECK(cudaHostAlloc(&p, bytes, cudaHostAllocDefault));
      std::memset(p, 0, bytes);
    }
    std::shared_ptr<CudaContext> ctx = ctx_;
    std::shared_ptr<std::uint8_t> owner(static_cast<std::uint8_t*>(p), [ctx](std::uint8_t* q) {
      if (!q) return;
      (void)cudaStreamSynchronize(ctx->stream());
      (void)cudaFreeHost(q);
    });
    slot_ranges_.erase(std::remove_if(slot_ranges_.begin(), slot_ranges_.end(),
                                      [](const SlotRange& r) { return r.owner.expired(); }),
                       slot_ranges_.end());
    if (bytes > 0) slot_ranges_.push_back(SlotRange{owner, bytes});
    return HostSwapSlots(std::move(owner), host_block_bytes(), slots);
  }
  KVBlockStorage block_storage() override {
    KVBlockStorage s;
    s.codes = arena_.data();  // device addresses
    s.block_bytes = block_stride_;
    s.params = params_.data();  // null for the formats without parameters, as on the CPU
    s.block_params = param_block_stride_;
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
    kv.k_params = params_.data() + kl * param_layer_stride_;
    kv.v_params = kv.k_params + std::int64_t(cfg_.n_kv_heads) * param_head_stride_;
    kv.param_block_stride = param_block_stride_, kv.param_head_stride = param_head_stride_;
    kv.params_per_row = params_per_row_;
    kv.n_kv_heads = cfg_.n_kv_heads, kv.head_dim = cfg_.head_dim, kv.block_size = cfg_.block_size;
    kv.indptr = dev_indptr_ptr_, kv.block_indices = dev_blocks_ptr_, kv.seq_len = dev_lens_ptr_;
    DeviceQueryRows qr;
    qr.row_seq = dev_row_seq_.data();
    qr.qo_indptr = dev_qo_.data();
    qr.mask = mask ? dev_mask_.data() : nullptr;
    qr.mask_offset = dev_mask_off_.data();
    paged_attention<Quant>(kv, qr, q, out, partial_, rows, n_q_heads, longest_, ctx_->sm_count(),
                           ctx_->stream(), ctx_->tensor_core_attention());
  }

 private:
  std::uint8_t* block_(BlockId b) { return arena_.data() + std::int64_t(b) * block_stride_; }
  float* block_params_(BlockId b) { return params_.data() + std::int64_t(b) * param_block_stride_; }
  std::size_t param_bytes_() const { return sizeof(float) * std::size_t(param_block_stride_); }
  // Whether `host` lies in one of this store's live swap slot allocations.
  // (Addresses as integers: < between unrelated objects is unspecified.)
  bool own_slot_(const void* host) const {
    const auto p = reinterpret_cast<std::uintptr_t>(host);
    for (const SlotRange& r : slot_ranges_) {
      const std::shared_ptr<std::uint8_t> base = r.owner.lock();
      const auto first = reinterpret_cast<std::uintptr_t>(base.get());
      if (base && p >= first && p - first < r.bytes) return true;
    }
    return false;
  }
  // A format without parameters has no parameter arena (null): nothing to copy.
  void copy_bytes_(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
    if (bytes > 0) FASTINFER_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, ctx_->stream()));
  }

  // Copy-on-write: the first c.tokens rows of every (layer, K|V, head) run,
  // one strided copy of codes and one of parameters (the runs are a head
  // stride apart in a block).
  void copy_prefix_(const BlockCopy& c) {
    if (c.tokens <= 0) return;
    const std::size_t runs = std::size_t(cfg_.n_layers) * 2 * std::size_t(cfg_.n_kv_heads);
    FASTINFER_CUDA_CHECK(cudaMemcpy2DAsync(block_(c.dst), std::size_t(head_stride_), block_(c.src),
                                           std::size_t(head_stride_), std::size_t(c.tokens * row_bytes_), runs,
                                           cudaMemcpyDeviceToDevice, ctx_->stream()));
    if (params_per_row_ == 0) return;
    const std::size_t pitch = sizeof(float) * std::size_t(param_head_stride_);
    FASTINFER_CUDA_CHECK(cudaMemcpy2DAsync(block_params_(c.dst), pitch, block_params_(c.src), pitch,
                                           sizeof(float) * std::size_t(c.tokens * params_per_row_), runs,
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
  std::int64_t row_bytes_ = 0, head_stride_ = 0, layer_stride_ = 0, block_stride_ = 0;  // bytes
  std::int32_t params_per_row_ = 0;
  std::int64_t param_head_stride_ = 0, param_layer_stride_ = 0, param_block_stride_ = 0;  // floats
  DeviceBuffer<std::uint8_t> arena_;  // codes
  DeviceBuffer<float> params_;        // scales and minima (empty for f32, f16, bf16)
  std::vector<BlockCopy> copies_;
  // allocate_swap_slots' allocations, alive while their HostSwapSlots are:
  // the swaps that may be queued (own_slot_).
  struct SlotRange {
    std::weak_ptr<std::uint8_t> owner;
    std::size_t bytes = 0;
  };
  std::vector<SlotRange> slot_ranges_;
  // This step's tables (host, then device) and query rows.
  std::vector<std::int32_t> indptr_, lens_, row_seq_;
  // append_rows' slots (n blocks, then n offsets) and the copy on the device.
  std::vector<std::int32_t> slots_, staged_slots_;
  std::vector<SeqId> one_seq_;
  std::vector<BlockId> blocks_;
  std::vector<std::int64_t> mask_off_;
  std::int64_t longest_ = 0;
  bool decode_ = false;
  int staged_layer_ = -1;
  DeviceBuffer<std::int32_t> dev_indptr_, dev_lens_, dev_row_seq_, dev_qo_, dev_slots_;
  DeviceBuffer<BlockId> dev_blocks_;
  DeviceBuffer<std::uint8_t> dev_mask_;
  DeviceBuffer<std::int64_t> dev_mask_off_;
  DeviceBuffer<float> partial_;
  const std::int32_t *dev_indptr_ptr_ = nullptr, *dev_lens_ptr_ = nullptr;
  const BlockId* dev_blocks_ptr_ = nullptr;
};

// The CUDA store for `options` over `config`, any KV format; a layout cuda
// does not have yet is refused with a one-line error.
inline std::unique_ptr<KVStore> make_kv_store(std::shared_ptr<CudaContext> ctx, const KVOptions& options,
                                              const kv::KVCacheConfig& config) {
  FASTINFER_CHECK(options.layout != KVLayoutKind::Window, InvalidArgument,
                  "KV layout 'window' is not yet supported on cuda (use paged or contiguous)");
  FASTINFER_CHECK(config.layout == options.layout, InvalidArgument, "make_kv_store: the cache config's layout '",
                  kv_layout_name(config.layout), "' differs from the options' '", kv_layout_name(options.layout),
                  "'");
  return kv::visit_quant(options.quant, [&](auto quant) -> std::unique_ptr<KVStore> {
    return std::make_unique<CudaKVStore<decltype(quant)>>(std::move(ctx), config, options.share_layers);
  });
}

}  // namespace fastinfer::cuda
