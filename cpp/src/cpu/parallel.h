// Thin OpenMP helpers; without OpenMP everything runs on one thread.  Every parallel region
// takes its thread count from the caller (the model's, through cpu::Context): no op reads
// or sets OpenMP's process-wide default, so two models with different counts can run at
// once on different threads.
#pragma once

#include <cstddef>
#include <memory>
#include <new>

#include "fastsasrec/common.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fsr::cpu {

inline bool in_parallel() {
#ifdef _OPENMP
  return omp_in_parallel();
#else
  return false;
#endif
}

// The threads a region of the caller may use: nt, or 1 inside a parallel region.
inline int usable_threads(int nt) { return in_parallel() || nt < 1 ? 1 : nt; }

// The calling region's thread number (0 outside a region).
inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Runs f(i) for i in [0, n), statically split over nt threads (deterministic ownership).
template <typename F>
inline void parallel_for(int nt, int n, F&& f) {
#ifdef _OPENMP
  nt = usable_threads(nt);
  if (n > 1 && nt > 1) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int i = 0; i < n; ++i) f(i);
    return;
  }
#endif
  for (int i = 0; i < n; ++i) f(i);
}

// Like parallel_for but hands out items dynamically (for uneven work; each i still
// writes only its own outputs, so results do not depend on the schedule).
template <typename F>
inline void parallel_for_dynamic(int nt, int n, F&& f) {
#ifdef _OPENMP
  nt = usable_threads(nt);
  if (n > 1 && nt > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int i = 0; i < n; ++i) f(i);
    return;
  }
#endif
  for (int i = 0; i < n; ++i) f(i);
}

// Splits items [0, n) into contiguous chunks, one per thread: f(lo, hi, thread).
// cost is the work per item (elements touched); small jobs stay on one thread.
template <typename F>
inline void parallel_chunks(int nt, long n, long cost, F&& f) {
  nt = usable_threads(nt);
  if (n * cost < 16384 || n < 2) nt = 1;
  if (nt <= 1) {
    f(0L, n, 0);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    const int k = omp_get_num_threads();
    const long lo = n * t / k, hi = n * (t + 1) / k;
    f(lo, hi, t);
  }
#endif
}

// One region of n threads running body(thread, team size), for an op that splits its own
// work and synchronises with `#pragma omp barrier` inside (the team may be smaller than
// asked); n <= 1, or no OpenMP: body(0, 1) on the calling thread.
template <typename F>
inline void parallel_team(int n, F&& body) {
#ifdef _OPENMP
  if (n > 1) {
#pragma omp parallel num_threads(n)
    body(omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#endif
  body(0, 1);
}

// out's rows [q0, q1) (each C floats) = the sum, in block order, of k partials laid out
// one after another, each rows_each rows of C: the last step of an op whose threads each
// summed their share of every row (the softmax losses' dh).
inline void sum_partials(float* out, const float* partial, int k, int rows_each, int q0, int q1,
                         int C) {
  for (int i = q0; i < q1; ++i) {
    float* d = out + (size_t)i * C;
    const float* p0 = partial + (size_t)i * C;
    for (int c = 0; c < C; ++c) d[c] = p0[c];
    for (int u = 1; u < k; ++u) {
      const float* pu = partial + ((size_t)u * rows_each + i) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) d[c] += pu[c];
    }
  }
}

// Scratch for the threads of one region, each its own slot of `floats`, allocated by the
// calling thread before the region starts: no exception (an allocation that fails is a
// MemoryError here) may leave a parallel region, where it would end the process.
class ThreadScratch {
 public:
  ThreadScratch(const char* op, int threads, size_t floats)
      : slots_(threads < 1 ? 1 : threads), floats_(floats) {
    const size_t total = (size_t)slots_ * floats_;
    if (floats_ != 0 && total / floats_ != (size_t)slots_)
      throw MemoryError(detail::cat(op, ": scratch of ", slots_, " x ", floats_, " floats overflows"));
    buf_.reset(new (std::nothrow) float[total ? total : 1]);
    if (!buf_)
      throw MemoryError(detail::cat(op, ": could not allocate ", total * sizeof(float),
                                    " bytes of scratch (", slots_, " threads x ", floats_,
                                    " floats)"));
  }
  // This thread's slot (inside a region the scratch was made for, or the only one outside).
  float* slot() const {
    const int t = thread_id();
    return buf_.get() + (size_t)(t < slots_ ? t : 0) * floats_;
  }
  // Slot t (0 <= t < the slots made), for work split into blocks that each own a slot.
  float* at(int t) const { return buf_.get() + (size_t)t * floats_; }

 private:
  int slots_;
  size_t floats_;
  std::unique_ptr<float[]> buf_;
};

}  // namespace fsr::cpu
