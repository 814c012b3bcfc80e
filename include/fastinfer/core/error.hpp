// Every exception fastinfer throws derives from fastinfer::Error, so an engine
// can catch ours apart from its own. Messages name the offending value.
#pragma once

#include <initializer_list>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
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
// One part of an error message, its type erased. Why: a fold over an
// ostringstream inside the template put a whole stream's code in every
// distinct argument list, and each string literal's length is a type of its
// own: over 400 copies in one example program, a large share of its compile
// time (most of it under the sanitizers). Now the stream is built once.
struct MessagePart {
  const void* value;
  void (*write)(std::ostream& out, const void* value);

  template <typename T>
  static MessagePart of(const T& value) {
    return {&value, [](std::ostream& out, const void* erased) { out << *static_cast<const T*>(erased); }};
  }
};

inline std::string stream_message(std::initializer_list<MessagePart> parts) {
  std::ostringstream out;
  for (const MessagePart& part : parts) part.write(out, part.value);
  return out.str();
}

// concat("head_dim ", d, std::hex, flags): the parts streamed in order, so a
// manipulator applies to the parts after it.
template <typename... Parts>
std::string concat(const Parts&... parts) {
  // String literals and manipulators decay to the pointers the stream prints;
  // those temporaries live until stream_message returns.
  return stream_message({MessagePart::of<std::decay_t<const Parts&>>(parts)...});
}

// The throw itself, one copy per exception type rather than one per call site.
template <typename E>
[[noreturn]] void throw_message(std::string message) {
  throw E(std::move(message));
}
}  // namespace detail

// throw_error<InvalidArgument>("head_dim ", d, " is not a multiple of 8")
template <typename E = Error, typename... Parts>
[[noreturn]] void throw_error(const Parts&... parts) {
  detail::throw_message<E>(detail::concat(parts...));
}

}  // namespace fastinfer

// Checks a condition that depends on input; never compiled out.
#define FASTINFER_CHECK(cond, ExceptionType, ...)               \
  do {                                                          \
    if (!(cond)) ::fastinfer::throw_error<ExceptionType>(__VA_ARGS__); \
  } while (0)
