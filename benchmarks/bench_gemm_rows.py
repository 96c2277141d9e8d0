#!/usr/bin/env python
"""The CPU's fp32 products at the shapes training gives them: gemm_rows (the engine's
register-blocked kernel, cpp/src/cpu/gemm_rows.h, AVX-512 or AVX2, whichever this build has)
against OpenBLAS's sgemm (what runs with FASTSASREC_NO_AVX512=1), both on one thread, in
the same process, calls alternated.

    python benchmarks/bench_gemm_rows.py --reps 300

Shapes: each thread's block of a fit on ML-100K (factors 64, max_seq 50, batch 128, two
threads: 2,450 rows a thread, the catalogue's 1,682 items split in two, softmax chunks of
155 rows), and the softmax's three products on Sports (18,357 items: chunks of 32 rows).
The time of a shape is the first quartile of its calls (the least disturbed); GFLOP/s
counts 2 M N K. Needs a test build (-DFASTSASREC_TEST_OPS=ON: _core.Ops).
"""
import _env  # noqa: I001  (first: strips OpenBLAS variables before numpy loads)

if __name__ == "__main__":
    _env.strip_openblas_env()

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import fastsasrec  # noqa: E402

# (name, M, N, K, A transposed): C (M x N) = op(A) B, B row-major K x N
SHAPES = [
    ("linear forward, width 64", 2450, 64, 64, False),
    ("linear forward, K and V (width 128)", 2450, 128, 64, False),
    ("linear din, W^T by rows", 2450, 64, 64, False),
    ("linear dW, A^T (depth 2,450)", 64, 64, 2450, True),
    ("softmax logits, Et by rows", 155, 841, 64, False),
    ("softmax dh (depth 841)", 155, 64, 841, False),
    ("softmax dE, ds^T (depth 155)", 841, 64, 155, True),
    ("sampled logits (256 negatives)", 2450, 256, 64, False),
    # Sports (18,357 items, max_seq 20): chunks of 32 rows, each thread half the catalogue
    ("softmax logits at 18,357 items", 32, 9179, 64, False),
    ("softmax dh at 18,357 items (depth 9,179)", 32, 64, 9179, False),
    ("softmax dE at 18,357 items, ds^T (depth 32)", 9179, 64, 32, True),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=300)
    args = ap.parse_args()
    core = fastsasrec._core
    if not core.test_ops:
        raise SystemExit("needs a test build (-DFASTSASREC_TEST_OPS=ON): _core.Ops")
    ops = core.Ops
    kernel = ops.gemm_rows_kernel()
    if not kernel:
        raise SystemExit("this build has no gemm_rows kernel (no AVX-512 or AVX2)")
    print(f"gemm_rows kernel: {kernel}; {args.reps} calls a shape and path, alternated; one thread\n")
    print("| product (M x N x K) | gemm_rows, GFLOP/s | sgemm, GFLOP/s | ratio |")
    print("|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name, M, N, K, ta in SHAPES:
        A = rng.standard_normal(M * K).astype(np.float32)
        B = rng.standard_normal(K * N).astype(np.float32)
        C = np.zeros(M * N, np.float32)
        lda = M if ta else K
        sar, sak = (1, M) if ta else (K, 1)

        def rows():
            ops.gemm_rows(M, N, K, 1.0, A, sar, sak, B, N, 0.0, C, N)

        def blas():
            ops.gemm(1, ta, False, M, N, K, 1.0, A, lda, B, N, 0.0, C, N)

        times = {"rows": [], "blas": []}
        for f in (rows, blas):
            f()
        for _ in range(args.reps):
            for key, f in (("rows", rows), ("blas", blas)):
                t0 = time.perf_counter()
                f()
                times[key].append(time.perf_counter() - t0)
        flop = 2.0 * M * N * K
        g = {k: flop / np.quantile(v, 0.25) / 1e9 for k, v in times.items()}
        print(f"| {name} ({M} x {N} x {K}) | {g['rows']:.0f} | {g['blas']:.0f} | {g['rows'] / g['blas']:.2f}x |")


if __name__ == "__main__":
    main()
