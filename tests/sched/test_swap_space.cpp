#include <catch2/catch.hpp>

#include <algorithm>
#include <vector>

#include "fastinfer/sched/swap_space.hpp"

using namespace fastinfer;
using namespace fastinfer::sched;

TEST_CASE("HostSwapSpace: all-or-nothing allocation and checked release") {
  CHECK_THROWS_AS(HostSwapSpace(-1), InvalidArgument);
  HostSwapSpace s(5);
  CHECK(s.num_blocks() == 5);
  std::vector<std::int32_t> a, b;
  REQUIRE(s.allocate(3, a));
  CHECK(a == std::vector<std::int32_t>{0, 1, 2});
  CHECK_FALSE(s.allocate(3, b));  // only 2 left: nothing taken
  CHECK(b.empty());
  CHECK(s.num_free_blocks() == 2);
  REQUIRE(s.allocate(2, b));
  CHECK(s.num_free_blocks() == 0);
  CHECK_THROWS_AS(s.allocate(-1, b), InvalidArgument);
  // A bad id or a double free anywhere in the list changes nothing.
  CHECK_THROWS_WITH(s.release({0, 7}), Catch::Contains("block 7"));
  CHECK_THROWS_WITH(s.release({0, 0}), Catch::Contains("double free"));
  CHECK(s.num_free_blocks() == 0);
  s.release(a);
  CHECK(s.num_free_blocks() == 3);
  CHECK_THROWS_AS(s.release({1}), UsageError);
  s.release(b);
  CHECK(s.num_free_blocks() == 5);
  std::vector<std::int32_t> all;
  REQUIRE(s.allocate(5, all));
  std::sort(all.begin(), all.end());
  CHECK(all == std::vector<std::int32_t>{0, 1, 2, 3, 4});
  HostSwapSpace none;
  std::vector<std::int32_t> x;
  CHECK(none.allocate(0, x));
  CHECK_FALSE(none.allocate(1, x));
}
