// ForwardProfiler: where the time of a LlamaModel forward pass goes, op by
// op, against the machine's roofline.
//
// Opt-in: LlamaModel::set_profiler(&p) turns it on; with no profiler attached
// each hook is one predictable null-pointer test (bench_model's
// BM_DecodeProfiler110M measures off and on side by side). Timing is by laps:
// the model calls lap(op) after each op, and the op is charged the time since
// the previous lap (or since the pass began). Laps therefore tile the pass
// with no gap: whatever the model does between two hooks (a memcpy of padded
// heads, a KV bookkeeping call) lands on the next op rather than vanishing,
// and the per-op times add up to the pass time by construction. Only what
// happens outside forward() (the caller's loop, sampling unless timed with
// profile_sampling) is missing from the sum, and the report says how much
// that is against a clock the caller holds.
//
// Bytes and FLOPs are not measured: they are computed from the model's shape,
// the weights' storage types, the KV cache's bytes per token and the pass's
// shape (rows, logits rows, keys attended), by op_cost(), a plain function
// that the tests check against hand-computed values. "Bytes" is the least
// traffic the op needs: every weight byte once per pass, the activations read
// and written once, the KV read once per sequence and layer. FLOPs count a
// multiply-add as 2; exp, rsqrt and sin/cos count 1 each.
//
// Std-only (no xsimd, OpenMP or nlohmann): the table and the JSON are written
// by hand, so the header compiles on its own and travels with any backend.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/tensor.hpp"
#include "fastinfer/model/config.hpp"

namespace fastinfer {

// The ops of one forward pass, in the order they run. Setup is the model's
// bookkeeping before the first layer (KV reservation, attention plan).
enum class ProfOp : std::uint8_t {
  Setup,
  Embed,
  AttnNorm,
  Wq,
  Wk,
  Wv,
  Rope,
  KvAppend,
  Attention,
  Wo,
  Residual,
  FfnNorm,
  W1,  // gate
  W3,  // up
  Swiglu,
  W2,  // down
  FinalNorm,
  Classifier,
  Sampling,
  Count
};
inline constexpr std::size_t kProfOps = std::size_t(ProfOp::Count);

constexpr std::string_view prof_op_name(ProfOp op) {
  constexpr std::string_view names[kProfOps] = {"setup",     "embed",     "attn_norm", "wq",        "wk",
                                                "wv",        "rope",      "kv_append", "attention", "wo",
                                                "residual",  "ffn_norm",  "w1",        "w3",        "swiglu",
                                                "w2",        "final_norm", "classifier", "sampling"};
  return op < ProfOp::Count ? names[std::size_t(op)] : std::string_view("?");
}

// A pass is "prefill" when some sequence brings more than one row (or a
// token tree), "decode" when every sequence brings one: the two sit at
// opposite ends of the roofline and are reported apart.
enum class ProfPhase : std::uint8_t { Prefill, Decode };
inline constexpr std::size_t kProfPhases = 2;
constexpr std::string_view prof_phase_name(ProfPhase p) { return p == ProfPhase::Prefill ? "prefill" : "decode"; }

// What a model is, for the accounting: its config, the storage type of each
// weight kind, and the KV cache's bytes per token and layer (K and V, with
// the quantization parameters and the head padding the cache stores).
struct ProfileModelShape {
  LlamaConfig config;
  DType embedding = DType::F32, wq = DType::F32, wk = DType::F32, wv = DType::F32, wo = DType::F32,
        w1 = DType::F32, w2 = DType::F32, w3 = DType::F32, classifier = DType::F32;
  double kv_bytes_per_token_layer = 0;
};

// What one pass is: rows fed, rows whose logits are computed, keys attended
// summed over rows (causal: a row at position p attends p + 1 keys), KV
// tokens read summed over sequences (each sequence's cache read once per
// layer), and the sequences in the batch. LlamaModel counts p + 1 keys per
// row whatever the mask: for a token tree (a row attends its ancestors only)
// or a sliding window that is an upper bound on the attention's work.
struct ProfilePassShape {
  std::int64_t rows = 0;
  std::int64_t logit_rows = 0;
  std::int64_t attended_keys = 0;
  std::int64_t kv_tokens = 0;
  std::int64_t sequences = 0;
};

struct OpCost {
  double bytes = 0;
  double flops = 0;
};

namespace detail {
// y[n][R] = x[n][C] W^T with W [R][C] stored as `dtype`.
inline OpCost linear_cost(DType dtype, std::int64_t R, std::int64_t C, std::int64_t n) {
  return {double(row_bytes(dtype, C)) * double(R) + 4.0 * double(n) * double(C + R), 2.0 * double(n) * double(R) * double(C)};
}
// RMSNorm of n rows of d: read x, write y, read the weight; per element a
// square-add (2) and a scale by rsqrt and weight (2), one rsqrt per row.
inline OpCost norm_cost(std::int64_t n, std::int64_t d) {
  return {4.0 * (2.0 * double(n) * double(d) + double(d)), double(n) * (4.0 * double(d) + 1.0)};
}
}  // namespace detail

// Bytes and FLOPs of ONE call of `op` in a pass of shape `p` (per-layer ops
// are called once per layer; Residual twice per layer; Sampling once per
// picked token, p.rows ignored).
inline OpCost op_cost(const ProfileModelShape& m, const ProfilePassShape& p, ProfOp op) {
  const LlamaConfig& c = m.config;
  const std::int64_t n = p.rows, dim = c.dim, qd = c.q_dim(), kvd = c.kv_dim(), hid = c.hidden_dim;
  switch (op) {
    case ProfOp::Setup:
      return {};
    case ProfOp::Embed:  // gather n rows of the table, write them as f32
      return {double(n) * (double(row_bytes(m.embedding, dim)) + 4.0 * double(dim)), 0.0};
    case ProfOp::AttnNorm:
    case ProfOp::FfnNorm:
      return detail::norm_cost(n, dim);
    case ProfOp::FinalNorm:
      return detail::norm_cost(p.logit_rows, dim);
    case ProfOp::Wq:
      return detail::linear_cost(m.wq, qd, dim, n);
    case ProfOp::Wk:
      return detail::linear_cost(m.wk, kvd, dim, n);
    case ProfOp::Wv:
      return detail::linear_cost(m.wv, kvd, dim, n);
    case ProfOp::Wo:
      return detail::linear_cost(m.wo, dim, qd, n);
    case ProfOp::W1:
      return detail::linear_cost(m.w1, hid, dim, n);
    case ProfOp::W3:
      return detail::linear_cost(m.w3, hid, dim, n);
    case ProfOp::W2:
      return detail::linear_cost(m.w2, dim, hid, n);
    case ProfOp::Classifier:
      return detail::linear_cost(m.classifier, c.vocab_size, dim, p.logit_rows);
    case ProfOp::Rope: {  // q and k in place; per pair 4 multiplies, 2 adds, one sin and one cos
      const double elems = double(n) * double(qd + kvd);
      return {8.0 * elems, 4.0 * elems};
    }
    case ProfOp::KvAppend:  // read k and v as f32, write them in the cache's format
      return {double(n) * (8.0 * double(kvd) + m.kv_bytes_per_token_layer), 0.0};
    case ProfOp::Attention:  // QK^T and PV (2 multiply-adds per key and head dim), exp per key and head
      return {double(p.kv_tokens) * m.kv_bytes_per_token_layer + 8.0 * double(n) * double(qd),
              double(p.attended_keys) * double(c.n_heads) * (4.0 * double(c.head_dim) + 1.0)};
    case ProfOp::Residual:  // x += y
      return {12.0 * double(n) * double(dim), double(n) * double(dim)};
    case ProfOp::Swiglu:  // gate = silu(gate) * up: exp, add, divide, multiply
      return {12.0 * double(n) * double(hid), 4.0 * double(n) * double(hid)};
    case ProfOp::Sampling:  // one pass over the logits row (greedy: a compare per entry)
      return {4.0 * double(c.vocab_size), double(c.vocab_size)};
    case ProfOp::Count:
      break;
  }
  return {};
}

// The machine's ceilings, measured by the caller (bench/read_bandwidth.hpp,
// bench/fma_peak.hpp): streamed-read GB/s and FMA peak GFLOP/s at the ISA
// level the kernels were compiled for, with the threads the model uses.
struct Roofline {
  double read_gbs = 0;
  double peak_gflops = 0;
  std::string isa;
  std::string cpu;
  int threads = 1;
};

// Totals of one op in one phase.
struct OpStats {
  double seconds = 0;
  std::int64_t calls = 0;
  double bytes = 0;
  double flops = 0;
};

class ForwardProfiler {
  using Clock = std::chrono::steady_clock;

 public:
  // ---- hooks (the model calls these) ---------------------------------------

  // Starts a pass: its clock and the first lap.
  void begin_pass() {
    pass_start_ = last_ = Clock::now();
    have_costs_ = false;
  }
  // Tells the accounting what this pass is; charges the time so far to Setup.
  void set_pass(const ProfileModelShape& model, const ProfilePassShape& pass, ProfPhase phase) {
    phase_ = phase;
    for (std::size_t i = 0; i < kProfOps; ++i) costs_[i] = op_cost(model, pass, ProfOp(i));
    have_costs_ = true;
    stats_[std::size_t(phase_)].rows += pass.rows;
    lap(ProfOp::Setup);
  }
  // Charges the time since the previous lap (or the pass start) to `op`.
  void lap(ProfOp op) {
    const Clock::time_point now = Clock::now();
    add(op, std::chrono::duration<double>(now - last_).count(), have_costs_ ? costs_[std::size_t(op)] : OpCost{});
    last_ = now;
  }
  void end_pass() {
    PhaseStats& ph = stats_[std::size_t(phase_)];
    ph.pass_seconds += std::chrono::duration<double>(Clock::now() - pass_start_).count();
    ++ph.passes;
  }
  // Time spent outside forward() on behalf of the last pass (sampling).
  void add(ProfOp op, double seconds, OpCost cost) {
    OpStats& s = stats_[std::size_t(phase_)].ops[std::size_t(op)];
    s.seconds += seconds;
    ++s.calls;
    s.bytes += cost.bytes;
    s.flops += cost.flops;
  }
  // The cost of one greedy pick from the last pass's model (0 before any pass).
  OpCost sampling_cost() const { return costs_[std::size_t(ProfOp::Sampling)]; }

  // ---- results -------------------------------------------------------------

  const OpStats& op(ProfPhase phase, ProfOp op) const { return stats_[std::size_t(phase)].ops[std::size_t(op)]; }
  std::int64_t passes(ProfPhase phase) const { return stats_[std::size_t(phase)].passes; }
  std::int64_t rows(ProfPhase phase) const { return stats_[std::size_t(phase)].rows; }
  // Wall time between begin_pass and end_pass, summed over passes.
  double pass_seconds(ProfPhase phase) const { return stats_[std::size_t(phase)].pass_seconds; }
  // Sum of the per-op times inside passes (Sampling excluded: it is outside).
  double op_seconds(ProfPhase phase) const {
    double s = 0;
    for (std::size_t i = 0; i < kProfOps; ++i)
      if (ProfOp(i) != ProfOp::Sampling) s += stats_[std::size_t(phase)].ops[i].seconds;
    return s;
  }
  double total_seconds() const {
    double s = 0;
    for (std::size_t ph = 0; ph < kProfPhases; ++ph)
      for (std::size_t i = 0; i < kProfOps; ++i) s += stats_[ph].ops[i].seconds;
    return s;
  }
  void reset() {
    stats_ = {};
    have_costs_ = false;
  }

  // A table per phase: time, share, calls, GB/s, GFLOP/s, arithmetic
  // intensity and the fraction of each ceiling. `measured_seconds` > 0 (the
  // caller's own clock around the profiled work) adds a coverage line.
  std::string table(const Roofline& r, double measured_seconds = 0) const {
    std::string out;
    char line[256];
    std::snprintf(line, sizeof line, "roofline: %.1f GB/s streamed read, %.1f GFLOP/s FMA peak (%s, %d thread%s) on %s\n",
                  r.read_gbs, r.peak_gflops, r.isa.c_str(), r.threads, r.threads == 1 ? "" : "s", r.cpu.c_str());
    out += line;
    for (std::size_t ph = 0; ph < kProfPhases; ++ph) {
      const PhaseStats& s = stats_[ph];
      if (s.passes == 0) continue;
      const double total = op_seconds(ProfPhase(ph)) + s.ops[std::size_t(ProfOp::Sampling)].seconds;
      std::snprintf(line, sizeof line, "\n%s: %lld passes, %lld rows, %.3f ms in passes (ops sum %.3f ms)\n",
                    std::string(prof_phase_name(ProfPhase(ph))).c_str(), (long long)s.passes, (long long)s.rows,
                    s.pass_seconds * 1e3, op_seconds(ProfPhase(ph)) * 1e3);
      out += line;
      std::snprintf(line, sizeof line, "%-11s %10s %6s %7s %9s %9s %8s %7s %7s\n", "op", "ms", "%", "calls", "GB/s",
                    "GFLOP/s", "FLOP/B", "%bw", "%peak");
      out += line;
      for (std::size_t i = 0; i < kProfOps; ++i) {
        const OpStats& o = s.ops[i];
        if (o.calls == 0) continue;
        const Row q = row(o, r);
        std::snprintf(line, sizeof line, "%-11s %10.3f %6.1f %7lld %9.2f %9.2f %8.2f %7.1f %7.1f\n",
                      std::string(prof_op_name(ProfOp(i))).c_str(), o.seconds * 1e3,
                      total > 0 ? 100.0 * o.seconds / total : 0.0, (long long)o.calls, q.gbs, q.gflops, q.intensity,
                      100.0 * q.bw_fraction, 100.0 * q.peak_fraction);
        out += line;
      }
    }
    if (measured_seconds > 0) {
      std::snprintf(line, sizeof line, "\nops sum %.3f ms of %.3f ms measured by the caller (%.1f %%)\n",
                    total_seconds() * 1e3, measured_seconds * 1e3, 100.0 * total_seconds() / measured_seconds);
      out += line;
    }
    return out;
  }

  // The same as one JSON object: {"roofline": {...}, "measured_s": x,
  // "phases": {"decode": {"passes", "rows", "pass_s", "ops_s", "ops": [{"op",
  // "seconds", "calls", "bytes", "flops", "gbs", "gflops", "intensity",
  // "bw_fraction", "peak_fraction"}...]}}}.
  std::string json(const Roofline& r, double measured_seconds = 0) const {
    std::string out = "{\"roofline\": {\"read_gbs\": " + num(r.read_gbs) + ", \"peak_gflops\": " + num(r.peak_gflops) +
                      ", \"isa\": " + quote(r.isa) + ", \"cpu\": " + quote(r.cpu) +
                      ", \"threads\": " + std::to_string(r.threads) + "}, \"measured_s\": " + num(measured_seconds) +
                      ", \"ops_s\": " + num(total_seconds()) + ", \"phases\": {";
    bool first_phase = true;
    for (std::size_t ph = 0; ph < kProfPhases; ++ph) {
      const PhaseStats& s = stats_[ph];
      if (s.passes == 0) continue;
      out += std::string(first_phase ? "" : ", ") + quote(std::string(prof_phase_name(ProfPhase(ph)))) +
             ": {\"passes\": " + std::to_string(s.passes) + ", \"rows\": " + std::to_string(s.rows) +
             ", \"pass_s\": " + num(s.pass_seconds) + ", \"ops_s\": " + num(op_seconds(ProfPhase(ph))) +
             ", \"ops\": [";
      first_phase = false;
      bool first_op = true;
      for (std::size_t i = 0; i < kProfOps; ++i) {
        const OpStats& o = s.ops[i];
        if (o.calls == 0) continue;
        const Row q = row(o, r);
        out += std::string(first_op ? "" : ", ") + "{\"op\": " + quote(std::string(prof_op_name(ProfOp(i)))) +
               ", \"seconds\": " + num(o.seconds) + ", \"calls\": " + std::to_string(o.calls) +
               ", \"bytes\": " + num(o.bytes) + ", \"flops\": " + num(o.flops) + ", \"gbs\": " + num(q.gbs) +
               ", \"gflops\": " + num(q.gflops) + ", \"intensity\": " + num(q.intensity) +
               ", \"bw_fraction\": " + num(q.bw_fraction) + ", \"peak_fraction\": " + num(q.peak_fraction) + "}";
        first_op = false;
      }
      out += "]}";
    }
    return out + "}}";
  }

 private:
  struct PhaseStats {
    std::array<OpStats, kProfOps> ops{};
    std::int64_t passes = 0;
    std::int64_t rows = 0;
    double pass_seconds = 0;
  };
  struct Row {
    double gbs = 0, gflops = 0, intensity = 0, bw_fraction = 0, peak_fraction = 0;
  };
  static Row row(const OpStats& o, const Roofline& r) {
    Row q;
    if (o.seconds > 0) {
      q.gbs = o.bytes / o.seconds * 1e-9;
      q.gflops = o.flops / o.seconds * 1e-9;
    }
    q.intensity = o.bytes > 0 ? o.flops / o.bytes : 0.0;
    q.bw_fraction = r.read_gbs > 0 ? q.gbs / r.read_gbs : 0.0;
    q.peak_fraction = r.peak_gflops > 0 ? q.gflops / r.peak_gflops : 0.0;
    return q;
  }
  static std::string num(double x) {
    char b[40];
    std::snprintf(b, sizeof b, "%.9g", x);
    return b;
  }
  static std::string quote(const std::string& s) {
    std::string q = "\"";
    for (char ch : s) {
      if (ch == '"' || ch == '\\') q += '\\';
      if (static_cast<unsigned char>(ch) >= 0x20) q += ch;
    }
    return q + "\"";
  }

  std::array<PhaseStats, kProfPhases> stats_{};
  std::array<OpCost, kProfOps> costs_{};
  bool have_costs_ = false;
  ProfPhase phase_ = ProfPhase::Decode;
  Clock::time_point pass_start_{}, last_{};
};

// Times `pick()` (a token pick after a forward pass) as Sampling when `model`
// has a profiler attached; otherwise just calls it. Models without a
// profiler() member (test doubles, drafters) compile to the plain call.
namespace detail {
template <typename M, typename = void>
struct has_profiler : std::false_type {};
template <typename M>
struct has_profiler<M, std::void_t<decltype(std::declval<const M&>().profiler())>> : std::true_type {};
}  // namespace detail

template <typename Model, typename Pick>
auto profile_sampling(const Model& model, Pick&& pick) {
  if constexpr (detail::has_profiler<Model>::value) {
    if (ForwardProfiler* p = model.profiler()) {
      const auto t0 = std::chrono::steady_clock::now();
      auto token = pick();
      p->add(ProfOp::Sampling, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
             p->sampling_cost());
      return token;
    }
  }
  return pick();
}

}  // namespace fastinfer
