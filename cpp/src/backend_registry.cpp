// The one place that knows which backends were compiled in.  The CUDA backend lives in
// its own shared library (libfastsasrec_cuda.so, next to this module), loaded on first
// use: a machine without a GPU, a driver or cuBLAS imports fastsasrec all the same and
// gets the reason back here.
#include <cstdint>
#include <string>

#include "fastsasrec/backend.h"
#include "fastsasrec/common.h"

#ifdef FSR_WITH_CUDA
#include <dlfcn.h>

#include <mutex>
#endif

namespace fsr {

std::unique_ptr<Backend> make_cpu_backend();

namespace {

#ifdef FSR_WITH_CUDA
struct CudaPlugin {
  void* handle = nullptr;
  int (*probe)(char*, size_t) = nullptr;
  Backend* (*create)(int) = nullptr;
  int (*count)() = nullptr;
  std::string error;
};

// Loads libfastsasrec_cuda.so from the folder of this module, once.
CudaPlugin& cuda_plugin() {
  static CudaPlugin plugin;
  static std::once_flag once;
  std::call_once(once, [] {
    Dl_info info;
    std::string dir = ".";
    if (dladdr(reinterpret_cast<void*>(&cuda_plugin), &info) && info.dli_fname) {
      dir = info.dli_fname;
      const size_t slash = dir.find_last_of('/');
      dir = slash == std::string::npos ? "." : dir.substr(0, slash);
    }
    const std::string path = dir + "/libfastsasrec_cuda.so";
    plugin.handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!plugin.handle) {
      const char* e = dlerror();
      plugin.error = std::string("the CUDA backend library could not be loaded (") +
                     (e ? e : path) + "); is cuBLAS installed (pip install nvidia-cublas)?";
      return;
    }
    plugin.probe = reinterpret_cast<int (*)(char*, size_t)>(dlsym(plugin.handle, "fsr_cuda_probe"));
    plugin.create = reinterpret_cast<Backend* (*)(int)>(dlsym(plugin.handle, "fsr_cuda_create"));
    plugin.count = reinterpret_cast<int (*)()>(dlsym(plugin.handle, "fsr_cuda_count"));
    if (!plugin.probe || !plugin.create || !plugin.count)
      plugin.error = "the CUDA backend library is incomplete";
  });
  return plugin;
}
#endif

bool cuda_usable(std::string* why_not) {
#ifdef FSR_WITH_CUDA
  CudaPlugin& p = cuda_plugin();
  if (!p.error.empty()) {
    if (why_not) *why_not = p.error;
    return false;
  }
  char buf[512] = {0};
  if (!p.probe(buf, sizeof buf)) {
    if (why_not) *why_not = buf;
    return false;
  }
  return true;
#else
  if (why_not) *why_not = "the CUDA backend is not compiled into this build of fastsasrec";
  return false;
#endif
}

}  // namespace

// "cuda" -> -1 (the current GPU), "cuda:N" -> N; -2 for anything else.
static int cuda_index(const std::string& device) {
  if (device == "cuda") return -1;
  if (device.rfind("cuda:", 0) != 0 || device.size() == 5 || device.size() > 14) return -2;
  int64_t n = 0;
  for (size_t i = 5; i < device.size(); ++i) {
    if (device[i] < '0' || device[i] > '9') return -2;
    n = n * 10 + (device[i] - '0');
  }
  return n <= INT32_MAX ? (int)n : -2;
}

int cuda_device_count() {
#ifdef FSR_WITH_CUDA
  std::string why;
  if (!cuda_usable(&why)) return 0;
  return cuda_plugin().count();
#else
  return 0;
#endif
}

bool backend_available(const std::string& device, std::string* why_not) {
  if (device == "cpu") return true;
  const int index = cuda_index(device);
  if (index == -2) {
    if (why_not) *why_not = "unknown device '" + device + "' (expected 'cpu', 'cuda' or 'cuda:N')";
    return false;
  }
  if (!cuda_usable(why_not)) return false;
  const int count = cuda_device_count();
  if (index >= count) {
    if (why_not)
      *why_not = detail::cat("GPU ", index, " does not exist: this machine has ", count,
                             count == 1 ? " GPU (cuda:0)" : " GPUs (cuda:0 .. cuda:" + std::to_string(count - 1) + ")");
    return false;
  }
  return true;
}

std::unique_ptr<Backend> make_backend(const std::string& device) {
  std::string why;
  if (!backend_available(device, &why)) throw ValueError("device='" + device + "': " + why);
  if (device == "cpu") return make_cpu_backend();
#ifdef FSR_WITH_CUDA
  return std::unique_ptr<Backend>(cuda_plugin().create(cuda_index(device)));
#else
  throw ValueError("device='" + device + "': the CUDA backend is not compiled into this build");
#endif
}

}  // namespace fsr
