#include <catch2/catch.hpp>

#include "fastinfer/core/error.hpp"

#include <sstream>
#include <string>
#include <string_view>

using namespace fastinfer;

TEST_CASE("errors derive from fastinfer::Error and name the offending value") {
  try {
    FASTINFER_CHECK(3 % 2 == 0, InvalidArgument, "head_dim ", 3, " is odd");
    FAIL("no exception");
  } catch (const Error& e) {
    CHECK(std::string(e.what()) == "head_dim 3 is odd");
  }
  CHECK_THROWS_AS(throw_error<FormatError>("x"), Error);
  CHECK_THROWS_AS(throw_error<UsageError>("x"), UsageError);
}

TEST_CASE("a message streams its parts in order as one ostringstream would, manipulators included") {
  const std::string path = "model.gguf";
  const std::string_view field = "general.alignment";
  const char* kind = "u32";
  const std::size_t offset = 4097;
  const unsigned flags = 0xbeef;
  std::ostringstream reference;
  reference << path << ": " << field << " (" << kind << ") at " << offset << ' ' << -2 << ' ' << 0.25f << ' ' << 1e-7
            << " flags 0x" << std::hex << flags << ' ' << 255;
  const std::string message = detail::concat(path, ": ", field, " (", kind, ") at ", offset, ' ', -2, ' ', 0.25f, ' ',
                                             1e-7, " flags 0x", std::hex, flags, ' ', 255);
  CHECK(message == reference.str());
  CHECK(message == "model.gguf: general.alignment (u32) at 4097 -2 0.25 1e-07 flags 0xbeef ff");
  // A temporary part lives until the message is built.
  CHECK(detail::concat("[", std::string(3, 'x') + "y", "]") == "[xxxy]");
  CHECK(detail::concat().empty());
  try {
    throw_error<LimitError>("size ", std::string("2^40"), " over the budget of ", 64, " MiB");
    FAIL("no exception");
  } catch (const LimitError& e) {
    CHECK(std::string(e.what()) == "size 2^40 over the budget of 64 MiB");
  }
}
