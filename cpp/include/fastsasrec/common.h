// fastsasrec: shared definitions.
//
// Shape letters, used in every op's header comment and argument names:
//   B  sequences in a batch          T  positions per sequence (max_seq)
//   R  packed rows: the real tokens of a batch, sequence after sequence (R <= B*T);
//      no op ever sees a padding position
//   C  width (factors)   F  feed-forward width   H  heads   D = C / H, the head width
//   L  layers            V  items in the catalogue (ids 1..V; row 0 of E is padding)
//   N  sampled negatives K  top-k
// Gradients are d<name>.  In every op comment "=" means the output is overwritten,
// "+=" that it is accumulated into.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <type_traits>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define FSR_HD __host__ __device__
#else
#define FSR_HD
#endif

namespace fsr {

// A bad argument: pybind11 turns it into ValueError.
class ValueError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// An allocation that does not fit: pybind11 turns it into MemoryError.
class MemoryError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
// Message building without iostreams (no locale facets: messages must be buildable in any
// process state, including the one an error is raised from).
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, const char* v) { s += v ? v : "(null)"; }
inline void append(std::string& s, char v) { s += v; }
inline void append(std::string& s, bool v) { s += v ? "true" : "false"; }
template <typename T>
inline void append(std::string& s, T v) {
  if constexpr (std::is_integral_v<T>) {
    s += std::to_string(v);
  } else if constexpr (std::is_floating_point_v<T>) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", static_cast<double>(v));
    s += buf;
  } else {
    s += std::string(v);
  }
}
template <typename... Args>
std::string cat(Args&&... args) {
  std::string s;
  (append(s, args), ...);
  return s;
}
}  // namespace detail

}  // namespace fsr

// Internal invariant: throws std::runtime_error with file:line (never exit / abort).
#define FSR_ASSERT(cond, ...)                                                              \
  do {                                                                                     \
    if (!(cond))                                                                           \
      throw std::runtime_error(::fsr::detail::cat(__FILE__, ":", __LINE__, ": ",           \
                                                  "check failed: " #cond " ", ##__VA_ARGS__)); \
  } while (0)

// Bad argument from the caller: throws fsr::ValueError with a message naming it.
#define FSR_REQUIRE(cond, ...)                                          \
  do {                                                                  \
    if (!(cond)) throw ::fsr::ValueError(::fsr::detail::cat(__VA_ARGS__)); \
  } while (0)
