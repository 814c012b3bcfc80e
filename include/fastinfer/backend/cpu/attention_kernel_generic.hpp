// The attention kernel, written once for every vector width: included by
// attention_avx2.hpp and attention_avx512.hpp inside their own namespace and
// target region (the pattern of gemv_tile_generic.hpp), so each ISA compiles
// it with its own instructions. Not a header to include anywhere else: it has
// no include guard on purpose (each ISA file includes it once), and outside
// those files (FASTINFER_ATTENTION_KERNEL_ISA undefined, as when the header
// check compiles it alone) it is empty.
//
// The including file defines, in its namespace (the first five are the
// gemv tiles' own, reused):
//   Lanes, kLanes                  the vector register type, floats per register
//   zero_lanes(), load_x(p)        zero; kLanes floats at p
//   fmadd(a, b, c)                 a * b + c, fused
//   reduce<N>(v, out)              out[i] = the documented lane sum of v[i]
//   set1(x), add, sub, mul,        broadcast, sum, difference, product,
//   max_lanes                      maximum
//   store_x(p, v)                  kLanes floats to p
//   round_nearest(v), pow2i(n)     round to an integer; 2^n for integral n
//   zero_below(x, lo, y)           y where x >= lo, else 0
//   kBlockHeads                    query rows a score block and a 4-register
//                                  value pass hold (2 with 16 registers, 4 with 32)
//   load_kv<Quant>(row, params, e, group)
//                                  values e..e+kLanes-1 of a stored K/V row as
//                                  f32, before the row scale (Int8, FP8) and
//                                  after the group scale and minimum (Int4)
//   transpose_lanes(r)             kLanes registers transposed in place
//   load_padded(p, count),         the first count (< kLanes) floats at p,
//   store_first(p, v, count)       -inf past them; v's first count to p
//   lane_tree(a)                   lane j: reduce<1>'s tree over a[0..kLanes)[j]
// The head size must be a multiple of kLanes (the driver checks it).
//
// Every output element is a sum in one order fixed by the head size, the
// key range and the ISA alone: kLanes-value chunks of a dot product in
// column order into one accumulator, its reduce; keys in tiles of kTile;
// so a query's result never depends on the queries beside it.
#if defined(FASTINFER_ATTENTION_KERNEL_ISA)

// e^x for x <= 0, Cephes' expf (xsimd's too): x = n ln2 + r, |r| <= ln2/2,
// e^r by a degree-6 polynomial, 2^n into the exponent; below -87 (past
// FLT_MIN) the result is 0, so a masked key (-inf) weighs exactly nothing.
inline Lanes exp_nonpositive(Lanes x) {
  const Lanes xc = max_lanes(x, set1(-87.0f));
  const Lanes n = round_nearest(mul(xc, set1(1.44269504088896341f)));
  Lanes r = fmadd(n, set1(-0.693359375f), xc);
  r = fmadd(n, set1(2.12194440e-4f), r);
  Lanes y = set1(1.9875691500e-4f);
  y = fmadd(y, r, set1(1.3981999507e-3f));
  y = fmadd(y, r, set1(8.3334519073e-3f));
  y = fmadd(y, r, set1(4.1665795894e-2f));
  y = fmadd(y, r, set1(1.6666665459e-1f));
  y = fmadd(y, r, set1(5.0000001201e-1f));
  y = fmadd(y, mul(r, r), r);
  y = mul(add(y, set1(1.0f)), pow2i(n));
  return zero_below(x, -87.0f, y);
}

// Scores of G query heads (q: rows of d, already scaled) against K key rows
// rows[t0 .. t0+K) into s[g * s_stride + t]: each query chunk is loaded
// once for the K keys, each key chunk once for the G heads.
template <typename Quant, int K, int G>
inline void score_block(const std::uint8_t* const* rows, const float* const* params, int t0, const float* q, int d,
                        int group, float* s, std::int64_t s_stride) {
  Lanes acc[K * G];  // [key][head]
  FASTINFER_CPU_UNROLL
  for (int i = 0; i < K * G; ++i) acc[i] = zero_lanes();
  for (int e = 0; e < d; e += kLanes) {
    Lanes qv[G];
    FASTINFER_CPU_UNROLL
    for (int g = 0; g < G; ++g) qv[g] = load_x(q + g * d + e);
    FASTINFER_CPU_UNROLL
    for (int k = 0; k < K; ++k) {
      const Lanes key = load_kv<Quant>(rows[t0 + k], params[t0 + k], e, group);
      FASTINFER_CPU_UNROLL
      for (int g = 0; g < G; ++g) acc[k * G + g] = fmadd(key, qv[g], acc[k * G + g]);
    }
  }
  float sums[K * G];
  reduce<K * G>(acc, sums);
  for (int k = 0; k < K; ++k) {
    const float sc = attention_detail::RowScale<Quant>::scale(params[t0 + k]);
    for (int g = 0; g < G; ++g) s[g * s_stride + t0 + k] = sums[k * G + g] * sc;
  }
}

// K keys against every one of n_heads query heads, MaxG heads at a time.
template <typename Quant, int K, int MaxG>
inline void score_keys(const std::uint8_t* const* rows, const float* const* params, int t0, const float* q,
                       int n_heads, int d, int group, float* s, std::int64_t s_stride) {
  int g = 0;
  for (; g + MaxG <= n_heads; g += MaxG)
    score_block<Quant, K, MaxG>(rows, params, t0, q + g * d, d, group, s + g * s_stride, s_stride);
  const float* qg = q + g * d;
  float* sg = s + g * s_stride;
  switch (n_heads - g) {
    case 3: score_block<Quant, K, (MaxG > 3 ? 3 : 1)>(rows, params, t0, qg, d, group, sg, s_stride); break;
    case 2: score_block<Quant, K, (MaxG > 2 ? 2 : 1)>(rows, params, t0, qg, d, group, sg, s_stride); break;
    case 1: score_block<Quant, K, 1>(rows, params, t0, qg, d, group, sg, s_stride); break;
    default: break;
  }
}

// Head sizes up to this many values score kLanes keys at a time with the
// keys across the lanes (score_keys_across) when two or more query rows
// read the KV head.
inline constexpr int kAcrossMaxDim = 2 * kLanes;
static_assert(attention_detail::kTile % kLanes == 0,
              "a block of keys across the lanes must not cross a score row");

// Scores of keys t0 .. t0+count (count <= kLanes) against every one of
// n_heads query heads, the keys across the lanes: the key rows are widened
// and transposed once (kt[dim][key]; lanes past count are zero keys), then
// each head's kLanes accumulators hold the lanes of kLanes dot products at
// once (acc[i] lane j: chunk sums of lane i of key j's dot product, the
// FMAs score_block does) and lane_tree adds them in reduce's tree, so every
// score has score_block's bits. What it saves: with a head of 16 or 32
// values a dot product is one or two FMAs and a whole horizontal reduction;
// here a reduction is 15 adds for kLanes scores. s rows hold kTile scores,
// so a short block's kLanes stores stay inside its row.
template <typename Quant>
inline void score_keys_across(const std::uint8_t* const* rows, const float* const* params, int t0, int count,
                              const float* q, int n_heads, int d, int group, float* s,
                              std::int64_t s_stride) {
  alignas(64) float kt[kAcrossMaxDim * kLanes];  // [dim][key]
  for (int e = 0; e < d; e += kLanes) {
    Lanes r[kLanes];
    for (int k = 0; k < kLanes; ++k)
      r[k] = k < count ? load_kv<Quant>(rows[t0 + k], params[t0 + k], e, group) : zero_lanes();
    transpose_lanes(r);
    for (int i = 0; i < kLanes; ++i) store_x(kt + (e + i) * kLanes, r[i]);
  }
  alignas(64) float scales[kLanes];
  for (int k = 0; k < kLanes; ++k)
    scales[k] = k < count ? attention_detail::RowScale<Quant>::scale(params[t0 + k]) : 1.0f;
  const Lanes scale = load_x(scales);
  for (int g = 0; g < n_heads; ++g) {
    const float* qg = q + g * d;
    Lanes acc[kLanes];
    FASTINFER_CPU_UNROLL
    for (int i = 0; i < kLanes; ++i) acc[i] = fmadd(load_x(kt + i * kLanes), set1(qg[i]), zero_lanes());
    for (int e = kLanes; e < d; e += kLanes) {
      FASTINFER_CPU_UNROLL
      for (int i = 0; i < kLanes; ++i) acc[i] = fmadd(load_x(kt + (e + i) * kLanes), set1(qg[e + i]), acc[i]);
    }
    store_x(s + g * s_stride + t0, mul(lane_tree(acc), scale));
  }
}

// Scores of n keys for every query head into s[g][t]. Short heads (up to
// kAcrossMaxDim values) read by two or more query rows: kLanes keys at a
// time across the lanes (score_keys_across; the last block zero-padded).
// Otherwise 4 keys x kBlockHeads
// (a head of kLanes values costs one FMA per key), or 8 keys at a time when
// one query head reads the KV head (MHA: the horizontal sums of 8 keys are
// one transposing tree), then 2 keys x 4 heads, then 1 key x 4 heads. A
// (head, key) score is the same sum in every block.
template <typename Quant>
inline void scores_tile(const std::uint8_t* const* rows, const float* const* params, int n, const float* q,
                        int n_heads, int d, int group, float* s, std::int64_t s_stride) {
  int t = 0;
  if (n_heads >= 2 && d <= kAcrossMaxDim) {
    for (; t < n; t += kLanes)
      score_keys_across<Quant>(rows, params, t, std::min(kLanes, n - t), q, n_heads, d, group, s, s_stride);
    return;
  }
  if (n_heads == 1)
    for (; t + 8 <= n; t += 8) score_block<Quant, 8, 1>(rows, params, t, q, d, group, s, s_stride);
  for (; t + 4 <= n; t += 4) score_keys<Quant, 4, kBlockHeads>(rows, params, t, q, n_heads, d, group, s, s_stride);
  for (; t + 2 <= n; t += 2) score_keys<Quant, 2, 4>(rows, params, t, q, n_heads, d, group, s, s_stride);
  if (t < n) score_keys<Quant, 1, 4>(rows, params, t, q, n_heads, d, group, s, s_stride);
}

// o[g] = o[g] * alpha[g] + sum_t p[g][t] * v_t for G heads, C registers of
// columns at a time so that the G x C accumulators stay in registers across
// the tile and each broadcast weight serves C FMAs. Rows come as pointers:
// a tile may span blocks.
template <typename Quant, int G, int C>
inline void accumulate_columns(const std::uint8_t* const* rows, const float* const* params, int n, const float* p,
                               std::int64_t p_stride, const float* alpha, float* o, int d, int group, int e) {
  // Unrolled (FASTINFER_CPU_UNROLL): rolled, g++ 12 kept 8 heads'
  // accumulators on the stack, a store and a load around every FMA (a verify
  // pass's attention 1.3x slower at avx512, head size 16).
  Lanes acc[G][C];
  FASTINFER_CPU_UNROLL
  for (int g = 0; g < G; ++g) {
    FASTINFER_CPU_UNROLL
    for (int c = 0; c < C; ++c) acc[g][c] = mul(load_x(o + g * d + e + c * kLanes), set1(alpha[g]));
  }
  for (int t = 0; t < n; ++t) {
    Lanes v[C];
    FASTINFER_CPU_UNROLL
    for (int c = 0; c < C; ++c) v[c] = load_kv<Quant>(rows[t], params[t], e + c * kLanes, group);
    FASTINFER_CPU_UNROLL
    for (int g = 0; g < G; ++g) {
      const Lanes w = set1(p[g * p_stride + t]);
      FASTINFER_CPU_UNROLL
      for (int c = 0; c < C; ++c) acc[g][c] = fmadd(v[c], w, acc[g][c]);
    }
  }
  FASTINFER_CPU_UNROLL
  for (int g = 0; g < G; ++g) {
    FASTINFER_CPU_UNROLL
    for (int c = 0; c < C; ++c) store_x(o + g * d + e + c * kLanes, acc[g][c]);
  }
}

// Up to kBlockHeads heads take 4 registers of columns per pass (a head of 64
// is one pass at 16 lanes), more heads 2 (G x C accumulators, C values and
// one weight within the register file). Each column's sum is the same
// whatever C.
template <typename Quant, int G>
inline void accumulate_group(const std::uint8_t* const* rows, const float* const* params, int n, const float* p,
                             std::int64_t p_stride, const float* alpha, float* o, int d, int group) {
  int e = 0;
  if constexpr (G <= kBlockHeads)
    for (; e + 4 * kLanes <= d; e += 4 * kLanes)
      accumulate_columns<Quant, G, 4>(rows, params, n, p, p_stride, alpha, o, d, group, e);
  for (; e + 2 * kLanes <= d; e += 2 * kLanes)
    accumulate_columns<Quant, G, 2>(rows, params, n, p, p_stride, alpha, o, d, group, e);
  for (; e < d; e += kLanes) accumulate_columns<Quant, G, 1>(rows, params, n, p, p_stride, alpha, o, d, group, e);
}

// A head of one register (C = 1) takes 8 heads a pass: 8 independent FMA
// chains keep both FMA units busy (4 would leave half of their latency
// idle).
template <typename Quant>
inline void accumulate_heads(const std::uint8_t* const* rows, const float* const* params, int n, const float* p,
                             std::int64_t p_stride, const float* alpha, float* o, int n_heads, int d, int group) {
  int g = 0;
  if (d < 2 * kLanes)
    for (; g + 8 <= n_heads; g += 8)
      accumulate_group<Quant, 8>(rows, params, n, p + g * p_stride, p_stride, alpha + g, o + g * d, d, group);
  for (; g + 4 <= n_heads; g += 4)
    accumulate_group<Quant, 4>(rows, params, n, p + g * p_stride, p_stride, alpha + g, o + g * d, d, group);
  const float* pg = p + g * p_stride;
  float* og = o + g * d;
  switch (n_heads - g) {
    case 3: accumulate_group<Quant, 3>(rows, params, n, pg, p_stride, alpha + g, og, d, group); break;
    case 2: accumulate_group<Quant, 2>(rows, params, n, pg, p_stride, alpha + g, og, d, group); break;
    case 1: accumulate_group<Quant, 1>(rows, params, n, pg, p_stride, alpha + g, og, d, group); break;
    default: break;
  }
}

// Turns the scores row[0..n) of one head into softmax weights against the
// running maximum m (updated), and returns the factor alpha that rescales
// what was accumulated before; l (the running sum) is updated too. A row
// with no visible key so far keeps alpha 1 and weights 0; `any` reports a
// row that has some.
inline float softmax_row(float* row, int n, float& m, float& l, bool& any) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  constexpr int kChunks = attention_detail::kTile / kLanes;  // n <= kTile
  // The maximum is exact in any order: vectorised, it changes no bit.
  Lanes vm = set1(kNegInf);
  int t = 0;
  for (; t + kLanes <= n; t += kLanes) vm = max_lanes(vm, load_x(row + t));
  if (t < n) vm = max_lanes(vm, load_padded(row + t, n - t));
  alignas(64) float lanes[kLanes];
  store_x(lanes, vm);
  float mx = m;
  for (float v : lanes) mx = std::max(mx, v);
  if (mx == kNegInf) {
    for (t = 0; t < n; ++t) row[t] = 0.0f;
    return 1.0f;
  }
  any = true;
  const float alpha = std::exp(m - mx);
  m = mx;
  const Lanes vmx = set1(mx);
  // The last chunk padded with -inf (weights exactly 0), never a scalar
  // tail: a masked query whose invisible keys are -inf then gets the same
  // bits as a causal one that never saw them (a pass with a token tree in
  // it masks every sequence), and the extra zeros add nothing.
  Lanes p[kChunks];
  int c = 0;
  for (t = 0; t + kLanes <= n; t += kLanes, ++c) {
    p[c] = exp_nonpositive(sub(load_x(row + t), vmx));
    store_x(row + t, p[c]);
  }
  if (t < n) {
    p[c] = exp_nonpositive(sub(load_padded(row + t, n - t), vmx));
    store_first(row + t, p[c], n - t);
    ++c;
  }
  for (int i = c; i < kChunks; ++i) p[i] = zero_lanes();
  // Each chunk's lane sum in reduce's tree (all of them through one
  // transposing reduction), added in key order.
  float sums[kChunks];
  reduce<kChunks>(p, sums);
  float sum = 0.0f;
  for (int i = 0; i < c; ++i) sum += sums[i];
  l = l * alpha + sum;
  return alpha;
}

// Folds keys [begin, end) of sequence b, KV head h into the state of
// n_heads query rows q (scaled, rows of head_dim): `rows` queries of
// n_heads / rows heads each, query r seeing what visible(r, p) allows. Each
// key and value row is widened once per call, for every query of it.
template <typename Quant>
void attend_range(const kv::PagedKVView<Quant>& kv, std::int32_t b, std::int32_t h, const float* q, int n_heads,
                  int rows, std::int64_t begin, std::int64_t end, const attention_detail::Visibility& visible,
                  attention_detail::State& st) {
  using attention_detail::kTile;
  constexpr int kStackHeads = 32;
  const int d = kv.head_dim;
  const int group = attention_detail::group_shift<Quant>(d);
  const int ppr = kv.params_per_row;
  const int heads_per_row = n_heads / rows;
  alignas(64) float s[kStackHeads * kTile];  // [g][t], rows padded to kTile
  float vs[kTile];
  float alpha[kStackHeads];
  std::vector<float> big, big_alpha;  // more heads than that: spill
  float* sc = s;
  float* alpha_p = alpha;
  if (n_heads > kStackHeads) {
    big.resize(std::size_t(n_heads) * kTile);
    big_alpha.resize(std::size_t(n_heads));
    sc = big.data();
    alpha_p = big_alpha.data();
  }
  // Row pointers of one tile, which may span several blocks: small blocks
  // (16 tokens) then cost no more per-tile work than one long run.
  const std::uint8_t* krow[kTile];
  const std::uint8_t* vrow[kTile];
  const float* kpar[kTile];
  const float* vpar[kTile];
  for (std::int64_t pos = begin; pos < end;) {
    const int n = int(std::min<std::int64_t>(end - pos, kTile));
    for (int t = 0; t < n;) {
      const std::int64_t p = pos + t, off = p % kv.block_size;
      const BlockId blk = kv.block(b, p / kv.block_size);
      const int run = int(std::min<std::int64_t>(n - t, kv.block_size - off));
      const std::uint8_t* k0 = kv.k_row(blk, h, off);
      const std::uint8_t* v0 = kv.v_row(blk, h, off);
      const float* kp0 = kv.k_param(blk, h, off);
      const float* vp0 = kv.v_param(blk, h, off);
      for (int r = 0; r < run; ++r, ++t) {
        krow[t] = k0 + r * kv.row_bytes;
        vrow[t] = v0 + r * kv.row_bytes;
        kpar[t] = kp0 + r * ppr;
        vpar[t] = vp0 + r * ppr;
      }
    }
    scores_tile<Quant>(krow, kpar, n, q, n_heads, d, group, sc, kTile);
    if (!visible.all(pos + n))
      for (int r = 0; r < rows; ++r)
        for (int t = int(std::min<std::int64_t>(visible.first_unseen(r, pos) - pos, n)); t < n; ++t)
          if (!visible(r, pos + t))
            for (int g = r * heads_per_row; g < (r + 1) * heads_per_row; ++g)
              sc[g * kTile + t] = -std::numeric_limits<float>::infinity();
    bool any = false;
    for (int g = 0; g < n_heads; ++g)
      alpha_p[g] = softmax_row(sc + g * kTile, n, st.m[std::size_t(g)], st.l[std::size_t(g)], any);
    if (any) {
      if constexpr (attention_detail::RowScale<Quant>::kRowScale) {
        // Int8 / FP8: the row scale of V multiplies the softmax weight.
        for (int t = 0; t < n; ++t) vs[t] = attention_detail::RowScale<Quant>::scale(vpar[t]);
        for (int g = 0; g < n_heads; ++g)
          for (int t = 0; t < n; ++t) sc[g * kTile + t] *= vs[t];
      }
      accumulate_heads<Quant>(vrow, vpar, n, sc, kTile, alpha_p, st.o.data(), n_heads, d, group);
    }
    pos += n;
  }
}

#endif  // FASTINFER_ATTENTION_KERNEL_ISA
