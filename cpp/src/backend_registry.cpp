// The one place that knows which backends were compiled in.  The CUDA backend lives in
// its own shared library (libfastsasrec_cuda.so, next to this module), loaded on first
// use: a machine without a GPU, a driver or cuBLAS imports fastsasrec all the same and
// gets the reason back here.
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
  Backend* (*create)() = nullptr;
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
    plugin.create = reinterpret_cast<Backend* (*)()>(dlsym(plugin.handle, "fsr_cuda_create"));
    if (!plugin.probe || !plugin.create) plugin.error = "the CUDA backend library is incomplete";
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

bool backend_available(const std::string& device, std::string* why_not) {
  if (device == "cpu") return true;
  if (device == "cuda") return cuda_usable(why_not);
  if (why_not) *why_not = "unknown device '" + device + "' (expected 'cpu' or 'cuda')";
  return false;
}

std::unique_ptr<Backend> make_backend(const std::string& device) {
  std::string why;
  if (!backend_available(device, &why)) throw ValueError("device='" + device + "': " + why);
  if (device == "cpu") return make_cpu_backend();
#ifdef FSR_WITH_CUDA
  return std::unique_ptr<Backend>(cuda_plugin().create());
#else
  throw ValueError("device='cuda': the CUDA backend is not compiled into this build");
#endif
}

}  // namespace fsr
