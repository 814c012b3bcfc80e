// A kernel mode: a process-wide setting that every kernel call reads once
// (a relaxed atomic: change it between passes, never during one), started
// from an environment variable, and the scope that sets one for a test or a
// benchmark and then restores the previous value. The CPU level
// (cpu_level.hpp), the bf16 dot mode (bf16_dot.hpp), batch invariance
// (batch_invariance.hpp) and the one-row walk (one_row_walk.hpp) are such
// modes: each names its values, its variable and its starting value here,
// and keeps its own checks in its setter.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <string>
#include <string_view>

#include "fastinfer/core/error.hpp"

namespace fastinfer::cpu {

// A mode's value and the name its environment variable and the CLIs take.
template <typename T>
struct ModeName {
  T value;
  const char* name;
};

// The value named `text` among `names`. A name that is not there throws
// InvalidArgument naming `source` (where the text came from), the mode
// (`what`) and the choices: "FASTINFER_BF16_DOT=fast: unknown bf16 dot mode
// (choose widen or bf16)".
template <typename T, std::size_t N>
T parse_mode(std::string_view text, std::string_view source, std::string_view what,
             const ModeName<T> (&names)[N]) {
  static_assert(N >= 2, "a mode has at least two values");
  for (const ModeName<T>& n : names)
    if (text == n.name) return n.value;
  std::string choices;
  for (std::size_t i = 0; i < N; ++i)
    choices += std::string(i == 0 ? "" : i + 1 == N ? " or " : ", ") + names[i].name;
  throw_error<InvalidArgument>(source, "=", text, ": unknown ", what, " (choose ", choices, ")");
}

// The value of the environment variable `variable`, or nullptr when it is
// unset or empty (the mode's default then applies).
inline const char* mode_variable(const char* variable) {
  const char* value = std::getenv(variable);
  return value != nullptr && *value != '\0' ? value : nullptr;
}

// The process-wide value of a mode of type T, started by Initial() on first
// use (a bad environment variable throws from there, at every read, so no
// kernel runs in a mode nobody chose). The mode's own setter checks a value
// before store().
template <typename T, T (*Initial)()>
class KernelMode {
 public:
  static T get() { return T(slot().load(std::memory_order_relaxed)); }
  static void store(T value) { slot().store(int(value), std::memory_order_relaxed); }

  // Sets a value for a scope (a test, a benchmark) through the mode's
  // setter `set` (which may refuse it: then nothing changes and the scope is
  // not made), and restores the previous value at its end.
  class Scope {
   public:
    Scope(T value, void (*set)(T)) : saved_(get()) { set(value); }
    ~Scope() { store(saved_); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    T saved_;
  };

 private:
  static std::atomic<int>& slot() {
    static std::atomic<int> value{int(Initial())};
    return value;
  }
};

}  // namespace fastinfer::cpu
