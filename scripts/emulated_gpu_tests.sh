#!/usr/bin/env bash
# The GPU tests without a GPU: builds the CUDA backend's kernels for the CPU emulator
# (tools/cuda_emulator: every CUDA thread a fiber, one block at a time, cuBLAS replaced by
# plain float loops), puts it beside a copy of the installed fastsasrec, and runs the tests
# that use device="cuda" against it.  It checks what every kernel computes (against the CPU
# ops and the float64 reference, with the tolerances of the real runs) and that no thread
# reads shared memory before it is written (in one of the two thread orders); it says
# nothing about speed or races between blocks, and a GPU run (scripts/gpu_check.sh) stays
# the real check.  The pytest runs see FASTSASREC_EMULATED_GPU=1: the behavioural suites
# (test_estimator, test_use_cases) then run on "cuda" only their few small tests marked
# emulated_gpu (fit, recommend, recommend_batch, evaluate, save/load; see tests/conftest.py).
#   scripts/emulated_gpu_tests.sh [extra pytest arguments]
# Needs fastsasrec installed from a build with the CUDA backend compiled in (nvcc present at
# build time), g++ and python3.  FSR_EMU_REVERSE=1 runs each block's threads in reverse
# order; FSR_EMU_SMEM_OPTIN=101376 emulates a card with 99 KB of shared memory a block.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PKG=$("$PY" -c "import fastsasrec, os; print(os.path.dirname(fastsasrec.__file__))")
cp -rL "$PKG" "$WORK/fastsasrec"
"$ROOT/tools/cuda_emulator/build.sh" "$WORK/build" > /dev/null
cp "$WORK/build/libfastsasrec_cuda.so" "$WORK/fastsasrec/libfastsasrec_cuda.so"
# A second build under AddressSanitizer, where the compiler has it: every kernel's global
# and shared memory accesses checked (the counterpart of compute-sanitizer's memcheck).
CXX=${CXX:-g++}
ASAN_LIB=$("$CXX" -print-file-name=libasan.so)
ASAN_PKG=""
if [[ "$ASAN_LIB" == /* && -e "$ASAN_LIB" ]]; then
  EMU_CXXFLAGS="-fsanitize=address -fno-omit-frame-pointer" \
    "$ROOT/tools/cuda_emulator/build.sh" "$WORK/build_asan" > /dev/null
  mkdir -p "$WORK/asan"
  cp -r "$WORK/fastsasrec" "$WORK/asan/fastsasrec"
  cp "$WORK/build_asan/libfastsasrec_cuda.so" "$WORK/asan/fastsasrec/libfastsasrec_cuda.so"
  ASAN_PKG="$WORK/asan"
fi
BASE_PYTHONPATH=${PYTHONPATH:-}
export PYTHONPATH="$WORK${BASE_PYTHONPATH:+:$BASE_PYTHONPATH}"
"$PY" - <<'PY'
import sys
import fastsasrec
if not fastsasrec.cuda_available():
    fastsasrec.show_config()
    sys.exit("the CUDA backend is not usable: the installed fastsasrec must be built where "
             "nvcc is present (the emulator replaces the kernels' library, not the build)")
PY
cd "$ROOT"
export FASTSASREC_EMULATED_GPU=1
# test_ops*: every op on both devices; test_devices: the model on both devices, less the
# three ML-100K epochs (hours when every GPU thread is a fiber); then the estimator's and
# the use cases' emulated_gpu subset on "cuda".
# The op tests run twice, each block's threads in order (under AddressSanitizer where it
# was built; the Python interpreter is not instrumented, so the sanitizer and the C++
# runtime it intercepts are preloaded) and then in reverse.
if [[ -n "$ASAN_PKG" ]]; then
  LD_PRELOAD="$ASAN_LIB $("$CXX" -print-file-name=libstdc++.so)" ASAN_OPTIONS=detect_leaks=0 \
    PYTHONPATH="$ASAN_PKG${BASE_PYTHONPATH:+:$BASE_PYTHONPATH}" \
    "$PY" -m pytest -q -p no:faulthandler tests/test_ops*.py -k cuda "$@"
else
  "$PY" -m pytest -q tests/test_ops*.py -k cuda "$@"
fi
FSR_EMU_REVERSE=1 "$PY" -m pytest -q tests/test_ops*.py -k cuda "$@"
# Attention on a card with 99 KB of shared memory a block (32-row tiles for D > 64).
FSR_EMU_SMEM_OPTIN=101376 "$PY" -m pytest -q tests/test_ops.py -k "cuda and attention" "$@"
"$PY" -m pytest -q tests/test_devices.py tests/test_engine_safety.py -k "not three_epochs_on_movielens" "$@"
"$PY" -m pytest -q tests/test_training_jobs.py tests/test_feature_engine.py -k "cuda" "$@"
"$PY" -m pytest -q tests/test_estimator.py tests/test_use_cases.py -k cuda "$@"
