#!/usr/bin/env python
"""Where GPU batch scoring spends its time: recommend_batch for 65,536 sessions over
1,000,000 items (bench_score.py's config), its kernels by total GPU time, and the wall
time of the forward pass alone (session_embeddings) beside the whole call.

    python scripts/profile_cuda_score.py [--sessions 65536] [--items 1000000]
"""
import argparse
import sys
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=65536)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--session-len", type=int, default=20)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fastsasrec import SASRec

    V = args.items
    vocab = [[i, i + 1] for i in range(1, V + 1, 2)]
    m = SASRec(factors=64, max_seq=50, n_layers=2, loss="sampled_softmax", n_negatives=256,
               iterations=0, device="cuda").fit(vocab)
    S = np.random.default_rng(0).integers(1, V + 1, size=(args.sessions, args.session_len))
    m.recommend_batch(S, n=args.k)  # warm-up: arenas, scratch, kernels
    for name, fn in (("session_embeddings", lambda: m.session_embeddings(S)),
                     ("recommend_batch", lambda: m.recommend_batch(S, n=args.k))):
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        print(f"{name}: median {np.median(ts) * 1e3:.1f} ms of 3")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        m.recommend_batch(S, n=args.k)
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=12,
                                    max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
