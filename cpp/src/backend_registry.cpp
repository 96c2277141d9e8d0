// The one place that knows which backends were compiled in.
#include "fastsasrec/backend.h"
#include "fastsasrec/common.h"

namespace fsr {

std::unique_ptr<Backend> make_cpu_backend();

bool backend_available(const std::string& device, std::string* why_not) {
  if (device == "cpu") return true;
  if (device == "cuda") {
    if (why_not) *why_not = "the CUDA backend is not compiled into this build of fastsasrec";
    return false;
  }
  if (why_not) *why_not = "unknown device '" + device + "' (expected 'cpu' or 'cuda')";
  return false;
}

std::unique_ptr<Backend> make_backend(const std::string& device) {
  std::string why;
  if (!backend_available(device, &why)) throw ValueError("device='" + device + "': " + why);
  return make_cpu_backend();
}

}  // namespace fsr
