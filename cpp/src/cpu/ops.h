// The CPU ops: plain loops + OpenMP + BLAS, the executable specification of every
// kernel.  One op per file (<op>.cpp) with its forward and backward side by side; the
// CUDA backend has the same functions with the same argument order.  All matrices are
// row-major float32; row counts are packed real tokens (R), never padded positions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fastsasrec/backend.h"  // LossKind, Precision

namespace fsr::cpu {

// ---- gemm.cpp: C(M,N) = alpha * op(A) op(B) + beta * C, row-major, split over threads
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc);
// The same on the calling thread only (for use inside a parallel region).
void gemm_serial(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                 int lda, const float* B, int ldb, float beta, float* C, int ldc);
// How many blocks to split an output extent into for a product of `flops` (1 = serial).
int gemm_blocks(int extent, double flops);
int num_threads();
void set_num_threads(int n);

// ---- embedding.cpp
// x(R,C) = dropout_p(E[items] * scale + P[pos])
void embedding_forward(float* x, const int32_t* items, const int32_t* pos, const float* E,
                       const float* P, int R, int C, float scale, float p, uint64_t key);
// g = dropout_p'(dx);  dE[items] += scale * g;  dP[pos] += g   (row 0 of dE never written)
void embedding_backward(float* dE, float* dP, const float* dx, const int32_t* items,
                        const int32_t* pos, int R, int C, float scale, float p, uint64_t key);

// ---- layernorm.cpp
// out(R,C) = (in - mean) * rstd * g + b;  mean(R), rstd(R) saved
void layernorm_forward(float* out, float* mean, float* rstd, const float* in, const float* g,
                       const float* b, int R, int C, float eps);
// sum(R,C) = a + dropout_p(b) (counter r*C+c of key, as dropout_forward over R*C), then
// out, mean, rstd = layernorm_forward(sum, g, beta).  The backward is layernorm_backward:
// d(sum) reaches a unchanged and b through dropout_backward.
void residual_layernorm_forward(float* sum, float* out, float* mean, float* rstd, const float* a,
                                const float* b, float p, uint64_t key, const float* g,
                                const float* beta, int R, int C, float eps);
// din(R,C) = (accumulate ? += : =) dLN/din;  dg(C) +=;  db(C) +=
void layernorm_backward(float* din, float* dg, float* db, const float* dout, const float* in,
                        const float* mean, const float* rstd, const float* g, int R, int C,
                        bool accumulate);

// ---- linear.cpp
// out(R,O) = in(R,I) W(I,O) + b(O), then ReLU when relu, then dropout_p (element r*O+o
// draws counter r*O+o of key, as dropout_forward over R*O; p = 0: none)
// With Precision::BF16 the operands of each product (here in and W; below dout and W, in
// and dout) are rounded to bfloat16 first and the products summed in fp32.
void linear_forward(float* out, const float* in, const float* W, const float* b, int R, int I,
                    int O, bool relu, float p, uint64_t key, Precision prec = Precision::FP32);
// din(R,I) (= or += when accumulate; skipped when null) = dout W^T;  dW(I,O) += in^T dout;
// db(O) += column sums of dout
void linear_backward(float* din, float* dW, float* db, const float* dout, const float* in,
                     const float* W, int R, int I, int O, bool accumulate,
                     Precision prec = Precision::FP32);
// dst(n) = src rounded to the nearest bfloat16 (ties to even; NaN stays NaN), as floats
void round_bf16(float* dst, const float* src, size_t n);

// ---- dropout.cpp   (element e of a call draws counter e of stream key)
// out(n) = in * keep / (1 - p)   (out may be in; p == 0 copies)
void dropout_forward(float* out, const float* in, size_t n, float p, uint64_t key);
// din(n) = dout * keep / (1 - p), times (relu_out > 0) when relu_out is given  (din may be dout)
void dropout_backward(float* din, const float* dout, const float* relu_out, size_t n, float p,
                      uint64_t key);

// ---- attention.cpp: multi-head causal self-attention over packed sequences.
// Q(R, ldq), K, V(R, ldkv): head h in columns h*D..h*D+D-1. Sequence s is rows
// cu[s]..cu[s+1]-1; row i attends to rows cu[s]..i. Dropout on the probabilities draws
// counter (i * H + h) * T + (j - cu[s]) for query row i, key row j (T >= longest sequence).
// O(R, H*D) =, lse(R, H) = the log-sum-exp of each row's scaled scores.
void attention_forward(float* O, float* lse, const float* Q, int ldq, const float* K,
                       const float* V, int ldkv, const int32_t* cu, int B, int H, int D, int T,
                       float p, uint64_t key);
// dQ(R, ldq) =, dK, dV(R, ldkv) =  (recomputes the probabilities from lse)
void attention_backward(float* dQ, float* dK, float* dV, const float* dO, const float* Q, int ldq,
                        const float* K, const float* V, int ldkv, const float* lse,
                        const int32_t* cu, int B, int H, int D, int T, float p, uint64_t key);

// Inference: only the last row of each sequence queries.  Q(B, ldq) holds sequence b's
// last-row query; it attends to all rows cu[b]..cu[b+1]-1 of K, V.  O(B, H*D) =.  No dropout.
void attention_last_forward(float* O, const float* Q, int ldq, const float* K, const float* V,
                            int ldkv, const int32_t* cu, int B, int H, int D);

// ---- gather.cpp: out(n, C) = in[rows[i]] for i < n
void gather_rows(float* out, const float* in, const int32_t* rows, int n, int C);

// ---- loss_bce.cpp: the paper's loss, one negative per row.
// loss(R) = softplus(-h.E[tgt]) + softplus(h.E[neg]);  when grad_scale != 0:
// dh(R,C) = grad_scale * dloss/dh;  dE += grad_scale * dloss/dE
void bce_loss(float* loss, float* dh, float* dE, const float* h, const float* E,
              const int32_t* targets, const int32_t* negatives, int R, int C, float grad_scale);

// ---- loss_sampled_softmax.cpp: N negatives shared by all rows; a negative equal to a
// row's target is masked out of that row.  loss(R) = logsumexp([s_pos, s_negs]) - s_pos.
// workspace: sampled_softmax_workspace(R, C, N) floats.
size_t sampled_softmax_workspace(int R, int C, int N);
void sampled_softmax_loss(float* loss, float* dh, float* dE, const float* h, const float* E,
                          const int32_t* targets, const int32_t* negatives, int R, int C, int N,
                          float grad_scale, float* workspace);

// ---- loss_softmax.cpp: full cross-entropy over items 1..V (rows processed in chunks).
// workspace: softmax_workspace(R, V) floats.
size_t softmax_workspace(int R, int V);
void softmax_loss(float* loss, float* dh, float* dE, const float* h, const float* E,
                  const int32_t* targets, int R, int C, int V, float grad_scale, float* workspace);

// ---- adamw.cpp: one pass over the flat parameter arena; the first n_decay entries get
// decoupled weight decay.  step is 1-based.  params, m, v (n) updated in place.
void adamw_step(float* params, const float* grads, float* m, float* v, size_t n, size_t n_decay,
                float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step);

// ---- topk.cpp: ids(B,K), scores(B,K) = the K best items 1..V of h(B,C) . E^T, best first
// (ties: lower id first), skipping item ids excl[excl_off[b] .. excl_off[b+1]) of row b.
// Slots left when fewer than K items remain get id 0 and score -inf.
// Items are scored a tile at a time: no B x V matrix exists.
void topk_forward(int32_t* ids, float* scores, const float* h, const float* E,
                  const int32_t* excl, const int64_t* excl_off, int B, int C, int V, int K);

}  // namespace fsr::cpu
