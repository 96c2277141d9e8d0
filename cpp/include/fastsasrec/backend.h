// The Backend interface: memory and the ops, nothing else.  The model code (model.cpp)
// is written once against it and never asks which backend it runs on.  Every pointer
// an op receives is backend memory (from alloc); host data crosses only through upload
// and download.  Op semantics ("=" overwrite, "+=" accumulate) are those documented in
// cpp/src/cpu/ops.h, the CPU backend being the specification.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace fsr {

enum class LossKind { BCE = 0, SampledSoftmax = 1, Softmax = 2 };
// FP32: every product in fp32.  BF16: the operands of the linear layers' matrix products
// are rounded to bfloat16 (to nearest, ties to even) and their products summed in fp32;
// everything else (weights, activations, attention, losses, optimizer) stays fp32.
enum class Precision { FP32 = 0, BF16 = 1 };

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // ---- memory
  virtual void* alloc(size_t bytes) = 0;  // throws fsr::MemoryError naming the bytes
  virtual void release(void* p) = 0;
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void zero(void* p, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  virtual void synchronize() = 0;

  // Rows (sequence positions) an inference forward should hold at once: its activation
  // arena grows with this, and a device backend wants many to fill the device.
  virtual size_t inference_rows() const { return 16384; }

  // The CUDA device the backend's memory lives on; -1 for host memory.
  virtual int device_index() const { return -1; }

  // ---- arithmetic of the linear layers' products (see Precision)
  virtual void set_precision(Precision p) = 0;

  // ---- threads (CPU: OpenMP threads; other backends may ignore)
  virtual void set_threads(int n) = 0;
  virtual int threads() const = 0;

  // ---- ops
  virtual void embedding_forward(float* x, const int32_t* items, const int32_t* pos, const float* E,
                                 const float* P, int R, int C, float scale, float p,
                                 uint64_t key) = 0;
  virtual void embedding_backward(float* dE, float* dP, const float* dx, const int32_t* items,
                                  const int32_t* pos, int R, int C, float scale, float p,
                                  uint64_t key) = 0;
  virtual void layernorm_forward(float* out, float* mean, float* rstd, const float* in,
                                 const float* g, const float* b, int R, int C, float eps) = 0;
  // sum = a + dropout_p(b), then layernorm_forward(sum): the residual add fused with the
  // norm that reads it (its backward is layernorm_backward and dropout_backward).
  virtual void residual_layernorm_forward(float* sum, float* out, float* mean, float* rstd,
                                          const float* a, const float* b, float p, uint64_t key,
                                          const float* g, const float* beta, int R, int C,
                                          float eps) = 0;
  virtual void layernorm_backward(float* din, float* dg, float* db, const float* dout,
                                  const float* in, const float* mean, const float* rstd,
                                  const float* g, int R, int C, bool accumulate) = 0;
  // out = dropout_p(relu?(in W + b)): the dropout (counter r*O + o of key, as dropout_forward
  // over R*O) is applied as the product is stored; p = 0 for none.
  virtual void linear_forward(float* out, const float* in, const float* W, const float* b, int R,
                              int I, int O, bool relu, float p, uint64_t key) = 0;
  virtual void linear_backward(float* din, float* dW, float* db, const float* dout,
                               const float* in, const float* W, int R, int I, int O,
                               bool accumulate) = 0;
  virtual void dropout_forward(float* out, const float* in, size_t n, float p, uint64_t key) = 0;
  virtual void dropout_backward(float* din, const float* dout, const float* relu_out, size_t n,
                                float p, uint64_t key) = 0;
  // T: positions per sequence (max_seq; it places the dropout counters); n_max: the longest
  // sequence of this call (1..T), by which a backend may size its launch.
  virtual void attention_forward(float* O, float* lse, const float* Q, int ldq, const float* K,
                                 const float* V, int ldkv, const int32_t* cu, int B, int H, int D,
                                 int T, int n_max, float p, uint64_t key) = 0;
  // O: the forward's output (R, H*D); a backend may take delta_i = sum_j P_ij dP_ij from it
  // as dO_i . O_i (the CPU computes it from P and dP, which it holds anyway).
  virtual void attention_backward(float* dQ, float* dK, float* dV, const float* dO,
                                  const float* O, const float* Q,
                                  int ldq, const float* K, const float* V, int ldkv,
                                  const float* lse, const int32_t* cu, int B, int H, int D, int T,
                                  int n_max, float p, uint64_t key) = 0;
  virtual void attention_last_forward(float* O, const float* Q, int ldq, const float* K,
                                      const float* V, int ldkv, const int32_t* cu, int B, int H,
                                      int D) = 0;
  virtual void gather_rows(float* out, const float* in, const int32_t* rows, int n, int C) = 0;
  // Floats of workspace the loss needs for R rows.
  virtual size_t loss_workspace(LossKind kind, int R, int C, int V, int N) = 0;
  // loss(R) =; with grad_scale != 0 also dh(R,C) = and dE +=.  negatives: R ids for BCE,
  // N ids for SampledSoftmax, unused for Softmax.
  virtual void loss(LossKind kind, float* loss, float* dh, float* dE, const float* h,
                    const float* E, const int32_t* targets, const int32_t* negatives, int R,
                    int C, int V, int N, float grad_scale, float* workspace) = 0;
  virtual void adamw_step(float* params, const float* grads, float* m, float* v, size_t n,
                          size_t n_decay, float lr, float beta1, float beta2, float eps,
                          float weight_decay, int64_t step) = 0;
  virtual void topk(int32_t* ids, float* scores, const float* h, const float* E,
                    const int32_t* excl, const int64_t* excl_off, int B, int C, int V,
                    int K) = 0;
};

// "cpu" always exists; "cuda" when it was compiled in and a device is usable.
// Throws fsr::ValueError naming the device when it is unknown or unavailable.
std::unique_ptr<Backend> make_backend(const std::string& device);
bool backend_available(const std::string& device, std::string* why_not);

}  // namespace fsr
