// The CPU's bf16 product kernel (gemm_bf16_kernel, cpp/src/cpu/gemm_bf16.cpp) on one thread,
// at the shapes training gives it (ML-100K, factors 64, max_seq 50, batch 128, 2 threads:
// each thread's block), beside the core's own ceilings: vdpbf16ps and fp32 FMA in a loop
// of independent sums.  GFLOP/s counts 2 M N K per call; the time is the first quartile of
// the calls (the least disturbed); "cs" is a checksum of C, to compare builds bit for bit.
//
// Build against the engine's static library (a Release build of the project, here
// build-cpu), on a CPU with AVX-512 BF16:
//   g++ -O3 -march=native -std=c++17 -Icpp/src -Icpp/include benchmarks/cpp/bench_gemm_bf16.cpp \
//       build-cpu/libfastsasrec_core.a -L$OPENBLAS_LIB -lscipy_openblas -Wl,-rpath,$OPENBLAS_LIB \
//       -fopenmp -o /tmp/bench_gemm_bf16 && /tmp/bench_gemm_bf16 300
// (OPENBLAS_LIB: the BLAS the build linked, e.g. scipy_openblas32's lib folder.)
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cpu/ops.h"

using fsr::cpu::gemm_bf16_kernel;
using fsr::cpu::gemm_bf16_kernel_scratch;

namespace {
struct Shape {
  const char* name;
  bool ta, tb;
  int M, N, K;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// GFLOP/s of 12 independent chains of one instruction (the asm keeps them apart).
template <class Step>
double ceiling(Step step, double flops_per_op) {
  __m512 a0 = _mm512_set1_ps(0.f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0,
         a9 = a0, a10 = a0, a11 = a0;
  const long n = 20000000;
  const auto t0 = std::chrono::steady_clock::now();
  for (long k = 0; k < n; ++k) {
    a0 = step(a0), a1 = step(a1), a2 = step(a2), a3 = step(a3), a4 = step(a4), a5 = step(a5);
    a6 = step(a6), a7 = step(a7), a8 = step(a8), a9 = step(a9), a10 = step(a10), a11 = step(a11);
    __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6), "+v"(a7),
                     "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));
  }
  const double t = seconds_since(t0);
  volatile float sink = _mm512_reduce_add_ps(_mm512_add_ps(a0, a11));
  (void)sink;
  return n * 12 * flops_per_op / t / 1e9;
}
}  // namespace

__attribute__((target("avx512bf16"))) static double dpbf16_ceiling() {
  const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), y = (__m512bh)_mm512_set1_epi32(0x33803380);
  return ceiling([&](__m512 a) { return _mm512_dpbf16_ps(a, x, y); }, 64.0);
}

int main(int argc, char** argv) {
  if (!fsr::cpu::gemm_bf16_native()) {
    std::printf("no AVX-512 BF16 kernel on this CPU or build\n");
    return 1;
  }
  const int calls = argc > 1 ? std::atoi(argv[1]) : 300;
  const Shape shapes[] = {
      {"linear fwd 192x64x64", false, false, 192, 64, 64},
      {"linear fwd 192x192x64", false, false, 192, 192, 64},
      {"linear din 2450x64x64 NT", false, true, 2450, 64, 64},
      {"linear din 2450x64x192 NT", false, true, 2450, 64, 192},
      {"linear dW 64x64x2450 TN", true, false, 64, 64, 2450},
      {"linear dW 64x192x2450 TN", true, false, 64, 192, 2450},
      {"softmax logits 155x841x64 NT", false, true, 155, 841, 64},
      {"softmax dh 155x64x841", false, false, 155, 64, 841},
      {"softmax dE 841x64x155 TN", true, false, 841, 64, 155},
      {"sampled logits 256x128x64 NT", false, true, 256, 128, 64},
  };
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<uint32_t> scratch(gemm_bf16_kernel_scratch() + 16);
  for (const Shape& s : shapes) {
    const int a_cols = s.ta ? s.M : s.K, b_cols = s.tb ? s.K : s.N;
    std::vector<float> A((size_t)s.M * s.K), B((size_t)s.K * s.N), C((size_t)s.M * s.N);
    for (float& x : A) x = normal(rng);
    for (float& x : B) x = normal(rng);
    std::vector<double> ts;
    for (int r = 0; r < calls; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      gemm_bf16_kernel(s.ta, s.tb, s.M, s.N, s.K, 1.f, A.data(), a_cols, B.data(), b_cols, 0.f, C.data(), s.N,
                       scratch.data());
      ts.push_back(seconds_since(t0));
    }
    std::sort(ts.begin(), ts.end());
    const double t = ts[ts.size() / 4];
    double cs = 0;
    for (size_t e = 0; e < C.size(); ++e) cs += C[e] * (double)(e % 7 + 1);
    std::printf("%-30s %9.2f us %7.1f GFLOP/s   cs %.9g\n", s.name, t * 1e6, 2.0 * s.M * s.N * s.K / t / 1e9, cs);
  }
  const __m512 one = _mm512_set1_ps(1.f), tiny = _mm512_set1_ps(1e-7f);
  std::printf("ceilings, one core: vdpbf16ps %.1f GFLOP/s, fp32 FMA %.1f GFLOP/s\n", dpbf16_ceiling(),
              ceiling([&](__m512 a) { return _mm512_fmadd_ps(tiny, one, a); }, 32.0));
}
