// The CPU backend: host memory and the ops of cpp/src/cpu/<op>.cpp.
#include <cstdlib>
#include <cstring>
#include <new>

#include "cpu/ops.h"
#include "fastsasrec/backend.h"
#include "fastsasrec/common.h"

namespace fsr {

namespace {

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }

  void* alloc(size_t bytes) override {
    if (bytes == 0) bytes = 64;
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) throw MemoryError(detail::cat("cpu: could not allocate ", bytes, " bytes"));
    return p;
  }
  void release(void* p) override { std::free(p); }
  void upload(void* dst, const void* src, size_t n) override { if (n) std::memcpy(dst, src, n); }
  void download(void* dst, const void* src, size_t n) override { if (n) std::memcpy(dst, src, n); }
  void zero(void* p, size_t n) override { if (n) std::memset(p, 0, n); }
  void copy(void* dst, const void* src, size_t n) override { if (n) std::memmove(dst, src, n); }
  void synchronize() override {}
  void set_precision(Precision p) override { prec_ = p; }
  void set_threads(int n) override { cpu::set_num_threads(n); }
  int threads() const override { return cpu::num_threads(); }

  void embedding_forward(float* x, const int32_t* items, const int32_t* pos, const float* E,
                         const float* P, int R, int C, float scale, float p, uint64_t key) override {
    cpu::embedding_forward(x, items, pos, E, P, R, C, scale, p, key);
  }
  void embedding_backward(float* dE, float* dP, const float* dx, const int32_t* items,
                          const int32_t* pos, int R, int C, float scale, float p,
                          uint64_t key) override {
    cpu::embedding_backward(dE, dP, dx, items, pos, R, C, scale, p, key);
  }
  void layernorm_forward(float* out, float* mean, float* rstd, const float* in, const float* g,
                         const float* b, int R, int C, float eps) override {
    cpu::layernorm_forward(out, mean, rstd, in, g, b, R, C, eps);
  }
  void residual_layernorm_forward(float* sum, float* out, float* mean, float* rstd, const float* a,
                                  const float* b, float p, uint64_t key, const float* g,
                                  const float* beta, int R, int C, float eps) override {
    cpu::residual_layernorm_forward(sum, out, mean, rstd, a, b, p, key, g, beta, R, C, eps);
  }
  void layernorm_backward(float* din, float* dg, float* db, const float* dout, const float* in,
                          const float* mean, const float* rstd, const float* g, int R, int C,
                          bool accumulate) override {
    cpu::layernorm_backward(din, dg, db, dout, in, mean, rstd, g, R, C, accumulate);
  }
  void linear_forward(float* out, const float* in, const float* W, const float* b, int R, int I,
                      int O, bool relu, float p, uint64_t key) override {
    cpu::linear_forward(out, in, W, b, R, I, O, relu, p, key, prec_);
  }
  void linear_backward(float* din, float* dW, float* db, const float* dout, const float* in,
                       const float* W, int R, int I, int O, bool accumulate) override {
    cpu::linear_backward(din, dW, db, dout, in, W, R, I, O, accumulate, prec_);
  }
  void dropout_forward(float* out, const float* in, size_t n, float p, uint64_t key) override {
    cpu::dropout_forward(out, in, n, p, key);
  }
  void dropout_backward(float* din, const float* dout, const float* relu_out, size_t n, float p,
                        uint64_t key) override {
    cpu::dropout_backward(din, dout, relu_out, n, p, key);
  }
  void attention_forward(float* O, float* lse, const float* Q, int ldq, const float* K,
                         const float* V, int ldkv, const int32_t* cu, int B, int H, int D, int T,
                         int /*n_max*/, float p, uint64_t key) override {
    cpu::attention_forward(O, lse, Q, ldq, K, V, ldkv, cu, B, H, D, T, p, key);
  }
  void attention_backward(float* dQ, float* dK, float* dV, const float* dO, const float*,
                          const float* Q, int ldq, const float* K, const float* V, int ldkv,
                          const float* lse, const int32_t* cu, int B, int H, int D, int T,
                          int /*n_max*/, float p, uint64_t key) override {
    cpu::attention_backward(dQ, dK, dV, dO, Q, ldq, K, V, ldkv, lse, cu, B, H, D, T, p, key);
  }
  void attention_last_forward(float* O, const float* Q, int ldq, const float* K, const float* V,
                              int ldkv, const int32_t* cu, int B, int H, int D) override {
    cpu::attention_last_forward(O, Q, ldq, K, V, ldkv, cu, B, H, D);
  }
  void gather_rows(float* out, const float* in, const int32_t* rows, int n, int C) override {
    cpu::gather_rows(out, in, rows, n, C);
  }
  size_t loss_workspace(LossKind kind, int R, int C, int V, int N) override {
    switch (kind) {
      case LossKind::SampledSoftmax: return cpu::sampled_softmax_workspace(R, C, N);
      case LossKind::Softmax: return cpu::softmax_workspace(R, V);
      default: return 0;
    }
  }
  void loss(LossKind kind, float* loss, float* dh, float* dE, const float* h, const float* E,
            const int32_t* targets, const int32_t* negatives, int R, int C, int V, int N,
            float grad_scale, float* workspace) override {
    switch (kind) {
      case LossKind::BCE:
        cpu::bce_loss(loss, dh, dE, h, E, targets, negatives, R, C, grad_scale);
        break;
      case LossKind::SampledSoftmax:
        cpu::sampled_softmax_loss(loss, dh, dE, h, E, targets, negatives, R, C, N, grad_scale,
                                  workspace);
        break;
      case LossKind::Softmax:
        cpu::softmax_loss(loss, dh, dE, h, E, targets, R, C, V, grad_scale, workspace);
        break;
    }
  }
  void adamw_step(float* params, const float* grads, float* m, float* v, size_t n, size_t n_decay,
                  float lr, float beta1, float beta2, float eps, float weight_decay,
                  int64_t step) override {
    cpu::adamw_step(params, grads, m, v, n, n_decay, lr, beta1, beta2, eps, weight_decay, step);
  }
  void topk(int32_t* ids, float* scores, const float* h, const float* E, const int32_t* excl,
            const int64_t* excl_off, int B, int C, int V, int K) override {
    cpu::topk_forward(ids, scores, h, E, excl, excl_off, B, C, V, K);
  }
 private:
  Precision prec_ = Precision::FP32;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace fsr
