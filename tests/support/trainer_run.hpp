// The opt-in trainer tests' common steps: whether FASTINFER_RUN_TRAINER=1
// asks for them (CI never sets it: it must never need torch), and running
// a tools/ script with Debian's python (FASTINFER_PYTHON overrides).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace fastinfer::testing {

// True when asked; otherwise prints the FASTINFER_SKIP line CTest reports as
// skipped, naming the trainer.
inline bool trainer_requested(const char* trainer) {
  const char* run = std::getenv("FASTINFER_RUN_TRAINER");
  if (run != nullptr && std::string(run) == "1") return true;
  std::printf("FASTINFER_SKIP: set FASTINFER_RUN_TRAINER=1 to run the %s trainer (needs python3-torch)\n", trainer);
  return false;
}

// The command line that runs tools/<script> with `args`.
inline std::string tool_command(const std::string& script, const std::string& args) {
  const std::filesystem::path path =
      std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "tools" / script;
  const char* py = std::getenv("FASTINFER_PYTHON");
  const std::string python = py ? py : std::filesystem::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  return python + " " + path.string() + " " + args;
}

}  // namespace fastinfer::testing
