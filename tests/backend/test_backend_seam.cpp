// The compute-backend seam (backend/backend.hpp), proven with a guarded
// backend: every byte it holds (weights, activations and the KV arena) is
// mprotect'ed PROT_NONE except while one of its own calls runs, so a model,
// KV store user or engine that reads or writes those bytes behind the
// backend's back dies with SIGSEGV instead of passing. Its kernels are the
// CPU backend's, so its results must be the CpuBackend's, bit for bit.
#include <catch2/catch.hpp>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <memory_resource>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "fastinfer/backend/backend.hpp"
#include "fastinfer/backend/cpu/cpu_backend.hpp"
#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/engine/engine.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/synthetic.hpp"
#include "fastinfer/speculative/speculative_verifier.hpp"
#include "model_scenarios.hpp"
#include "spec_harness.hpp"

using namespace fastinfer;

namespace {

// The guarded memory and the call counts of one GuardedBackend (shared by
// its buffers and its KV store, which may outlive a copy of the backend).
class Guard final : public std::pmr::memory_resource {
 public:
  ~Guard() override = default;

  // Opens every region for the duration of one backend call (calls nest).
  void open(const char* what) {
    ++calls[what];
    if (depth_++ == 0) protect_all_(PROT_READ | PROT_WRITE);
  }
  void close() {
    if (--depth_ == 0) protect_all_(PROT_NONE);
  }
  bool is_open() const { return depth_ > 0; }
  std::size_t guarded_bytes() const {
    std::size_t n = 0;
    for (const auto& [p, bytes] : regions_) n += bytes;
    return n;
  }
  const void* any_region() const { return regions_.empty() ? nullptr : regions_.begin()->first; }

  std::map<std::string, long> calls;

 private:
  void* do_allocate(std::size_t bytes, std::size_t align) override {
    REQUIRE(align <= std::size_t(::sysconf(_SC_PAGESIZE)));
    const std::size_t len = round_(bytes);
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    regions_[p] = len;
    if (depth_ == 0) ::mprotect(p, len, PROT_NONE);
    return p;
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t) override {
    regions_.erase(p);
    ::munmap(p, round_(bytes));
  }
  bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override { return this == &o; }

  static std::size_t round_(std::size_t bytes) {
    const std::size_t page = std::size_t(::sysconf(_SC_PAGESIZE));
    return std::max<std::size_t>(page, (bytes + page - 1) / page * page);
  }
  void protect_all_(int prot) {
    for (const auto& [p, len] : regions_) REQUIRE(::mprotect(p, len, prot) == 0);
  }

  std::map<void*, std::size_t> regions_;
  int depth_ = 0;
};

// RAII: one backend call.
struct Call {
  Call(Guard& g, const char* what) : g_(g) { g_.open(what); }
  ~Call() { g_.close(); }
  Guard& g_;
};

// The CPU backend's KV store, each verb one guarded call.
class GuardedKVStore final : public KVStore {
 public:
  GuardedKVStore(std::shared_ptr<Guard> g, std::unique_ptr<KVStore> inner) : g_(std::move(g)), in_(std::move(inner)) {}

  std::string_view layout_name() const override { return in_->layout_name(); }
  KVLayoutKind layout() const override { return in_->layout(); }
  std::string_view quant_name() const override { return in_->quant_name(); }
  std::size_t bytes_per_token() const override { return in_->bytes_per_token(); }
  std::size_t memory_bytes() const override { return in_->memory_bytes(); }
  std::int32_t block_size() const override { return in_->block_size(); }
  PagedAllocator& allocator() override { return in_->allocator(); }
  const PagedAllocator& allocator() const override { return in_->allocator(); }
  bool contains(SeqId s) const override { return in_->contains(s); }
  std::int64_t length(SeqId s) const override { return in_->length(s); }
  bool add_sequence(SeqId s) override { return in_->add_sequence(s); }
  void adopt(SeqId s, const std::vector<BlockId>& b, std::int64_t n) override { in_->adopt(s, b, n); }
  // Forks, truncation and extension may copy a shared block (copy-on-write).
  void fork(SeqId a, SeqId b) override {
    Call c(*g_, "kv.fork");
    in_->fork(a, b);
  }
  void free_sequence(SeqId s) override { in_->free_sequence(s); }
  void truncate(SeqId s, std::int64_t n) override {
    Call c(*g_, "kv.truncate");
    in_->truncate(s, n);
  }
  bool extend_all(const std::vector<ReserveRequest>& r) override {
    Call c(*g_, "kv.extend_all");
    return in_->extend_all(r);
  }
  void append(int l, SeqId s, const float* k, const float* v, std::int64_t n) override {
    Call c(*g_, "kv.append");
    in_->append(l, s, k, v, n);
  }
  void read(int l, SeqId s, std::int64_t p, float* k, float* v) const override {
    Call c(*g_, "kv.read");
    in_->read(l, s, p, k, v);
  }
  void copy_blocks(const std::vector<BlockCopy>& copies) override {
    Call c(*g_, "kv.copy_blocks");
    in_->copy_blocks(copies);
  }
  std::size_t host_block_bytes() const override { return in_->host_block_bytes(); }
  void swap_out(BlockId b, std::uint8_t* host) override {
    Call c(*g_, "kv.swap_out");
    in_->swap_out(b, host);
  }
  void swap_in(const std::uint8_t* host, BlockId b) override {
    Call c(*g_, "kv.swap_in");
    in_->swap_in(host, b);
  }
  HostSwapSlots allocate_swap_slots(std::int32_t slots) override {
    Call c(*g_, "kv.allocate_swap_slots");
    return in_->allocate_swap_slots(slots);
  }
  KVBlockStorage block_storage() override { return in_->block_storage(); }
  std::int64_t position_offset(SeqId s) const override { return in_->position_offset(s); }
  void observe_queries(SeqId s) override { in_->observe_queries(s); }
  CompressionStats compress(SeqId s, const kv::Press& p, double r) override {
    Call c(*g_, "kv.compress");
    return in_->compress(s, p, r);
  }
  void prepare(const std::vector<SeqId>& seqs, bool decode, int threads) override {
    Call c(*g_, "kv.prepare");
    in_->prepare(seqs, decode, threads);
  }
  void attend(int l, const float* q, const std::int32_t* qo, const std::uint8_t* mask, float* out, int heads,
              int threads) override {
    Call c(*g_, "kv.attend");
    in_->attend(l, q, qo, mask, out, heads, threads);
  }

 private:
  std::shared_ptr<Guard> g_;
  std::unique_ptr<KVStore> in_;
};

// A Backend whose memory is guarded and whose kernels are CpuBackend's.
class GuardedBackend {
 public:
  static constexpr std::string_view kName = "guarded-cpu";
  static constexpr bool kHostVisible = false;  // the model must copy logits out through to_host

  template <typename T>
  class Buffer {
   public:
    Buffer() = default;
    Buffer(std::shared_ptr<Guard> g, std::size_t n) : g_(std::move(g)), n_(n) {
      p_ = static_cast<T*>(g_->allocate(std::max<std::size_t>(1, n) * sizeof(T), alignof(T)));
    }
    Buffer(Buffer&& o) noexcept { *this = std::move(o); }
    Buffer& operator=(Buffer&& o) noexcept {
      if (this != &o) {
        release_();
        g_ = std::move(o.g_), p_ = std::exchange(o.p_, nullptr), n_ = std::exchange(o.n_, 0);
      }
      return *this;
    }
    ~Buffer() { release_(); }
    T* data() { return p_; }
    const T* data() const { return p_; }
    std::size_t size() const { return n_; }

   private:
    void release_() {
      if (p_) g_->deallocate(p_, std::max<std::size_t>(1, n_) * sizeof(T), alignof(T));
      p_ = nullptr;
    }
    std::shared_ptr<Guard> g_;
    T* p_ = nullptr;
    std::size_t n_ = 0;
  };

  explicit GuardedBackend(std::shared_ptr<Guard> g) : g_(std::move(g)) {}

  template <typename T>
  Buffer<T> allocate(std::size_t n) {
    Call c(*g_, "allocate");
    Buffer<T> b(g_, n);
    std::fill(b.data(), b.data() + n, T{});
    return b;
  }
  void to_host(const float* src, std::size_t n, float* host) {
    Call c(*g_, "to_host");
    cpu_.to_host(src, n, host);
  }
  // Weights move into guarded memory too: the model may not read them either.
  MatrixView upload(const MatrixView& w, std::vector<KeepAlive>& storage) {
    Call c(*g_, "upload");
    auto copy = std::make_shared<Buffer<std::uint8_t>>(g_, w.bytes());
    std::memcpy(copy->data(), w.data, w.bytes());
    storage.push_back(copy);
    MatrixView out = w;
    out.data = copy->data();
    return out;
  }
  void set_threads(int t) { cpu_.set_threads(t); }
  void embed(const MatrixView& table, const std::int32_t* tokens, std::int64_t n, float* out) {
    Call c(*g_, "embed");
    cpu_.embed(table, tokens, n, out);
  }
  void linear(const MatrixView& w, const float* x, std::int64_t n, float* y) {
    Call c(*g_, "linear");
    cpu_.linear(w, x, n, y);
  }
  void rmsnorm(float* out, const float* x, const std::int32_t* rows, std::int64_t n, const float* w, int dim,
               float eps) {
    Call c(*g_, "rmsnorm");
    cpu_.rmsnorm(out, x, rows, n, w, dim, eps);
  }
  void rope(float* x, std::int64_t n, int heads, int hd, const std::int64_t* pos, float theta, RopeStyle style) {
    Call c(*g_, "rope");
    cpu_.rope(x, n, heads, hd, pos, theta, style);
  }
  void swiglu(float* gate, const float* up, std::int64_t n) {
    Call c(*g_, "swiglu");
    cpu_.swiglu(gate, up, n);
  }
  void add(float* y, const float* x, std::int64_t n) {
    Call c(*g_, "add");
    cpu_.add(y, x, n);
  }
  void copy_rows(float* dst, std::int64_t ds, const float* src, std::int64_t ss, std::int64_t rows, int width) {
    Call c(*g_, "copy_rows");
    cpu_.copy_rows(dst, ds, src, ss, rows, width);
  }
  std::unique_ptr<KVStore> make_kv_store(const KVOptions& o, const kv::KVCacheConfig& cfg) {
    Call c(*g_, "make_kv_store");
    return std::make_unique<GuardedKVStore>(g_, cpu::make_kv_store(o, cfg, g_.get()));
  }
  void argmax_rows(const float* logits, std::int64_t vocab, const std::int32_t* rows, std::int64_t n,
                   std::int32_t* tokens) {
    Call c(*g_, "argmax_rows");
    cpu_.argmax_rows(logits, vocab, rows, n, tokens);
  }
  void sample_rows(const float* logits, std::int64_t vocab, const std::int32_t* rows, std::int64_t n,
                   const SamplingParams* params, const std::uint64_t* token_indices, std::int32_t* tokens) {
    Call c(*g_, "sample_rows");
    cpu_.sample_rows(logits, vocab, rows, n, params, token_indices, tokens);
  }
  void accept_rows(const float* logits, std::int64_t vocab, const std::int32_t* rows, std::int64_t n,
                   const SamplingParams* params, const std::int32_t* drafts, const float* accept_coins,
                   const float* residual_coins, std::int32_t* tokens) {
    Call c(*g_, "accept_rows");
    cpu_.accept_rows(logits, vocab, rows, n, params, drafts, accept_coins, residual_coins, tokens);
  }

 private:
  std::shared_ptr<Guard> g_;
  CpuBackend cpu_;
};

// A backend that lacks one member.
struct NoLinear {
  static constexpr std::string_view kName = "broken";
  static constexpr bool kHostVisible = true;
  template <typename T>
  using Buffer = CpuBackend::Buffer<T>;
  template <typename T>
  Buffer<T> allocate(std::size_t n) {
    return Buffer<T>(n);
  }
  void to_host(const float*, std::size_t, float*) {}
  MatrixView upload(const MatrixView& w, std::vector<KeepAlive>&) { return w; }
  void set_threads(int) {}
  void embed(const MatrixView&, const std::int32_t*, std::int64_t, float*) {}
  void rmsnorm(float*, const float*, const std::int32_t*, std::int64_t, const float*, int, float) {}
  void rope(float*, std::int64_t, int, int, const std::int64_t*, float, RopeStyle) {}
  void swiglu(float*, const float*, std::int64_t) {}
  void add(float*, const float*, std::int64_t) {}
  void copy_rows(float*, std::int64_t, const float*, std::int64_t, std::int64_t, int) {}
  std::unique_ptr<KVStore> make_kv_store(const KVOptions&, const kv::KVCacheConfig&) { return nullptr; }
  void argmax_rows(const float*, std::int64_t, const std::int32_t*, std::int64_t, std::int32_t*) {}
  void sample_rows(const float*, std::int64_t, const std::int32_t*, std::int64_t, const SamplingParams*,
                   const std::uint64_t*, std::int32_t*) {}
};

// The "tiny" synthetic shape cut to two layers and `positions` positions:
// the model of the engine and sampling cases.
LlamaConfig two_layer_tiny(int positions) {
  LlamaConfig c = synthetic_config("tiny");
  c.n_layers = 2;
  c.max_seq_len = positions;
  return c;
}

// One thread, a paged KV cache of 16-token blocks for `sequences` sequences.
ModelOptions one_thread_paged(int sequences) {
  ModelOptions o;
  o.threads = 1;
  o.kv.layout = KVLayoutKind::Paged;
  o.kv.block_size = 16;
  o.kv.max_sequences = sequences;
  return o;
}

bool same_bits(const float* a, const float* b, std::size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

// Reading `p` kills a forked child with SIGSEGV: the guard is really on.
bool read_faults(const void* p) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::signal(SIGSEGV, SIG_DFL);  // not a sanitizer's handler: die of the signal
    volatile const unsigned char* q = static_cast<const unsigned char*>(p);
    (void)*q;
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV;
}

}  // namespace

TEST_CASE("backend concept: CpuBackend satisfies it, a backend missing a member does not", "[backend]") {
  STATIC_REQUIRE(is_backend_v<CpuBackend>);
  STATIC_REQUIRE(is_backend_v<GuardedBackend>);
  STATIC_REQUIRE_FALSE(is_backend_v<NoLinear>);
  STATIC_REQUIRE_FALSE(backend_detail::has_linear<NoLinear>::value);
  STATIC_REQUIRE(backend_detail::has_rope<NoLinear>::value);
  STATIC_REQUIRE_FALSE(is_backend_v<int>);
}

TEST_CASE("guarded backend: the model touches no activation or KV byte outside the backend, bit for bit the CPU's",
          "[backend]") {
  struct Shape {
    const char* name;
    int dim, heads, kv_heads;  // head_dim 8: stored as is; 6: padded to 8 in the KV cache
  };
  struct Kv {
    const char* name;
    KVLayoutKind layout;
    kv::QuantKind quant;
  };
  for (const Shape& shape : {Shape{"head_dim 8", 64, 8, 4}, Shape{"head_dim 6 (padded)", 48, 8, 4}}) {
    for (const Kv& kvk : {Kv{"contiguous f32", KVLayoutKind::Contiguous, kv::QuantKind::F32},
                          Kv{"paged int8", KVLayoutKind::Paged, kv::QuantKind::Int8},
                          Kv{"window f16", KVLayoutKind::Window, kv::QuantKind::F16}}) {
      INFO(shape.name << ", " << kvk.name);
      LlamaConfig c = synthetic_config("tiny");
      c.dim = shape.dim, c.n_heads = shape.heads, c.n_kv_heads = shape.kv_heads, c.head_dim = shape.dim / shape.heads;
      c.n_layers = 3;
      const LlamaWeights w = make_synthetic(c, DType::BF16, 11);
      ModelOptions o;
      o.threads = 2;
      o.max_batch = 32;
      o.kv.layout = kvk.layout;
      o.kv.quant = kvk.quant;
      o.kv.max_sequences = 4;
      o.kv.window = 24;
      auto guard = std::make_shared<Guard>();
      LlamaModel<> ref(w, o);
      LlamaModel<GuardedBackend> guarded(w, o, GuardedBackend(guard));
      REQUIRE_FALSE(guard->is_open());
      REQUIRE(guard->guarded_bytes() > 0);
      REQUIRE(read_faults(guard->any_region()));
      const std::size_t V = std::size_t(c.vocab_size);

      // Prefill in two chunks, every row's logits; the last hidden rows.
      std::mt19937 rng(5);
      std::vector<std::int32_t> prompt(40);
      for (auto& t : prompt) t = std::int32_t(rng() % std::uint32_t(c.vocab_size));
      std::vector<float> a(prompt.size() * V), b(a.size());
      ref.forward_prefill_all(prompt.data(), std::int64_t(prompt.size()), 0, a.data());
      guarded.forward_prefill_all(prompt.data(), std::int64_t(prompt.size()), 0, b.data());
      CHECK(same_bits(a.data(), b.data(), a.size()));
      CHECK(same_bits(ref.last_hidden(), guarded.last_hidden(), std::size_t(c.dim)));

      // Greedy decode, then a rollback (truncate) and a different path.
      int pos = int(prompt.size());
      std::int32_t t = cpu::argmax_token(a.data() + a.size() - V, c.vocab_size);
      for (int i = 0; i < 12; ++i, ++pos) {
        const float* la = ref.forward_decode(t, pos);
        const float* lb = guarded.forward_decode(t, pos);
        REQUIRE(same_bits(la, lb, V));
        t = cpu::argmax_token(la, c.vocab_size);
      }
      CHECK(same_bits(ref.forward_decode(7, pos - 6), guarded.forward_decode(7, pos - 6), V));

      // A ragged batch of two more sequences, one with a token-tree mask, then a fork.
      auto require = [](bool ok) { REQUIRE(ok); };
      const auto ba = testing::ragged_tree_fork_logits(ref, prompt, require);
      const auto bb = testing::ragged_tree_fork_logits(guarded, prompt, require);
      CHECK(same_bits(ba.data(), bb.data(), ba.size()));
      REQUIRE_FALSE(guard->is_open());

      // Every kernel the model needs was the backend's.
      for (const char* k : {"upload", "embed", "linear", "rmsnorm", "rope", "swiglu", "add", "to_host", "kv.append",
                            "kv.attend", "kv.prepare"})
        CHECK(guard->calls[k] > 0);
      if (c.head_dim % 8 != 0) CHECK(guard->calls["copy_rows"] > 0);
    }
  }
}

TEST_CASE("guarded backend: an engine's swaps and copy-on-write go through the KV store verbs", "[backend][engine]") {
  const LlamaConfig c = two_layer_tiny(80);
  const LlamaWeights w = make_synthetic(c, DType::BF16, 3);
  ModelOptions o = one_thread_paged(16);
  o.kv.num_blocks = 14;  // small: forces preemption
  engine::EngineConfig cfg;
  cfg.scheduler.max_tokens_per_step = 64;
  cfg.scheduler.max_seqs = 16;
  cfg.scheduler.preemption = sched::PreemptionPolicy{sched::Swap{}};
  cfg.scheduler.swap_blocks = 32;
  cfg.prefix_cache = true;
  std::mt19937 rng(9);
  std::vector<sched::Request> reqs;
  // Two full blocks shared by every prompt; a prompt that is exactly those
  // hits the prefix cache whole and recomputes its last token into a shared
  // block: a copy-on-write copy.
  std::vector<std::int32_t> shared_prefix{1};
  for (int k = 1; k < 32; ++k) shared_prefix.push_back(std::int32_t(100 + k));
  for (int i = 0; i < 24; ++i) {
    sched::Request r;
    r.prompt = shared_prefix;
    const int extra = i % 3 == 0 ? 0 : int(rng() % 10);
    for (int k = 0; k < extra; ++k) r.prompt.push_back(std::int32_t(3 + rng() % 500));
    r.max_new_tokens = 8 + int(rng() % 24);
    reqs.push_back(r);
  }
  auto run = [&](auto& model) {
    engine::Engine<std::remove_reference_t<decltype(model.backend())>> e(model, cfg);
    std::vector<sched::RequestId> ids;
    for (const auto& r : reqs) ids.push_back(e.submit(r));
    while (e.step()) {
    }
    std::vector<std::vector<std::int32_t>> out;
    for (auto id : ids) out.push_back(e.output(id));
    CHECK(e.metrics().preemptions_swap > 0);
    return out;
  };
  auto guard = std::make_shared<Guard>();
  LlamaModel<> ref(w, o);
  LlamaModel<GuardedBackend> guarded(w, o, GuardedBackend(guard));
  const auto expected = run(ref);
  const long copies = guard->calls["to_host"];
  const auto got = run(guarded);
  CHECK(got == expected);
  // Without speculation no step reads a logits row on the host: the engine
  // leaves them on the backend (forward_to_sample) and gets a token per row.
  CHECK(guard->calls["to_host"] == copies);
  CHECK(guard->calls["kv.allocate_swap_slots"] == 1);  // the engine's swap pool is the store's
  CHECK(guard->calls["kv.swap_out"] > 0);
  CHECK(guard->calls["kv.swap_in"] > 0);
  CHECK(guard->calls["kv.copy_blocks"] > 0);
  CHECK(guard->calls["sample_rows"] > 0);
  REQUIRE_FALSE(guard->is_open());
}

TEST_CASE("KV store: host swap slots are zeroed, sized to a block and bounds-checked", "[backend][kv]") {
  const LlamaConfig c = two_layer_tiny(64);
  KVOptions o;
  o.layout = KVLayoutKind::Paged;
  o.quant = kv::QuantKind::Int8;
  o.block_size = 16;
  std::unique_ptr<KVStore> store = cpu::make_kv_store(o, kv_cache_config(o, c, 16));
  const HostSwapSlots slots = store->allocate_swap_slots(3);
  REQUIRE(slots.size() == 3);
  REQUIRE(slots.slot_bytes() == store->host_block_bytes());
  CHECK(slots.slot(1) == slots.slot(0) + store->host_block_bytes());
  CHECK(
      std::all_of(slots.slot(0), slots.slot(2) + slots.slot_bytes(), [](std::uint8_t b) { return b == 0; }));
  CHECK_THROWS_WITH(slots.slot(3), "host swap slot 3 out of range [0, 3)");
  CHECK_THROWS_WITH(slots.slot(-1), "host swap slot -1 out of range [0, 3)");
  CHECK_THROWS_WITH(store->allocate_swap_slots(-2), "swap slots must be non-negative, got -2");
  CHECK(store->allocate_swap_slots(0).size() == 0);
}

TEST_CASE(
    "guarded backend: greedy and coupled and exact chains verify from the backend's picks and copy no row "
    "out",
    "[backend][engine][spec]") {
  const LlamaConfig c = two_layer_tiny(96);
  const LlamaWeights w = make_synthetic(c, DType::F32, 5);
  const ModelOptions o = one_thread_paged(16);
  // Prompts that say a phrase twice: prompt lookup drafts its continuation.
  std::vector<sched::Request> reqs;
  for (int i = 0; i < 6; ++i) {
    sched::Request r;
    r.prompt = {1};
    for (int rep = 0; rep < 2; ++rep)
      for (int k = 0; k < 5; ++k) r.prompt.push_back(std::int32_t(30 + 7 * i + k));
    r.max_new_tokens = 20;
    r.sampling.seed = 60 + std::uint64_t(i);
    reqs.push_back(r);
  }
  engine::RequestSpec lookup;
  lookup.drafter = engine::SpecDrafter::PromptLookup;
  lookup.k = 3;
  // rule 0: greedy; 1: sampled, coupled (the default); 2: sampled, Exact;
  // 3: sampled, typical acceptance (reads distributions on the host).
  // A cold temperature: this random model's drafts are then often kept.
  for (int rule = 0; rule < 4; ++rule) {
    INFO("rule " << rule);
    engine::EngineConfig cfg;
    cfg.spec.policy = engine::SpecAlways{};
    if (rule == 2) cfg.spec.sampled_rule = speculative::AcceptanceRule::Exact;
    if (rule == 3) cfg.spec.sampled_rule = speculative::AcceptanceRule::TypicalLossy;
    for (auto& r : reqs) r.sampling.temperature = rule == 0 ? 0.0f : 0.05f;
    auto run = [&](auto& model, const engine::RequestSpec& spec) {
      return fastinfer::testing::run_spec_engine(model, cfg, reqs, {spec});
    };
    LlamaModel<> ref(w, o);
    auto guard = std::make_shared<Guard>();
    LlamaModel<GuardedBackend> guarded(w, o, GuardedBackend(guard));
    const auto expected = run(ref, lookup);
    const long copies = guard->calls["to_host"];
    const auto got = run(guarded, lookup);
    CHECK(got.outputs == expected.outputs);
    CHECK(got.metrics.spec_rows > 0);
    CHECK(got.metrics.spec_accepted > 0);
    if (rule < 3) {
      // The m + 1 rows of a chain are picked where they are and matched:
      // the host verifier's tokens (the CPU engine's, above), bit for bit.
      CHECK(guard->calls["to_host"] == copies);
      CHECK(guard->calls[rule == 2 ? "accept_rows" : "sample_rows"] > 0);
    } else {
      CHECK(guard->calls["to_host"] > copies);  // typical acceptance reads distributions
    }
    // Greedy and coupled speculation emit plain decoding's tokens.
    if (rule < 2) CHECK(got.outputs == run(ref, engine::RequestSpec{}).outputs);
    REQUIRE_FALSE(guard->is_open());
  }
}

TEST_CASE("guarded backend: greedy and coupled token trees verify from the backend's picks",
          "[backend][engine][spec]") {
  const LlamaConfig c = two_layer_tiny(96);
  const LlamaWeights w = make_synthetic(c, DType::F32, 5);
  const ModelOptions o = one_thread_paged(16);
  std::vector<sched::Request> reqs;
  for (int i = 0; i < 6; ++i) {
    sched::Request r;
    r.prompt = {1, std::int32_t(30 + 7 * i), std::int32_t(31 + 7 * i), std::int32_t(32 + 7 * i)};
    r.max_new_tokens = 24;
    r.sampling.seed = 90 + std::uint64_t(i);
    reqs.push_back(r);
  }
  // Lookahead's trees (the only tree drafter a backend whose memory the host
  // cannot read runs: the heads read the target's weights on the host). A
  // 16-token step budget for six requests often leaves no room for the
  // 6-row Jacobi window: such a tree's rows are picked on the backend.
  engine::RequestSpec lookahead;
  lookahead.drafter = engine::SpecDrafter::Lookahead;
  lookahead.k = 4;  // nodes a tree
  for (const float temperature : {0.0f, 0.05f}) {
    INFO("temperature " << temperature);
    engine::EngineConfig cfg;
    cfg.scheduler.max_tokens_per_step = 16;
    cfg.spec.policy = engine::SpecAlways{};
    cfg.spec.lookahead = speculative::LookaheadConfig{3, 3, 4};
    for (auto& r : reqs) r.sampling.temperature = temperature;
    auto run = [&](auto& model) {
      return fastinfer::testing::run_spec_engine(model, cfg, reqs, {lookahead});
    };
    LlamaModel<> ref(w, o);
    auto guard = std::make_shared<Guard>();
    LlamaModel<GuardedBackend> guarded(w, o, GuardedBackend(guard));
    const auto expected = run(ref);
    const long copies = guard->calls["to_host"];
    const auto got = run(guarded);
    // The host verifier's tokens over host rows, bit for bit.
    CHECK(got.outputs == expected.outputs);
    const engine::EngineMetrics& m = got.metrics;
    CHECK(m.spec_rows > 0);
    CHECK(m.spec_accepted > 0);
    // A step copies its rows out only when a window reads them: some
    // speculating steps had none and copied nothing.
    CHECK(guard->calls["to_host"] - copies < m.spec_steps);
    REQUIRE_FALSE(guard->is_open());
  }
}

TEST_CASE("sampling on the backend: generate, the engine and argmax_rows pick the host sampler's tokens",
          "[backend][sampling]") {
  const LlamaConfig c = two_layer_tiny(96);
  const LlamaWeights w = make_synthetic(c, DType::F32, 21);
  const ModelOptions o = one_thread_paged(8);
  auto guard = std::make_shared<Guard>();
  GuardedBackend backend(guard);
  LlamaModel<GuardedBackend> guarded(w, o, backend);
  LlamaModel<> host(w, o);
  const std::vector<std::int32_t> prompt{1, 40, 41, 42, 7};

  // The independent reference: the host sampler over the rows forward_* returns.
  auto host_loop = [&](const GenerationParams& p) {
    std::vector<std::int32_t> out;
    cpu::SamplerWorkspace ws(c.vocab_size);
    const float* logits = host.forward_prefill(prompt, 0);
    for (int pos = int(prompt.size()); int(out.size()) < p.max_new_tokens; ++pos) {
      const std::int32_t t = cpu::sample_at_index(logits, c.vocab_size, p, std::uint64_t(out.size()), ws);
      if (t == c.bos_id) break;
      out.push_back(t);
      logits = host.forward_decode(t, pos);
    }
    return out;
  };
  for (const float temperature : {0.0f, 0.9f}) {
    INFO("temperature " << temperature);
    GenerationParams p;
    p.temperature = temperature;
    p.top_k = 40;
    p.top_p = 0.9f;
    p.seed = 77;
    p.max_new_tokens = 24;
    const long before = guard->calls["sample_rows"];
    const GenerationResult r = generate(guarded, prompt, p);
    CHECK(r.tokens == host_loop(p));
    // One backend pick per token, plus the one that hit a stop rule.
    CHECK(guard->calls["sample_rows"] - before >= long(r.tokens.size()));
  }

  // argmax_rows and sample_rows over several rows of one ragged pass.
  ForwardBatch fb;
  REQUIRE(guarded.kv().add_sequence(3));
  REQUIRE(host.kv().add_sequence(3));
  fb.add(3, prompt.data(), std::int32_t(prompt.size()));
  fb.logits = LogitsRows::All;
  const float* last = guarded.forward(fb);  // the rows the backend reads (host memory for this backend)
  const float* rows_host = host.forward(fb);
  const std::vector<std::int32_t> rows{4, 0, 2, 2};
  std::vector<std::int32_t> got(rows.size());
  std::vector<SamplingParams> params(rows.size());
  std::vector<std::uint64_t> index{0, 1, 2, 3};
  params[1].temperature = 0.7f, params[2].temperature = 1.3f, params[3].temperature = 1.3f;
  params[3].seed = 5;
  guarded.sample_logits(rows.data(), std::int64_t(rows.size()), params.data(), index.data(), got.data());
  cpu::SamplerWorkspace ws(c.vocab_size);
  for (std::size_t i = 0; i < rows.size(); ++i)
    CHECK(got[i] == cpu::sample_at_index(rows_host + std::size_t(rows[i]) * std::size_t(c.vocab_size),
                                         c.vocab_size, params[i], index[i], ws));
  // argmax_rows: the first maximum of each row. The backend reads the rows
  // where the last pass left them: forward(batch)'s own buffer here.
  guarded.backend().argmax_rows(last, c.vocab_size, rows.data(), std::int64_t(rows.size()), got.data());
  for (std::size_t i = 0; i < rows.size(); ++i)
    CHECK(got[i] == cpu::argmax_token(rows_host + std::size_t(rows[i]) * std::size_t(c.vocab_size), c.vocab_size));
  CHECK(guard->calls["argmax_rows"] == 1);

  // forward_to_sample: the same rows left on the backend, none copied out
  // (what a step that only samples needs); sample_logits reads them there.
  guarded.kv().truncate(3, 0);
  const long copies = guard->calls["to_host"];
  guarded.forward_to_sample(fb);
  CHECK(guard->calls["to_host"] == copies);
  std::vector<std::int32_t> kept(rows.size());
  guarded.sample_logits(rows.data(), std::int64_t(rows.size()), params.data(), index.data(), kept.data());
  for (std::size_t i = 0; i < rows.size(); ++i)
    CHECK(kept[i] == cpu::sample_at_index(rows_host + std::size_t(rows[i]) * std::size_t(c.vocab_size),
                                          c.vocab_size, params[i], index[i], ws));

  // A row outside the pass is refused by name, before the backend is asked.
  const long calls = guard->calls["sample_rows"];
  const std::int32_t bad = std::int32_t(prompt.size());
  std::int32_t tok = -1;
  CHECK_THROWS_WITH(guarded.sample_logits(&bad, 1, params.data(), index.data(), &tok),
                    Catch::Contains("outside the last pass's 5 logits rows"));
  CHECK(guard->calls["sample_rows"] == calls);
  CHECK(tok == -1);
  REQUIRE_FALSE(guard->is_open());
}

TEST_CASE("accept_rows: the exact rule's picks of a chain give the host verifier's outcome",
          "[backend][spec]") {
  constexpr int vocab = 50, m = 4;
  std::mt19937 rng(11);
  std::normal_distribution<float> logit(0.0f, 2.0f);
  CpuBackend backend;
  long kept = 0, rejected = 0;
  for (int trial = 0; trial < 300; ++trial) {
    SamplingParams params;
    params.temperature = 0.3f + 0.004f * float(trial % 300);
    params.top_k = trial % 3 == 0 ? 5 : 0;
    params.top_p = trial % 4 == 0 ? 0.8f : 1.0f;
    params.seed = std::uint64_t(trial);
    std::vector<float> logits(std::size_t(m + 1) * vocab);
    for (float& x : logits) x = logit(rng);
    // Drafts: the row's argmax (often kept) or any token.
    std::vector<std::int32_t> drafts(m);
    for (int i = 0; i < m; ++i)
      drafts[std::size_t(i)] = rng() % 2 ? cpu::argmax_token(logits.data() + std::size_t(i) * vocab, vocab)
                                         : std::int32_t(rng() % vocab);
    const std::uint64_t first_index = 3 + std::uint64_t(trial);
    speculative::SpeculativeVerifier verifier(vocab, params, speculative::AcceptanceRule::Exact);
    const speculative::VerifyOutcome host =
        verifier.verify(logits.data(), drafts.data(), m, nullptr, first_index);

    std::vector<std::int32_t> rows(m + 1), picks(m + 1), with_bonus(drafts);
    with_bonus.push_back(-1);
    std::vector<float> accept(m + 1), residual(m + 1);
    std::vector<SamplingParams> each(m + 1, params);
    for (int i = 0; i <= m; ++i) {
      rows[std::size_t(i)] = i;
      std::tie(accept[std::size_t(i)], residual[std::size_t(i)]) =
          verifier.exact_coins(first_index + std::uint64_t(i));
    }
    backend.accept_rows(logits.data(), vocab, rows.data(), m + 1, each.data(), with_bonus.data(),
                        accept.data(), residual.data(), picks.data());
    const speculative::VerifyOutcome picked =
        verifier.verify_from_exact_picks(picks.data(), drafts.data(), m);
    INFO("trial " << trial);
    REQUIRE(picked.tokens == host.tokens);
    REQUIRE(picked.accepted == host.accepted);
    kept += host.accepted;
    rejected += host.accepted < m ? 1 : 0;
  }
  CHECK(kept > 50);  // both paths were taken
  CHECK(rejected > 100);

  // Refusals, by name.
  std::vector<float> logits(vocab, 0.0f);
  const std::int32_t row = 0, outside = vocab;
  const SamplingParams warm{0.8f};
  const float coin = 0.5f, bad_coin = 1.0f;
  std::int32_t token = -7;
  CHECK_THROWS_WITH(backend.accept_rows(logits.data(), vocab, &row, 1, &warm, &outside, &coin, &coin, &token),
                    "accept_rows: draft token 50 is outside the vocabulary [0, 50)");
  const std::int32_t draft = 3;
  CHECK_THROWS_WITH(
      backend.accept_rows(logits.data(), vocab, &row, 1, &warm, &draft, &bad_coin, &coin, &token),
      "sampling coin must be in [0, 1), got 1");
  CHECK(token == -7);
  // A bad later row throws before any token is written, in each row verb:
  // row 0 is fine, row 1 holds +inf (accept_rows: its draft is outside).
  std::vector<float> two(2 * vocab, 0.0f);
  two[vocab + 1] = std::numeric_limits<float>::infinity();
  const std::int32_t both[2] = {0, 1}, two_drafts[2] = {3, outside};
  const SamplingParams pair[2] = {warm, warm};
  const std::uint64_t at[2] = {0, 1};
  const float coins[2] = {0.5f, 0.5f};
  std::int32_t out[2] = {-7, -7};
  CHECK_THROWS_WITH(backend.argmax_rows(two.data(), vocab, both, 2, out), "logits contain +inf");
  CHECK_THROWS_WITH(backend.sample_rows(two.data(), vocab, both, 2, pair, at, out), "logits contain +inf");
  CHECK_THROWS_WITH(backend.accept_rows(two.data(), vocab, both, 2, pair, two_drafts, coins, coins, out),
                    Catch::Contains("draft token 50 is outside"));
  CHECK(out[0] == -7);
  CHECK(out[1] == -7);
  speculative::SpeculativeVerifier coupled(vocab, warm, speculative::AcceptanceRule::Coupled);
  CHECK_FALSE(coupled.verifies_from_exact_picks());
  CHECK_THROWS_WITH(coupled.verify_from_exact_picks(&draft, &draft, 0),
                    Catch::Contains("the coupled rule at temperature 0.8 does not verify from exact picks"));
}
