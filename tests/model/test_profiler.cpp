// ForwardProfiler: the bytes/FLOPs accounting against values computed by hand
// for the 110M shape (dim 768, hidden 2048, 12 layers, 12 heads, vocab 32000),
// and the hooks in LlamaModel: every op charged once per call, results
// unchanged with the profiler on, the per-op times tiling the pass.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/profiler.hpp"
#include "fastinfer/model/synthetic.hpp"

using namespace fastinfer;

namespace {

ProfileModelShape shape_110m(DType matrices) {
  ProfileModelShape m;
  m.config = synthetic_config("110M");
  m.embedding = m.classifier = DType::F32;  // the shared table stays f32 in these cases
  m.wq = m.wk = m.wv = m.wo = m.w1 = m.w2 = m.w3 = matrices;
  m.kv_bytes_per_token_layer = 2.0 * 768 * 4;  // f32 K and V, 12 heads x 64
  return m;
}

// One decoded token at position 15: 16 keys in the cache.
ProfilePassShape decode_at_15() {
  ProfilePassShape p;
  p.rows = 1, p.logit_rows = 1, p.attended_keys = 16, p.kv_tokens = 16, p.sequences = 1;
  return p;
}

}  // namespace

TEST_CASE("profiler accounting: 110M decode, f32 weights, by hand", "[model][profiler]") {
  const ProfileModelShape m = shape_110m(DType::F32);
  const ProfilePassShape p = decode_at_15();
  // wq [768][768] f32: 768*768*4 weight bytes, x (768) read and y (768) written as f32.
  CHECK(op_cost(m, p, ProfOp::Wq).bytes == 2359296.0 + 6144.0);
  CHECK(op_cost(m, p, ProfOp::Wq).flops == 1179648.0);  // 2 * 768 * 768
  CHECK(op_cost(m, p, ProfOp::Wk).bytes == 2365440.0);
  CHECK(op_cost(m, p, ProfOp::Wo).flops == 1179648.0);
  // w1 / w3 [2048][768], w2 [768][2048]: 6291456 weight bytes + (768 + 2048) * 4.
  CHECK(op_cost(m, p, ProfOp::W1).bytes == 6302720.0);
  CHECK(op_cost(m, p, ProfOp::W3).bytes == 6302720.0);
  CHECK(op_cost(m, p, ProfOp::W2).bytes == 6302720.0);
  CHECK(op_cost(m, p, ProfOp::W2).flops == 3145728.0);  // 2 * 2048 * 768
  // classifier [32000][768]: 98304000 weight bytes + (768 + 32000) * 4.
  CHECK(op_cost(m, p, ProfOp::Classifier).bytes == 98435072.0);
  CHECK(op_cost(m, p, ProfOp::Classifier).flops == 49152000.0);
  // Attention over 16 keys: K and V rows (6144 bytes each token), q read and out written;
  // per key and head 64 multiply-adds for QK, 64 for PV, one exp: 16 * 12 * 257.
  CHECK(op_cost(m, p, ProfOp::Attention).bytes == 98304.0 + 6144.0);
  CHECK(op_cost(m, p, ProfOp::Attention).flops == 49344.0);
  // Norms: x read, y written, weight read (3 * 768 * 4); 4 FLOPs per element + one rsqrt.
  CHECK(op_cost(m, p, ProfOp::AttnNorm).bytes == 9216.0);
  CHECK(op_cost(m, p, ProfOp::AttnNorm).flops == 3073.0);
  CHECK(op_cost(m, p, ProfOp::FinalNorm).bytes == 9216.0);
  CHECK(op_cost(m, p, ProfOp::Rope).bytes == 12288.0);  // q and k (1536 floats) read and written
  CHECK(op_cost(m, p, ProfOp::Rope).flops == 6144.0);
  CHECK(op_cost(m, p, ProfOp::Swiglu).bytes == 24576.0);  // gate and up read, gate written (2048 each)
  CHECK(op_cost(m, p, ProfOp::Swiglu).flops == 8192.0);
  CHECK(op_cost(m, p, ProfOp::Residual).bytes == 9216.0);
  CHECK(op_cost(m, p, ProfOp::Residual).flops == 768.0);
  CHECK(op_cost(m, p, ProfOp::KvAppend).bytes == 6144.0 + 6144.0);
  CHECK(op_cost(m, p, ProfOp::Embed).bytes == 6144.0);
  CHECK(op_cost(m, p, ProfOp::Sampling).bytes == 128000.0);
  CHECK(op_cost(m, p, ProfOp::Setup).bytes == 0.0);

  // The weight bytes of one decode pass: 12 layers of 4 x 2359296 + 3 x 6291456,
  // plus the classifier: the 438 MB a token streams (ANCHORS.md).
  double weights = 0;
  for (ProfOp op : {ProfOp::Wq, ProfOp::Wk, ProfOp::Wv, ProfOp::Wo, ProfOp::W1, ProfOp::W2, ProfOp::W3})
    weights += 12 * op_cost(m, p, op).bytes;
  weights += op_cost(m, p, ProfOp::Classifier).bytes;
  const double activations = 12 * (4 * 6144.0 + 3 * 11264.0) + 131072.0;
  CHECK(weights - activations == 438042624.0);
}

TEST_CASE("profiler accounting: 110M with q8_0 and bf16 matrices, by hand", "[model][profiler]") {
  const ProfilePassShape p = decode_at_15();
  // q8_0: 24 blocks of 34 bytes per 768-wide row.
  CHECK(op_cost(shape_110m(DType::Q8_0), p, ProfOp::Wq).bytes == 768.0 * 816 + 6144);
  // w2 rows are 2048 wide: 64 blocks, 2176 bytes.
  CHECK(op_cost(shape_110m(DType::Q8_0), p, ProfOp::W2).bytes == 768.0 * 2176 + 11264);
  CHECK(op_cost(shape_110m(DType::BF16), p, ProfOp::W1).bytes == 3145728.0 + 11264);
  // FLOPs do not depend on the storage type.
  CHECK(op_cost(shape_110m(DType::Q8_0), p, ProfOp::W1).flops == 3145728.0);
}

TEST_CASE("profiler accounting: 110M prefill of 128 tokens, by hand", "[model][profiler]") {
  const ProfileModelShape m = shape_110m(DType::F32);
  ProfilePassShape p;
  p.rows = 128, p.logit_rows = 1, p.sequences = 1, p.kv_tokens = 128;
  p.attended_keys = 128 * 129 / 2;  // causal: row i attends i + 1 keys
  // The weights are read once for all 128 rows; activations scale with rows.
  CHECK(op_cost(m, p, ProfOp::Wq).bytes == 2359296.0 + 4.0 * 128 * 1536);
  CHECK(op_cost(m, p, ProfOp::Wq).flops == 128.0 * 1179648);
  CHECK(op_cost(m, p, ProfOp::Attention).flops == 8256.0 * 12 * 257);
  CHECK(op_cost(m, p, ProfOp::Attention).bytes == 128.0 * 6144 + 8.0 * 128 * 768);
  // Only the last row reaches the classifier.
  CHECK(op_cost(m, p, ProfOp::Classifier).flops == 49152000.0);
  CHECK(op_cost(m, p, ProfOp::FinalNorm).flops == 3073.0);
}

TEST_CASE("profiler accounting agrees with the model's own weight bytes", "[model][profiler]") {
  // An independent count: LlamaModel::weights_bytes() sums the views' sizes.
  LlamaModel<> model(make_synthetic("tiny", DType::BF16, 3), ModelOptions{1, 32});
  const ProfileModelShape m = model.profile_shape();
  CHECK(m.wq == DType::BF16);
  CHECK(m.kv_bytes_per_token_layer == double(model.kv().bytes_per_token()) / 5);
  ProfilePassShape p;  // zero rows: only the weights remain
  double weights = 0;
  for (ProfOp op : {ProfOp::Wq, ProfOp::Wk, ProfOp::Wv, ProfOp::Wo, ProfOp::W1, ProfOp::W2, ProfOp::W3})
    weights += 5 * op_cost(m, p, op).bytes;
  weights += op_cost(m, p, ProfOp::Classifier).bytes;
  const double norms = (2 * 5 + 1) * 64 * 4;
  CHECK(weights + norms == double(model.weights_bytes()));
}

TEST_CASE("profiler hooks: every op charged per call, logits unchanged", "[model][profiler]") {
  LlamaModel<> plain(make_synthetic("tiny", DType::F32, 7), ModelOptions{1, 64});
  LlamaModel<> profiled(make_synthetic("tiny", DType::F32, 7), ModelOptions{1, 64});
  ForwardProfiler prof;
  profiled.set_profiler(&prof);
  REQUIRE(profiled.profiler() == &prof);
  const int layers = plain.config().n_layers, vocab = plain.config().vocab_size;
  const std::vector<std::int32_t> prompt = {1, 17, 300, 42, 5, 99, 7, 250};
  const float* a = plain.forward_prefill(prompt, 0);
  const float* b = profiled.forward_prefill(prompt, 0);
  CHECK(std::memcmp(a, b, sizeof(float) * std::size_t(vocab)) == 0);
  const int decodes = 5;
  double external = 0;
  for (int i = 0; i < decodes; ++i) {
    a = plain.forward_decode(std::int32_t(10 + i), 8 + i);
    const auto t0 = std::chrono::steady_clock::now();
    b = profiled.forward_decode(std::int32_t(10 + i), 8 + i);
    external += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(std::memcmp(a, b, sizeof(float) * std::size_t(vocab)) == 0);
  }

  CHECK(prof.passes(ProfPhase::Prefill) == 1);
  CHECK(prof.rows(ProfPhase::Prefill) == 8);
  CHECK(prof.passes(ProfPhase::Decode) == decodes);
  CHECK(prof.rows(ProfPhase::Decode) == decodes);
  for (ProfOp op : {ProfOp::AttnNorm, ProfOp::Wq, ProfOp::Wk, ProfOp::Wv, ProfOp::Rope, ProfOp::KvAppend,
                    ProfOp::Attention, ProfOp::Wo, ProfOp::FfnNorm, ProfOp::W1, ProfOp::W3, ProfOp::Swiglu, ProfOp::W2}) {
    INFO(prof_op_name(op));
    CHECK(prof.op(ProfPhase::Decode, op).calls == decodes * layers);
    CHECK(prof.op(ProfPhase::Prefill, op).calls == layers);
  }
  CHECK(prof.op(ProfPhase::Decode, ProfOp::Residual).calls == 2 * decodes * layers);
  for (ProfOp op : {ProfOp::Setup, ProfOp::Embed, ProfOp::FinalNorm, ProfOp::Classifier})
    CHECK(prof.op(ProfPhase::Decode, op).calls == decodes);
  CHECK(prof.op(ProfPhase::Decode, ProfOp::Sampling).calls == 0);

  // The decode passes attended 9, 10, ..., 13 keys: the accounting saw each pass's shape.
  const ProfileModelShape m = profiled.profile_shape();
  double flops = 0;
  for (int i = 0; i < decodes; ++i) {
    ProfilePassShape p;
    p.rows = 1, p.logit_rows = 1, p.sequences = 1, p.attended_keys = 9 + i, p.kv_tokens = 9 + i;
    flops += layers * op_cost(m, p, ProfOp::Attention).flops;
  }
  CHECK(prof.op(ProfPhase::Decode, ProfOp::Attention).flops == Approx(flops).epsilon(1e-12));
  ProfilePassShape p8;
  p8.rows = 8, p8.logit_rows = 1, p8.sequences = 1, p8.attended_keys = 36, p8.kv_tokens = 8;
  CHECK(prof.op(ProfPhase::Prefill, ProfOp::W1).bytes == layers * op_cost(m, p8, ProfOp::W1).bytes);

  // Laps tile the pass: the op times sum to the pass time (less the last
  // clock read), which lies inside the caller's clock.
  CHECK(prof.op_seconds(ProfPhase::Decode) > 0);
  CHECK(prof.op_seconds(ProfPhase::Decode) <= prof.pass_seconds(ProfPhase::Decode));
  CHECK(prof.pass_seconds(ProfPhase::Decode) <= external);

  // Off again: nothing more is charged.
  profiled.set_profiler(nullptr);
  profiled.forward_decode(3, 13);
  CHECK(prof.passes(ProfPhase::Decode) == decodes);
}

TEST_CASE("profiler: generate() charges one sampling per picked token", "[model][profiler]") {
  LlamaModel<> model(make_synthetic("tiny", DType::F32, 11), ModelOptions{1, 64});
  ForwardProfiler prof;
  model.set_profiler(&prof);
  GenerationParams params;
  params.max_new_tokens = 6;
  const GenerationResult r = generate(model, {1, 20, 30}, params);
  // A pick after the prefill and after every decode pass; a BOS stop picks once more.
  const std::int64_t picks = std::int64_t(r.tokens.size()) + (r.stopped_by == StopReason::Bos ? 1 : 0);
  const std::int64_t sampled =
      prof.op(ProfPhase::Prefill, ProfOp::Sampling).calls + prof.op(ProfPhase::Decode, ProfOp::Sampling).calls;
  CHECK(sampled == picks);
  CHECK(prof.op(ProfPhase::Prefill, ProfOp::Sampling).calls == 1);
  CHECK(prof.op(ProfPhase::Decode, ProfOp::Sampling).bytes == 4.0 * 512 * double(picks - 1));
}

TEST_CASE("profiler: table and JSON name every op that ran", "[model][profiler]") {
  LlamaModel<> model(make_synthetic("tiny", DType::F32, 5), ModelOptions{1, 64});
  ForwardProfiler prof;
  model.set_profiler(&prof);
  model.forward_prefill(std::vector<std::int32_t>{1, 2, 3}, 0);
  model.forward_decode(4, 3);
  Roofline roof{20.0, 100.0, "avx512", "test \"cpu\"", 2};
  const std::string table = prof.table(roof, 1.0);
  CHECK(table.find("decode: 1 passes") != std::string::npos);
  CHECK(table.find("classifier") != std::string::npos);
  const nlohmann::json j = nlohmann::json::parse(prof.json(roof, 1.0));
  CHECK(j["roofline"]["cpu"] == "test \"cpu\"");
  CHECK(j["phases"]["decode"]["passes"] == 1);
  CHECK(j["phases"]["prefill"]["rows"] == 3);
  const auto& ops = j["phases"]["decode"]["ops"];
  REQUIRE(ops.size() == 18);  // every op but sampling
  for (const auto& o : ops) {
    INFO(o["op"].get<std::string>());
    if (o["op"] == "setup") continue;
    CHECK(o["bytes"].get<double>() > 0);
    CHECK(o["bw_fraction"].get<double>() == Approx(o["gbs"].get<double>() / 20.0));
  }
}
