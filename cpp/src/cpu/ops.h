// The CPU ops: plain loops + OpenMP + BLAS, the executable specification of every kernel.
// Their list, names and argument lists are cpp/include/fastsasrec/ops.def; each takes the
// context first.  Op <stem>_... lives in cpp/src/cpu/<stem>.cpp, whose header states the
// shapes and what is overwritten (=) or accumulated (+=).  All matrices are row-major
// float32; row counts are packed real tokens (R), never padded positions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fastsasrec/backend.h"  // LossKind, Precision

namespace fsr::cpu {

// What every CPU op runs with, owned by the backend (so by its model).
struct Context {
  int threads = 1;                        // OpenMP threads of each parallel region (>= 1)
  Precision precision = Precision::FP32;  // of the linear layers' products
};

#define FSR_OP(ret, name, params, args) ret name(const Context& ctx, FSR_EXPAND params);
#include "fastsasrec/ops.def"
#undef FSR_OP

// ---- gemm.cpp, the one door to BLAS: C(M,N) = alpha * op(A) op(B) + beta * C, row-major,
// split over nt threads (the calling thread only inside a parallel region).
void gemm(int nt, bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
          int lda, const float* B, int ldb, float beta, float* C, int ldc);
// The same on the calling thread only.
void gemm_serial(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                 int lda, const float* B, int ldb, float beta, float* C, int ldc);
// How many of nt threads to split an output extent over for a product of `flops` (1 = serial).
int gemm_blocks(int nt, int extent, double flops);

// ---- linear.cpp: dst(n) = src rounded to the nearest bfloat16 (ties to even; NaN stays
// NaN), as floats, over nt threads
void round_bf16(int nt, float* dst, const float* src, size_t n);

// The threads of "0 = all cores": OpenMP's default for a new region (OMP_NUM_THREADS, else
// the cores this process may use).
int default_threads();

}  // namespace fsr::cpu
