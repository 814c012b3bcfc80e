// Locating ../shared (models, goldens) from tests. A test that needs a file
// that is absent prints a FASTINFER_SKIP line (CTest then reports it as
// skipped) and returns: it never passes silently.
#pragma once

#include <cstdio>
#include <filesystem>
#include <string>

namespace fastinfer::testing {

inline std::filesystem::path shared_path(const std::string& relative) {
  return std::filesystem::path(FASTINFER_SHARED_DIR) / relative;
}

}  // namespace fastinfer::testing

// Declares `var` as the path of shared/<relative>, or skips the test case.
#define FASTINFER_REQUIRE_SHARED(var, relative)                                              \
  const std::filesystem::path var = ::fastinfer::testing::shared_path(relative);             \
  if (!std::filesystem::exists(var)) {                                                       \
    std::printf("FASTINFER_SKIP: %s not found (set FASTINFER_SHARED_DIR)\n", var.c_str()); \
    WARN("FASTINFER_SKIP: " << var << " not found");                                          \
    return;                                                                                  \
  }
