// Every exception fastinfer throws derives from fastinfer::Error, so an engine
// can catch ours apart from its own. Messages name the offending value.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace fastinfer {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A caller passed something we cannot accept (a flag, a shape, a token id).
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// A file is missing, truncated or malformed.
class FormatError : public Error {
 public:
  using Error::Error;
};

// A structure was used against its contract (double free, unknown sequence).
class UsageError : public Error {
 public:
  using Error::Error;
};

// A size asked for (by a file field or a caller) exceeds a limit: a memory
// budget, the longest context, a 64-bit size computation that would overflow.
// Raised before anything of that size is allocated.
class LimitError : public Error {
 public:
  using Error::Error;
};

// A computation produced values it cannot go on from (NaN or infinite logits):
// the model or its inputs are broken, the caller's request was fine.
class NumericError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <typename... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}
}  // namespace detail

// throw_error<InvalidArgument>("head_dim ", d, " is not a multiple of 8")
template <typename E = Error, typename... Parts>
[[noreturn]] void throw_error(Parts&&... parts) {
  throw E(detail::concat(std::forward<Parts>(parts)...));
}

}  // namespace fastinfer

// Checks a condition that depends on input; never compiled out.
#define FASTINFER_CHECK(cond, ExceptionType, ...)               \
  do {                                                          \
    if (!(cond)) ::fastinfer::throw_error<ExceptionType>(__VA_ARGS__); \
  } while (0)
