// Philox 4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel Random Numbers: As
// Easy as 1, 2, 3", SC 2011): a counter-based generator. Output block i is a
// pure function of (key, counter i), so any random number can be computed
// directly from where it is used, with no shared state to advance. That is
// what makes sampling reproducible: a request's token t draws from
// (seed, stream, t) alone, whatever the batch it rides in or the thread that
// samples it.
#pragma once

#include <array>
#include <cstdint>

namespace fastinfer {

class Philox4x32 {
 public:
  using Counter = std::array<std::uint32_t, 4>;
  using Key = std::array<std::uint32_t, 2>;
  using result_type = std::uint32_t;  // UniformRandomBitGenerator, for <random> distributions

  // The raw bijection: ten rounds of the Philox S-box with the Weyl key
  // schedule. This is what the Random123 known-answer vectors test.
  static constexpr Counter block(Counter ctr, Key key) {
    for (int round = 0; round < 10; ++round) {
      if (round > 0) {
        key[0] += kWeyl0;
        key[1] += kWeyl1;
      }
      const std::uint64_t p0 = std::uint64_t(kMul0) * ctr[0];
      const std::uint64_t p1 = std::uint64_t(kMul1) * ctr[2];
      ctr = {std::uint32_t(p1 >> 32) ^ ctr[1] ^ key[0], std::uint32_t(p1),
             std::uint32_t(p0 >> 32) ^ ctr[3] ^ key[1], std::uint32_t(p0)};
    }
    return ctr;
  }

  // Counter layout: words 0-1 = a 64-bit position within the stream (the
  // block index), words 2-3 = the 64-bit stream id; key = the 64-bit seed.
  static constexpr Counter make_counter(std::uint64_t stream, std::uint64_t index) {
    return {std::uint32_t(index), std::uint32_t(index >> 32), std::uint32_t(stream),
            std::uint32_t(stream >> 32)};
  }
  static constexpr Key make_key(std::uint64_t seed) {
    return {std::uint32_t(seed), std::uint32_t(seed >> 32)};
  }

  // A sequential engine over one stream, starting at block `index`.
  constexpr explicit Philox4x32(std::uint64_t seed, std::uint64_t stream = 0, std::uint64_t index = 0)
      : key_(make_key(seed)), stream_(stream), index_(index) {}

  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return 0xffffffffu; }

  constexpr result_type operator()() {
    if (used_ == 4) {
      buffer_ = block(make_counter(stream_, index_++), key_);
      used_ = 0;
    }
    return buffer_[used_++];
  }

  // Next float in [0, 1) with 24 random bits (every value is exact).
  constexpr float uniform() { return to_unit_float((*this)()); }

  static constexpr float to_unit_float(std::uint32_t bits) {
    return float(bits >> 8) * (1.0f / 16777216.0f);  // 2^-24
  }

 private:
  static constexpr std::uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  static constexpr std::uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;

  Key key_;
  std::uint64_t stream_;
  std::uint64_t index_;
  Counter buffer_{};
  int used_ = 4;
};

// The random streams fastinfer draws from; a request's seed is the key.
enum class RandomStream : std::uint64_t {
  Sampling = 0,     // the coin for token t of a request: index t
  Speculative = 1,  // acceptance tests of drafted tokens
};

// One uniform float in [0, 1) (24 random bits) for (seed, stream, index):
// the first word of Philox block `index` of that stream.
constexpr float uniform_float(std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
  return Philox4x32::to_unit_float(
      Philox4x32::block(Philox4x32::make_counter(stream, index), Philox4x32::make_key(seed))[0]);
}
constexpr float uniform_float(std::uint64_t seed, RandomStream stream, std::uint64_t index) {
  return uniform_float(seed, std::uint64_t(stream), index);
}

}  // namespace fastinfer
