#!/usr/bin/env python
"""Where a CUDA training epoch spends its GPU time, kernel by kernel (PyTorch's profiler
records every kernel of the process, fastsasrec's included).

    python scripts/profile_cuda_train.py [--data PATH_TO_ML100K] [--max-seq 200]

The benchmark's config: factors 64, 2 layers, max_seq 200, batch 128, sampled_softmax
with 256 negatives.  Prints the kernels by total GPU time and the epoch's wall time.
Uses ML-100K when given, else synthetic sessions of the same size.
"""
import argparse
import os
import sys
import time

import numpy as np


def sessions(data):
    if data:
        raw = np.loadtxt(os.path.join(data, "u.data"), dtype=np.int64)
        order = np.lexsort((raw[:, 3], raw[:, 0]))
        users, items = raw[order, 0], raw[order, 1]
        return [s.tolist() for s in np.split(items, np.flatnonzero(np.diff(users)) + 1)]
    rng = np.random.default_rng(0)
    return [rng.integers(1, 1683, size=int(n)).tolist() for n in rng.integers(20, 300, size=943)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None)
    ap.add_argument("--max-seq", type=int, default=200)
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fastsasrec import SASRec

    seqs = sessions(args.data)
    cfg = dict(factors=64, n_layers=2, max_seq=args.max_seq, batch_size=128,
               loss="sampled_softmax", n_negatives=256, device="cuda", random_state=0)
    SASRec(**cfg, iterations=1).fit(seqs)  # warm-up: module load, arenas, cuBLAS
    m = SASRec(**cfg, iterations=1)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        m.fit(seqs)
        wall = time.perf_counter() - t0
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=args.rows,
                                    max_name_column_width=70))
    gpu_us = sum(e.self_device_time_total for e in prof.key_averages())
    print(f"epoch wall {wall * 1e3:.1f} ms (profiled); kernels {gpu_us / 1e3:.1f} ms of GPU time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
