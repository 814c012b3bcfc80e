// Running the example programs from tests: exit code, stdout, stderr, and
// (where GNU time is installed) peak RSS and wall time. A hang is killed
// after a timeout and shows as not exited, as a signal does.
#pragma once

#include <sys/wait.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "file_bytes.hpp"

namespace fastinfer::testing {

struct ProgramRun {
  bool exited = false;  // false: killed by a signal (or by the timeout)
  int code = -1;
  std::string out, err;
  long peak_rss_kb = -1;  // -1: not measured (no /usr/bin/time)
  double seconds = -1;
};

// Runs `binary args` through /bin/sh, killed after timeout_s seconds.
inline ProgramRun run_program(const std::filesystem::path& binary, const std::string& args, int timeout_s = 120) {
  ScratchDir scratch;
  const auto out = scratch.dir / "out", err = scratch.dir / "err", usage = scratch.dir / "usage";
  const bool timed = std::filesystem::exists("/usr/bin/time");
  std::string cmd = timed ? "/usr/bin/time -f '%M %e' -o '" + usage.string() + "' " : std::string();
  cmd += "timeout -s KILL " + std::to_string(timeout_s) + " '" + binary.string() + "' " + args + " >'" + out.string() +
         "' 2>'" + err.string() + "'";
  const int status = std::system(cmd.c_str());
  ProgramRun r;
  // /bin/sh, GNU time and timeout report a child killed by signal N as 128+N.
  r.exited = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) < 128;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_bytes(out);
  r.err = read_bytes(err);
  if (timed) {
    std::istringstream u(read_bytes(usage));
    std::string line;
    // "Command exited with non-zero status N" comes first when N != 0.
    while (std::getline(u, line))
      if (!line.empty() && std::isdigit(static_cast<unsigned char>(line[0]))) {
        std::istringstream(line) >> r.peak_rss_kb >> r.seconds;
      }
  }
  return r;
}

inline std::size_t count_lines(const std::string& s) {
  std::size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

}  // namespace fastinfer::testing

// Declares `var` as the path of the example program `name`, or skips the test.
#define FASTINFER_REQUIRE_PROGRAM(var, name)                                                      \
  const std::filesystem::path var = std::filesystem::path(FASTINFER_BINARY_DIR) / "examples" / name; \
  if (!std::filesystem::exists(var)) {                                                            \
    std::printf("FASTINFER_SKIP: %s not built\n", var.c_str());                                  \
    WARN("FASTINFER_SKIP: " << var << " not built");                                             \
    return;                                                                                       \
  }
