#!/usr/bin/env bash
# Builds libfastsasrec_cuda.so from cuda/*.cu for the CPU emulator, into OUT_DIR:
#   tools/cuda_emulator/build.sh OUT_DIR
# Put the result next to fastsasrec's _core module (in a copy of the installed package) and
# device="cuda" runs the real kernels' code on the CPU, one block at a time; see
# scripts/emulated_gpu_tests.sh.  It checks what the kernels compute, not how fast, and
# needs only g++ (C++17) and python3.  EMU_CXXFLAGS adds compiler flags (for instance
# "-fsanitize=address -fno-omit-frame-pointer" to have every kernel's memory accesses
# checked, the emulator's counterpart of compute-sanitizer's memcheck).
set -euo pipefail
OUT=${1:?usage: build.sh OUT_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
mkdir -p "$OUT/src"
CXX=${CXX:-g++}
FLAGS=(-std=c++17 -O2 -fPIC -w -I"$HERE/include" -I"$ROOT/cpp/include" -I"$ROOT")
read -r -a EXTRA <<< "${EMU_CXXFLAGS:-}"
FLAGS+=("${EXTRA[@]}")
objs=()
for cu in "$ROOT"/cuda/*.cu; do
  name=$(basename "$cu" .cu)
  python3 "$HERE/translate.py" "$cu" "$ROOT" > "$OUT/src/$name.cc"
  objs+=("$OUT/src/$name.o")
done
printf '%s\n' "${objs[@]}" | xargs -P "$(nproc)" -I{} sh -c \
  'src="${1%.o}.cc"; shift; exec "$@" -c "$src" -o "${src%.cc}.o"' _ {} "$CXX" "${FLAGS[@]}"
"$CXX" -shared "${EXTRA[@]}" -o "$OUT/libfastsasrec_cuda.so" "${objs[@]}"
echo "$OUT/libfastsasrec_cuda.so"
