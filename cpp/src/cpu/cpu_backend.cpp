// The CPU backend: host memory, the model's thread count and precision (its cpu::Context),
// and the ops of cpp/src/cpu/<stem>.cpp, forwarded from the list in ops.def.
#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "cpu/op_profile.h"
#include "cpu/ops.h"
#include "fastsasrec/backend.h"
#include "fastsasrec/common.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fsr {

namespace {

// The process's cores, shared by every CPU backend.  Each Python (or other) thread that
// calls the engine gets its own OpenMP team, so a server whose pool of threads calls models
// at once would otherwise run threads x num_threads busy threads.  Instead an op that runs
// on n threads first takes n cores from this budget (all of them when n exceeds the
// machine) and returns them when it ends; an op that does not fit waits, first come first
// served.  So the engine never has more busy threads than the machine has cores, and every
// op still runs with exactly its model's thread count (results depend on that count only).
class CoreBudget {
 public:
  static CoreBudget& process() {
    static CoreBudget budget(cores());
    return budget;
  }
  int total() const { return total_; }
  int acquire(int n) {
    n = std::clamp(n, 1, total_);
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t ticket = next_++;
    cv_.wait(lock, [&] { return ticket == head_ && free_ >= n; });
    ++head_;
    free_ -= n;
    if (next_ != head_) cv_.notify_all();  // the next in line may fit as well
    return n;
  }
  void release(int n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_ += n;
    }
    cv_.notify_all();
  }

 private:
  explicit CoreBudget(int n) : total_(std::max(n, 1)), free_(total_) {}
  static int cores() {
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    return 1;
#endif
  }
  const int total_;
  int free_;
  uint64_t next_ = 0, head_ = 0;  // tickets handed out, and the one served next
  std::mutex mu_;
  std::condition_variable cv_;
};

// Holds an op's cores for its duration.
class Cores {
 public:
  explicit Cores(int n) : n_(CoreBudget::process().acquire(n)) {}
  ~Cores() { CoreBudget::process().release(n_); }
  Cores(const Cores&) = delete;
  Cores& operator=(const Cores&) = delete;

 private:
  int n_;
};

class CpuBackend final : public Backend {
 public:
  CpuBackend() { ctx_.threads = cpu::default_threads(); }
  std::string name() const override { return "cpu"; }

  void* alloc(size_t bytes) override {
    if (bytes == 0) bytes = 64;
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) throw MemoryError(detail::cat("cpu: could not allocate ", bytes, " bytes"));
    return p;
  }
  void release(void* p) override { std::free(p); }
  void upload(void* dst, const void* src, size_t n) override { if (n) std::memcpy(dst, src, n); }
  void download(void* dst, const void* src, size_t n) override { if (n) std::memcpy(dst, src, n); }
  void zero(void* p, size_t n) override { if (n) std::memset(p, 0, n); }
  void copy(void* dst, const void* src, size_t n) override { if (n) std::memmove(dst, src, n); }
  void synchronize() override {}
  void set_precision(Precision p) override { ctx_.precision = p; }
  void set_threads(int n) override {
    FSR_REQUIRE(n >= 0, "num_threads must be >= 0, got ", n);
    ctx_.threads = n == 0 ? cpu::default_threads() : n;
  }
  int threads() const override { return ctx_.threads; }

  // Every op of ops.def: take the cores, then the CPU function with the context first
  // (timed when the op profile is on: op_profile.h).
#define FSR_OP(ret, name, params, args)        \
  ret name params override {                   \
    Cores cores(ctx_.threads);                 \
    cpu::OpScope scope(cpu::kOp_##name);       \
    return cpu::name(ctx_, FSR_EXPAND args);   \
  }
#include "fastsasrec/ops.def"
#undef FSR_OP

 private:
  cpu::Context ctx_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace fsr
