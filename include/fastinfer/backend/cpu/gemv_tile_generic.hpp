// The float small-row tile, written once for every vector width: included by
// gemv_avx2.hpp and gemv_avx512.hpp inside their own namespace and target
// region (simdjson's "generic" pattern), so each ISA compiles it with its own
// instructions. Not a header to include anywhere else: it has no include
// guard on purpose (each ISA file includes it once), and outside those files
// (FASTINFER_GEMV_TILE_ISA undefined, as when the header check compiles it
// alone) it is empty.
//
// The including file defines, in its namespace:
//   Lanes                          the vector register type (__m256, __m512)
//   kLanes                         floats per register
//   zero_lanes(), load_x(p)        zero; kLanes floats of an activation row
//   load_w<D>(p)                   kLanes weights widened to f32
//   fmadd(a, b, c)                 a * b + c, fused
//   keep_in_register(v)            an empty asm that pins v in a register
//   reduce<N>(v, out)              out[i] = the documented lane sum of v[i]
//   kElem<D>                       bytes per weight element
// and the order every sum follows is the including file's documented one:
// kLanes-float chunks in column order into one accumulator, its reduce, then
// the tail columns in order, one FMA each.
#if defined(FASTINFER_GEMV_TILE_ISA)

// y[t * ldy + r] = dot(weight row r, activation row t) for r < R, t < T.
// Weight rows are `stride` bytes apart, stored as D; activation rows ldx
// floats apart. With Prefetch, the tile also pulls `ahead`'s cache lines into
// L2, spread evenly over its column chunks (gemv_blocking.hpp: the next block
// of weight rows, one sequential stream, while this one computes).
//
// The loops over R and T are unrolled (FASTINFER_CPU_UNROLL, a pragma): at
// -O2 (RelWithDebInfo, and the default of many packagers) g++ 12 leaves them
// rolled, every accumulator in memory, and a 4 x 6 tile ran at a third of
// its -O3 speed (36 against 97 GFLOP/s on one Zen 4 core, in L2).
template <DType D, int R, int T, bool Prefetch>
FASTINFER_CPU_NOINLINE inline void small_rows_tile(const std::uint8_t* w, std::size_t stride, const float* x,
                                                   std::int64_t ldx, std::int64_t cols, float* y,
                                                   std::int64_t ldy, gemv_detail::PrefetchSpan ahead) {
  constexpr std::int64_t E = kElem<D>;
  const std::int64_t cend = cols & ~std::int64_t(kLanes - 1);
  gemv_detail::PrefetchPacer pacer(ahead, cend / kLanes);
  Lanes acc[R][T];
  FASTINFER_CPU_UNROLL
  for (int r = 0; r < R; ++r) {
    FASTINFER_CPU_UNROLL
    for (int t = 0; t < T; ++t) acc[r][t] = zero_lanes();
  }
  for (std::int64_t c = 0; c < cend; c += kLanes) {
    if constexpr (Prefetch) pacer.step();
    Lanes xv[T];
    FASTINFER_CPU_UNROLL
    for (int t = 0; t < T; ++t) {
      xv[t] = load_x(x + t * ldx + c);
      // One load per activation vector: GCC 12 otherwise folds the load into
      // every FMA that uses it, R loads instead of one (a 2 x 8 AVX-512 tile
      // ran at half speed, bound by loads).
      keep_in_register(xv[t]);
    }
    FASTINFER_CPU_UNROLL
    for (int r = 0; r < R; ++r) {
      const Lanes wv = load_w<D>(w + r * stride + c * E);
      FASTINFER_CPU_UNROLL
      for (int t = 0; t < T; ++t) acc[r][t] = fmadd(wv, xv[t], acc[r][t]);
    }
  }
  if constexpr (Prefetch) pacer.finish();
  float sums[R * T];
  reduce<R * T>(&acc[0][0], sums);
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      float sum = sums[r * T + t];
      for (std::int64_t k = cend; k < cols; ++k) sum = fma_fused(load_scalar<D>(w + r * stride, k), x[t * ldx + k], sum);
      y[t * ldy + r] = sum;
    }
}

#endif  // FASTINFER_GEMV_TILE_ISA
