#!/usr/bin/env python
"""The BLAS behind fastsasrec's matrix products (OpenBLAS from scipy-openblas32, driven
single-threaded per block and split over fastsasrec's own OpenMP threads), against
numpy's matmul (its own OpenBLAS build, its own thread pool), on the shapes SASRec uses.

    python benchmarks/bench_blas.py --threads 2
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
    args = ap.parse_args()
    import fastsasrec
    from threadpoolctl import threadpool_limits

    if not fastsasrec._core.test_ops:
        raise SystemExit("bench_blas.py times the raw ops: build fastsasrec with "
                         "-C cmake.define.FASTSASREC_TEST_OPS=ON")
    ops = fastsasrec._core.Ops("cpu", threads=args.threads)
    common.print_machine_info(common.machine_info(args.threads))
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


if __name__ == "__main__":
    main()
