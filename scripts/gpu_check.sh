#!/usr/bin/env bash
# One command for a machine with a GPU (nvcc, cuBLAS, PyTorch, CMake, ninja; no network):
# builds fastsasrec with the CUDA backend, runs the tests (GPU ones included), runs
# compute-sanitizer memcheck on a small training run, runs the GPU benchmarks and prints
# a short table.  Logs go to $OUT (or ./gpu_check_out).  Aim: under 8 minutes.
#
# Python packages it needs that a GPU image may lack (scipy-openblas32) are installed from
# ./wheels when present: `pip download -d wheels scipy-openblas32` on a machine online.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
status=()
step() { local name="$1"; shift; local t0=$SECONDS
  if "$@" >"$OUT/$name.log" 2>&1; then status+=("$name|ok|$((SECONDS - t0))s"); else status+=("$name|FAILED (see $name.log)|$((SECONDS - t0))s"); fi
  tail -n 3 "$OUT/$name.log"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
$PY -c "import scipy_openblas32" 2>/dev/null || $PY -m pip install --no-index --find-links wheels scipy-openblas32 >"$OUT/wheels.log" 2>&1
CUBLAS_ROOT=$($PY -c "import nvidia, os; print(next(p for p in (os.path.join(d, s) for d in nvidia.__path__ for s in ('cu13', 'cublas')) if os.path.isdir(os.path.join(p, 'include'))))" 2>/dev/null)
export FASTSASREC_CUBLAS_ROOT="$CUBLAS_ROOT"

step build $PY -m pip install --no-build-isolation --no-deps -v . \
  -C cmake.define.FASTSASREC_CUDA=ON -C cmake.define.FASTSASREC_CUDA_ARCHITECTURES=90
step show_config $PY -c "import fastsasrec; fastsasrec.show_config()"
step tests $PY -m pytest tests -q -x -rs
step sanitizer compute-sanitizer --tool memcheck --error-exitcode 1 $PY -c "
import fastsasrec
from fastsasrec import SASRec
from fastsasrec.datasets import synthetic_store
s, _ = synthetic_store(300, 0)
m = SASRec(factors=32, max_seq=8, iterations=1, device='cuda', loss='sampled_softmax', n_negatives=16).fit(s)
for loss in ('bce', 'softmax'):
    SASRec(factors=32, max_seq=8, iterations=1, device='cuda', loss=loss).fit(s)
print(m.recommend_batch(s[:8], n=3)[0])
"
step bench_train $PY benchmarks/bench_train.py --device cuda --epochs 3 --default-seeds ""
step bench_score $PY benchmarks/bench_score.py --device cuda --sessions 65536 --items 1000000

echo
echo "| step | result | time |"
echo "|---|---|---|"
for s in "${status[@]}"; do echo "| ${s//|/ | } |"; done
echo "GPU: $(cat "$OUT/gpu.txt" 2>/dev/null)"
grep -h -A8 "^## " "$OUT/bench_train.log" "$OUT/bench_score.log" 2>/dev/null | head -40
