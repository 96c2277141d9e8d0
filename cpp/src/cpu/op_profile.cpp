// The op profile's counters (see op_profile.h).
#include "cpu/op_profile.h"

#include <mutex>

namespace fsr::cpu {

namespace profile_detail {
std::atomic<bool> enabled{false};
std::atomic<uint64_t> flops{0};
namespace {
std::mutex mu;
uint64_t calls[kOpCount], ns[kOpCount], op_flops[kOpCount];
}  // namespace
void add(OpId op, uint64_t t, uint64_t f) {
  std::lock_guard<std::mutex> lock(mu);
  ++calls[op];
  ns[op] += t;
  op_flops[op] += f;
}
}  // namespace profile_detail

void op_profile_enable(bool on) {
  using namespace profile_detail;
  std::lock_guard<std::mutex> lock(mu);
  if (on) {
    for (int i = 0; i < kOpCount; ++i) calls[i] = ns[i] = op_flops[i] = 0;
    flops.store(0, std::memory_order_relaxed);
  }
  enabled.store(on, std::memory_order_relaxed);
}

std::vector<OpStat> op_profile_read() {
  using namespace profile_detail;
  static const char* const names[] = {
#define FSR_OP(ret, name, params, args) #name,
#include "fastsasrec/ops.def"
#undef FSR_OP
  };
  std::lock_guard<std::mutex> lock(mu);
  std::vector<OpStat> out;
  for (int i = 0; i < kOpCount; ++i)
    if (calls[i]) out.push_back({names[i], calls[i], ns[i] * 1e-9, (double)op_flops[i]});
  return out;
}

}  // namespace fsr::cpu
