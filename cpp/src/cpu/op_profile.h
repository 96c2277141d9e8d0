// The op profile: per op of ops.def, the calls the CPU backend made, their wall time, and the
// floating-point operations of the matrix products inside them (2 M N K per product, counted
// where gemm and gemm_bf16 run them), so that a benchmark can report each op's GFLOP/s
// against the machine's sgemm rate.  Off by default: then an op pays one relaxed atomic
// load.  The counters are process-wide; profile one training at a time.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <vector>

namespace fsr::cpu {

enum OpId {
#define FSR_OP(ret, name, params, args) kOp_##name,
#include "fastsasrec/ops.def"
#undef FSR_OP
  kOpCount
};

struct OpStat {
  const char* name;
  uint64_t calls;
  double seconds;
  double flops;  // of the op's matrix products
};

namespace profile_detail {
extern std::atomic<bool> enabled;
extern std::atomic<uint64_t> flops;
void add(OpId op, uint64_t ns, uint64_t flops);
}  // namespace profile_detail

inline bool op_profile_enabled() { return profile_detail::enabled.load(std::memory_order_relaxed); }
// A product of m x n x k on any thread (gemm_serial, the bf16 kernel's caller).
inline void op_profile_count(double m, double n, double k) {
  if (op_profile_enabled())
    profile_detail::flops.fetch_add((uint64_t)(2.0 * m * n * k), std::memory_order_relaxed);
}
// Zeroes the counters and starts (on) or stops (off) counting.
void op_profile_enable(bool on);
// Every op called at least once since the last enable, in ops.def's order.
std::vector<OpStat> op_profile_read();

// Times one op call from its construction to its end (nothing when the profile is off).
class OpScope {
 public:
  explicit OpScope(OpId op) : op_(op), on_(op_profile_enabled()) {
    if (on_) {
      f0_ = profile_detail::flops.load(std::memory_order_relaxed);
      t0_ = std::chrono::steady_clock::now();
    }
  }
  ~OpScope() {
    if (!on_) return;
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::steady_clock::now() - t0_).count();
    profile_detail::add(op_, (uint64_t)ns, profile_detail::flops.load(std::memory_order_relaxed) - f0_);
  }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  OpId op_;
  bool on_;
  uint64_t f0_ = 0;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace fsr::cpu
