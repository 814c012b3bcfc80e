// Locating ../shared (models, goldens) and the committed heads from tests. A test that needs a file
// that is absent prints a FASTINFER_SKIP line (CTest then reports it as
// skipped) and returns: it never passes silently.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace fastinfer::testing {

// The environment's FASTINFER_SHARED_DIR when set (test programs moved to
// another machine: scripts/gpu-check.sh --bundle), else the directory the
// build was configured with.
inline std::filesystem::path shared_path(const std::string& relative) {
  const char* at_run = std::getenv("FASTINFER_SHARED_DIR");
  if (at_run != nullptr && *at_run != '\0') return std::filesystem::path(at_run) / relative;
  return std::filesystem::path(FASTINFER_SHARED_DIR) / relative;
}

// A trained heads file committed with the sources (data/heads/<name>), or the
// file the environment variable `env` names instead (a freshly trained one).
inline std::filesystem::path heads_path(const char* env, const std::string& name) {
  const char* chosen = std::getenv(env);
  if (chosen != nullptr && *chosen != '\0') return chosen;
  // This header is tests/support/shared_dir.hpp: three levels below the root.
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "data" / "heads" / name;
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

// Declares `var` as the path of the heads file heads_path(env, name) gives,
// or skips the test case.
#define FASTINFER_REQUIRE_HEADS(var, env, name)                                                  \
  const std::filesystem::path var = ::fastinfer::testing::heads_path(env, name);                 \
  if (!std::filesystem::exists(var)) {                                                           \
    std::printf("FASTINFER_SKIP: heads file %s not found (set %s)\n", var.c_str(), env);        \
    WARN("FASTINFER_SKIP: heads file " << var << " not found");                                   \
    return;                                                                                      \
  }
