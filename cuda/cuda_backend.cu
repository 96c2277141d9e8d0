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

// Makes `device` the calling thread's current GPU for one call and puts back the one it
// had: a thread's current device is the CUDA runtime's per-thread state, and a model on
// GPU N may be called from any thread (a server's pool), beside code using other GPUs.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : want_(device) {
    FSR_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != want_) FSR_CUDA_CHECK(cudaSetDevice(want_));
  }
  ~DeviceGuard() {
    if (prev_ != want_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0, want_;
};

class CudaBackend final : public Backend {
 public:
  // device: the GPU's index, or -1 for the calling thread's current one.
  explicit CudaBackend(int device) {
    if (device < 0) FSR_CUDA_CHECK(cudaGetDevice(&device));
    device_ = device;
    DeviceGuard on(device_);
    FSR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    if (cublasCreate(&blas_) != CUBLAS_STATUS_SUCCESS) {
      cudaStreamDestroy(stream_);
      throw std::runtime_error("cuda: cublasCreate failed (is cuBLAS installed and a GPU usable?)");
    }
    cublasSetStream(blas_, stream_);
    // The bf16 products take bfloat16 operands (rounded by our own kernel) with fp32 sums;
    // pedantic math keeps cuBLAS from choosing any other arithmetic for them.
    cublasSetMathMode(blas_, CUBLAS_PEDANTIC_MATH);
    ctx_.stream = stream_;
    ctx_.blas = blas_;
    ctx_.bf16_scratch = &bf16_scratch_;
  }
  ~CudaBackend() override {
    int prev = device_;
    cudaGetDevice(&prev);
    if (prev != device_) cudaSetDevice(device_);
    if (stream_) cudaStreamSynchronize(stream_);
    bf16_scratch_.reset();
    if (stage_) cudaFreeHost(stage_);
    if (stage_done_) cudaEventDestroy(stage_done_);
    if (blas_) cublasDestroy(blas_);
    if (stream_) cudaStreamDestroy(stream_);
    if (prev != device_) cudaSetDevice(prev);
  }
  std::string name() const override { return "cuda"; }
  std::string unsupported(int T, int D) const override {
    return cuda::attention_unsupported(T, D);
  }
  int device_index() const override { return device_; }
  std::string check_memory(const void* p, size_t n) const override {
    if (!n) return {};
    DeviceGuard on(device_);
    const char* ends[2] = {static_cast<const char*>(p), static_cast<const char*>(p) + n - 1};
    for (const char* q : ends) {
      char at[32];
      std::snprintf(at, sizeof at, "%p", (const void*)q);
      cudaPointerAttributes a{};
      const cudaError_t err = cudaPointerGetAttributes(&a, q);
      if (err != cudaSuccess) {
        cudaGetLastError();
        return detail::cat("address ", at, " is not CUDA memory (",
                           cudaGetErrorString(err), ")");
      }
      if (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged)
        return detail::cat("address ", at, " is host memory, not memory of GPU ",
                           device_);
      if (a.device != device_)
        return detail::cat("the array is on GPU ", a.device, ", the model on GPU ", device_);
    }
    return {};
  }
  // About 1 GB of inference activations at C = 64: thousands of sessions per forward.
  size_t inference_rows() const override { return size_t(1) << 17; }

  void* alloc(size_t bytes) override {
    DeviceGuard on(device_);
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
    DeviceGuard on(device_);
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
    DeviceGuard on(device_);
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
    DeviceGuard on(device_);
    if (n) FSR_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, stream_));
    FSR_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void zero(void* p, size_t n) override {
    DeviceGuard on(device_);
    if (n) FSR_CUDA_CHECK(cudaMemsetAsync(p, 0, n, stream_));
  }
  void copy(void* dst, const void* src, size_t n) override {
    DeviceGuard on(device_);
    if (n) FSR_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, stream_));
  }
  void synchronize() override {
    DeviceGuard on(device_);
    FSR_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void set_precision(Precision p) override { ctx_.precision = p; }
  void set_threads(int n) override { FSR_REQUIRE(n >= 0, "num_threads must be >= 0, got ", n); }
  int threads() const override { return 1; }

  // Every op of ops.def: the CUDA function with the context first.
#define FSR_OP(ret, name, params, args) \
  ret name params override {                      \
    DeviceGuard on(device_);                      \
    return cuda::name(ctx_, FSR_EXPAND args);     \
  }
#include "fastsasrec/ops.def"
#undef FSR_OP

 private:
  // Device room for the bf16 operand copies (linear layers, softmax losses), grown on
  // demand with a quarter to spare (batches vary in rows).
  class GrowingScratch final : public cuda::Scratch {
   public:
    explicit GrowingScratch(CudaBackend& be) : be_(be) {}
    ~GrowingScratch() override { reset(); }
    void reset() {
      if (p_) be_.release(p_);
      p_ = nullptr;
      cap_ = 0;
    }
    void* get(size_t bytes) override {
      if (bytes > cap_) {
        be_.release(p_);
        p_ = nullptr;
        cap_ = 0;
        p_ = be_.alloc(bytes + bytes / 4);
        cap_ = bytes + bytes / 4;
      }
      return p_;
    }

   private:
    CudaBackend& be_;
    void* p_ = nullptr;
    size_t cap_ = 0;
  };

  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  cuda::Context ctx_;  // stream_, blas_, the precision and bf16_scratch_, for every op
  GrowingScratch bf16_scratch_{*this};
  static constexpr size_t kStageBytes = size_t(64) << 20;
  int device_ = 0;
  char* stage_ = nullptr;  // pinned staging ring of upload
  size_t stage_head_ = 0;
  cudaEvent_t stage_done_ = nullptr;  // recorded after the latest copy out of the ring
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

// device: a GPU's index, or -1 for the calling thread's current one.
extern "C" __attribute__((visibility("default"))) fsr::Backend* fsr_cuda_create(int device) {
  return new fsr::CudaBackend(device);
}

// How many GPUs the runtime sees (0 when none, or no driver).
extern "C" __attribute__((visibility("default"))) int fsr_cuda_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}
