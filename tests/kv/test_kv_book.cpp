// KVBook: the rules of the KV sequence verbs with no bytes (what a device
// backend's store shares with kv::KVCache). Checked against what the rules
// say directly: copy-on-write copies named for the byte owner, windows
// released in whole blocks, writes refused before anything changes.
#include <catch2/catch.hpp>

#include <vector>

#include "fastinfer/kv/kv_book.hpp"

using namespace fastinfer;
using namespace fastinfer::kv;

namespace {

KVCacheConfig book_config(KVLayoutKind layout, int block_size = 4) {
  KVCacheConfig c;
  c.n_layers = 2;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.num_blocks = 16;
  c.block_size = block_size;
  c.max_seq_len = 40;
  c.layout = layout;
  return c;
}

}  // namespace

TEST_CASE("KVBook: a fork's first write into a shared partial block asks the byte owner for one copy") {
  KVBook book(book_config(KVLayoutKind::Paged));
  std::vector<BlockCopy> copies;
  REQUIRE(book.add_sequence(1));
  REQUIRE(book.extend(1, 6, copies));  // blocks: 4 + 2 tokens
  CHECK(copies.empty());
  book.fork(1, 2);
  const BlockId shared = book.allocator().block_table(1)[1];
  REQUIRE(book.extend(2, 1, copies));
  REQUIRE(copies.size() == 1);
  CHECK(copies[0].src == shared);
  CHECK(copies[0].dst == book.allocator().block_table(2)[1]);
  CHECK(copies[0].dst != shared);
  CHECK(copies[0].tokens == 2);  // the rows the parent wrote, not the whole block
  CHECK(book.length(2) == 7);
  CHECK(book.length(1) == 6);
  // The full first block stays shared: a write there is refused by name.
  CHECK_THROWS_WITH(book.check_writable(2, 0, 1), Catch::Contains("shared with another owner"));
  CHECK_NOTHROW(book.check_writable(2, 4, 3));
  book.free_sequence(2);
  book.free_sequence(1);
  CHECK(book.stats().used == 0);
  book.allocator().check_invariants();
}

TEST_CASE("KVBook: the window layout gives back whole blocks and refuses rollback into them") {
  KVCacheConfig c = book_config(KVLayoutKind::Window);
  c.window = 6;
  c.sinks = 2;
  c.max_seq_len = 0;
  KVBook book(c);
  std::vector<BlockCopy> copies;
  REQUIRE(book.add_sequence(3));
  for (int i = 0; i < 30; ++i) REQUIRE(book.extend(3, 1, copies));
  const auto& table = book.allocator().block_table(3);
  CHECK(table[0] != kNoBlock);  // the sinks' block
  CHECK(table[1] == kNoBlock);  // wholly between sinks and window
  CHECK_THROWS_WITH(book.block_of(3, 5), Catch::Contains("was released"));
  CHECK_NOTHROW(book.block_of(3, 29));
  CHECK_THROWS_WITH(book.truncate(3, 10), Catch::Contains("already released the window"));
  book.allocator().check_invariants();
}

TEST_CASE("KVBook: a bad config is refused by name, the contiguous block is the rounded reservation") {
  KVCacheConfig c = book_config(KVLayoutKind::Contiguous);
  CHECK(KVBook(c).block_size() == 64);  // max_seq_len 40 rounded up
  c.max_seq_len = 0;
  CHECK_THROWS_WITH(KVBook(c), Catch::Contains("the contiguous layout needs max_seq_len"));
  c = book_config(KVLayoutKind::Paged, 6);
  CHECK_THROWS_WITH(KVBook(c), Catch::Contains("block_size must be a power of two, got 6"));
  c = book_config(KVLayoutKind::Paged);
  c.head_dim = 12;
  CHECK_THROWS_WITH(KVBook(c), Catch::Contains("head_dim must be a positive multiple of 8, got 12"));
  c = book_config(KVLayoutKind::Paged);
  KVBook book(c);
  std::vector<BlockCopy> copies;
  REQUIRE(book.add_sequence(1));
  CHECK_THROWS_WITH(book.extend(1, 41, copies), Catch::Contains("beyond max_seq_len 40"));
  CHECK(book.length(1) == 0);
  CHECK(book.stats().used == 0);
}
