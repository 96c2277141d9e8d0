// The CPU ops: plain loops + OpenMP + BLAS, the executable specification of every kernel.
// Their list, names and argument lists are cpp/include/fastsasrec/ops.def; each takes the
// context first.  Op <stem>_... lives in cpp/src/cpu/<stem>.cpp, whose header states the
// shapes and what is overwritten (=) or accumulated (+=).  All matrices are row-major
// float32; row counts are packed real tokens (R), never padded positions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "fastsasrec/backend.h"  // LossKind, Precision

namespace fsr::cpu {

// What every CPU op runs with, owned by the backend (so by its model).
struct Context {
  int threads = 1;                        // OpenMP threads of each parallel region (>= 1)
  Precision precision = Precision::FP32;  // of the linear layers' and the softmax losses' products
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

// Whether the environment variable `name` turns something off: set, not empty, not "0".
bool env_flag(const char* name);

// Whether the fp32 products of the linear layers, attention and the softmax losses run in
// gemm_rows's kernels (gemm_rows.h: a build for a CPU with AVX-512, or with AVX2 and FMA,
// and FASTSASREC_NO_AVX512 unset; read once) or through sgemm (gemm.cpp).  The two kernels
// give the same bits.
bool rows_kernels();
// rows_kernels() in a build for a CPU with AVX-512 (build_info's "avx512").
bool avx512_kernels();
// Whether this context's products run in gemm_rows (fp32 and rows_kernels()), which reads
// its right operand by rows: BlockGemm's one rule, by which the softmax losses also keep
// their items' embeddings transposed for the logits' product.
inline bool rows_products(const Context& ctx) { return ctx.precision == Precision::FP32 && rows_kernels(); }

// ---- gemm_bf16: the same product as gemm on bfloat16 operands, with fp32 sums: A and B
// rounded to bf16 (as round_bf16 does), every product of two bf16 exact in fp32.  Runs the
// AVX-512 BF16 kernel of gemm_bf16.cpp where the CPU has it (gemm_bf16_native()), else the
// fallback: round_bf16 copies of the operands, then gemm.  The two differ only in the order
// of the fp32 sums (and the kernel's subnormals, which it takes as zero).  Split over nt
// threads as gemm splits, so results depend only on the thread count.
void gemm_bf16(int nt, bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
               int lda, const float* B, int ldb, float beta, float* C, int ldc);
// Whether gemm_bf16 runs the kernel here: compiled in, the CPU has AVX-512 BF16, and the
// environment does not set FASTSASREC_NO_AVX512BF16 (read once).
bool gemm_bf16_native();
// gemm_bf16 on a chosen path (native: the kernel, ValueError where it is unavailable; else
// the fallback), for the tests of both.
void gemm_bf16_path(bool native, int nt, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                    const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc);
// gemm_bf16.cpp (compiled with AVX-512 BF16; call only where gemm_bf16_native()): the kernel
// on the calling thread, with scratch of gemm_bf16_kernel_scratch() words; K > 0.
bool gemm_bf16_kernel_compiled();
size_t gemm_bf16_kernel_scratch();
void gemm_bf16_kernel(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                      int lda, const float* B, int ldb, float beta, float* C, int ldc, uint32_t* scratch);

// ---- gemm.cpp: products on the calling thread for an op that splits its own work inside
// one parallel region, each thread a block: fp32 by gemm_rows where avx512_kernels() and
// op(B) is B as stored (else gemm_serial), bf16 by the AVX-512 BF16
// kernel with packing scratch per block, allocated here, before the region (a failed
// allocation is a MemoryError, never an exception inside it).  Where bf16 has no kernel
// (usable() is false) such an op keeps a region per product, through gemm_bf16.
class BlockGemm {
 public:
  BlockGemm(const char* op, const Context& ctx, int blocks);
  bool usable() const { return usable_; }
  void operator()(int block, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                  const float* A, int lda, const float* B, int ldb, float beta, float* C,
                  int ldc) const;

 private:
  bool bf16_, usable_, rows_;
  size_t words_ = 0;
  std::unique_ptr<uint32_t[]> scratch_;
};

// ---- gemm.cpp: dst(n) = src rounded to the nearest bfloat16 (ties to even; NaN stays
// NaN), as floats, over nt threads
void round_bf16(int nt, float* dst, const float* src, size_t n);
// One float rounded so (round_bf16's rule).
inline float round_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    u |= 0x00400000u;  // NaN: keep it a (quiet) NaN
  else
    u += 0x7fffu + ((u >> 16) & 1u);  // to nearest, ties to even (may round to inf)
  u &= 0xffff0000u;
  std::memcpy(&x, &u, 4);
  return x;
}

// The threads of "0 = all cores": OpenMP's default for a new region (OMP_NUM_THREADS, else
// the cores this process may use).
int default_threads();

}  // namespace fsr::cpu
