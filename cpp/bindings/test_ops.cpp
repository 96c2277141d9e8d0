// _core.Ops, the raw ops for the tests: _core.Ops(device) has one method per op of ops.def, taking that op's
// arguments in order.  A pointer argument is a C-contiguous numpy array of exactly its
// pointee's dtype, or None (null).  Each array is copied into backend memory before the
// call; the arrays of the non-const pointers (the op's outputs) are copied back into the
// same numpy arrays after it, so "+=" outputs accumulate onto what the caller put there.
// No shapes are checked: these are the raw ops, for tests against the float64 reference,
// compiled in only by a test build (cmake -DFASTSASREC_TEST_OPS=ON): an index or size
// past an array's end reads or writes outside it, so a release module never binds them:
// CMakeLists.txt compiles this file only then, and defines FSR_TEST_OPS.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "bind.h"
#include "convert.h"
#include "cpu/fast_math.h"
#include "cpu/gemm_rows.h"
#include "cpu/keep_bits.h"
#include "cpu/ops.h"
#include "fastsasrec/backend.h"
#include "fastsasrec/config.h"
#include "fastsasrec/rng.h"

namespace fsr::bind {

namespace {

template <typename T>
const char* pointee_name() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  else if constexpr (std::is_same_v<T, int32_t>) return "int32";
  else return "int64";
}

// Backend memory of n values of T, released when it goes out of scope.
template <typename T>
class Buffer {
 public:
  Buffer(Backend& be, size_t n) : be_(&be), n_(n), p_(static_cast<T*>(be.alloc(n * sizeof(T)))) {}
  Buffer(Buffer&& o) noexcept : be_(o.be_), n_(o.n_), p_(o.p_) { o.p_ = nullptr; }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer& operator=(Buffer&&) = delete;
  ~Buffer() {
    if (p_) be_->release(p_);
  }
  T* get() const { return p_; }

 private:
  Backend* be_;
  size_t n_;
  T* p_;
};

// One argument of an op, converted from Python: a scalar, or an array put in backend memory
// (and, for an output, fetched back by finish()).
template <typename A>
struct OpArg {
  A value;
  OpArg(Backend&, py::handle h, const std::string& where) {
    try {
      value = h.cast<A>();
    } catch (const py::cast_error&) {
      throw ValueError(where + " must be a " + (std::is_same_v<A, bool> ? "bool" : std::is_integral_v<A> ? "int" : "float") +
                       ", got " + type_name(h));
    }
  }
  A get() const { return value; }
  void finish(Backend&) {}
};
template <typename T>
struct OpArg<T*> {
  using V = std::remove_const_t<T>;
  static constexpr bool kOutput = !std::is_const_v<T>;
  py::array array;
  std::unique_ptr<Buffer<V>> buf;
  OpArg(Backend& be, py::handle h, const std::string& where) {
    if (h.is_none()) return;
    if (!py::isinstance<py::array>(h))
      throw ValueError(detail::cat(where, " must be a numpy array of ", pointee_name<V>(), " or None, got ",
                                   type_name(h)));
    array = py::reinterpret_borrow<py::array>(h);
    if (!array.dtype().equal(py::dtype::of<V>()))
      throw ValueError(detail::cat(where, " must have dtype ", pointee_name<V>(), ", got ",
                                   std::string(py::str(array.dtype()))));
    if (!(array.flags() & py::array::c_style))
      throw ValueError(where + " must be C-contiguous");
    if (kOutput && !array.writeable()) throw ValueError(where + " is an output: it must be writeable");
    buf = std::make_unique<Buffer<V>>(be, (size_t)array.size());
    be.upload(buf->get(), array.data(), (size_t)array.size() * sizeof(V));
  }
  T* get() const { return buf ? buf->get() : nullptr; }
  void finish(Backend& be) {
    if (kOutput && buf) be.download(array.mutable_data(), buf->get(), (size_t)array.size() * sizeof(V));
  }
};

template <typename Ret, typename... A, size_t... I>
py::object call_op(Backend& be, Ret (Backend::*op)(A...), const char* name, const py::args& args,
                   std::index_sequence<I...>) {
  FSR_REQUIRE(args.size() == sizeof...(A), name, " takes ", sizeof...(A), " arguments, got ",
              args.size());
  std::tuple<OpArg<A>...> conv{
      OpArg<A>(be, args[I], detail::cat(name, ": argument ", I))...};
  if constexpr (std::is_void_v<Ret>) {
    (be.*op)(std::get<I>(conv).get()...);
    (std::get<I>(conv).finish(be), ...);
    return py::none();
  } else {
    const Ret r = (be.*op)(std::get<I>(conv).get()...);
    (std::get<I>(conv).finish(be), ...);
    return py::cast(r);
  }
}

template <typename Ret, typename... A>
py::object call_op(Backend& be, Ret (Backend::*op)(A...), const char* name, const py::args& args) {
  return call_op(be, op, name, args, std::index_sequence_for<A...>{});
}

class Ops {
 public:
  Ops(const std::string& device, const std::string& precision, int threads)
      : be_(make_backend(device)) {
    be_->set_precision(parse_name<Precision>("precision", precision));
    be_->set_threads(threads);
  }
  std::string device() const { return be_->name(); }
  int threads() const { return be_->threads(); }
  Backend& backend() { return *be_; }

 private:
  std::unique_ptr<Backend> be_;
};

using F32 = py::array_t<float, py::array::c_style>;

F32 uniform(uint64_t key, int64_t n) {
  FSR_REQUIRE(n >= 0, "n must be >= 0, got ", n);
  F32 out({(py::ssize_t)n});
  for (int64_t e = 0; e < n; ++e) out.mutable_data()[e] = rng_uniform(key, (uint64_t)e);
  return out;
}

// The CPU's dropout multipliers of counters [counter, counter + n) for rate p, as its masked
// loops draw them (cpu/keep_bits.h, 32 at a time, from any counter), or element by element
// where the build has no AVX-512 BW.
F32 dropout_keep_scales(uint64_t key, float p, uint64_t counter, int64_t n) {
  FSR_REQUIRE(n >= 0, "n must be >= 0, got ", n);
  FSR_REQUIRE(p > 0.f && p < 1.f, "p must be in (0, 1), got ", p);
  F32 out({(py::ssize_t)n});
  float* o = out.mutable_data();
  const uint32_t thr = dropout_threshold(p);
  const float inv_keep = 1.f / (1.f - p);
  std::vector<float> ones((size_t)n, 1.f);
  fsr::cpu::scale_kept(o, ones.data(), (size_t)n, key, thr, counter, inv_keep);
  return out;
}

F32 dropout_uniform(uint64_t key, int64_t n) {
  FSR_REQUIRE(n >= 0, "n must be >= 0, got ", n);
  F32 out({(py::ssize_t)n});
  for (int64_t e = 0; e < n; ++e) out.mutable_data()[e] = fsr::dropout_uniform(key, (uint64_t)e);
  return out;
}

// fast_exp element by element, and exp_sum_inplace on x - m as one row (the vector form on
// AVX-512 builds): (exp element-wise, the row's exp, the row's sum).
std::tuple<F32, F32, float> fast_exp(const F32& x, float m) {
  const int64_t n = x.size();
  F32 one({(py::ssize_t)n}), row({(py::ssize_t)n});
  for (int64_t e = 0; e < n; ++e) one.mutable_data()[e] = cpu::fast_exp(x.data()[e] - m);
  std::copy(x.data(), x.data() + n, row.mutable_data());
  const float sum = cpu::exp_sum_inplace(row.mutable_data(), (int)n, m);
  return {one, row, sum};
}

// round_bf16 element by element, and the vector form (round_bf16_lanes, 16 at a time, on
// AVX-512 builds; the scalar again elsewhere): (scalar, vector).
std::tuple<F32, F32> round_bf16(const F32& x) {
  const int64_t n = x.size();
  F32 one({(py::ssize_t)n}), vec({(py::ssize_t)n});
  for (int64_t e = 0; e < n; ++e) one.mutable_data()[e] = cpu::round_bf16(x.data()[e]);
#if defined(__AVX512F__)
  for (int64_t e = 0; e < n; e += 16) {
    const __mmask16 k = cpu::head_lanes((int)std::min<int64_t>(16, n - e));
    _mm512_mask_storeu_ps(vec.mutable_data() + e, k,
                          cpu::round_bf16_lanes(_mm512_maskz_loadu_ps(k, x.data() + e)));
  }
#else
  for (int64_t e = 0; e < n; ++e) vec.mutable_data()[e] = cpu::round_bf16(x.data()[e]);
#endif
  return {one, vec};
}

// cpu::gemm_bf16 on a chosen path (native: the AVX-512 BF16 kernel; else the fallback) over
// `threads` threads, on numpy arrays in place (C: += / = as beta says).
void gemm_bf16(bool native, int threads, bool ta, bool tb, int M, int N, int K, float alpha,
               const F32& A, int lda, const F32& B, int ldb, float beta, F32& C, int ldc) {
  cpu::gemm_bf16_path(native, threads, ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta,
                      C.mutable_data(), ldc);
}

// cpu::gemm, the fp32 product the bf16 one is measured against.
void gemm_fp32(int threads, bool ta, bool tb, int M, int N, int K, float alpha, const F32& A, int lda,
               const F32& B, int ldb, float beta, F32& C, int ldc) {
  cpu::gemm(threads, ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.mutable_data(), ldc);
}

// cpu::gemm_rows, the engine's register-blocked fp32 kernel (AVX-512 or AVX2, whichever this
// build has), on the calling thread: C = alpha a B + beta C, a(i, k) = A[i sar + k sak].
void gemm_rows(int M, int N, int K, float alpha, const F32& A, int sar, int sak, const F32& B, int ldb,
               float beta, F32& C, int ldc) {
  if (!cpu::kGemmRows) throw ValueError("gemm_rows: this build has no register-blocked kernel (no AVX-512 or AVX2)");
  cpu::gemm_rows(M, N, K, alpha, A.data(), sar, sak, B.data(), ldb, beta, C.mutable_data(), ldc);
}

}  // namespace

void bind_ops(py::module_& m) {
  py::class_<Ops> cls(m, "Ops",
                      "The ops of one device's backend (the list in ops.def), one by one, for "
                      "tests against the float64 NumPy reference.  Ops(device) raises "
                      "ValueError when the device is unusable.");
  cls.def(py::init<const std::string&, const std::string&, int>(), py::arg("device"),
          py::arg("precision") = "fp32", py::arg("threads") = 0)
      .def_property_readonly("device", &Ops::device)
      .def_property_readonly("threads", &Ops::threads)
      .def_static("rng_key", &rng_key, py::arg("seed"), py::arg("stream"))
      .def_static("uniform", &uniform, py::arg("key"), py::arg("n"))
      .def_static("dropout_uniform", &dropout_uniform, py::arg("key"), py::arg("n"))
      .def_static("dropout_keep_scales", &dropout_keep_scales, py::arg("key"), py::arg("p"),
                  py::arg("counter"), py::arg("n"))
      .def_static("round_bf16", &round_bf16, py::arg("x"),
                  "round_bf16 element by element, and its 16-lane form: (scalar, vector).")
      .def_static("fast_exp", &fast_exp, py::arg("x"), py::arg("m"),
                  "fast_exp(x - m) element by element, and exp_sum_inplace's row and sum.")
      .def_static("gemm_bf16", &gemm_bf16, py::arg("native"), py::arg("threads"), py::arg("trans_a"),
                  py::arg("trans_b"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("alpha"),
                  py::arg("A"), py::arg("lda"), py::arg("B"), py::arg("ldb"), py::arg("beta"),
                  py::arg("C"), py::arg("ldc"),
                  "The CPU's bf16 product C = alpha op(A) op(B) + beta C (row-major, in place), on "
                  "the AVX-512 BF16 kernel (native=True) or the fallback; sizes unchecked.")
      .def_static("gemm", &gemm_fp32, py::arg("threads"), py::arg("trans_a"), py::arg("trans_b"),
                  py::arg("M"), py::arg("N"), py::arg("K"), py::arg("alpha"), py::arg("A"),
                  py::arg("lda"), py::arg("B"), py::arg("ldb"), py::arg("beta"), py::arg("C"),
                  py::arg("ldc"), "The CPU's fp32 product (sgemm split over threads), in place.")
      .def_static("gemm_rows", &gemm_rows, py::arg("M"), py::arg("N"), py::arg("K"), py::arg("alpha"),
                  py::arg("A"), py::arg("sar"), py::arg("sak"), py::arg("B"), py::arg("ldb"),
                  py::arg("beta"), py::arg("C"), py::arg("ldc"),
                  "gemm_rows (gemm_rows.h) in place on one thread; sizes unchecked.")
      .def_static("gemm_rows_kernel", [] { return cpu::kGemmRowsAvx512 ? "avx512" : cpu::kGemmRows ? "avx2" : ""; },
                  "Which gemm_rows kernel this build has: 'avx512', 'avx2' or '' (none).")
      .def_static("gemm_bf16_native", &cpu::gemm_bf16_native,
                  "Whether the CPU's bf16 products run the AVX-512 BF16 kernel here.");
#define FSR_OP(ret, name, params, arg_names)                                             \
  cls.def(                                                                             \
      #name,                                                                           \
      [](Ops& o, const py::args& a) { return call_op(o.backend(), &Backend::name, #name, a); }, \
      #name #params);
#include "fastsasrec/ops.def"
#undef FSR_OP
}

}  // namespace fsr::bind
