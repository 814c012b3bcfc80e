// What crosses a process boundary when one engine hands a sequence's KV to
// another (disaggregated prefill and decode): a KVManifest (plain data: the
// request, its sampling state, the KV geometry and the sender's block ids)
// and two lists of MemoryDescriptors, one per side, that a transport pairs
// index by index and copies.
//
// Why descriptors and not "send the blocks": a block id is valid in every
// layer, but a block's bytes are not one run a receiver can start on early.
// The paged arena is block-major (block, layer, K|V, head, token, dim;
// kv/kv_cache.hpp), so the bytes of ONE layer of ONE block are one run of
// layer_bytes codes and one of layer_params floats. Descriptors list those
// runs layer-major (every block's layer 0, then layer 1, ...): a transport
// that sends them in order delivers whole layers one after the other, which
// is what lets a decoder start on layer 0 while later layers are in flight
// (vLLM's KV connector: save_kv_layer / wait_for_layer_load; NIXL: one
// descriptor list per side, a transfer posted over the pair).
//
// Positions: the paged layout stores token p at table slot p / block_size,
// row p % block_size, so the positions of the KV are 0..length-1 and are not
// sent twice. The prefix-cache key is derived too: the first `length` tokens
// of prompt + generated, in the request's namespace.
//
// Backend-free (standard library, core/ memory/ sched/ only).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/memory/paged_allocator.hpp"
#include "fastinfer/sched/request.hpp"

namespace fastinfer::transfer {

using sched::Request;
using sched::TokenId;

// A non-owning view of one process's paged KV pool: the books and the two
// block-major arenas (a FlashInfer-style view; the engine owns the pool).
struct KVPoolView {
  PagedAllocator* allocator = nullptr;
  std::uint8_t* codes = nullptr;  // block b: codes + b * block_bytes
  float* params = nullptr;        // block b: params + b * block_params
  std::int32_t n_layers = 0;
  std::int64_t block_bytes = 0;   // every layer, K and V
  std::int64_t block_params = 0;
  std::string quant;              // the KV format's name (kv::QuantTraits::kName)

  std::int64_t layer_bytes() const { return n_layers > 0 ? block_bytes / n_layers : 0; }
  std::int64_t layer_params() const { return n_layers > 0 ? block_params / n_layers : 0; }
  std::int32_t block_size() const { return allocator ? allocator->block_size() : 0; }
};

// Everything a decode engine needs to continue a request prefilled elsewhere.
struct KVManifest {
  std::uint64_t transfer_id = 0;  // the sender's key for this hand-off
  // Geometry: must equal the receiver's pool, or the bytes mean nothing.
  std::string quant;
  std::int32_t n_layers = 0;
  std::int32_t block_size = 0;
  std::int64_t layer_bytes = 0;
  std::int64_t layer_params = 0;
  // The sequence: KV of positions [0, length) in `blocks` (sender's ids).
  std::int64_t length = 0;
  std::vector<BlockId> blocks;
  // The request as submitted (its id is the sender's) and the tokens it has
  // generated; the last one has no KV yet (the decoder feeds it first).
  Request request;
  std::vector<TokenId> generated;
  // Sampling state: the index of the next token's coin in the request's
  // Philox stream (Philox(seed, Sampling, index); cpu::sample_at_index).
  // The engine keys coins by generated-token index, so it equals
  // generated.size(); sent explicitly so that a receiver with another
  // counter scheme cannot silently restart the stream.
  std::uint64_t sample_counter = 0;

  // The prefix-cache key of the KV: the first `length` tokens of
  // prompt + generated.
  std::vector<TokenId> kv_tokens() const {
    std::vector<TokenId> t = request.prompt;
    t.insert(t.end(), generated.begin(), generated.end());
    t.resize(std::size_t(std::clamp<std::int64_t>(length, 0, std::int64_t(t.size()))));
    return t;
  }
  std::int64_t num_blocks() const { return std::int64_t(blocks.size()); }
  // Bytes of KV the manifest describes (codes and parameters).
  std::int64_t kv_bytes() const {
    return num_blocks() * n_layers * (layer_bytes + layer_params * std::int64_t(sizeof(float)));
  }
};

// One run of bytes in one process: layer `layer` of the block at table
// index `block_index`, codes or quantization parameters.
struct MemoryDescriptor {
  enum class Part : std::uint8_t { Codes, Params };
  void* address = nullptr;
  std::int64_t bytes = 0;
  std::int32_t layer = 0;
  std::int32_t block_index = 0;
  Part part = Part::Codes;
};

// The descriptors of `blocks` in `pool`, layer-major: for each layer, each
// block's codes then (when the format has any) its parameters.
inline std::vector<MemoryDescriptor> describe_blocks(const KVPoolView& pool, const std::vector<BlockId>& blocks) {
  std::vector<MemoryDescriptor> out;
  out.reserve(blocks.size() * std::size_t(pool.n_layers) * 2);
  const std::int64_t lb = pool.layer_bytes(), lp = pool.layer_params();
  for (std::int32_t l = 0; l < pool.n_layers; ++l) {
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const std::int64_t b = blocks[i];
      out.push_back({pool.codes + b * pool.block_bytes + l * lb, lb, l, std::int32_t(i), MemoryDescriptor::Part::Codes});
      if (lp > 0)
        out.push_back({pool.params + b * pool.block_params + l * lp, lp * std::int64_t(sizeof(float)), l,
                       std::int32_t(i), MemoryDescriptor::Part::Params});
    }
  }
  return out;
}

// Throws InvalidArgument naming the first field of `m` that `pool` cannot
// take (another format or geometry, a length the blocks cannot hold, a
// request the receiver would refuse). Reads the pool's geometry only.
inline void validate_manifest(const KVManifest& m, const KVPoolView& pool) {
  const char* who = "KV manifest";
  FASTINFER_CHECK(pool.allocator != nullptr, InvalidArgument, who, ": the receiving pool has no allocator");
  FASTINFER_CHECK(m.quant == pool.quant, InvalidArgument, who, " ", m.transfer_id, ": KV format '", m.quant,
                  "' differs from the receiver's '", pool.quant, "'");
  FASTINFER_CHECK(m.n_layers == pool.n_layers && m.block_size == pool.block_size() &&
                      m.layer_bytes == pool.layer_bytes() && m.layer_params == pool.layer_params(),
                  InvalidArgument, who, " ", m.transfer_id, ": geometry (", m.n_layers, " layers, block size ",
                  m.block_size, ", ", m.layer_bytes, " bytes + ", m.layer_params,
                  " params per block layer) differs from the receiver's (", pool.n_layers, ", ", pool.block_size(),
                  ", ", pool.layer_bytes(), " + ", pool.layer_params(), ")");
  FASTINFER_CHECK(!m.request.prompt.empty() && !m.generated.empty(), InvalidArgument, who, " ", m.transfer_id,
                  ": needs a prompt and at least one generated token");
  const std::int64_t tokens = std::int64_t(m.request.prompt.size() + m.generated.size());
  FASTINFER_CHECK(m.length == tokens - 1, InvalidArgument, who, " ", m.transfer_id, ": KV length ", m.length,
                  " must be prompt + generated - 1 = ", tokens - 1);
  FASTINFER_CHECK(m.num_blocks() == pool.allocator->blocks_for(m.length), InvalidArgument, who, " ", m.transfer_id,
                  ": ", m.num_blocks(), " blocks cannot hold exactly ", m.length, " tokens at block size ",
                  m.block_size);
  FASTINFER_CHECK(m.num_blocks() <= pool.allocator->num_blocks(), InvalidArgument, who, " ", m.transfer_id, ": ",
                  m.num_blocks(), " blocks exceed the receiver's pool of ", pool.allocator->num_blocks());
  FASTINFER_CHECK(m.sample_counter == m.generated.size(), InvalidArgument, who, " ", m.transfer_id,
                  ": sampling counter ", m.sample_counter, " does not follow ", m.generated.size(),
                  " generated tokens");
  FASTINFER_CHECK(std::int64_t(m.generated.size()) < m.request.max_new_tokens, InvalidArgument, who, " ",
                  m.transfer_id, ": ", m.generated.size(), " generated tokens leave nothing of max_new_tokens ",
                  m.request.max_new_tokens);
  for (BlockId b : m.blocks)
    FASTINFER_CHECK(b >= 0, InvalidArgument, who, " ", m.transfer_id, ": negative sender block id ", b);
  for (TokenId t : m.generated)
    FASTINFER_CHECK(t >= 0, InvalidArgument, who, " ", m.transfer_id, ": negative generated token ", t);
  sched::validate_request(m.request, tokens + 1);
}

// ---- wire format ---------------------------------------------------------------
//
// A manifest travels as little-endian 64-bit words: magic, version, then the
// fields in declaration order (vectors and strings length-prefixed, floats
// and doubles as their bits). parse_manifest checks every length against what
// is left, so a truncated or garbage message is rejected with a sentence.

inline constexpr std::uint64_t kManifestMagic = 0x46494b564d414e31ull;  // "FIKVMAN1"
inline constexpr std::uint64_t kManifestVersion = 1;

namespace detail {

struct WordWriter {
  std::vector<std::uint64_t> w;
  void put(std::uint64_t v) { w.push_back(v); }
  void put_i(std::int64_t v) { w.push_back(std::uint64_t(v)); }
  void put_f(double v) {
    std::uint64_t u;
    std::memcpy(&u, &v, sizeof u);
    w.push_back(u);
  }
  template <typename T>
  void put_vec(const std::vector<T>& v) {
    put(v.size());
    for (const T& x : v) put_i(std::int64_t(x));
  }
  void put_str(const std::string& s) {
    put(s.size());
    for (char c : s) put(std::uint64_t(std::uint8_t(c)));
  }
};

struct WordReader {
  const std::uint64_t* p;
  std::size_t n, i = 0;
  std::uint64_t get() {
    FASTINFER_CHECK(i < n, InvalidArgument, "KV manifest: truncated after ", i, " of ", n, " words");
    return p[i++];
  }
  std::int64_t get_i() { return std::int64_t(get()); }
  double get_f() {
    const std::uint64_t u = get();
    double v;
    std::memcpy(&v, &u, sizeof v);
    return v;
  }
  std::size_t get_len(const char* what) {
    const std::uint64_t len = get();
    FASTINFER_CHECK(len <= n - i, InvalidArgument, "KV manifest: ", what, " claims ", len, " entries but ", n - i,
                    " words are left");
    return std::size_t(len);
  }
  template <typename T>
  std::vector<T> get_vec(const char* what) {
    std::vector<T> v(get_len(what));
    for (T& x : v) {
      const std::int64_t raw = get_i();
      x = T(raw);
      FASTINFER_CHECK(std::int64_t(x) == raw, InvalidArgument, "KV manifest: ", what, " value ", raw,
                      " does not fit its type");
    }
    return v;
  }
  std::string get_str(const char* what) {
    std::string s(get_len(what), '\0');
    for (char& c : s) c = char(std::uint8_t(get()));
    return s;
  }
};

}  // namespace detail

inline std::vector<std::uint64_t> serialize_manifest(const KVManifest& m) {
  detail::WordWriter w;
  w.put(kManifestMagic);
  w.put(kManifestVersion);
  w.put(m.transfer_id);
  w.put_str(m.quant);
  w.put_i(m.n_layers);
  w.put_i(m.block_size);
  w.put_i(m.layer_bytes);
  w.put_i(m.layer_params);
  w.put_i(m.length);
  w.put_vec(m.blocks);
  const Request& r = m.request;
  w.put_i(r.id);
  w.put_vec(r.prompt);
  w.put_f(r.sampling.temperature);
  w.put_i(r.sampling.top_k);
  w.put_f(r.sampling.top_p);
  w.put(r.sampling.seed);
  w.put_i(r.max_new_tokens);
  w.put_vec(r.stop_ids);
  w.put_i(r.priority);
  w.put_f(r.arrival_time);
  w.put(r.prefix_namespace);
  w.put_vec(m.generated);
  w.put(m.sample_counter);
  return std::move(w.w);
}

// Throws InvalidArgument when the words are not a whole manifest of this
// version; validate_manifest then checks the values against a pool.
inline KVManifest parse_manifest(const std::uint64_t* words, std::size_t n) {
  detail::WordReader rd{words, n};
  FASTINFER_CHECK(n >= 2 && words[0] == kManifestMagic, InvalidArgument, "KV manifest: bad magic (not a manifest)");
  rd.i = 1;
  const std::uint64_t version = rd.get();
  FASTINFER_CHECK(version == kManifestVersion, InvalidArgument, "KV manifest: version ", version,
                  " (this build reads ", kManifestVersion, ")");
  KVManifest m;
  m.transfer_id = rd.get();
  m.quant = rd.get_str("quant name");
  m.n_layers = std::int32_t(rd.get_i());
  m.block_size = std::int32_t(rd.get_i());
  m.layer_bytes = rd.get_i();
  m.layer_params = rd.get_i();
  m.length = rd.get_i();
  m.blocks = rd.get_vec<BlockId>("block list");
  Request& r = m.request;
  r.id = rd.get_i();
  r.prompt = rd.get_vec<TokenId>("prompt");
  r.sampling.temperature = float(rd.get_f());
  r.sampling.top_k = int(rd.get_i());
  r.sampling.top_p = float(rd.get_f());
  r.sampling.seed = rd.get();
  r.max_new_tokens = std::int32_t(rd.get_i());
  r.stop_ids = rd.get_vec<TokenId>("stop ids");
  r.priority = std::int32_t(rd.get_i());
  r.arrival_time = rd.get_f();
  r.prefix_namespace = rd.get();
  m.generated = rd.get_vec<TokenId>("generated tokens");
  m.sample_counter = rd.get();
  FASTINFER_CHECK(rd.i == n, InvalidArgument, "KV manifest: ", n - rd.i, " trailing words");
  return m;
}

inline KVManifest parse_manifest(const std::vector<std::uint64_t>& words) {
  return parse_manifest(words.data(), words.size());
}

}  // namespace fastinfer::transfer
