// The CUDA backend: device memory, one stream, one cuBLAS handle, and the kernels of
// cuda/<op>.cu behind the Backend interface.  Built as its own shared library
// (libfastsasrec_cuda.so) that the backend registry loads on first use, so importing
// fastsasrec never needs a GPU, a driver or cuBLAS.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "cuda/common.cuh"
#include "cuda/ops.cuh"
#include "fastsasrec/backend.h"
#include "fastsasrec/common.h"

namespace fsr {

namespace {

class CudaBackend final : public Backend {
 public:
  CudaBackend() {
    FSR_CUDA_CHECK(cudaGetDevice(&device_));
    FSR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    if (cublasCreate(&blas_) != CUBLAS_STATUS_SUCCESS)
      throw std::runtime_error("cuda: cublasCreate failed (is cuBLAS installed and a GPU usable?)");
    cublasSetStream(blas_, stream_);
    cublasSetMathMode(blas_, CUBLAS_PEDANTIC_MATH);  // fp32 parity with the CPU: no TF32
  }
  ~CudaBackend() override {
    if (stream_) cudaStreamSynchronize(stream_);
    if (stage_) cudaFreeHost(stage_);
    if (bf16_buf_) cudaFree(bf16_buf_);
    if (stage_done_) cudaEventDestroy(stage_done_);
    if (blas_) cublasDestroy(blas_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  std::string name() const override { return "cuda"; }
  int device_index() const override { return device_; }
  // About 1 GB of inference activations at C = 64: thousands of sessions per forward.
  size_t inference_rows() const override { return size_t(1) << 17; }

  void* alloc(size_t bytes) override {
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, bytes ? bytes : 256);
    if (err != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error state of a failed allocation
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      throw MemoryError(detail::cat("cuda: could not allocate ", bytes, " bytes on GPU ", device_,
                                    " (", free_b, " bytes free of ", total_b, "): ",
                                    cudaGetErrorString(err)));
    }
    return p;
  }
  void release(void* p) override {
    if (p) {
      cudaStreamSynchronize(stream_);
      cudaFree(p);
    }
  }
  // The host buffer may change as soon as upload returns, so the data is first copied
  // into a pinned staging ring and the device copy runs from there, in stream order, while
  // the host goes on (building the next batch).  Reaching the ring's end waits for every
  // copy out of it; an upload larger than the ring copies synchronously.
  void upload(void* dst, const void* src, size_t n) override {
    if (!n) return;
    if (!stage_ && n <= kStageBytes) {
      if (cudaHostAlloc((void**)&stage_, kStageBytes, cudaHostAllocDefault) != cudaSuccess) {
        cudaGetLastError();  // no pinned memory: every upload stays synchronous
        stage_ = nullptr;
      } else {
        FSR_CUDA_CHECK(cudaEventCreateWithFlags(&stage_done_, cudaEventDisableTiming));
      }
    }
    if (!stage_ || n > kStageBytes) {
      FSR_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, stream_));
      FSR_CUDA_CHECK(cudaStreamSynchronize(stream_));
      return;
    }
    if (stage_head_ + n > kStageBytes) {
      FSR_CUDA_CHECK(cudaEventSynchronize(stage_done_));  // every earlier copy is done
      stage_head_ = 0;
    }
    std::memcpy(stage_ + stage_head_, src, n);
    FSR_CUDA_CHECK(cudaMemcpyAsync(dst, stage_ + stage_head_, n, cudaMemcpyHostToDevice, stream_));
    FSR_CUDA_CHECK(cudaEventRecord(stage_done_, stream_));
    stage_head_ += (n + 255) / 256 * 256;
  }
  void download(void* dst, const void* src, size_t n) override {
    if (n) FSR_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, stream_));
    FSR_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void zero(void* p, size_t n) override {
    if (n) FSR_CUDA_CHECK(cudaMemsetAsync(p, 0, n, stream_));
  }
  void copy(void* dst, const void* src, size_t n) override {
    if (n) FSR_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, stream_));
  }
  void synchronize() override { FSR_CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  void set_precision(Precision p) override { bf16_ = p == Precision::BF16; }
  void set_threads(int) override {}
  int threads() const override { return 1; }

  void embedding_forward(float* x, const int32_t* items, const int32_t* pos, const float* E,
                         const float* P, int R, int C, float scale, float p, uint64_t key) override {
    cuda::embedding_forward(x, items, pos, E, P, R, C, scale, p, key, stream_);
  }
  void embedding_backward(float* dE, float* dP, const float* dx, const int32_t* items,
                          const int32_t* pos, int R, int C, float scale, float p,
                          uint64_t key) override {
    cuda::embedding_backward(dE, dP, dx, items, pos, R, C, scale, p, key, stream_);
  }
  void layernorm_forward(float* out, float* mean, float* rstd, const float* in, const float* g,
                         const float* b, int R, int C, float eps) override {
    cuda::layernorm_forward(out, mean, rstd, in, g, b, R, C, eps, stream_);
  }
  void residual_layernorm_forward(float* sum, float* out, float* mean, float* rstd, const float* a,
                                  const float* b, float p, uint64_t key, const float* g,
                                  const float* beta, int R, int C, float eps) override {
    cuda::residual_layernorm_forward(sum, out, mean, rstd, a, b, p, key, g, beta, R, C, eps,
                                     stream_);
  }
  void layernorm_backward(float* din, float* dg, float* db, const float* dout, const float* in,
                          const float* mean, const float* rstd, const float* g, int R, int C,
                          bool accumulate) override {
    cuda::layernorm_backward(din, dg, db, dout, in, mean, rstd, g, R, C, accumulate, stream_);
  }
  void linear_forward(float* out, const float* in, const float* W, const float* b, int R, int I,
                      int O, bool relu, float p, uint64_t key) override {
    cuda::linear_forward(blas_, out, in, W, b, R, I, O, relu, p, key, bf16_scratch(R, I, O),
                         stream_);
  }
  void linear_backward(float* din, float* dW, float* db, const float* dout, const float* in,
                       const float* W, int R, int I, int O, bool accumulate) override {
    cuda::linear_backward(blas_, din, dW, db, dout, in, W, R, I, O, accumulate,
                          bf16_scratch(R, I, O), stream_);
  }
  void dropout_forward(float* out, const float* in, size_t n, float p, uint64_t key) override {
    cuda::dropout_forward(out, in, n, p, key, stream_);
  }
  void dropout_backward(float* din, const float* dout, const float* relu_out, size_t n, float p,
                        uint64_t key) override {
    cuda::dropout_backward(din, dout, relu_out, n, p, key, stream_);
  }
  void attention_forward(float* O, float* lse, const float* Q, int ldq, const float* K,
                         const float* V, int ldkv, const int32_t* cu, int B, int H, int D, int T,
                         int n_max, float p, uint64_t key) override {
    cuda::attention_forward(O, lse, Q, ldq, K, V, ldkv, cu, B, H, D, T, n_max, p, key, stream_);
  }
  void attention_backward(float* dQ, float* dK, float* dV, const float* dO, const float* O,
                          const float* Q, int ldq, const float* K, const float* V, int ldkv,
                          const float* lse, const int32_t* cu, int B, int H, int D, int T,
                          int n_max, float p, uint64_t key) override {
    cuda::attention_backward(dQ, dK, dV, dO, O, Q, ldq, K, V, ldkv, lse, cu, B, H, D, T, n_max, p,
                             key, stream_);
  }
  void attention_last_forward(float* O, const float* Q, int ldq, const float* K, const float* V,
                              int ldkv, const int32_t* cu, int B, int H, int D) override {
    cuda::attention_last_forward(O, Q, ldq, K, V, ldkv, cu, B, H, D, stream_);
  }
  void gather_rows(float* out, const float* in, const int32_t* rows, int n, int C) override {
    cuda::gather_rows(out, in, rows, n, C, stream_);
  }
  size_t loss_workspace(LossKind kind, int R, int C, int V, int N) override {
    switch (kind) {
      case LossKind::BCE: return cuda::bce_workspace(R, C);
      case LossKind::SampledSoftmax: return cuda::sampled_softmax_workspace(R, C, N);
      case LossKind::Softmax: return cuda::softmax_workspace(R, C, V);
    }
    return 0;
  }
  void loss(LossKind kind, float* loss, float* dh, float* dE, const float* h, const float* E,
            const int32_t* targets, const int32_t* negatives, int R, int C, int V, int N,
            float grad_scale, float* workspace) override {
    switch (kind) {
      case LossKind::BCE:
        cuda::bce_loss(loss, dh, dE, h, E, targets, negatives, R, C, grad_scale, workspace, stream_);
        break;
      case LossKind::SampledSoftmax:
        cuda::sampled_softmax_loss(loss, dh, dE, h, E, targets, negatives, R, C, N, grad_scale,
                                   workspace, stream_);
        break;
      case LossKind::Softmax:
        cuda::softmax_loss(loss, dh, dE, h, E, targets, R, C, V, grad_scale, workspace, stream_);
        break;
    }
  }
  void adamw_step(float* params, const float* grads, float* m, float* v, size_t n, size_t n_decay,
                  float lr, float beta1, float beta2, float eps, float weight_decay,
                  int64_t step) override {
    cuda::adamw_step(params, grads, m, v, n, n_decay, lr, beta1, beta2, eps, weight_decay, step,
                     stream_);
  }
  void topk(int32_t* ids, float* scores, const float* h, const float* E, const int32_t* excl,
            const int64_t* excl_off, int B, int C, int V, int K) override {
    cuda::topk_forward(ids, scores, h, E, excl, excl_off, B, C, V, K, stream_);
  }

 private:
  // In bf16, device room for a product's operands rounded to bfloat16 (null in fp32),
  // grown on demand with a quarter to spare (batches vary in rows).
  uint16_t* bf16_scratch(int R, int I, int O) {
    if (!bf16_) return nullptr;
    const size_t need = cuda::linear_bf16_scratch_bytes(R, I, O);
    if (need > bf16_cap_) {
      release(bf16_buf_);
      bf16_buf_ = nullptr;
      bf16_cap_ = 0;
      bf16_buf_ = alloc(need + need / 4);
      bf16_cap_ = need + need / 4;
    }
    return static_cast<uint16_t*>(bf16_buf_);
  }

  bool bf16_ = false;  // the linear layers' products in bf16 (Precision::BF16)
  void* bf16_buf_ = nullptr;
  size_t bf16_cap_ = 0;
  static constexpr size_t kStageBytes = size_t(64) << 20;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  char* stage_ = nullptr;  // pinned staging ring of upload
  size_t stage_head_ = 0;
  cudaEvent_t stage_done_ = nullptr;  // recorded after the latest copy out of the ring
  cublasHandle_t blas_ = nullptr;
};

void put(char* buf, size_t n, const std::string& s) {
  if (!buf || !n) return;
  std::snprintf(buf, n, "%s", s.c_str());
}

}  // namespace
}  // namespace fsr

// The plugin's two entry points (C linkage, looked up by the registry with dlsym).
extern "C" __attribute__((visibility("default"))) int fsr_cuda_probe(char* why, size_t n) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    fsr::put(why, n, std::string("no usable CUDA device: ") + cudaGetErrorString(err));
    return 0;
  }
  if (count < 1) {
    fsr::put(why, n, "no CUDA device found");
    return 0;
  }
  return 1;
}

extern "C" __attribute__((visibility("default"))) fsr::Backend* fsr_cuda_create() {
  return new fsr::CudaBackend();
}
