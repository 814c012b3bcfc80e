// A target an EAGLE head or an MTP module can read (random f32 embedding,
// classifier and final norm) and the head's layer in double precision: the
// scalar reference test_eagle_head.cpp and test_mtp_heads.cpp check the
// heads' forward against.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "fastinfer/core/philox.hpp"
#include "fastinfer/model/weights.hpp"
#include "fastinfer/speculative/eagle_head.hpp"

namespace fastinfer::testing {

using speculative::EagleHead;
using speculative::EagleHeadShape;

// Target weights a head can read: f32 embedding / classifier [vocab][dim] and a final norm.
struct HeadTarget {
  std::vector<float> emb, cls, norm;
  fastinfer::LlamaWeights w;
  HeadTarget(int dim, int vocab, std::uint64_t seed) {
    emb.resize(std::size_t(vocab) * std::size_t(dim));
    cls.resize(emb.size());
    norm.resize(std::size_t(dim));
    std::uint64_t i = 0;
    for (float& x : emb) x = 2.0f * fastinfer::uniform_float(seed, 3, i++) - 1.0f;
    for (float& x : cls) x = 2.0f * fastinfer::uniform_float(seed, 3, i++) - 1.0f;
    for (float& x : norm) x = 0.5f + fastinfer::uniform_float(seed, 3, i++);
    w.config.dim = dim;
    w.config.vocab_size = vocab;
    w.config.norm_eps = 1e-5f;
    w.token_embedding = fastinfer::MatrixView{fastinfer::DType::F32, emb.data(), vocab, dim};
    w.classifier = fastinfer::MatrixView{fastinfer::DType::F32, cls.data(), vocab, dim};
    w.final_norm = norm.data();
  }
};

inline std::vector<float> random_features(int n, int dim, std::uint64_t seed) {
  std::vector<float> f(std::size_t(n) * std::size_t(dim));
  for (std::size_t i = 0; i < f.size(); ++i) f[i] = 3.0f * (fastinfer::uniform_float(seed, 5, i) - 0.5f);
  return f;
}

// The head's layer in double precision over a causal sequence of rows
// (features[i], tokens[i]) at positions 0..n-1 (or `positions`): the
// predicted feature of every row; row i attends to rows j <= i. With input
// norms (an MTP module) both halves of the input are RMS-normalised first.
inline std::vector<double> reference(const EagleHead& h, const HeadTarget& t, const std::vector<float>& feats,
                              const std::vector<std::int32_t>& tokens, const std::vector<int>& positions = {}) {
  const EagleHeadShape& s = h.shape();
  const int d = s.dim, n = int(tokens.size()), hd = s.head_dim, qd = s.q_dim(), kvd = s.kv_dim();
  auto mat = [&](int tensor, const std::vector<double>& x) {
    std::vector<double> y(std::size_t(h.rows(tensor)), 0.0);
    for (std::int64_t r = 0; r < h.rows(tensor); ++r)
      for (std::int64_t c = 0; c < h.cols(tensor); ++c) y[std::size_t(r)] += double(h.tensor(tensor)[r * h.cols(tensor) + c]) * x[std::size_t(c)];
    return y;
  };
  auto norm = [&](const std::vector<double>& x, const float* w) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / double(x.size()) + double(s.norm_eps));
    std::vector<double> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * double(w[i]);
    return y;
  };
  auto rope = [&](std::vector<double>& v, int heads, int pos) {
    for (int hh = 0; hh < heads; ++hh)
      for (int i = 0; i < hd / 2; ++i) {
        const double ang = double(pos) * std::pow(double(s.rope_theta), -2.0 * i / double(hd));
        double& a = v[std::size_t(hh * hd + 2 * i)];
        double& b = v[std::size_t(hh * hd + 2 * i + 1)];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(ang) - b0 * std::sin(ang);
        b = a0 * std::sin(ang) + b0 * std::cos(ang);
      }
  };
  std::vector<std::vector<double>> xs, ks, vs, qs;
  for (int i = 0; i < n; ++i) {
    std::vector<double> in(std::size_t(2 * d));
    for (int j = 0; j < d; ++j) {
      in[std::size_t(j)] = t.emb[std::size_t(tokens[std::size_t(i)]) * std::size_t(d) + std::size_t(j)];
      in[std::size_t(d + j)] = feats[std::size_t(i) * std::size_t(d) + std::size_t(j)];
    }
    if (h.has_input_norms()) {
      for (int half = 0; half < 2; ++half) {
        const auto nh = norm(std::vector<double>(in.begin() + half * d, in.begin() + (half + 1) * d), h.input_norm(half));
        std::copy(nh.begin(), nh.end(), in.begin() + half * d);
      }
    }
    std::vector<double> x = mat(EagleHead::kFc, in);
    for (int j = 0; j < d; ++j) x[std::size_t(j)] += h.tensor(EagleHead::kFcBias)[j];
    const auto nx = norm(x, h.tensor(EagleHead::kAttnNorm));
    auto q = mat(EagleHead::kWq, nx), k = mat(EagleHead::kWk, nx);
    const int pos = positions.empty() ? i : positions[std::size_t(i)];
    rope(q, s.n_heads, pos);
    rope(k, s.n_kv_heads, pos);
    xs.push_back(x), qs.push_back(q), ks.push_back(k), vs.push_back(mat(EagleHead::kWv, nx));
  }
  std::vector<double> out;
  for (int i = 0; i < n; ++i) {
    std::vector<double> att(std::size_t(qd), 0.0);
    for (int hh = 0; hh < s.n_heads; ++hh) {
      const int kh = hh / (s.n_heads / s.n_kv_heads);
      std::vector<double> sc(std::size_t(i + 1));
      double mx = -1e300, z = 0;
      for (int j = 0; j <= i; ++j) {
        double dot = 0;
        for (int e = 0; e < hd; ++e) dot += qs[std::size_t(i)][std::size_t(hh * hd + e)] * ks[std::size_t(j)][std::size_t(kh * hd + e)];
        mx = std::max(mx, sc[std::size_t(j)] = dot / std::sqrt(double(hd)));
      }
      for (double& v : sc) z += v = std::exp(v - mx);
      for (int j = 0; j <= i; ++j)
        for (int e = 0; e < hd; ++e)
          att[std::size_t(hh * hd + e)] += sc[std::size_t(j)] / z * vs[std::size_t(j)][std::size_t(kh * hd + e)];
    }
    (void)kvd;
    std::vector<double> x = xs[std::size_t(i)];
    const auto o = mat(EagleHead::kWo, att);
    for (int j = 0; j < d; ++j) x[std::size_t(j)] += o[std::size_t(j)];
    const auto m = norm(x, h.tensor(EagleHead::kFfnNorm));
    const auto g = mat(EagleHead::kWGate, m), u = mat(EagleHead::kWUp, m);
    std::vector<double> a(g.size());
    for (std::size_t j = 0; j < g.size(); ++j) a[j] = g[j] / (1.0 + std::exp(-g[j])) * u[j];
    const auto dn = mat(EagleHead::kWDown, a);
    for (int j = 0; j < d; ++j) out.push_back(x[std::size_t(j)] + dn[std::size_t(j)]);
  }
  return out;
}

}  // namespace fastinfer::testing
