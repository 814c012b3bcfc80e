#include <catch2/catch.hpp>

#include <map>
#include <random>
#include <vector>

#include "fastinfer/memory/paged_allocator.hpp"

using namespace fastinfer;

namespace {

// free + referenced == capacity, and everything else check_invariants knows.
void balanced(const PagedAllocator& a) {
  a.check_invariants();
  const auto s = a.stats();
  REQUIRE(s.free + s.used == s.total);
}

}  // namespace

TEST_CASE("PagedAllocator: construction checks its arguments") {
  CHECK_THROWS_AS(PagedAllocator(0, 16), InvalidArgument);
  CHECK_THROWS_AS(PagedAllocator(8, 12), InvalidArgument);
  CHECK_THROWS_WITH(PagedAllocator(8, 12), Catch::Contains("12"));
  CHECK_THROWS_AS(PagedAllocator(8, 0), InvalidArgument);
  PagedAllocator a(8, 1);
  CHECK(a.block_size() == 1);
  CHECK(a.stats().free == 8);
  balanced(a);
}

TEST_CASE("PagedAllocator: single blocks allocate, share and free in any order") {
  PagedAllocator a(3, 4);
  auto b0 = a.allocate(), b1 = a.allocate(), b2 = a.allocate();
  REQUIRE((b0 && b1 && b2));
  CHECK(!a.allocate());
  balanced(a);
  a.incref(*b1);
  CHECK(a.ref_count(*b1) == 2);
  CHECK(a.stats().shared == 1);
  a.decref(*b1);
  CHECK(a.stats().shared == 0);
  a.decref(*b1);
  CHECK(a.stats().free == 1);
  balanced(a);
  // Double free: a clear error, pool unchanged.
  CHECK_THROWS_AS(a.decref(*b1), UsageError);
  CHECK_THROWS_WITH(a.decref(*b1), Catch::Contains("double free"));
  CHECK_THROWS_AS(a.incref(*b1), UsageError);
  CHECK_THROWS_AS(a.decref(99), InvalidArgument);
  CHECK(a.stats().free == 1);
  balanced(a);
  CHECK(*a.allocate() == *b1);  // O(1) free list: last freed comes out first
}

TEST_CASE("PagedAllocator: sequences grow by blocks and answer scheduler questions") {
  PagedAllocator a(10, 4);
  a.add_sequence(7);
  CHECK(a.blocks_to_append(7, 0) == 0);
  CHECK(a.blocks_to_append(7, 1) == 1);
  CHECK(a.blocks_to_append(7, 4) == 1);
  CHECK(a.blocks_to_append(7, 5) == 2);
  REQUIRE(a.extend(7, 5));
  balanced(a);
  CHECK(a.length(7) == 5);
  CHECK(a.block_table(7).size() == 2);
  CHECK(a.blocks_to_append(7, 3) == 0);
  CHECK(a.blocks_to_append(7, 4) == 1);
  CHECK(a.blocks_to_reach(7, 3) == 0);
  CHECK(a.blocks_to_reach(7, 13) == 2);
  CHECK(a.blocks_for(9) == 3);

  // A reservation larger than the pool fails whole and changes nothing.
  CHECK(!a.reserve(7, 100));
  CHECK(a.length(7) == 5);
  CHECK(a.capacity(7) == 8);
  CHECK(a.stats().free == 8);
  balanced(a);
  REQUIRE(a.reserve(7, 8));  // room for 13: 4 blocks
  CHECK(a.capacity(7) == 16);
  CHECK(a.length(7) == 5);
  a.append(7, 8);
  // Appending beyond the reservation is misuse: error, nothing changed.
  CHECK_THROWS_AS(a.append(7, 4), UsageError);
  CHECK(a.length(7) == 13);
  balanced(a);

  // Truncate gives back whole blocks past the new length.
  a.truncate(7, 4);
  CHECK(a.block_table(7).size() == 1);
  CHECK(a.stats().free == 9);
  CHECK_THROWS_AS(a.truncate(7, 5), InvalidArgument);
  balanced(a);
  a.free_sequence(7);
  CHECK(a.stats().free == 10);
  CHECK_THROWS_AS(a.free_sequence(7), UsageError);
  CHECK_THROWS_WITH(a.length(7), Catch::Contains("unknown sequence 7"));
  a.add_sequence(-1);  // any id is valid
  CHECK(a.contains(-1));
  a.free_sequence(-1);
  balanced(a);
}

TEST_CASE("PagedAllocator: fork shares blocks and copies a shared partial last block on append") {
  PagedAllocator a(8, 4);
  a.add_sequence(1);
  REQUIRE(a.extend(1, 6));  // blocks [x, y], y holds 2 tokens
  const auto parent = a.block_table(1);
  a.fork(1, 2);
  balanced(a);
  CHECK(a.block_table(2) == parent);
  CHECK(a.ref_count(parent[0]) == 2);
  CHECK(a.ref_count(parent[1]) == 2);
  CHECK(a.stats().shared == 2);
  CHECK_THROWS_AS(a.fork(1, 2), UsageError);
  CHECK_THROWS_AS(a.fork(5, 6), UsageError);

  // Writing the child's 7th token would touch the shared last block.
  CHECK_THROWS_AS(a.append(2, 1), UsageError);
  CHECK(a.blocks_to_append(2, 1) == 1);
  std::vector<BlockCopy> copies;
  REQUIRE(a.reserve(2, 1, &copies));
  REQUIRE(copies.size() == 1);
  CHECK(copies[0].src == parent[1]);
  CHECK(copies[0].dst == a.block_table(2)[1]);
  CHECK(copies[0].dst != parent[1]);
  CHECK(copies[0].tokens == 2);
  CHECK(a.block_table(2)[0] == parent[0]);  // full blocks stay shared
  CHECK(a.ref_count(parent[1]) == 1);
  a.append(2, 1);
  balanced(a);

  // The parent now owns its last block alone: no copy needed.
  copies.clear();
  REQUIRE(a.extend(1, 1, &copies));
  CHECK(copies.empty());
  CHECK(a.block_table(1) == parent);

  // A fork at a block boundary never copies.
  a.truncate(1, 4);
  a.fork(1, 3);
  copies.clear();
  REQUIRE(a.extend(3, 3, &copies));
  CHECK(copies.empty());
  balanced(a);
  a.free_sequence(1);
  a.free_sequence(2);
  a.free_sequence(3);
  CHECK(a.stats().free == 8);
  CHECK(a.stats().shared == 0);
  balanced(a);
}

TEST_CASE("PagedAllocator: adopt starts a sequence from blocks held by someone else") {
  PagedAllocator a(6, 2);
  const BlockId b0 = *a.allocate(), b1 = *a.allocate();  // e.g. held by a prefix tree
  CHECK_THROWS_AS(a.adopt(1, {b0, b1}, 5), InvalidArgument);
  CHECK_THROWS_AS(a.adopt(1, {b0, b1}, 2), InvalidArgument);
  a.adopt(1, {b0, b1}, 3);
  CHECK(a.ref_count(b0) == 2);
  CHECK(a.length(1) == 3);
  std::vector<BlockCopy> copies;
  REQUIRE(a.extend(1, 2, &copies));  // the partial block b1 is shared: copy it
  REQUIRE(copies.size() == 1);
  CHECK(copies[0].src == b1);
  CHECK(copies[0].tokens == 1);
  balanced(a);
  a.free_sequence(1);
  CHECK(a.ref_count(b0) == 1);
  CHECK(a.ref_count(b1) == 1);
  a.decref(b0);
  a.decref(b1);
  CHECK(a.stats().free == 6);
  balanced(a);
  // Adopting a free block is misuse and leaves no sequence behind.
  CHECK_THROWS_AS(a.adopt(2, {b0}, 1), UsageError);
  CHECK(!a.contains(2));
  balanced(a);
}

TEST_CASE("PagedAllocator: batch reservations succeed whole or fail whole") {
  PagedAllocator a(5, 4);
  a.add_sequence(1);
  a.add_sequence(2);
  CHECK(!a.reserve_all({{1, 8}, {2, 13}}));  // 2 + 4 > 5
  CHECK(a.stats().free == 5);
  CHECK(a.capacity(1) == 0);
  REQUIRE(a.reserve_all({{1, 8}, {2, 9}}));
  CHECK(a.stats().free == 0);
  CHECK_THROWS_AS(a.reserve_all({{1, 1}, {3, 1}}), UsageError);
  balanced(a);
}

TEST_CASE("PagedAllocator: released window blocks keep positions and go back to the pool") {
  PagedAllocator a(8, 4);
  a.add_sequence(1);
  REQUIRE(a.extend(1, 14));
  a.fork(1, 2);
  a.release_blocks(1, 1, 3);
  CHECK(a.block_table(1)[1] == kNoBlock);
  CHECK(a.block_table(1)[2] == kNoBlock);
  CHECK(a.stats().free == 4);  // still held by the fork
  CHECK_THROWS_AS(a.release_blocks(1, 2, 4), InvalidArgument);  // block 3 is partial
  CHECK_THROWS_AS(a.truncate(1, 10), UsageError);                // would end in a released block
  a.fork(1, 3);  // released entries are copied as released
  CHECK(a.block_table(3)[1] == kNoBlock);
  balanced(a);
  a.free_sequence(2);
  CHECK(a.stats().free == 6);
  a.free_sequence(1);
  a.free_sequence(3);
  CHECK(a.stats().free == 8);
  balanced(a);
}

// Random operations against a model that stores token values per block: a
// sequence must always read back exactly the tokens it wrote, whatever its
// forks did, and the books must balance after every step.
TEST_CASE("PagedAllocator: randomized operations keep data and books consistent") {
  for (std::int32_t bs : {1, 4, 16}) {
    PagedAllocator a(64, bs);
    std::vector<std::vector<int>> storage(64, std::vector<int>(std::size_t(bs), -1));
    std::map<SeqId, std::vector<int>> expect;
    std::mt19937 rng(1234u + unsigned(bs));
    SeqId next_id = 0;
    int next_token = 0, failures = 0;
    for (int step = 0; step < 3000; ++step) {
      const int op = int(rng() % 10);
      if (expect.empty() || op == 0) {
        a.add_sequence(next_id);
        expect[next_id++] = {};
      } else {
        auto it = expect.begin();
        std::advance(it, rng() % expect.size());
        const SeqId s = it->first;
        if (op <= 4) {
          const int n = int(rng() % (3 * bs + 2));
          std::vector<BlockCopy> copies;
          const auto before = a.stats();
          if (a.extend(s, n, &copies)) {
            for (const auto& c : copies)
              for (int t = 0; t < c.tokens; ++t) storage[std::size_t(c.dst)][std::size_t(t)] = storage[std::size_t(c.src)][std::size_t(t)];
            const auto& table = a.block_table(s);
            for (int i = 0; i < n; ++i) {
              const std::int64_t pos = std::int64_t(it->second.size());
              storage[std::size_t(table[std::size_t(pos / bs)])][std::size_t(pos % bs)] = next_token;
              it->second.push_back(next_token++);
            }
          } else {
            ++failures;
            const auto after = a.stats();
            REQUIRE(after.free == before.free);
          }
        } else if (op == 5) {
          a.fork(s, next_id);
          expect[next_id++] = it->second;
        } else if (op == 6) {
          const std::int64_t keep = std::int64_t(rng() % (it->second.size() + 1));
          a.truncate(s, keep);
          it->second.resize(std::size_t(keep));
        } else if (op == 7) {
          a.free_sequence(s);
          expect.erase(it);
        } else {
          CHECK_THROWS_AS(a.append(s, a.capacity(s) - a.length(s) + 1), UsageError);
        }
      }
      balanced(a);
      for (const auto& kv : expect) {
        REQUIRE(a.length(kv.first) == std::int64_t(kv.second.size()));
        const auto& table = a.block_table(kv.first);
        for (std::size_t pos = 0; pos < kv.second.size(); ++pos)
          REQUIRE(storage[std::size_t(table[pos / std::size_t(bs)])][pos % std::size_t(bs)] == kv.second[pos]);
      }
    }
    CHECK(failures > 0);  // the pool did run short along the way
    for (const auto& kv : expect) a.free_sequence(kv.first);
    CHECK(a.stats().free == 64);
  }
}
