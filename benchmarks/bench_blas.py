#!/usr/bin/env python
"""The BLAS behind fastsasrec's matrix products (OpenBLAS from scipy-openblas32, driven
single-threaded per block and split over fastsasrec's own OpenMP threads), against
numpy's matmul (its own OpenBLAS build, its own thread pool), on the shapes SASRec uses.

    python benchmarks/bench_blas.py --threads 2
    python benchmarks/bench_blas.py --gemm --threads 2   # fp32 sgemm beside the bf16 GEMM

--gemm: per shape, GFLOP/s of the CPU's fp32 product (OpenBLAS sgemm split over
fastsasrec's threads) and of its bf16 product (the AVX-512 BF16 kernel where the CPU has
it; its fallback, bf16 operands through sgemm, beside it), in the same run, on the shapes
a width-64 model's training multiplies: the layers' products and their two backward
products, and the full softmax's logits and backward products over ML-100K's 1,682 items,
over all of a batch's tokens and over one of the loss's row chunks (what it really runs).
"""
import _env  # noqa: I001  (first: strips OpenBLAS variables before numpy loads)

if __name__ == "__main__":
    _env.strip_openblas_env()

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402

SHAPES = [  # (rows, in, out): a 128 x 50 batch through the layers of a width-64 model
    (6400, 64, 64, "projection C x C"),
    (6400, 64, 128, "keys+values C x 2C"),
    (6400, 64, 256, "sampled logits (256 negatives)"),
    (6400, 64, 1682, "full-softmax logits (ML-100K)"),
    (512, 512, 512, "square 512"),
]


T = 6400  # tokens of a 128 x 50 batch
GEMM_SHAPES = [  # (trans_a, trans_b, M, N, K, what)
    (False, False, T, 64, 64, "layer forward  x W (C x C)"),
    (False, True, T, 64, 64, "layer backward dout W^T"),
    (True, False, 64, 64, T, "layer backward x^T dout (dW)"),
    (False, False, T, 256, 64, "layer forward  x W (C x 4C)"),
    (False, True, T, 1682, 64, "softmax logits h E^T"),
    (False, False, T, 64, 1682, "softmax dh = ds E"),
    (True, False, 1682, 64, T, "softmax dE = ds^T h"),
    (False, True, 155, 1682, 64, "softmax logits, one chunk"),
    (False, False, 155, 64, 1682, "softmax dh, one chunk"),
    (True, False, 1682, 64, 155, "softmax dE, one chunk"),
]


def best_of(f, repeat=7):
    f()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gemm", action="store_true", help="fp32 sgemm against the bf16 GEMM, per shape")
    args = ap.parse_args()
    import fastsasrec
    from threadpoolctl import threadpool_limits

    if not fastsasrec._core.test_ops:
        raise SystemExit("bench_blas.py times the raw ops: build fastsasrec with "
                         "-C cmake.define.FASTSASREC_TEST_OPS=ON")
    ops = fastsasrec._core.Ops("cpu", threads=args.threads)
    common.print_machine_info(common.machine_info(args.threads))
    if args.gemm:
        return gemm_table(fastsasrec._core.Ops, args.threads)
    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(limits=args.threads):
        for R, I, O, what in SHAPES:
            x = rng.standard_normal((R, I)).astype(np.float32)
            W = rng.standard_normal((I, O)).astype(np.float32)
            b = np.zeros(O, np.float32)
            out = np.empty((R, O), np.float32)
            flops = 2.0 * R * I * O
            # (the test binding copies in and out around the op, as numpy's x @ W allocates)
            t_ours = best_of(lambda: ops.linear_forward(out, x, W, b, R, I, O, False, 0.0, 0))
            t_np = best_of(lambda: x @ W)
            rows.append({"shape (R x I x O)": f"{R} x {I} x {O}", "what": what,
                         "fastsasrec GFLOP/s": flops / t_ours / 1e9,
                         "numpy GFLOP/s": flops / t_np / 1e9})
    print(f"\n## fp32 matrix products, {args.threads} threads\n")
    print(common.markdown_table(rows, formats={"fastsasrec GFLOP/s": ".0f", "numpy GFLOP/s": ".0f"}))


def gemm_table(Ops, threads: int) -> None:
    native = Ops.gemm_bf16_native()
    rng = np.random.default_rng(0)
    rows = []
    for ta, tb, M, N, K, what in GEMM_SHAPES:
        A = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
        B = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
        C = np.zeros((M, N), np.float32)
        args = (ta, tb, M, N, K, 1.0, A, A.shape[1], B, B.shape[1], 0.0, C, N)
        flops = 2.0 * M * N * K
        t32 = best_of(lambda: Ops.gemm(threads, *args))
        t_fb = best_of(lambda: Ops.gemm_bf16(False, threads, *args))
        t_k = best_of(lambda: Ops.gemm_bf16(True, threads, *args)) if native else float("nan")
        rows.append({"shape (M x N x K)": f"{M} x {N} x {K}{' T' if ta else ''}{' T' if tb else ''}",
                     "what": what, "sgemm GFLOP/s": flops / t32 / 1e9,
                     "bf16 kernel GFLOP/s": flops / t_k / 1e9,
                     "bf16 fallback GFLOP/s": flops / t_fb / 1e9, "kernel / sgemm": t32 / t_k})
    print(f"\n## fp32 sgemm and the bf16 GEMM, {threads} threads "
          f"(bf16 kernel: {'AVX-512 BF16' if native else 'not available here'})\n")
    print(common.markdown_table(rows, formats={"sgemm GFLOP/s": ".0f", "bf16 kernel GFLOP/s": ".0f",
                                               "bf16 fallback GFLOP/s": ".0f", "kernel / sgemm": ".2f"}))


if __name__ == "__main__":
    main()
