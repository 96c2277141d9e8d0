// Thin OpenMP helpers; without OpenMP everything runs on one thread.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fsr::cpu {

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline void set_max_threads(int n) {
#ifdef _OPENMP
  if (n > 0) omp_set_num_threads(n);
#else
  (void)n;
#endif
}

inline bool in_parallel() {
#ifdef _OPENMP
  return omp_in_parallel();
#else
  return false;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Runs f(i) for i in [0, n), statically split over the threads (deterministic ownership).
template <typename F>
inline void parallel_for(int n, F&& f) {
#ifdef _OPENMP
  if (n > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; ++i) f(i);
    return;
  }
#endif
  for (int i = 0; i < n; ++i) f(i);
}

// Like parallel_for but hands out items dynamically (for uneven work; each i still
// writes only its own outputs, so results do not depend on the schedule).
template <typename F>
inline void parallel_for_dynamic(int n, F&& f) {
#ifdef _OPENMP
  if (n > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n; ++i) f(i);
    return;
  }
#endif
  for (int i = 0; i < n; ++i) f(i);
}

// Splits items [0, n) into contiguous chunks, one per thread: f(lo, hi, thread).
// cost is the work per item (elements touched); small jobs stay on one thread.
template <typename F>
inline void parallel_chunks(long n, long cost, F&& f) {
  int nt = in_parallel() ? 1 : max_threads();
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

}  // namespace fsr::cpu
