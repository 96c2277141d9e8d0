// A CPU stand-in for the CUDA runtime and device code, for checking the logic of the
// kernels in cuda/ on a machine without a GPU (see tools/cuda_emulator/build.sh).
//
// Every CUDA thread of a block is a fiber (ucontext) on one host thread; blocks run one
// after another.  __syncthreads() and the warp intrinsics are barriers: a fiber runs until
// it reaches one, and the barrier opens when every live thread of the block (or warp) has
// arrived, so a missing barrier shows up as reading another thread's unwritten (poisoned)
// shared memory in one of the two schedules (threads in order, or reversed:
// FSR_EMU_REVERSE=1).  What this cannot show: timing, real concurrency between blocks,
// memory-model races between blocks, or resource limits beyond shared memory per block.
// Device memory is host memory; streams and events are no-ops (everything is synchronous).
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(16) float4 { float x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
struct alignas(8) float2 { float x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }

// ------------------------------------------------------------------ runtime
using cudaStream_t = struct emu_stream*;
using cudaEvent_t = struct emu_event*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2 };
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                      cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16,
                      cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
constexpr unsigned cudaStreamNonBlocking = 1, cudaEventDisableTiming = 2, cudaHostAllocDefault = 0;

namespace emu {
// The emulated card: an H100's multiprocessors and shared memory a block, unless
// FSR_EMU_SMEM_OPTIN says otherwise (e.g. 101376 for a card with 99 KB a block).
inline int smem_optin() {
  static const int v = [] {
    const char* e = std::getenv("FSR_EMU_SMEM_OPTIN");
    return e ? std::atoi(e) : 232448;
  }();
  return v;
}
}  // namespace emu

inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorName(cudaError_t e) { return e ? "cudaErrorEmulated" : "cudaSuccess"; }
inline const char* cudaGetErrorString(cudaError_t e) { return e ? "emulated error" : "no error"; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  *v = a == cudaDevAttrMaxSharedMemoryPerBlockOptin ? emu::smem_optin() : 132;
  return cudaSuccess;
}
template <class F>
inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int bytes) {
  return bytes <= emu::smem_optin() ? cudaSuccess : cudaErrorInvalidValue;
}
inline cudaError_t cudaMalloc(void** p, size_t n) {
  *p = std::aligned_alloc(256, (n + 255) / 256 * 256);
  if (*p) std::memset(*p, 0xA5, n);  // poisoned, as uninitialised device memory may be
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFree(void* p) { std::free(p); return cudaSuccess; }
inline cudaError_t cudaHostAlloc(void** p, size_t n, unsigned) { return cudaMalloc(p, n); }
inline cudaError_t cudaFreeHost(void* p) { return cudaFree(p); }
// Every address is device memory of device 0 to the emulator (device memory is the host's).
enum cudaMemoryType { cudaMemoryTypeUnregistered = 0, cudaMemoryTypeHost = 1,
                      cudaMemoryTypeDevice = 2, cudaMemoryTypeManaged = 3 };
struct cudaPointerAttributes {
  cudaMemoryType type;
  int device;
  void* devicePointer;
  void* hostPointer;
};
inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p) {
  *a = {cudaMemoryTypeDevice, 0, const_cast<void*>(p), nullptr};
  return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(size_t* f, size_t* t) { *f = *t = size_t(80) << 30; return cudaSuccess; }
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t = nullptr) {
  if (n) std::memmove(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind k) { return cudaMemcpyAsync(d, s, n, k); }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) {
  if (n) std::memset(p, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = reinterpret_cast<cudaStream_t>(new char);
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t s) { delete reinterpret_cast<char*>(s); return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  *e = reinterpret_cast<cudaEvent_t>(new char);
  return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t e) { delete reinterpret_cast<char*>(e); return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t = nullptr) { return cudaSuccess; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }

// ------------------------------------------------------------------ threads as fibers
// A fiber switch saves the callee-saved registers on the old stack and loads the new one.
// On x86-64 that is a few instructions (swapcontext, the portable fallback, makes a
// system call per switch, and the kernels switch at every barrier and shuffle).
#if defined(__x86_64__)
extern "C" void fsr_emu_switch(void** save_sp, void* load_sp);
__asm__(R"(
  .text
  .weak fsr_emu_switch
  .hidden fsr_emu_switch
  .type fsr_emu_switch, @function
fsr_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fsr_emu_switch, .-fsr_emu_switch
)");
#define FSR_EMU_FAST_SWITCH 1
#endif

namespace emu {
struct Barrier {
  int expected = 0, arrived = 0;
  unsigned gen = 0;
};
struct Fiber {
  ucontext_t ctx;
  void* sp = nullptr;  // saved stack pointer (fast switch)
  std::vector<char> stack;
  bool done = false;
};
struct State {
  std::mutex mu;  // one launch at a time
  dim3 grid, block, bidx;
  std::vector<Fiber> fibers;
  std::vector<Barrier> warps;
  Barrier blockbar;
  std::vector<unsigned long long> wbuf;  // a value per thread, for warp exchanges
  std::vector<char> smem;                // dynamic shared memory of the running block
  ucontext_t sched;
  void* sched_sp = nullptr;
  int cur = -1;
  bool reverse = std::getenv("FSR_EMU_REVERSE") && std::getenv("FSR_EMU_REVERSE")[0] == '1';
  bool direct = false;               // threads run as plain calls (no barrier in this kernel)
  unsigned long long arrivals = 0;   // barrier arrivals so far
  std::function<void()> body;
};
inline State& S() {
  static State s;
  return s;
}
inline thread_local dim3 tIdx;
inline void to_scheduler() {
  auto& s = S();
#ifdef FSR_EMU_FAST_SWITCH
  fsr_emu_switch(&s.fibers[s.cur].sp, s.sched_sp);
#else
  swapcontext(&s.fibers[s.cur].ctx, &s.sched);
#endif
}
inline void yield() { to_scheduler(); }
inline void arrive(Barrier& b) {
  if (S().direct) {
    std::fprintf(stderr, "emulated kernel: a thread met a barrier that thread 0 did not\n");
    std::abort();
  }
  ++S().arrivals;
  const unsigned g = b.gen;
  if (++b.arrived == b.expected) {
    b.arrived = 0;
    ++b.gen;
    return;
  }
  while (b.gen == g) yield();
}
// An exiting thread no longer counts at its block's and warp's barriers.
inline void drop(Barrier& b) {
  --b.expected;
  if (b.arrived > 0 && b.arrived == b.expected) {
    b.arrived = 0;
    ++b.gen;
  }
}
inline void fiber_main() {
  auto& s = S();
  s.body();
  auto& f = s.fibers[s.cur];
  f.done = true;
  drop(s.blockbar);
  drop(s.warps[s.cur / 32]);
  to_scheduler();  // never resumed
  std::abort();
}
inline void run(dim3 grid, dim3 block, size_t smem, std::function<void()> body) {
  auto& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  if ((long long)smem > smem_optin()) {
    std::fprintf(stderr, "emulated launch: %zu bytes of dynamic shared memory > %d\n", smem,
                 smem_optin());
    std::abort();
  }
  const int n = (int)(block.x * block.y * block.z);
  if (n <= 0 || n > 1024) {
    std::fprintf(stderr, "emulated launch: %d threads a block\n", n);
    std::abort();
  }
  s.grid = grid;
  s.block = block;
  s.body = std::move(body);
  if ((int)s.fibers.size() < n) s.fibers.resize(n);
  s.wbuf.assign(n, 0);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        s.bidx = dim3(bx, by, bz);
        s.smem.assign(smem + 16, (char)0xA5);  // poisoned: unwritten reads show
        s.blockbar = Barrier{n, 0, 0};
        s.warps.assign((n + 31) / 32, Barrier{});
        for (int w = 0; w < (n + 31) / 32; ++w) s.warps[w].expected = std::min(32, n - 32 * w);
        auto start = [&](int t) {
          auto& f = s.fibers[t];
          f.done = false;
          if (f.stack.empty()) f.stack.resize(128 * 1024);
#ifdef FSR_EMU_FAST_SWITCH
          // The new stack as fsr_emu_switch leaves it: FP control words, six registers,
          // then the "return address" fiber_main, at a 16-byte boundary.
          uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack.data()) + f.stack.size()) & ~uintptr_t(15);
          uint64_t* slot = reinterpret_cast<uint64_t*>(top - 16);
          *slot = reinterpret_cast<uint64_t>(&fiber_main);
          uint64_t* sp = slot - 7;
          for (int i = 1; i <= 6; ++i) sp[i] = 0;
          const uint32_t mxcsr = 0x1F80u, fpcw = 0x037Fu;
          std::memcpy(sp, &mxcsr, 4);
          std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpcw, 2);
          f.sp = sp;
#else
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.data();
          f.ctx.uc_stack.ss_size = f.stack.size();
          f.ctx.uc_link = nullptr;
          makecontext(&f.ctx, (void (*)())fiber_main, 0);
#endif
        };
        auto resume = [&](int t) {
          s.cur = t;
          tIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
#ifdef FSR_EMU_FAST_SWITCH
          fsr_emu_switch(&s.sched_sp, s.fibers[t].sp);
#else
          swapcontext(&s.sched, &s.fibers[t].ctx);
#endif
        };
        // Thread 0 runs alone first; if it finishes without meeting a
        // barrier, no thread of the block may meet one (CUDA requires barriers to be reached
        // by the whole block, or warp), so the others run as plain calls: fast for the
        // elementwise kernels' millions of threads.
        const unsigned long long arrivals = s.arrivals;
        start(0);
        resume(0);
        if (s.fibers[0].done && s.arrivals == arrivals) {
          s.direct = true;
          for (int k = 1; k < n; ++k) {
            const int t = s.reverse ? n - k : k;
            s.cur = t;
            tIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            s.body();
          }
          s.direct = false;
          continue;
        }
        for (int t = 1; t < n; ++t) start(t);
        for (int live = n; live > 0;) {
          live = 0;
          for (int k = 0; k < n; ++k) {
            const int t = s.reverse ? n - 1 - k : k;
            if (s.fibers[t].done) continue;
            resume(t);
            if (!s.fibers[t].done) ++live;
          }
        }
      }
  s.cur = -1;
}
// kernel<<<grid, block, smem, stream>>>(args) becomes emu::Launch(grid, block, smem, stream) << [=] { kernel(args); }
struct Launch {
  dim3 g, b;
  size_t sm;
  Launch(dim3 g_, dim3 b_, size_t sm_ = 0, cudaStream_t = nullptr) : g(g_), b(b_), sm(sm_) {}
  void operator<<(std::function<void()> f) { run(g, b, sm, std::move(f)); }
};
template <class T>
inline T* dyn_smem() {
  return reinterpret_cast<T*>(S().smem.data());
}
template <class T, class Src>
inline T exchange(T v, Src src_lane) {
  auto& s = S();
  const int t = s.cur, lane = t & 31, w = t >> 5;
  unsigned long long x = 0;
  std::memcpy(&x, &v, sizeof(T));
  s.wbuf[t] = x;
  arrive(s.warps[w]);
  const int src = (w << 5) + (src_lane(lane) & 31);
  T r;
  const unsigned long long y = s.wbuf[src];
  std::memcpy(&r, &y, sizeof(T));
  arrive(s.warps[w]);
  return r;
}
}  // namespace emu

#define threadIdx (::emu::tIdx)
#define blockIdx (::emu::S().bidx)
#define blockDim (::emu::S().block)
#define gridDim (::emu::S().grid)

// ------------------------------------------------------------------ device intrinsics
inline void __syncthreads() { ::emu::arrive(::emu::S().blockbar); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::emu::arrive(::emu::S().warps[::emu::S().cur >> 5]); }
template <class T> inline T __shfl_sync(unsigned, T v, int src, int = 32) {
  return emu::exchange(v, [src](int) { return src; });
}
template <class T> inline T __shfl_xor_sync(unsigned, T v, int m, int = 32) {
  return emu::exchange(v, [m](int l) { return l ^ m; });
}
template <class T> inline T __shfl_down_sync(unsigned, T v, int d, int = 32) {
  return emu::exchange(v, [d](int l) { return l + d < 32 ? l + d : l; });
}
template <class T> inline T __shfl_up_sync(unsigned, T v, int d, int = 32) {
  return emu::exchange(v, [d](int l) { return l - d >= 0 ? l - d : l; });
}
inline unsigned __ballot_sync(unsigned, int pred) {
  auto& s = emu::S();
  const int t = s.cur, w0 = t & ~31;
  s.wbuf[t] = pred ? 1 : 0;
  emu::arrive(s.warps[t >> 5]);
  unsigned m = 0;
  for (int l = 0; l < 32 && w0 + l < (int)s.wbuf.size(); ++l) m |= (s.wbuf[w0 + l] ? 1u : 0u) << l;
  emu::arrive(s.warps[t >> 5]);
  return m;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline float atomicAdd(float* p, float v) { const float o = *p; *p = o + v; return o; }
inline int atomicAdd(int* p, int v) { const int o = *p; *p = o + v; return o; }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  const unsigned long long o = *p;
  *p = std::min(o, v);
  return o;
}
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
template <class T> inline T __ldg(const T* p) { return *p; }
using std::isinf;
using std::isnan;
using std::max;
using std::min;
