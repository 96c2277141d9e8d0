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
#include <sstream>
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
template <typename... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
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
