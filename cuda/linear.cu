// Linear layers on the GPU (twin of cpp/src/cpu/linear.cpp).
//   forward : out(R,O) = in(R,I) W(I,O) + b, then ReLU when relu, then dropout_p (counter
//             r*O+o of key, as dropout_forward over R*O) as the product is stored
//   backward: din (= or +=, skipped when null) = dout W^T;  dW += in^T dout;  db += colsum(dout)
// fp32: out and din come from gemm_tile_kernel (64 x 64 output tiles in registers, the
// bias, ReLU or accumulation applied as they are stored: one launch, where cuBLAS plus a
// bias pass took two); dW, a sum over all R rows into a small matrix, and db come from
// weight_grad_kernel (row ranges summed in registers and added atomically: one launch,
// where cuBLAS's split-K took a GEMM and a reduction, and db a kernel of its own).
// bf16: each operand is rounded to bfloat16 here (to nearest, ties to even, NaN kept: the
// CPU's round_bf16, bit for bit) into the caller's scratch, and cuBLAS multiplies the bf16
// matrices with fp32 sums (CUBLAS_COMPUTE_32F, tensor cores); then the bias / ReLU pass,
// and db from a column-sum kernel.  The operands are thus exactly the CPU twin's, whatever
// cuBLAS's own down-conversions (CUBLAS_COMPUTE_32F_FAST_16BF) would round them to.
// Row-major A(M,K) is column-major A^T, so C = A B (row-major) is C^T = B^T A^T: cuBLAS
// is called with the operands swapped.
#include <cublas_v2.h>

#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/ops.cuh"
#include "cuda/tile.cuh"
#include "fastsasrec/rng.h"

namespace fsr::cuda {

namespace {
const char* cublas_name(cublasStatus_t st) {
  switch (st) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "cuBLAS error";
  }
}

// The bits of x rounded to bfloat16 (to nearest, ties to even; NaN stays a quiet NaN).
__device__ inline uint16_t bf16_bits(float x) { return (uint16_t)(__float_as_uint(round_bf16(x)) >> 16); }

__global__ void to_bf16_kernel(uint16_t* dst, const float* src, size_t n) {
  const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e < n) dst[e] = bf16_bits(src[e]);
}

// src rounded to bfloat16 at `at` (16-byte aligned blocks); at moves past it.
const uint16_t* to_bf16(uint16_t*& at, const float* src, size_t n, cudaStream_t s) {
  uint16_t* dst = at;
  at += (n + 7) / 8 * 8;
  if (n) {
    to_bf16_kernel<<<blocks_for(n, 256), 256, 0, s>>>(dst, src, n);
    FSR_CUDA_LAUNCH_CHECK();
  }
  return dst;
}

__global__ void round_bf16_kernel(float* dst, const float* src, size_t n) {
  const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e < n) dst[e] = round_bf16(src[e]);
}

// The dropout of a product's output, applied as it is stored (thr == 0: none).
struct Dropout {
  uint32_t thr = 0;
  float inv_keep = 1.f;
  uint64_t key = 0;
  Dropout() = default;
  Dropout(float p, uint64_t k)
      : thr(dropout_threshold(p)), inv_keep(p > 0.f ? 1.f / (1.f - p) : 1.f), key(k) {}
  __device__ float operator()(float v, size_t e) const {
    return thr ? v * keep_scale(key, e, thr, inv_keep) : v;
  }
};

__global__ void bias_act_kernel(float* out, const float* b, int R, int O, bool relu, Dropout drop) {
  const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (size_t)R * O) return;
  const float v = out[e] + b[e % O];
  out[e] = drop(relu ? fmaxf(v, 0.f) : v, e);
}

// db(O) += column sums of dout(R, O).  A block sums kColRows rows of 32 columns: 8 row
// lanes of 32 threads read whole 128-byte row segments, reduce in shared memory, and add
// atomically across blocks (block order may vary between runs).
constexpr int kCols = 32, kLanes = 8, kColRows = 128;
__global__ void __launch_bounds__(kCols * kLanes)
bias_grad_kernel(float* db, const float* dout, int R, int O) {
  __shared__ float part[kLanes][kCols + 1];
  const int tx = threadIdx.x % kCols, ty = threadIdx.x / kCols;
  const int c = blockIdx.x * kCols + tx;
  const int r0 = blockIdx.y * kColRows, r1 = min(R, r0 + kColRows);
  float s = 0.f;
  if (c < O)
#pragma unroll 4
    for (int r = r0 + ty; r < r1; r += kLanes) s += dout[(size_t)r * O + c];
  part[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && c < O) {
    float t = 0.f;
#pragma unroll
    for (int k = 0; k < kLanes; ++k) t += part[k][tx];
    atomicAdd(db + c, t);
  }
}

// out(M, N) (= or +=) A(M, K) B' + bias, then ReLU when relu, then the dropout (counter
// r * N + c; only with ldo = N); A row-major (lda), and
// B'(K, N) either B itself, row-major (kRowsOfB = false: B'[k][c] = B[k * ldb + c], the
// forward's W) or the transpose of B(N, K) (kRowsOfB = true: B'[k][c] = B[c * ldb + k],
// the backward's W for din = dout W^T).  Block (x, y) owns out's rows 64x .. 64x + 63 and
// columns 64y .. 64y + 63; K goes through shared memory 64 columns at a time as two row
// tiles (A's rows, B''s columns), and thread (ty, tx) keeps rows ty + 16a x columns tx + 16b
// (cuda/tile.cuh).  bias may be null.
constexpr int kGemmNC = 4, kGemmBM = 64, kGemmKC = 16 * kGemmNC;

template <bool kRowsOfB>
__global__ void __launch_bounds__(tile::kThreads)
gemm_tile_kernel(float* out, int ldo, const float* A, int lda, const float* B, int ldb,
                 const float* bias, int M, int N, int K, bool relu, bool accumulate,
                 Dropout drop) {
  constexpr int ld = tile::row_ld<kGemmNC>();
  __shared__ float As[kGemmBM * ld];
  __shared__ float Bs[kGemmBM * ld];
  const int r0 = blockIdx.x * kGemmBM, c0 = blockIdx.y * kGemmBM;
  float acc[4][4];
  tile::zero(acc);
  for (int k0 = 0; k0 < K; k0 += kGemmKC) {
    const int kw = min(kGemmKC, K - k0);
    __syncthreads();  // the previous chunk's readers are done
    tile::load<kGemmNC>(As, kGemmBM, kw, [&](int r) {
      return r0 + r < M ? A + (size_t)(r0 + r) * lda + k0 : nullptr;
    });
    if (kRowsOfB) {
      tile::load<kGemmNC>(Bs, kGemmBM, kw, [&](int c) {
        return c0 + c < N ? B + (size_t)(c0 + c) * ldb + k0 : nullptr;
      });
    } else {  // Bs[c][k] = B[k0 + k][c0 + c]: neighbouring threads read neighbouring columns
      for (int idx = threadIdx.x; idx < kGemmBM * kGemmKC; idx += tile::kThreads) {
        const int k = idx / kGemmBM, c = idx - k * kGemmBM;
        Bs[c * ld + k] = (k < kw && c0 + c < N) ? B[(size_t)(k0 + k) * ldb + c0 + c] : 0.f;
      }
    }
    __syncthreads();
    tile::dot<4, kGemmNC>(acc, As, Bs, kw);
  }
  tile::for_each<4, 4>(r0, M, c0, N, [&](int a, int b, int r, int c) {
    float* o = out + (size_t)r * ldo + c;
    float v = acc[a][b];
    if (bias) v += bias[c];
    if (accumulate) v += *o;
    *o = drop(relu ? fmaxf(v, 0.f) : v, (size_t)r * N + c);
  });
}

// dW(I, O) += in(R, I)^T dout(R, O) and db(O) += colsum(dout): block (x, y, z) owns dW's
// rows 64x .. 64x + 63 and columns 64y .. 64y + 63 and sums rows_per rows of R (from
// rows_per * z), 64 at a time, both operands loaded transposed (neighbouring threads read
// neighbouring columns); the blocks with x = 0 also sum their dout columns for db (threads
// 0-63, one column each).  The partial sums are added atomically (the order of the z
// blocks may vary).
__global__ void __launch_bounds__(tile::kThreads)
weight_grad_kernel(float* dW, float* db, const float* in, const float* dout, int R, int I,
                   int O, int rows_per) {
  constexpr int ld = tile::row_ld<kGemmNC>();
  __shared__ float As[kGemmBM * ld];
  __shared__ float Bs[kGemmBM * ld];
  const int i0 = blockIdx.x * kGemmBM, o0 = blockIdx.y * kGemmBM;
  const int rb = blockIdx.z * rows_per, re = min(R, rb + rows_per);
  const bool col_sums = db != nullptr && blockIdx.x == 0 && threadIdx.x < kGemmBM;
  float acc[4][4], colsum = 0.f;
  tile::zero(acc);
  for (int k0 = rb; k0 < re; k0 += kGemmKC) {
    const int kw = min(kGemmKC, re - k0);
    __syncthreads();  // the previous chunk's readers are done
    for (int idx = threadIdx.x; idx < kGemmBM * kGemmKC; idx += tile::kThreads) {
      const int k = idx / kGemmBM, c = idx - k * kGemmBM;
      const size_t row = (size_t)(k0 + k);
      As[c * ld + k] = (k < kw && i0 + c < I) ? in[row * I + i0 + c] : 0.f;
      Bs[c * ld + k] = (k < kw && o0 + c < O) ? dout[row * O + o0 + c] : 0.f;
    }
    __syncthreads();
    if (col_sums)
      for (int k = 0; k < kw; ++k) colsum += Bs[threadIdx.x * ld + k];
    tile::dot<4, kGemmNC>(acc, As, Bs, kw);
  }
  if (col_sums && o0 + (int)threadIdx.x < O) atomicAdd(&db[o0 + threadIdx.x], colsum);
  tile::for_each<4, 4>(i0, I, o0, O, [&](int a, int b, int i, int o) {
    atomicAdd(&dW[(size_t)i * O + o], acc[a][b]);
  });
}

void weight_grad(float* dW, float* db, const float* in, const float* dout, int R, int I, int O,
                 cudaStream_t s) {
  if (R <= 0 || I <= 0 || O <= 0) return;
  // Row ranges of at least 256 rows, and about two blocks per multiprocessor in all.
  const long long tiles = ceil_div(I, kGemmBM) * ceil_div(O, kGemmBM);
  const long long want = std::max(1LL, 2LL * tile::sm_count() / tiles);
  const long long splits = std::max(1LL, std::min(want, ceil_div(R, 256)));
  const int rows_per = (int)(ceil_div(ceil_div(R, splits), kGemmKC) * kGemmKC);
  const dim3 grid((unsigned)ceil_div(I, kGemmBM), (unsigned)ceil_div(O, kGemmBM),
                  (unsigned)ceil_div(R, rows_per));
  weight_grad_kernel<<<grid, tile::kThreads, 0, s>>>(dW, db, in, dout, R, I, O, rows_per);
  FSR_CUDA_LAUNCH_CHECK();
}

template <bool kRowsOfB>
void gemm_tile(float* out, int ldo, const float* A, int lda, const float* B, int ldb,
               const float* bias, int M, int N, int K, bool relu, bool accumulate,
               Dropout drop, cudaStream_t s) {
  if (M <= 0 || N <= 0) return;
  const dim3 grid((unsigned)ceil_div(M, kGemmBM), (unsigned)ceil_div(N, kGemmBM));
  gemm_tile_kernel<kRowsOfB><<<grid, tile::kThreads, 0, s>>>(out, ldo, A, lda, B, ldb, bias, M,
                                                            N, K, relu, accumulate, drop);
  FSR_CUDA_LAUNCH_CHECK();
}
}  // namespace

#define FSR_CUBLAS_CHECK(call)                                                              \
  do {                                                                                      \
    cublasStatus_t st_ = (call);                                                            \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                       \
      throw std::runtime_error(::fsr::detail::cat(__FILE__, ":", __LINE__, ": ",            \
                                                  cublas_name(st_), " in " #call));         \
  } while (0)

namespace {
// Row-major C(M,N) (= or += by beta) op(A) op(B), A and B bfloat16, C float, sums in fp32.
// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the operands swap.
void gemm_bf16(cublasHandle_t h, bool ta, bool tb, int M, int N, int K, const uint16_t* A,
               int lda, const uint16_t* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  const cublasOperation_t oa = tb ? CUBLAS_OP_T : CUBLAS_OP_N, ob = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const float alpha = 1.f;
  // The handle's pedantic mode (fp32 parity elsewhere) is lifted for the tensor cores.
  FSR_CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
  const cublasStatus_t st =
      cublasGemmEx(h, oa, ob, N, M, K, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta,
                   C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  FSR_CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH));
  FSR_CUBLAS_CHECK(st);
}
}  // namespace

const float* bf16_copies(const Context& ctx, const float* a, size_t na, const float* b, size_t nb) {
  if (ctx.precision != Precision::BF16) return nullptr;
  float* dst = static_cast<float*>(ctx.bf16_scratch->get((na + nb) * sizeof(float)));
  if (na) round_bf16_kernel<<<blocks_for(na, 256), 256, 0, ctx.stream>>>(dst, a, na);
  FSR_CUDA_LAUNCH_CHECK();
  if (nb) round_bf16_kernel<<<blocks_for(nb, 256), 256, 0, ctx.stream>>>(dst + na, b, nb);
  FSR_CUDA_LAUNCH_CHECK();
  return dst;
}

size_t linear_bf16_scratch_bytes(int R, int I, int O) {
  auto n = [](long long x) { return (size_t)((x + 7) / 8 * 8); };
  return 2 * (n((long long)R * I) + n((long long)I * O) + n((long long)R * O));
}

// In bf16, the context's scratch holds the operands rounded to bfloat16 (null in fp32).
uint16_t* bf16_scratch(const Context& ctx, int R, int I, int O) {
  if (ctx.precision != Precision::BF16) return nullptr;
  return static_cast<uint16_t*>(ctx.bf16_scratch->get(linear_bf16_scratch_bytes(R, I, O)));
}

void linear_forward(const Context& ctx, float* out, const float* in, const float* W,
                    const float* b, int R, int I, int O, bool relu, float p, uint64_t key) {
  const cudaStream_t s = ctx.stream;
  const cublasHandle_t h = ctx.blas;
  if (R <= 0) return;
  uint16_t* const bf16_scratch = ::fsr::cuda::bf16_scratch(ctx, R, I, O);
  const Dropout drop(p, key);
  if (!bf16_scratch) return gemm_tile<false>(out, O, in, I, W, O, b, R, O, I, relu, false, drop, s);
  uint16_t* at = bf16_scratch;
  const uint16_t* x = to_bf16(at, in, (size_t)R * I, s);
  const uint16_t* w = to_bf16(at, W, (size_t)I * O, s);
  gemm_bf16(h, false, false, R, O, I, x, I, w, O, 0.f, out, O);
  bias_act_kernel<<<blocks_for((size_t)R * O, 256), 256, 0, s>>>(out, b, R, O, relu, drop);
  FSR_CUDA_LAUNCH_CHECK();
}

void linear_backward(const Context& ctx, float* din, float* dW, float* db, const float* dout,
                     const float* in, const float* W, int R, int I, int O, bool accumulate) {
  const cudaStream_t s = ctx.stream;
  const cublasHandle_t h = ctx.blas;
  if (R <= 0) return;
  uint16_t* const bf16_scratch = ::fsr::cuda::bf16_scratch(ctx, R, I, O);
  if (!bf16_scratch) {
    if (din)
      gemm_tile<true>(din, I, dout, O, W, O, nullptr, R, I, O, false, accumulate, Dropout(), s);
    if (I > 0) return weight_grad(dW, db, in, dout, R, I, O, s);  // dW and db
  } else {
    uint16_t* at = bf16_scratch;
    const uint16_t* d = to_bf16(at, dout, (size_t)R * O, s);
    if (din) {
      const uint16_t* w = to_bf16(at, W, (size_t)I * O, s);
      gemm_bf16(h, false, true, R, I, O, d, O, w, O, accumulate ? 1.f : 0.f, din, I);
    }
    const uint16_t* x = to_bf16(at, in, (size_t)R * I, s);
    gemm_bf16(h, true, false, I, O, R, x, I, d, O, 1.f, dW, O);
  }
  const dim3 grid(blocks_for(O, kCols), blocks_for(R, kColRows));
  bias_grad_kernel<<<grid, kCols * kLanes, 0, s>>>(db, dout, R, O);
  FSR_CUDA_LAUNCH_CHECK();
}

}  // namespace fsr::cuda
