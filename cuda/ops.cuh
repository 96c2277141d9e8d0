// The CUDA ops: the same functions, argument order and semantics as the CPU twins in
// cpp/src/cpu/ops.h (read that file for shapes and "=" versus "+="), plus the stream they
// run on as the last argument.  Pointers are device memory.  Every op is tested against
// its CPU twin and the float64 reference; accumulations into item rows use atomics, so
// their rounding order (not their value beyond float32 noise) may differ from the CPU.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace fsr::cuda {

// embedding.cu
void embedding_forward(float* x, const int32_t* items, const int32_t* pos, const float* E,
                       const float* P, int R, int C, float scale, float p, uint64_t key,
                       cudaStream_t s);
void embedding_backward(float* dE, float* dP, const float* dx, const int32_t* items,
                        const int32_t* pos, int R, int C, float scale, float p, uint64_t key,
                        cudaStream_t s);
// layernorm.cu
void layernorm_forward(float* out, float* mean, float* rstd, const float* in, const float* g,
                       const float* b, int R, int C, float eps, cudaStream_t s);
void residual_layernorm_forward(float* sum, float* out, float* mean, float* rstd, const float* a,
                                const float* b, float p, uint64_t key, const float* g,
                                const float* beta, int R, int C, float eps, cudaStream_t s);
void layernorm_backward(float* din, float* dg, float* db, const float* dout, const float* in,
                        const float* mean, const float* rstd, const float* g, int R, int C,
                        bool accumulate, cudaStream_t s);
// linear.cu: fp32 on own tiled kernels; bf16 (bf16_scratch given, of
// linear_bf16_scratch_bytes) with operands rounded to bfloat16 there and cuBLAS's products
void linear_forward(cublasHandle_t h, float* out, const float* in, const float* W, const float* b,
                    int R, int I, int O, bool relu, float p, uint64_t key,
                    uint16_t* bf16_scratch, cudaStream_t s);
void linear_backward(cublasHandle_t h, float* din, float* dW, float* db, const float* dout,
                     const float* in, const float* W, int R, int I, int O, bool accumulate,
                     uint16_t* bf16_scratch, cudaStream_t s);
size_t linear_bf16_scratch_bytes(int R, int I, int O);
// elementwise.cu: dropout, gather, AdamW
void dropout_forward(float* out, const float* in, size_t n, float p, uint64_t key, cudaStream_t s);
void dropout_backward(float* din, const float* dout, const float* relu_out, size_t n, float p,
                      uint64_t key, cudaStream_t s);
void gather_rows(float* out, const float* in, const int32_t* rows, int n, int C, cudaStream_t s);
void adamw_step(float* params, const float* grads, float* m, float* v, size_t n, size_t n_decay,
                float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step,
                cudaStream_t s);
// attention.cu (T <= 512, D <= 128; one block per (sequence, head, 64-row tile), scores
// tiled in registers; no T x T matrix in global memory; the backward recomputes the
// probabilities from lse)
void attention_forward(float* O, float* lse, const float* Q, int ldq, const float* K,
                       const float* V, int ldkv, const int32_t* cu, int B, int H, int D, int T,
                       int n_max, float p, uint64_t key, cudaStream_t s);
void attention_backward(float* dQ, float* dK, float* dV, const float* dO, const float* O,
                        const float* Q, int ldq, const float* K, const float* V, int ldkv,
                        const float* lse,
                        const int32_t* cu, int B, int H, int D, int T, int n_max, float p,
                        uint64_t key, cudaStream_t s);
void attention_last_forward(float* O, const float* Q, int ldq, const float* K, const float* V,
                            int ldkv, const int32_t* cu, int B, int H, int D, cudaStream_t s);
// loss_*.cu: fused logits + online log-sum-exp; never a (R x N) or (R x V) matrix in
// global memory.  workspace sizes in floats.
size_t bce_workspace(int R, int C);
void bce_loss(float* loss, float* dh, float* dE, const float* h, const float* E,
              const int32_t* targets, const int32_t* negatives, int R, int C, float grad_scale,
              float* workspace, cudaStream_t s);
size_t sampled_softmax_workspace(int R, int C, int N);
void sampled_softmax_loss(float* loss, float* dh, float* dE, const float* h, const float* E,
                          const int32_t* targets, const int32_t* negatives, int R, int C, int N,
                          float grad_scale, float* workspace, cudaStream_t s);
size_t softmax_workspace(int R, int C, int V);
void softmax_loss(float* loss, float* dh, float* dE, const float* h, const float* E,
                  const int32_t* targets, int R, int C, int V, float grad_scale, float* workspace,
                  cudaStream_t s);
// topk.cu: tiled h . E^T with exclusions and a per-row top-k; never a B x V matrix.
void topk_forward(int32_t* ids, float* scores, const float* h, const float* E,
                  const int32_t* excl, const int64_t* excl_off, int B, int C, int V, int K,
                  cudaStream_t s);

}  // namespace fsr::cuda
