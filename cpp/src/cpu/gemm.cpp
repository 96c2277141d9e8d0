// gemm: the one door to BLAS.  OpenBLAS runs single-threaded; fastsasrec splits each
// product over its own OpenMP threads (rows of C, or columns when C has few rows), so
// one thread pool serves both BLAS and the elementwise ops and results depend only on
// the thread count.
#include <cblas.h>

#include <algorithm>
#include <mutex>

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
  const bool split_rows = M >= N;
  const int extent = split_rows ? M : N;
  int block = (extent + nt - 1) / nt;
  block = std::max(16, (block + 15) / 16 * 16);
  const int nblocks = (extent + block - 1) / block;
  parallel_for(nt, nblocks, [&](int t) {
    const int lo = t * block, hi = std::min(extent, lo + block);
    if (split_rows) {
      const float* Ab = ta ? A + lo : A + (size_t)lo * lda;
      gemm_serial(ta, tb, hi - lo, N, K, alpha, Ab, lda, B, ldb, beta, C + (size_t)lo * ldc, ldc);
    } else {
      const float* Bb = tb ? B + (size_t)lo * ldb : B + lo;
      gemm_serial(ta, tb, M, hi - lo, K, alpha, A, lda, Bb, ldb, beta, C + lo, ldc);
    }
  });
}

}  // namespace fsr::cpu
