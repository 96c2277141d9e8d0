// The Backend interface: memory and the ops, nothing else.  The model code (cpp/src/model*.cpp)
// is written once against it and never asks which backend it runs on.  Every pointer
// an op receives is backend memory (from alloc); host data crosses only through upload
// and download.  The ops are those of ops.def; their semantics ("=" overwrite, "+="
// accumulate) are documented in each op's CPU file, the CPU backend being the specification.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

// Unwraps a parenthesised list: FSR_EXPAND (a, b) is a, b (for the entries of ops.def).
#define FSR_EXPAND(...) __VA_ARGS__

namespace fsr {

enum class LossKind { BCE = 0, SampledSoftmax = 1, Softmax = 2, GBCE = 3 };
// Where the sampled softmax draws its N shared negatives from: the catalogue uniformly, the
// training targets' unigram distribution, the batch's own targets, or half each of the
// batch's targets and the catalogue.
enum class NegativeKind { Uniform = 0, Popularity = 1, InBatch = 2, Mixed = 3 };
// FP32: every product in fp32.  BF16: the operands of the linear layers' matrix products
// are rounded to bfloat16 (to nearest, ties to even) and their products summed in fp32;
// everything else (weights, activations, attention, losses, optimizer) stays fp32.
enum class Precision { FP32 = 0, BF16 = 1 };
// How an item's feature values' embeddings are pooled before they join its id embedding.
enum class FeaturePooling { Sum = 0, Mean = 1 };

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

  // Why this backend cannot run a model of sequences of T positions and heads of width D
  // (empty: it can).  Checked when a model is made, not at its first op.
  virtual std::string unsupported(int T, int D) const { return {}; }

  // The CUDA device the backend's memory lives on; -1 for host memory.
  virtual int device_index() const { return -1; }

  // Why bytes [p, p + n) given from outside (an address of a caller's array) are not this
  // backend's memory; empty when they are.  The host backend's memory is any host memory:
  // its callers pass arrays whose extent they have checked.  A device backend asks the
  // driver about both ends of the range.
  virtual std::string check_memory(const void* p, size_t n) const { return {}; }

  // ---- arithmetic of the linear layers' products (see Precision)
  virtual void set_precision(Precision p) = 0;

  // ---- threads of the backend's own parallel regions (the CPU's OpenMP threads; 0 = all
  // cores; a device backend has none and reports 1).  They belong to this backend, so to
  // one model: nothing process-wide is read or changed.
  virtual void set_threads(int n) = 0;
  virtual int threads() const = 0;

  // ---- ops: one pure virtual method per entry of ops.def (the list, with every op's
  // argument list and where its two implementations and their documentation live)
#define FSR_OP(ret, name, params, args) virtual ret name params = 0;
#include "fastsasrec/ops.def"
#undef FSR_OP
};

// "cpu" always exists; "cuda" when it was compiled in and a device is usable.
// Throws fsr::ValueError naming the device when it is unknown or unavailable.
std::unique_ptr<Backend> make_backend(const std::string& device);
bool backend_available(const std::string& device, std::string* why_not);
// GPUs the CUDA backend can use (0 without it, a driver or a GPU).
int cuda_device_count();

}  // namespace fsr
