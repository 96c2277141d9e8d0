#!/usr/bin/env bash
# One command for a machine with a GPU (nvcc, cuBLAS, PyTorch, CMake, ninja; no network):
# builds fastsasrec with the CUDA backend, runs the GPU tests (device parity and every op
# on the GPU), batch scoring, compute-sanitizer memcheck on a small run, the 10M-item
# memory benchmark, a kernel profile of a training epoch, the training benchmark, then
# the same profile and training benchmark for a baseline wheel when one is given (see
# below), the whole test suite (SKIP_ALL_TESTS=1 skips it), and prints a short table.
# Logs go to $OUT (default ./gpu_check_out).  Steps run in that order so that a time
# limit still leaves the most important results.
#
# Python packages a GPU image may lack (scipy-openblas32) are installed from ./.whl when
# that folder exists; MovieLens 100K is read from ./.data/ml-100k when present (an
# ignored folder: the data is never committed).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
status=()
step() { local name="$1"; shift; local t0=$SECONDS
  if timeout "${STEP_LIMIT:-300}" "$@" >"$OUT/$name.log" 2>&1; then status+=("$name|ok|$((SECONDS - t0)) s")
  else status+=("$name|FAILED (log: $name.log)|$((SECONDS - t0)) s"); fi
  echo "== $name"; tail -n 4 "$OUT/$name.log"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
if [ -d .whl ] && ! $PY -c "import scipy_openblas32" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/scipy_openblas32-*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export FASTSASREC_CUBLAS_ROOT=$($PY -c "import nvidia, os; print(next(p for p in (os.path.join(d, s) for d in nvidia.__path__ for s in ('cu13', 'cublas')) if os.path.isfile(os.path.join(p, 'include', 'cublas_v2.h'))))" 2>/dev/null)
DATA=(); [ -d .data/ml-100k ] && DATA=(--data .data/ml-100k) && export FASTSASREC_ML100K=$PWD/.data/ml-100k

# A wheel built beforehand for this machine's Python (./.whl/fastsasrec-*.whl, built with
# FASTSASREC_CUDA=ON) saves the build's minutes; otherwise build from source here.
WHEEL=$(ls .whl/fastsasrec-*-cp$($PY -c "import sys; print(f'{sys.version_info[0]}{sys.version_info[1]}')")-*.whl 2>/dev/null | head -1)
if [ -n "$WHEEL" ]; then
  step build $PY -m pip install --no-deps --no-index --force-reinstall "$WHEEL"
else
  step build $PY -m pip install --no-build-isolation --no-deps --no-index -v . \
    -C cmake.define.FASTSASREC_CUDA=ON -C cmake.define.FASTSASREC_CUDA_ARCHITECTURES=90
fi
cd /tmp && step show_config $PY -c "import fastsasrec; fastsasrec.show_config()"; cd - >/dev/null
step gpu_tests $PY -m pytest tests/test_devices.py tests/test_ops.py tests/test_ops_feature_bag.py tests/test_feature_engine.py tests/test_engine_safety.py -q -rs -p no:cacheprovider
step gpu_behaviour $PY -m pytest tests/test_estimator.py tests/test_use_cases.py -k cuda -q -rs -p no:cacheprovider
step bench_score $PY benchmarks/bench_score.py --device cuda --sessions 65536 --items 1000000
step sanitizer compute-sanitizer --tool memcheck --error-exitcode 1 $PY -c "
from fastsasrec import SASRec
from fastsasrec.datasets import synthetic_store
s, _ = synthetic_store(300, 0)
for loss in ('sampled_softmax', 'bce', 'softmax'):
    m = SASRec(factors=32, n_heads=2, max_seq=8, iterations=1, device='cuda', loss=loss, n_negatives=16).fit(s)
print(m.recommend_batch(s[:8], n=3)[0]); print(m.recommend_batch(s[:40], n=20)[0].shape)
print(m.session_embeddings(s[:4]).shape)
"
[ -z "${SKIP_MEMORY:-}" ] && step bench_memory $PY benchmarks/bench_memory.py --device cuda --items 10000000
step profile $PY scripts/profile_cuda_train.py "${DATA[@]}"
step profile_score $PY scripts/profile_cuda_score.py
step bench_train $PY benchmarks/bench_train.py --device cuda --epochs 8 --max-seq 200 --losses sampled_softmax --default-seeds "" "${DATA[@]}"
# Before and after on the same card: a wheel of an earlier commit in ./.whl/baseline is
# installed aside (never over this build) and profiled and timed the same way.
BASE_WHEEL=$(ls .whl/baseline/fastsasrec-*-cp$($PY -c "import sys; print(f'{sys.version_info[0]}{sys.version_info[1]}')")-*.whl 2>/dev/null | head -1)
if [ -n "$BASE_WHEEL" ] && $PY -m pip install -q --no-deps --no-index --target /tmp/fsr_baseline "$BASE_WHEEL" >/dev/null 2>&1; then
  step baseline_profile env PYTHONPATH=/tmp/fsr_baseline${PYTHONPATH:+:$PYTHONPATH} $PY scripts/profile_cuda_train.py "${DATA[@]}"
  step baseline_train env PYTHONPATH=/tmp/fsr_baseline${PYTHONPATH:+:$PYTHONPATH} $PY benchmarks/bench_train.py --device cuda --epochs 8 --max-seq 200 --losses sampled_softmax --impl fastsasrec --default-seeds "" "${DATA[@]}"
fi
[ -z "${SKIP_ALL_TESTS:-}" ] && step all_tests $PY -m pytest tests -q -rs -p no:cacheprovider

echo
echo "| step | result | time |"
echo "|---|---|---|"
for s in "${status[@]}"; do echo "| ${s//|/ | } |"; done
echo "GPU: $(cat "$OUT/gpu.txt" 2>/dev/null)"
grep -h -A9 "^## " "$OUT/bench_score.log" "$OUT/bench_memory.log" "$OUT/bench_train.log" 2>/dev/null | head -40
[ -f "$OUT/baseline_train.log" ] && echo "baseline ($BASE_WHEEL):" && grep -h "^| fastsasrec" "$OUT/baseline_train.log"
grep -H "speed-up\|fastsasrec peak\|epoch wall\|median .* of 3" "$OUT"/*.log 2>/dev/null | sed "s#^$OUT/##"
