// The reference Llama-family transformer: RMSNorm, RoPE (interleaved or half
// split), grouped-query attention, SwiGLU, shared or separate classifier.
//
// One code path, `forward(ForwardBatch)`, serves prefill, decode and ragged
// batches of many sequences: the linear layers run over every row of the
// step as one matrix product (one weight read for the whole step: what makes
// batching pay), RoPE rotates each row at its own position, each sequence
// appends its K/V to the KV cache and attends over it through the backend's
// KV store (decode kernel when every sequence brings one token, extend
// kernel otherwise, custom-mask kernel for token trees), and logits are
// computed only for the rows asked for. Every buffer is sized at
// construction for `max_batch` rows; nothing is allocated per step by the
// model itself.
//
// Backend (backend/backend.hpp): every activation lives in the backend's
// buffers and every kernel is the backend's; the model only orders the calls
// and keeps the host-side description of a step (token ids, positions,
// which rows give logits). Logits and last_hidden() reach the host through
// the backend (read in place when its buffers are host memory).
//
// KV cache: a kv::KVCache<Layout, Quant> behind KVStore (kv/kv_store.hpp),
// made by the backend, the layout and quantization chosen at run time
// through ModelOptions::kv. Keys
// are stored after RoPE. A head size that is not a multiple of 8 (the
// kernels' register width) is stored zero-padded to one: zeros change no dot
// product, and the padded output columns are dropped.
//
// The single-sequence verbs (forward_prefill, forward_prefill_all,
// forward_decode, reset, cached_length) drive sequence kSoloSequence, created
// on first use. Positions are the caller's, as in llama2.c: a forward at
// start_pos below the cached length first truncates the sequence to
// start_pos (KVCache::truncate: blocks shared with another sequence or a
// prefix cache are never written, copy-on-write copies them), and may not
// skip ahead of what has been computed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "fastinfer/backend/backend.hpp"
#include "fastinfer/backend/cpu/cpu_backend.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/sampling_params.hpp"
#include "fastinfer/core/tensor.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/model/forward_batch.hpp"
#include "fastinfer/model/kv_store.hpp"
#include "fastinfer/model/profiler.hpp"
#include "fastinfer/model/resource_limits.hpp"
#include "fastinfer/model/weights.hpp"

namespace fastinfer {

struct ModelOptions {
  int threads = 1;    // most threads any kernel may use
  int max_batch = 0;  // most tokens in one forward pass; 0: min(max_seq_len, 512)
  KVOptions kv{};     // KV cache layout, quantization and pool size
  // Most bytes the KV pool and activations may take, checked before either is
  // allocated (LimitError naming both); 0: no limit (resource_limits.hpp).
  std::int64_t memory_budget = kDefaultMemoryBudget;
};

template <typename Backend = CpuBackend>
class LlamaModel {
  static_assert(check_backend<Backend>());
  template <typename T>
  using Buffer = typename Backend::template Buffer<T>;

 public:
  // The sequence the single-sequence verbs drive.
  static constexpr SeqId kSoloSequence = 0;

  explicit LlamaModel(LlamaWeights weights, ModelOptions options = {}, Backend backend = Backend{})
      : w_(std::move(weights)), c_(w_.config), backend_(std::move(backend)) {
    c_.validate();
    FASTINFER_CHECK(options.threads >= 1, InvalidArgument, "threads must be at least 1, got ", options.threads);
    FASTINFER_CHECK(options.max_batch >= 0, InvalidArgument, "max_batch must not be negative, got ",
                    options.max_batch);
    FASTINFER_CHECK(int(w_.layers.size()) == c_.n_layers, InvalidArgument, "weights hold ", w_.layers.size(),
                    " layers, config says ", c_.n_layers);
    check_weights_();
    threads_ = options.threads;
    backend_.set_threads(threads_);  // before the upload, which may repack on these threads
    upload_weights_();
    max_batch_ = options.max_batch > 0 ? std::min(options.max_batch, c_.max_seq_len)
                                       : std::min(c_.max_seq_len, 512);
    hdp_ = (c_.head_dim + 7) / 8 * 8;
    FASTINFER_CHECK(hdp_ == c_.head_dim || options.kv.layout != KVLayoutKind::Window || options.kv.sinks == 0,
                    InvalidArgument, "attention sinks need a head size that is a multiple of 8, got ", c_.head_dim);
    LlamaConfig kvc = c_;
    kvc.head_dim = hdp_;
    check_memory_budget(options.kv, kvc, max_batch_, options.memory_budget);
    kv_ = backend_.make_kv_store(options.kv, kv_cache_config(options.kv, kvc, max_batch_));

    const std::size_t B = std::size_t(max_batch_);
    const std::size_t wide = std::size_t(std::max(c_.dim, c_.q_dim()));
    auto alloc = [&](std::size_t n) { return backend_.template allocate<float>(n); };
    x_ = alloc(B * std::size_t(c_.dim));
    xb_ = alloc(B * wide);
    q_ = alloc(B * std::size_t(c_.q_dim()));
    k_ = alloc(B * std::size_t(c_.kv_dim()));
    v_ = alloc(B * std::size_t(c_.kv_dim()));
    att_out_ = alloc(B * std::size_t(c_.q_dim()));
    hb_ = alloc(B * std::size_t(c_.hidden_dim));
    hb2_ = alloc(B * std::size_t(c_.hidden_dim));
    if (hdp_ != c_.head_dim) {
      qpad_ = alloc(B * std::size_t(c_.n_heads * hdp_));
      kpad_ = alloc(B * std::size_t(c_.n_kv_heads * hdp_));
      vpad_ = alloc(B * std::size_t(c_.n_kv_heads * hdp_));
      opad_ = alloc(B * std::size_t(c_.n_heads * hdp_));
    }
    // Logits are computed into the caller's host memory when the backend's
    // buffers are host memory, else here and copied out.
    if constexpr (!Backend::kHostVisible) logits_dev_ = alloc(B * std::size_t(c_.vocab_size));
    logits_.assign(std::size_t(c_.vocab_size), 0.0f);
    row_pos_.assign(B, 0);
    logit_rows_.reserve(B);
    seqs_.reserve(std::size_t(options.kv.max_sequences) + 1);
    reqs_.reserve(std::size_t(options.kv.max_sequences) + 1);
    solo_.tokens.reserve(B);
    solo_.qo_indptr.reserve(2);
    solo_.seq_ids.reserve(1);
    solo_.start_pos.reserve(1);
  }

  const LlamaConfig& config() const { return c_; }
  // The weights as the backend holds them (views into its memory: for the
  // CPU, the loader's own views).
  const LlamaWeights& weights() const { return w_; }
  int threads() const { return threads_; }
  void set_threads(int threads) {
    FASTINFER_CHECK(threads >= 1, InvalidArgument, "threads must be at least 1, got ", threads);
    backend_.set_threads(threads);
    threads_ = threads;
  }
  // The compute backend the model runs on.
  Backend& backend() { return backend_; }
  int max_batch() const { return max_batch_; }

  // Per-op timing of every forward pass (profiler.hpp) until set to nullptr;
  // the profiler must outlive its use. Off (nullptr) by default.
  void set_profiler(ForwardProfiler* profiler) {
    prof_ = profiler;
    if (prof_) prof_shape_ = profile_shape();
  }
  ForwardProfiler* profiler() const { return prof_; }
  // What the profiler's accounting needs to know about this model.
  ProfileModelShape profile_shape() const {
    ProfileModelShape m;
    m.config = c_;
    const LlamaLayerWeights& l0 = w_.layers.front();
    m.embedding = w_.token_embedding.dtype, m.classifier = w_.classifier.dtype;
    m.wq = l0.wq.dtype, m.wk = l0.wk.dtype, m.wv = l0.wv.dtype, m.wo = l0.wo.dtype;
    m.w1 = l0.w_gate.dtype, m.w2 = l0.w_down.dtype, m.w3 = l0.w_up.dtype;
    m.kv_bytes_per_token_layer = double(kv_->bytes_per_token()) / double(c_.n_layers);
    return m;
  }

  // The KV cache: sequence verbs for an Engine (add, fork, free, adopt,
  // truncate), the allocator for a prefix cache, typed access via
  // kv().cache<Layout, Quant>().
  KVStore& kv() { return *kv_; }
  const KVStore& kv() const { return *kv_; }

  // Positions whose keys and values the cache holds for the solo sequence
  // (the next position to feed).
  int cached_length() const { return kv_->contains(kSoloSequence) ? int(kv_->length(kSoloSequence)) : 0; }

  // Bytes of distinct weight storage (a shared classifier counted once): what
  // one decoded token streams from memory, give or take one embedding row.
  std::size_t weights_bytes() const {
    std::size_t bytes = w_.token_embedding.bytes();
    if (w_.classifier.data != w_.token_embedding.data) bytes += w_.classifier.bytes();
    for (const auto& l : w_.layers)
      bytes += l.wq.bytes() + l.wk.bytes() + l.wv.bytes() + l.wo.bytes() + l.w_gate.bytes() +
               l.w_down.bytes() + l.w_up.bytes();
    bytes += (2 * std::size_t(c_.n_layers) + 1) * std::size_t(c_.dim) * sizeof(float);
    return bytes;
  }
  // Bytes of the KV pool (all sequences, all layers, parameters included).
  std::size_t kv_bytes() const { return kv_->memory_bytes(); }

  // Forgets every cached position of the solo sequence.
  void reset() {
    open_ = nullptr;
    last_logits_ = nullptr, last_logits_rows_ = 0;
    if (kv_->contains(kSoloSequence)) kv_->free_sequence(kSoloSequence);
  }

  // ---- ragged batch ---------------------------------------------------------

  // One step over a ragged batch (forward_batch.hpp); every sequence must
  // exist in kv(). Returns the requested logits rows, [logits_rows][vocab] in
  // batch order, valid until the next forward call (nullptr for None).
  // Throws InvalidArgument on bad input before changing anything, UsageError
  // when the KV pool has no room for the step (the scheduler reserves first).
  const float* forward(const ForwardBatch& batch) {
    const std::int64_t n = batch.logits_rows();
    if (n > 0 && std::size_t(n) * std::size_t(c_.vocab_size) > batch_logits_.size())
      batch_logits_.resize(std::size_t(n) * std::size_t(c_.vocab_size));  // grows once to the largest step
    forward(batch, n > 0 ? batch_logits_.data() : nullptr);
    return n > 0 ? batch_logits_.data() : nullptr;
  }

  // As forward(batch), but the logits rows stay where the backend computed
  // them, for sample_logits alone: a device backend copies nothing back, so
  // a step that only samples returns a token per row, not its rows.
  void forward_to_sample(const ForwardBatch& batch) {
    if constexpr (Backend::kHostVisible) {
      (void)forward(batch);
    } else {
      forward(batch, nullptr);
    }
  }

  // As above, writing the logits rows to out[logits_rows][vocab] (a device
  // backend also takes out == nullptr: forward_to_sample).
  void forward(const ForwardBatch& batch, float* out) {
    begin_layers(batch);
    run_layers(0, c_.n_layers);
    head_(out);
    if (prof_) prof_->end_pass();  // staged (early-exit) passes are timed per op, not counted as passes
  }

  // ---- early exit: one forward pass taken a few layers at a time -------------
  //
  // begin_layers(batch) does what forward(batch) does before the first layer
  // (checks, rollback, KV room, embeddings); run_layers(first, last) runs
  // layers [first, last), in order, first = the depth reached so far;
  // exit_logits() applies the final norm and classifier to the current hidden
  // state of the batch's logits rows ([logits_rows][vocab], valid until the
  // next forward or exit_logits call): forward(batch) is begin_layers +
  // run_layers(0, n_layers) + exit_logits. fill_kv(first, last) stores, for
  // layers [first, last), the K and V projected from the current hidden state
  // instead of running those layers (CALM's propagation: a token that exited
  // early leaves keys and values that later tokens can attend to).
  // Layers a pass skips without fill_kv hold nothing valid at its positions;
  // a later forward starting at or below them rewrites them (self-speculative
  // verification does). The batch must outlive the staged calls.
  void begin_layers(const ForwardBatch& batch) {
    open_ = nullptr;  // a rejected batch leaves no pass open
    last_logits_ = nullptr, last_logits_rows_ = 0;  // nor rows to sample from
    check_batch_(batch);
    if (prof_) prof_->begin_pass();
    const std::int32_t b_count = batch.batch();
    // Rollback, then room for the new tokens of every sequence at once.
    reqs_.clear();
    for (std::int32_t b = 0; b < b_count; ++b) {
      const SeqId s = batch.seq_ids[std::size_t(b)];
      const std::int64_t start = batch.start_pos[std::size_t(b)];
      if (start != ForwardBatch::kAppend && start < kv_->length(s)) kv_->truncate(s, start);
      reqs_.push_back(ReserveRequest{s, batch.count(b)});
    }
    FASTINFER_CHECK(kv_->extend_all(reqs_), UsageError, "forward: the KV pool has no room for the ",
                    batch.rows(), " tokens of this step (reserve before forwarding)");
    // The RoPE position of every row.
    for (std::int32_t b = 0; b < b_count; ++b) {
      // A compressed sequence's next position lies past its slots (kv_press.hpp).
      const SeqId s = batch.seq_ids[std::size_t(b)];
      const std::int64_t first = kv_->length(s) - batch.count(b) + kv_->position_offset(s);
      for (std::int32_t r = batch.qo_indptr[std::size_t(b)]; r < batch.qo_indptr[std::size_t(b) + 1]; ++r)
        row_pos_[std::size_t(r)] =
            batch.positions.empty() ? first + (r - batch.qo_indptr[std::size_t(b)]) : batch.positions[std::size_t(r)];
    }
    bool decode = batch.mask.empty();
    for (std::int32_t b = 0; b < b_count && decode; ++b) decode = batch.count(b) == 1;
    seqs_.assign(batch.seq_ids.begin(), batch.seq_ids.end());
    kv_->prepare(seqs_, decode, threads_);

    logit_rows_.clear();
    if (batch.logits == LogitsRows::Last)
      for (std::int32_t b = 0; b < b_count; ++b) logit_rows_.push_back(batch.qo_indptr[std::size_t(b) + 1] - 1);
    else if (batch.logits == LogitsRows::All)
      for (std::int32_t r = 0; r < std::int32_t(batch.rows()); ++r) logit_rows_.push_back(r);
    else if (batch.logits == LogitsRows::PerEntry)
      for (std::int32_t b = 0; b < b_count; ++b)
        for (std::int32_t r = batch.qo_indptr[std::size_t(b) + 1] - batch.logits_tail[std::size_t(b)];
             r < batch.qo_indptr[std::size_t(b) + 1]; ++r)
          logit_rows_.push_back(r);
    if (prof_) profile_pass_(batch, decode);
    open_ = &batch;
    depth_ = 0;
    feature_rows_ = batch.rows();
    backend_.embed(w_.token_embedding, batch.tokens.data(), batch.rows(), x_.data());
    lap_(ProfOp::Embed);
  }

  // One sequence's tokens[0..n) at positions start_pos.. as one staged pass
  // (n <= max_batch()), `rows` of logits. The solo sequence is created on
  // first use; any other must exist in kv() (an Engine's request).
  void begin_layers(const std::int32_t* tokens, std::int64_t n, int start_pos, LogitsRows rows = LogitsRows::Last,
                    SeqId seq = kSoloSequence) {
    open_ = nullptr;  // a rejected call leaves no pass open
    if (seq == kSoloSequence) check_input_(tokens, n, start_pos);
    FASTINFER_CHECK(n >= 1 && n <= max_batch_, InvalidArgument, "begin_layers: ", n,
                    " tokens are outside [1, max_batch ", max_batch_, "]");
    if (seq == kSoloSequence && !kv_->contains(kSoloSequence))
      FASTINFER_CHECK(kv_->add_sequence(kSoloSequence), UsageError, "the KV pool has no room for a sequence");
    solo_.clear();
    solo_.add(seq, tokens, std::int32_t(n), start_pos);
    solo_.logits = rows;
    begin_layers(solo_);
  }

  void run_layers(int first, int last) {
    check_stage_(first, last, "run_layers");
    bool normed = false;  // whether xb_ holds layer l's attention norm of x_ already
    for (int l = first; l < last; ++l) normed = layer_(*open_, l, normed, l + 1 < last);
    depth_ = last;
  }

  void fill_kv(int first, int last) {
    check_stage_(first, last, "fill_kv");
    for (int l = first; l < last; ++l) project_kv_(*open_, l);
    depth_ = last;
  }

  // Layers run (or filled) so far in the open staged pass.
  int depth() const { return depth_; }

  const float* exit_logits() {
    FASTINFER_CHECK(open_ != nullptr, UsageError, "exit_logits: no staged pass is open (call begin_layers first)");
    const std::size_t n = logit_rows_.size() * std::size_t(c_.vocab_size);
    if (n > batch_logits_.size()) batch_logits_.resize(n);
    head_(batch_logits_.data());
    return batch_logits_.data();
  }

  // LayerSkip's draft: tokens through the first `layers` layers, then the
  // final norm and classifier; the logits after the last token. Chunked like
  // forward_prefill. Deeper layers' KV at these positions is left unwritten
  // (see begin_layers). `seq`: as for begin_layers.
  const float* forward_prefill_exit(const std::int32_t* tokens, std::int64_t n, int start_pos, int layers,
                                    SeqId seq = kSoloSequence) {
    FASTINFER_CHECK(layers >= 1 && layers <= c_.n_layers, InvalidArgument, "exit layer ", layers,
                    " is outside [1, ", c_.n_layers, "]");
    if (seq == kSoloSequence) check_input_(tokens, n, start_pos);
    const float* out = nullptr;
    for (std::int64_t done = 0; done < n;) {
      const int chunk = int(std::min<std::int64_t>(max_batch_, n - done));
      const bool last = done + chunk == n;
      begin_layers(tokens + done, chunk, start_pos + int(done), last ? LogitsRows::Last : LogitsRows::None, seq);
      run_layers(0, layers);
      if (last) out = exit_logits();
      done += chunk;
    }
    return out;
  }

  // ---- one sequence ---------------------------------------------------------

  // Feeds tokens[0..n) at positions start_pos.. and returns the logits after
  // the last one ([vocab], valid until the next forward call).
  const float* forward_prefill(const std::int32_t* tokens, std::int64_t n, int start_pos) {
    check_input_(tokens, n, start_pos);
    for (std::int64_t done = 0; done < n;) {
      const int chunk = int(std::min<std::int64_t>(max_batch_, n - done));
      solo_step_(tokens + done, chunk, start_pos + int(done), done + chunk == n ? LogitsRows::Last : LogitsRows::None,
                 logits_.data());
      done += chunk;
    }
    return logits_.data();
  }
  const float* forward_prefill(const std::vector<std::int32_t>& tokens, int start_pos) {
    return forward_prefill(tokens.data(), std::int64_t(tokens.size()), start_pos);
  }

  // As forward_prefill, but writes the logits of every position to
  // out[n][vocab] (speculative verification needs them all).
  void forward_prefill_all(const std::int32_t* tokens, std::int64_t n, int start_pos, float* out) {
    check_input_(tokens, n, start_pos);
    for (std::int64_t done = 0; done < n;) {
      const int chunk = int(std::min<std::int64_t>(max_batch_, n - done));
      solo_step_(tokens + done, chunk, start_pos + int(done), LogitsRows::All,
                 out + std::size_t(done) * std::size_t(c_.vocab_size));
      done += chunk;
    }
  }

  // Feeds one token at `pos` and returns the logits after it.
  const float* forward_decode(std::int32_t token, int pos) { return forward_prefill(&token, 1, pos); }

  // Picks a token from each of the last pass's logits rows `rows[0..n)` on
  // the backend: tokens[i] from row rows[i] under params[i] with the coin of
  // token_indices[i] (temperature 0: the first maximum). On the CPU backend
  // the tokens are bit for bit what the host sampler (backend/cpu/sampling.hpp)
  // picks from the rows forward() returned; a device backend picks where the
  // logits are and sends back ids only (CudaBackend: the same tokens but
  // within float rounding of a boundary, cuda/sampling.cuh). After
  // forward(batch, out) the rows are read from `out`: the caller must not
  // have changed it.
  void sample_logits(const std::int32_t* rows, std::int64_t n, const SamplingParams* params,
                     const std::uint64_t* token_indices, std::int32_t* tokens) {
    check_logits_rows_(rows, n, "sample_logits");
    if (n > 0) backend_.sample_rows(last_logits_, c_.vocab_size, rows, n, params, token_indices, tokens);
  }
  // The exact rule's picks at one-hot drafts from rows of the last pass
  // (the backend's optional accept_rows, backend.hpp): tokens[i] =
  // drafts[i] when it is kept, else the residual's draw (drafts[i] < 0: a
  // draw from the row), where the rows are.
  void accept_logits(const std::int32_t* rows, std::int64_t n, const SamplingParams* params,
                     const std::int32_t* drafts, const float* accept_coins, const float* residual_coins,
                     std::int32_t* tokens) {
    static_assert(backend_detail::has_accept_rows<Backend>::value,
                  "accept_logits: this backend has no accept_rows (backend.hpp's optional verbs)");
    check_logits_rows_(rows, n, "accept_logits");
    if (n > 0)
      backend_.accept_rows(last_logits_, c_.vocab_size, rows, n, params, drafts, accept_coins, residual_coins,
                           tokens);
  }
  std::int32_t sample_logits(std::int32_t row, const SamplingParams& params, std::uint64_t token_index) {
    std::int32_t token = 0;
    sample_logits(&row, 1, &params, &token_index, &token);
    return token;
  }

  // The hidden state after the final RMSNorm of the last forward's logits
  // rows ([logits_rows][dim], same order as the logits; for the chunked solo
  // verbs, the last chunk's rows): what Medusa heads read. Valid until the
  // next forward call.
  const float* last_hidden() {
    if constexpr (Backend::kHostVisible) {
      return xb_.data();
    } else {
      const std::size_t n = logit_rows_.size() * std::size_t(c_.dim);
      hidden_host_.resize(n);
      backend_.to_host(xb_.data(), n, hidden_host_.data());
      return hidden_host_.data();
    }
  }

  // The residual stream BEFORE the final RMSNorm of every row of the last
  // forward ([rows][dim], batch order; for the chunked solo verbs the last
  // chunk's rows): the feature EAGLE's draft head reads and predicts
  // (speculative/eagle_head.hpp). Valid until the next forward call.
  const float* last_features() {
    if constexpr (Backend::kHostVisible) {
      return x_.data();
    } else {
      const std::size_t n = std::size_t(feature_rows_) * std::size_t(c_.dim);
      features_host_.resize(n);
      backend_.to_host(x_.data(), n, features_host_.data());
      return features_host_.data();
    }
  }

 private:
  void check_logits_rows_(const std::int32_t* rows, std::int64_t n, const char* verb) const {
    for (std::int64_t i = 0; i < n; ++i)
      FASTINFER_CHECK(rows[i] >= 0 && rows[i] < last_logits_rows_, InvalidArgument, verb, ": row ", rows[i],
                      " is outside the last pass's ", last_logits_rows_, " logits rows");
  }
  void check_weights_() const {
    auto shape = [&](const MatrixView& m, std::int64_t rows, std::int64_t cols, const char* name, int layer) {
      FASTINFER_CHECK(m.data != nullptr && m.rows == rows && m.cols == cols, InvalidArgument, "weight ", name,
                      layer >= 0 ? " of layer " : "", layer >= 0 ? std::to_string(layer) : std::string(),
                      " is [", m.rows, "][", m.cols, "], expected [", rows, "][", cols, "]");
    };
    shape(w_.token_embedding, c_.vocab_size, c_.dim, "token_embedding", -1);
    shape(w_.classifier, c_.vocab_size, c_.dim, "classifier", -1);
    FASTINFER_CHECK(w_.final_norm != nullptr, InvalidArgument, "final_norm is missing");
    for (int l = 0; l < c_.n_layers; ++l) {
      const auto& lw = w_.layers[std::size_t(l)];
      shape(lw.wq, c_.q_dim(), c_.dim, "wq", l);
      shape(lw.wk, c_.kv_dim(), c_.dim, "wk", l);
      shape(lw.wv, c_.kv_dim(), c_.dim, "wv", l);
      shape(lw.wo, c_.dim, c_.q_dim(), "wo", l);
      shape(lw.w_gate, c_.hidden_dim, c_.dim, "w_gate", l);
      shape(lw.w_up, c_.hidden_dim, c_.dim, "w_up", l);
      shape(lw.w_down, c_.dim, c_.hidden_dim, "w_down", l);
      FASTINFER_CHECK(lw.attn_norm != nullptr && lw.ffn_norm != nullptr, InvalidArgument,
                      "a norm of layer ", l, " is missing");
    }
  }

  // Every weight tensor where the backend's kernels read it (in place on the
  // CPU); a classifier shared with the embedding stays shared. When the
  // backend copied every matrix (a device; Q8_0 regrouped on the CPU), the
  // buffers they came from are let go (replace_storage).
  void upload_weights_() {
    std::vector<KeepAlive> matrix_owners, norm_owners;
    bool reads_source = false;
    for_each_matrix(w_, [&](MatrixView& m) {
      const void* before = m.data;
      m = backend_.upload(m, matrix_owners);
      reads_source |= m.data == before;
    });
    replace_storage(w_, std::move(matrix_owners), reads_source);
    auto vector = [&](const float*& v) {
      v = static_cast<const float*>(backend_.upload(MatrixView{DType::F32, v, 1, c_.dim}, norm_owners).data);
    };
    vector(w_.final_norm);
    for (LlamaLayerWeights& l : w_.layers) {
      vector(l.attn_norm);
      vector(l.ffn_norm);
    }
    w_.storage.insert(w_.storage.end(), norm_owners.begin(), norm_owners.end());
  }

  // All checks before any state changes: a rejected call leaves the model as it was.
  void check_input_(const std::int32_t* tokens, std::int64_t n, int start_pos) const {
    FASTINFER_CHECK(n >= 1, InvalidArgument, "a forward pass needs at least one token, got ", n);
    const int length = cached_length();
    FASTINFER_CHECK(start_pos >= 0 && start_pos <= length, InvalidArgument, "start position ", start_pos,
                    " is outside the cached range [0, ", length, "]");
    FASTINFER_CHECK(std::int64_t(start_pos) + n <= c_.max_seq_len, InvalidArgument, "positions ", start_pos,
                    "..", std::int64_t(start_pos) + n - 1, " exceed the maximum sequence length ", c_.max_seq_len);
    check_tokens_(tokens, n);
  }

  void check_tokens_(const std::int32_t* tokens, std::int64_t n) const {
    for (std::int64_t i = 0; i < n; ++i)
      FASTINFER_CHECK(tokens[i] >= 0 && tokens[i] < c_.vocab_size, InvalidArgument, "token id ", tokens[i],
                      " at index ", i, " is outside the vocabulary [0, ", c_.vocab_size, ")");
  }

  void check_batch_(const ForwardBatch& bt) const {
    const std::int32_t nb = bt.batch();
    FASTINFER_CHECK(nb >= 1, InvalidArgument, "forward: the batch has no sequence");
    FASTINFER_CHECK(bt.qo_indptr.size() == std::size_t(nb) + 1 && bt.start_pos.size() == std::size_t(nb),
                    InvalidArgument, "forward: ", nb, " sequences need ", nb + 1, " qo_indptr entries and ", nb,
                    " start positions, got ", bt.qo_indptr.size(), " and ", bt.start_pos.size());
    FASTINFER_CHECK(bt.qo_indptr[0] == 0 && bt.qo_indptr.back() == bt.rows(), InvalidArgument,
                    "forward: qo_indptr must run from 0 to the ", bt.rows(), " tokens, got ", bt.qo_indptr[0],
                    "..", bt.qo_indptr.back());
    FASTINFER_CHECK(bt.rows() <= max_batch_, InvalidArgument, "forward: ", bt.rows(),
                    " tokens exceed the model's max_batch ", max_batch_);
    std::int64_t mask_bytes = 0;
    for (std::int32_t b = 0; b < nb; ++b) {
      const SeqId s = bt.seq_ids[std::size_t(b)];
      const std::int32_t n = bt.count(b);
      FASTINFER_CHECK(n >= 1, InvalidArgument, "forward: sequence ", s, " brings ", n, " tokens (at least 1)");
      FASTINFER_CHECK(kv_->contains(s), InvalidArgument, "forward: sequence ", s, " is not in the KV cache");
      for (std::int32_t a = 0; a < b; ++a)
        FASTINFER_CHECK(bt.seq_ids[std::size_t(a)] != s, InvalidArgument, "forward: sequence ", s,
                        " appears twice in one batch");
      const std::int64_t len = kv_->length(s);
      const std::int64_t start = bt.start_pos[std::size_t(b)] == ForwardBatch::kAppend ? len : bt.start_pos[std::size_t(b)];
      FASTINFER_CHECK(start >= 0 && start <= len, InvalidArgument, "forward: start position ", start,
                      " of sequence ", s, " is outside the cached range [0, ", len, "]");
      FASTINFER_CHECK(start + n <= c_.max_seq_len, InvalidArgument, "forward: positions ", start, "..",
                      start + n - 1, " of sequence ", s, " exceed the maximum sequence length ", c_.max_seq_len);
      mask_bytes += std::int64_t(n) * n;
    }
    if (bt.logits == LogitsRows::PerEntry) {
      FASTINFER_CHECK(bt.logits_tail.size() == std::size_t(nb), InvalidArgument, "forward: per-entry logits need ",
                      nb, " counts (one per sequence), got ", bt.logits_tail.size());
      for (std::int32_t b = 0; b < nb; ++b)
        FASTINFER_CHECK(bt.logits_tail[std::size_t(b)] >= 0 && bt.logits_tail[std::size_t(b)] <= bt.count(b),
                        InvalidArgument, "forward: sequence ", bt.seq_ids[std::size_t(b)], " asks for ",
                        bt.logits_tail[std::size_t(b)], " logits rows of its ", bt.count(b), " tokens");
    }
    FASTINFER_CHECK(bt.mask.empty() || std::int64_t(bt.mask.size()) == mask_bytes, InvalidArgument,
                    "forward: the custom mask holds ", bt.mask.size(), " bytes, the batch needs ", mask_bytes);
    FASTINFER_CHECK(bt.positions.empty() || std::int64_t(bt.positions.size()) == bt.rows(), InvalidArgument,
                    "forward: ", bt.positions.size(), " positions for ", bt.rows(), " tokens");
    for (std::size_t r = 0; r < bt.positions.size(); ++r)
      FASTINFER_CHECK(bt.positions[r] >= 0 && bt.positions[r] < c_.max_seq_len, InvalidArgument,
                      "forward: position ", bt.positions[r], " of row ", r, " is outside [0, ", c_.max_seq_len, ")");
    check_tokens_(bt.tokens.data(), bt.rows());
  }

  // One chunk of the solo sequence, through the batch path.
  void solo_step_(const std::int32_t* tokens, int n, int start_pos, LogitsRows mode, float* out) {
    if (!kv_->contains(kSoloSequence))
      FASTINFER_CHECK(kv_->add_sequence(kSoloSequence), UsageError, "the KV pool has no room for a sequence");
    solo_.clear();
    solo_.add(kSoloSequence, tokens, n, start_pos);
    solo_.logits = mode;
    forward(solo_, out);
  }

  void check_stage_(int first, int last, const char* verb) const {
    FASTINFER_CHECK(open_ != nullptr, UsageError, verb, ": no staged pass is open (call begin_layers first)");
    FASTINFER_CHECK(first == depth_ && last >= first && last <= c_.n_layers, InvalidArgument, verb, ": layers [",
                    first, ", ", last, ") do not continue the pass at depth ", depth_, " of ", c_.n_layers);
  }

  // y[n][w.rows] = x[n][w.cols] W^T.
  void linear_(const MatrixView& w, const float* x, int n, float* y) { backend_.linear(w, x, n, y); }
  // The fusions a device backend offers (backend.hpp's optional verbs: the
  // same bits as the calls they replace, fewer launches) are used where the
  // backend has them and no profiler times the ops one by one.

  // RoPE of q (skipped when null) and k at this pass's positions.
  void rope_qk_(float* q, float* k, int n) {
    if constexpr (backend_detail::has_rope_pair<Backend>::value) {
      if (q != nullptr && prof_ == nullptr) {
        backend_.rope_pair(q, c_.n_heads, k, c_.n_kv_heads, n, c_.head_dim, row_pos_.data(), c_.rope_theta,
                           c_.rope_style);
        return;
      }
    }
    if (q != nullptr) backend_.rope(q, n, c_.n_heads, c_.head_dim, row_pos_.data(), c_.rope_theta, c_.rope_style);
    backend_.rope(k, n, c_.n_kv_heads, c_.head_dim, row_pos_.data(), c_.rope_theta, c_.rope_style);
  }
  // x += the attention output (in xb_), then xb_ = ffn_norm(x).
  void add_ffn_norm_(float* x, const LlamaLayerWeights& lw, int n) {
    if constexpr (backend_detail::has_add_rmsnorm<Backend>::value) {
      if (prof_ == nullptr) {
        backend_.add_rmsnorm(x, xb_.data(), xb_.data(), n, lw.ffn_norm, c_.dim, c_.norm_eps);
        return;
      }
    }
    backend_.add(x, xb_.data(), std::int64_t(n) * c_.dim);
    lap_(ProfOp::Residual);
    backend_.rmsnorm(xb_.data(), x, nullptr, n, lw.ffn_norm, c_.dim, c_.norm_eps);
    lap_(ProfOp::FfnNorm);
  }
  // hb_ = silu(xb_ W_gate^T) * (xb_ W_up^T).
  void gate_up_swiglu_(const LlamaLayerWeights& lw, int n) {
    if constexpr (backend_detail::has_linear_swiglu<Backend>::value) {
      if (prof_ == nullptr) {
        backend_.linear_swiglu(lw.w_gate, lw.w_up, xb_.data(), n, hb_.data());
        return;
      }
    }
    const MatrixView ws[2] = {lw.w_gate, lw.w_up};
    float* const ys[2] = {hb_.data(), hb2_.data()};
    static constexpr ProfOp ops[2] = {ProfOp::W1, ProfOp::W3};
    linear_group_(ws, ys, ops, 2, xb_.data(), n);
    backend_.swiglu(hb_.data(), hb2_.data(), std::int64_t(n) * c_.hidden_dim);
    lap_(ProfOp::Swiglu);
  }
  // ys[m] = x ws[m]^T for weights of one input: one call where the backend
  // takes a group (backend.hpp's optional linear_group, the same bits as one
  // linear each), except under the profiler, which times each projection
  // (ops[m]) on its own.
  void linear_group_(const MatrixView* ws, float* const* ys, const ProfOp* ops, int count, const float* x, int n) {
    if constexpr (backend_detail::has_linear_group<Backend>::value) {
      if (prof_ == nullptr) {
        backend_.linear_group(ws, ys, count, x, n);
        return;
      }
    }
    for (int m = 0; m < count; ++m) {
      linear_(ws[m], x, n, ys[m]);
      lap_(ops[m]);
    }
  }

  // Rows of `heads` heads of head_dim values -> rows of heads of hdp_ values.
  void pad_(const float* src, int n, int heads, float* dst) {
    backend_.copy_rows(dst, hdp_, src, c_.head_dim, std::int64_t(n) * heads, c_.head_dim);
  }

  void lap_(ProfOp op) {
    if (prof_) prof_->lap(op);
  }
  // The pass's shape for the profiler's accounting (row_pos_ and the KV
  // lengths already include this step's tokens).
  void profile_pass_(const ForwardBatch& bt, bool decode) {
    ProfilePassShape p;
    p.rows = bt.rows();
    p.logit_rows = std::int64_t(logit_rows_.size());
    p.sequences = bt.batch();
    for (std::int64_t r = 0; r < p.rows; ++r) p.attended_keys += row_pos_[std::size_t(r)] + 1;
    for (SeqId s : seqs_) p.kv_tokens += kv_->length(s);
    prof_->set_pass(prof_shape_, p, decode ? ProfPhase::Decode : ProfPhase::Prefill);
  }

  // q, k, v of layer l for the open pass's rows from x_ (RoPE applied, head
  // size padded to hdp_), K and V appended to the cache; returns the rows'
  // padded (or plain) q, k, v pointers. `normed`: xb_ holds the layer's
  // attention norm of x_ already (layer_'s fused add of the layer before).
  struct Qkv {
    const float *q, *k, *v;
  };
  Qkv qkv_(const ForwardBatch& bt, int l, bool with_q, bool normed = false) {
    const int n = int(bt.rows());
    const bool padded = hdp_ != c_.head_dim;
    const LlamaLayerWeights& lw = w_.layers[std::size_t(l)];
    if (!normed) backend_.rmsnorm(xb_.data(), x_.data(), nullptr, n, lw.attn_norm, c_.dim, c_.norm_eps);
    lap_(ProfOp::AttnNorm);
    {
      const MatrixView ws[3] = {lw.wq, lw.wk, lw.wv};
      float* const ys[3] = {q_.data(), k_.data(), v_.data()};
      static constexpr ProfOp ops[3] = {ProfOp::Wq, ProfOp::Wk, ProfOp::Wv};
      const int skip = with_q ? 0 : 1;
      linear_group_(ws + skip, ys + skip, ops + skip, 3 - skip, xb_.data(), n);
    }
    rope_qk_(with_q ? q_.data() : nullptr, k_.data(), n);
    lap_(ProfOp::Rope);
    Qkv out{q_.data(), k_.data(), v_.data()};
    if (padded) {
      pad_(k_.data(), n, c_.n_kv_heads, kpad_.data());
      pad_(v_.data(), n, c_.n_kv_heads, vpad_.data());
      if (with_q) pad_(q_.data(), n, c_.n_heads, qpad_.data());
      out = Qkv{qpad_.data(), kpad_.data(), vpad_.data()};
    }
    kv_->append_rows(l, bt.seq_ids, bt.qo_indptr.data(), out.k, out.v, std::int64_t(c_.n_kv_heads) * hdp_);
    lap_(ProfOp::KvAppend);
    return out;
  }

  // CALM: layer l's K and V from the current hidden state, the layer not run.
  void project_kv_(const ForwardBatch& bt, int l) { qkv_(bt, l, false); }

  // Layer l of the open pass. `normed`: xb_ holds its attention norm of x_
  // already; `next`: layer l + 1 runs right after. Returns whether xb_ holds
  // layer l + 1's attention norm (the layer's last add and that norm fused,
  // one launch fewer, where the backend has add_rmsnorm).
  bool layer_(const ForwardBatch& bt, int l, bool normed, bool next) {
    const int n = int(bt.rows());
    const bool padded = hdp_ != c_.head_dim;
    const LlamaLayerWeights& lw = w_.layers[std::size_t(l)];
    float* x = x_.data();
    const Qkv qkv = qkv_(bt, l, true, normed);
    float* att = padded ? opad_.data() : att_out_.data();
    kv_->attend(l, qkv.q, bt.qo_indptr.data(), bt.mask.empty() ? nullptr : bt.mask.data(), att, c_.n_heads, threads_);
    if (padded)  // padded heads -> plain heads
      backend_.copy_rows(att_out_.data(), c_.head_dim, opad_.data(), hdp_, std::int64_t(n) * c_.n_heads, c_.head_dim);
    lap_(ProfOp::Attention);
    linear_(lw.wo, att_out_.data(), n, xb_.data());
    lap_(ProfOp::Wo);
    add_ffn_norm_(x, lw, n);
    gate_up_swiglu_(lw, n);
    linear_(lw.w_down, hb_.data(), n, xb_.data());
    lap_(ProfOp::W2);
    if constexpr (backend_detail::has_add_rmsnorm<Backend>::value) {
      if (next && prof_ == nullptr) {
        const float* next_norm = w_.layers[std::size_t(l) + 1].attn_norm;
        backend_.add_rmsnorm(x, xb_.data(), xb_.data(), n, next_norm, c_.dim, c_.norm_eps);
        return true;
      }
    }
    backend_.add(x, xb_.data(), std::int64_t(n) * c_.dim);
    lap_(ProfOp::Residual);
    return false;
  }

  // Final norm and classifier over the logits rows at the current depth.
  void head_(float* out) {
    const int m = int(logit_rows_.size());
    last_logits_ = nullptr, last_logits_rows_ = 0;
    if (m == 0) return;
    backend_.rmsnorm(xb_.data(), x_.data(), logit_rows_.data(), m, w_.final_norm, c_.dim, c_.norm_eps);
    lap_(ProfOp::FinalNorm);
    if constexpr (Backend::kHostVisible) {
      linear_(w_.classifier, xb_.data(), m, out);
    } else {
      linear_(w_.classifier, xb_.data(), m, logits_dev_.data());
      if (out != nullptr)
        backend_.to_host(logits_dev_.data(), std::size_t(m) * std::size_t(c_.vocab_size), out);
    }
    last_logits_ = Backend::kHostVisible ? out : logits_dev_.data();
    last_logits_rows_ = m;
    lap_(ProfOp::Classifier);
  }

  LlamaWeights w_;
  LlamaConfig c_;
  int threads_ = 1;
  int max_batch_ = 1;
  int hdp_ = 0;  // head size as stored in the KV cache (a multiple of 8)
  Backend backend_;
  std::unique_ptr<KVStore> kv_;
  // Activations for up to max_batch_ tokens, row-major [token][feature], in
  // the backend's memory.
  Buffer<float> x_, xb_, q_, k_, v_, att_out_, hb_, hb2_;
  Buffer<float> qpad_, kpad_, vpad_, opad_;  // head size padded to hdp_ (only when it differs)
  Buffer<float> logits_dev_;                 // [max_batch][vocab], only when !Backend::kHostVisible
  std::vector<float> hidden_host_;           // last_hidden()'s host copy, only when !Backend::kHostVisible
  std::vector<float> features_host_;         // last_features()'s host copy, only when !Backend::kHostVisible
  std::int64_t feature_rows_ = 0;            // rows of the last forward (last_features())
  std::vector<float> logits_;        // [vocab]: the solo sequence's last row
  std::vector<float> batch_logits_;  // forward(batch)'s rows
  // The last pass's logits rows where the backend reads them (sample_logits).
  const float* last_logits_ = nullptr;
  std::int64_t last_logits_rows_ = 0;
  std::vector<std::int64_t> row_pos_;
  std::vector<std::int32_t> logit_rows_;
  std::vector<SeqId> seqs_;
  std::vector<ReserveRequest> reqs_;
  ForwardBatch solo_;
  ForwardProfiler* prof_ = nullptr;  // not owned; nullptr: profiling off
  ProfileModelShape prof_shape_;      // the accounting's view of this model, set with the profiler
  const ForwardBatch* open_ = nullptr;  // the staged pass (begin_layers) in progress
  int depth_ = 0;                       // its layers run or filled so far
};

// Opt-in (build time only): with FASTINFER_EXTERN_TEMPLATES, translation
// units call one compiled LlamaModel<CpuBackend> instead of each compiling
// forward() and its kernels again; exactly one of them must instantiate it:
//   namespace fastinfer { FASTINFER_LLAMA_MODEL_INSTANCES() }
// (see backend/cpu/kv_store.hpp's FASTINFER_KV_STORE_INSTANCES, which goes
// with it).
#define FASTINFER_LLAMA_MODEL_INSTANCES(EXTERN) EXTERN template class LlamaModel<CpuBackend>;
#if defined(FASTINFER_EXTERN_TEMPLATES)
FASTINFER_LLAMA_MODEL_INSTANCES(extern)
#endif

}  // namespace fastinfer
