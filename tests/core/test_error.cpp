#include <catch2/catch.hpp>

#include "fastinfer/core/error.hpp"

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
