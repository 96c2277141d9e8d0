// The CUDA ops: the functions of ops.def (the list, names and argument lists), each with the
// CUDA context first, and the same semantics as their CPU twins (read the header of
// cpp/src/cpu/<stem>.cpp or of cuda/<stem>.cu for shapes and "=" versus "+=").  Pointers are
// device memory.  Every op is tested against its CPU twin and the float64 reference;
// accumulations into item rows use atomics, so their rounding order (not their value
// beyond float32 noise) may differ from the CPU.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "fastsasrec/backend.h"  // Precision, FSR_EXPAND

namespace fsr::cuda {

// Device memory that grows on demand, owned by the backend.
class Scratch {
 public:
  virtual ~Scratch() = default;
  virtual void* get(size_t bytes) = 0;
};

// What every CUDA op runs with, owned by the backend.
struct Context {
  cudaStream_t stream = nullptr;          // every launch and copy goes to this stream
  cublasHandle_t blas = nullptr;          // on `stream`: the bf16 products
  Precision precision = Precision::FP32;  // of the linear layers' and softmax losses' products
  Scratch* bf16_scratch = nullptr;        // their bf16 operand copies
};

#define FSR_OP(ret, name, params, args) ret name(const Context& ctx, FSR_EXPAND params);
#include "fastsasrec/ops.def"
#undef FSR_OP

// attention.cu: why the CUDA attention cannot run sequences of T positions and heads of
// width D (empty: it can).
std::string attention_unsupported(int T, int D);

// linear.cu: the bytes of bf16 operand scratch a product of (R, I, O) needs.
size_t linear_bf16_scratch_bytes(int R, int I, int O);
// linear.cu: under ctx.precision BF16, a (na floats) then b (nb floats) rounded to bfloat16
// (the CPU's round_bf16), as floats, in the context's scratch; null under fp32.  The softmax
// losses' operands h and E (the whole table: one pass, as AdamW's).
const float* bf16_copies(const Context& ctx, const float* a, size_t na, const float* b, size_t nb);

}  // namespace fsr::cuda
