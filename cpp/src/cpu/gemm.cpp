// gemm: the one door to BLAS.  OpenBLAS runs single-threaded; fastsasrec splits each
// product over its own OpenMP threads (rows of C, or columns when C has few rows), so
// one thread pool serves both BLAS and the elementwise ops and results depend only on
// the thread count.  gemm_bf16, the same product on bfloat16 operands, chooses here between
// its AVX-512 BF16 kernel (gemm_bf16.cpp) and its fallback (round, then sgemm).  BlockGemm,
// the products of ops that split their own rows, chooses too: fp32 in gemm_rows.h's
// kernel where rows_kernels() (the engine's own, no BLAS), else sgemm; bf16 in the kernel.
#include <cblas.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#include "cpu/gemm_rows.h"
#include "cpu/op_profile.h"
#include "cpu/ops.h"
#include "cpu/parallel.h"

namespace fsr::cpu {

namespace {
std::once_flag g_blas_once;
void blas_single_threaded() {
  std::call_once(g_blas_once, [] { scipy_openblas_set_num_threads(1); });
}

}  // namespace

void gemm_serial(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                      const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  blas_single_threaded();
  op_profile_count(M, N, K);
  if (K <= 0) {  // BLAS leaves beta*C alone only when K > 0 in some builds: be explicit
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) C[(size_t)i * ldc + j] = beta == 0.f ? 0.f : beta * C[(size_t)i * ldc + j];
    return;
  }
  scipy_cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

int default_threads() {
#ifdef _OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}

int gemm_blocks(int nt, int extent, double flops) {
  nt = usable_threads(nt);
  if (nt <= 1 || flops < 2.0e5) return 1;
  return std::max(1, std::min(nt, extent / 16));
}

// The output extent gemm splits over nt threads (rows when M >= N) and its block size: the
// one rule of gemm and gemm_bf16, so their results depend only on the thread count.
namespace {
struct Split {
  bool rows;
  int extent, block, nblocks;
};
Split split_of(int nt, int M, int N) {
  Split s;
  s.rows = M >= N;
  s.extent = s.rows ? M : N;
  s.block = std::max(16, ((s.extent + nt - 1) / nt + 15) / 16 * 16);
  s.nblocks = (s.extent + s.block - 1) / s.block;
  return s;
}
}  // namespace

void gemm(int nt, bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
  blas_single_threaded();
  nt = usable_threads(nt);
  const double flops = 2.0 * M * N * K;
  if (nt <= 1 || flops < 2.0e5) {
    gemm_serial(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // Split the larger output dimension into nt contiguous blocks (multiples of 16 rows/cols).
  const Split sp = split_of(nt, M, N);
  parallel_for(nt, sp.nblocks, [&](int t) {
    const int lo = t * sp.block, hi = std::min(sp.extent, lo + sp.block);
    if (sp.rows) {
      const float* Ab = ta ? A + lo : A + (size_t)lo * lda;
      gemm_serial(ta, tb, hi - lo, N, K, alpha, Ab, lda, B, ldb, beta, C + (size_t)lo * ldc, ldc);
    } else {
      const float* Bb = tb ? B + (size_t)lo * ldb : B + lo;
      gemm_serial(ta, tb, M, hi - lo, K, alpha, A, lda, Bb, ldb, beta, C + lo, ldc);
    }
  });
}

// ---- gemm_bf16
void round_bf16(int nt, float* dst, const float* src, size_t n) {
  const int nb = (int)std::min<size_t>(64, (n + 65535) / 65536);
  parallel_for(nt, std::max(nb, 1), [&](int t) {
    const size_t e0 = n * t / std::max(nb, 1), e1 = n * (t + 1) / std::max(nb, 1);
    for (size_t e = e0; e < e1; ++e) dst[e] = round_bf16(src[e]);
  });
}

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::strcmp(v, "0") != 0;
}

bool rows_kernels() {
  static const bool on = kGemmRows && !env_flag("FASTSASREC_NO_AVX512");
  return on;
}

bool avx512_kernels() { return kGemmRowsAvx512 && rows_kernels(); }

bool gemm_bf16_native() {
  static const bool native = [] {
    if (env_flag("FASTSASREC_NO_AVX512BF16")) return false;
    if (!gemm_bf16_kernel_compiled()) return false;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    // The kernel's instructions: AVX-512 F, BW, VL, DQ (vfpclassps) and BF16.
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bf16");
#else
    return false;
#endif
  }();
  return native;
}

namespace {
// The fallback: the operands rounded to bf16 (round_bf16, compact copies), then sgemm.
void gemm_bf16_fallback(int nt, bool ta, bool tb, int M, int N, int K, float alpha, const float* A,
                        int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  thread_local std::vector<float> sa, sb;
  auto rounded = [&](std::vector<float>& s, const float* X, int rows, int cols, int ld) {
    s.resize((size_t)rows * cols);
    if (ld == cols) {
      round_bf16(nt, s.data(), X, s.size());
    } else {
      for (int r = 0; r < rows; ++r) round_bf16(1, s.data() + (size_t)r * cols, X + (size_t)r * ld, cols);
    }
    return s.data();
  };
  const float* Ab = rounded(sa, A, ta ? K : M, ta ? M : K, lda);
  const float* Bb = rounded(sb, B, tb ? N : K, tb ? K : N, ldb);
  gemm(nt, ta, tb, M, N, K, alpha, Ab, ta ? M : K, Bb, tb ? K : N, beta, C, ldc);
}
}  // namespace

void gemm_bf16_path(bool native, int nt, bool ta, bool tb, int M, int N, int K, float alpha,
                    const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (native && !gemm_bf16_native())
    throw ValueError("gemm_bf16: the AVX-512 BF16 kernel is not available on this CPU or build");
  if (!native || K <= 0) {
    gemm_bf16_fallback(nt, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  op_profile_count(M, N, K);
  nt = usable_threads(nt);
  const bool serial = nt <= 1 || 2.0 * M * N * K < 2.0e5;
  const Split sp = split_of(nt, M, N);
  const int nblocks = serial ? 1 : sp.nblocks;
  // Each block's packing room, allocated here, before any parallel region.
  const size_t words = gemm_bf16_kernel_scratch();
  thread_local std::vector<uint32_t> scratch;
  if (scratch.size() < words * nblocks) scratch.resize(words * nblocks);
  uint32_t* const room = scratch.data();
  if (serial) {
    gemm_bf16_kernel(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, room);
    return;
  }
  parallel_for(nt, nblocks, [&](int t) {
    const int lo = t * sp.block, hi = std::min(sp.extent, lo + sp.block);
    uint32_t* r = room + words * t;
    if (sp.rows) {
      const float* Ab = ta ? A + lo : A + (size_t)lo * lda;
      gemm_bf16_kernel(ta, tb, hi - lo, N, K, alpha, Ab, lda, B, ldb, beta, C + (size_t)lo * ldc, ldc, r);
    } else {
      const float* Bb = tb ? B + (size_t)lo * ldb : B + lo;
      gemm_bf16_kernel(ta, tb, M, hi - lo, K, alpha, A, lda, Bb, ldb, beta, C + lo, ldc, r);
    }
  });
}

BlockGemm::BlockGemm(const char* op, const Context& ctx, int blocks)
    : bf16_(ctx.precision == Precision::BF16), usable_(!bf16_ || gemm_bf16_native()), rows_(rows_products(ctx)) {
  if (!bf16_ || !usable_) return;
  words_ = gemm_bf16_kernel_scratch();
  scratch_.reset(new (std::nothrow) uint32_t[words_ * (size_t)std::max(blocks, 1)]);
  if (!scratch_)
    throw MemoryError(detail::cat(op, ": could not allocate ", words_ * 4 * (size_t)blocks,
                                  " bytes of bf16 packing scratch"));
}

void BlockGemm::operator()(int block, bool ta, bool tb, int M, int N, int K, float alpha,
                           const float* A, int lda, const float* B, int ldb, float beta, float* C,
                           int ldc) const {
  if (!bf16_) {
    if (rows_ && !tb) {  // gemm_rows reads B by rows; op(A) through strides
      op_profile_count(M, N, K);
      gemm_rows(M, N, K, alpha, A, ta ? 1 : lda, ta ? lda : 1, B, ldb, beta, C, ldc);
    } else {
      gemm_serial(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
    return;
  }
  if (M <= 0 || N <= 0) return;
  op_profile_count(M, N, K);
  if (K <= 0) {  // the kernel needs K > 0: C = beta C
    gemm_serial(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  gemm_bf16_kernel(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                   scratch_.get() + words_ * (size_t)block);
}

void gemm_bf16(int nt, bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
               const float* B, int ldb, float beta, float* C, int ldc) {
  gemm_bf16_path(gemm_bf16_native(), nt, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace fsr::cpu
