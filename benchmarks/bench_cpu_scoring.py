#!/usr/bin/env python
"""The CPU scorer against the machine's limits, PyTorch eager and numpy, in one run, at
several catalogue sizes.

    python benchmarks/bench_cpu_scoring.py --items 1682 100000 1000000

For each catalogue size (an untrained model over synthetic items, or one trained
--train-epochs on pairs of them: the fp32 scorer's cost does not depend on the weights, the
int8 screen's a little, by how many items its bound lets through; factors 64, 2 layers, max_seq 50; sessions of 20 random items):

* one session, 1 thread: the p50 of `model.recommend(session, n=10)` with the scorer's
  ways ("auto", "fp32": every item's exact score; "int8": the exact int8 screen), of the
  forward alone (`session_embeddings`), of the PyTorch reference's whole request in eager
  mode, and of numpy given the state (h @ E.T, exclusions, argpartition + sort);
  the fp32 way's read rate of the item table (its bytes over recommend's p50 less the
  forward's) against the machine's read bandwidth, measured in the same run on a buffer of
  the table's size (the best of numpy's single-threaded sgemv and max over it);
* a batch of sessions, 2 threads: `recommend_batch` (forward and top-k) against numpy's
  sgemm of the same shape (sessions x factors x items, the product alone, in chunks of at
  most 2^28 scores) and torch's chunked matmul + topk given the states; GFLOP/s counts the
  2 x sessions x factors x items of the product.

Also asserts that the three ways return the same ids and scores.
"""
import _env  # noqa: I001  (first: strips OpenBLAS variables before numpy loads)

if __name__ == "__main__":
    _env.strip_openblas_env()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402
import bench_latency  # noqa: E402
from bench_latency import synthetic, time_calls  # noqa: E402
from common import median_time  # noqa: E402

K = 10


def read_bandwidth(n_bytes: int) -> dict:
    """Single-threaded read rate (GB/s) of a float32 buffer of n_bytes, by numpy."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal(n_bytes // 4 // 64 * 64, dtype=np.float32)
    m = a.reshape(-1, 64)
    v = np.ones(64, np.float32)
    with threadpool_limits(1):
        t_gemv = median_time(lambda: m @ v, 7)
    t_max = median_time(lambda: a.max(), 7)
    return {"sgemv GB/s": a.nbytes / t_gemv / 1e9, "max GB/s": a.nbytes / t_max / 1e9}


def single(V: int, n_sessions: int, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)
    model, torch_fn, sessions = synthetic(V, n_sessions, seed)
    engine = model._engine
    E = np.ascontiguousarray(model.item_embeddings, np.float32)  # rows in model.item_ids order
    pos = {int(i): r for r, i in enumerate(model.item_ids)}
    C = E.shape[1]

    def numpy_fn(state_and_session):
        h, s = state_and_session
        sc = E @ h
        sc[[pos[i] for i in s]] = -np.inf
        top = np.argpartition(-sc, K)[:K]
        return top[np.argsort(-sc[top], kind="stable")]

    states = model.session_embeddings(sessions)
    row = {"items": V}
    row["forward p50 ms"] = float(np.percentile(time_calls(lambda s: model.session_embeddings([s]), sessions, 20), 50))
    got = {}
    for how in ("fp32", "int8", "auto"):
        engine.scoring = how
        got[how] = model.recommend_batch(sessions[:200], n=K)
        row[f"{how} p50 ms"] = float(np.percentile(time_calls(lambda s: model.recommend(s, n=K), sessions, 20), 50))
    for how in ("int8", "auto"):
        assert all(np.array_equal(a, b) for a, b in zip(got[how], got["fp32"])), f"{how} differs from fp32"
    engine.scoring = "auto"
    row["torch p50 ms"] = float(np.percentile(time_calls(torch_fn, sessions, 20), 50))
    with_states = list(zip(states, sessions))
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):
        row["numpy (state given) p50 ms"] = float(np.percentile(time_calls(numpy_fn, with_states, 20), 50))
    table = V * C * 4
    row["fp32 table GB/s"] = table / ((row["fp32 p50 ms"] - row["forward p50 ms"]) / 1e3) / 1e9
    bw = read_bandwidth(table)
    row["machine read GB/s"] = max(bw.values())
    row["int8 vs torch"] = row["torch p50 ms"] / row["int8 p50 ms"]
    row["auto vs torch"] = row["torch p50 ms"] / row["auto p50 ms"]
    return row


def batch(V: int, B: int, threads: int, seed: int) -> dict:
    import torch
    from fastsasrec import SASRec

    torch.set_num_threads(threads)
    vocab = [[i, i + 1] for i in range(1, V + 1, 2)]
    model = SASRec(factors=64, max_seq=50, n_layers=2, loss="sampled_softmax",
                   n_negatives=min(256, V - 1), iterations=bench_latency.TRAIN_EPOCHS, verbose=0,
                   num_threads=threads).fit(vocab, **bench_latency.fit_kw(V))
    S = np.random.default_rng(seed).integers(1, V + 1, size=(B, 20))
    flops = 2.0 * B * 64 * V
    row = {"items": V, "sessions": B, "threads": threads}
    t_fwd = median_time(lambda: model.session_embeddings(S), 3)
    t_ours = median_time(lambda: model.recommend_batch(S, n=K), 3)
    H = np.asarray(model.session_embeddings(S), np.float32)
    E = np.ascontiguousarray(model.item_embeddings, np.float32)
    chunk = max(1, min(B, (1 << 28) // V))
    out = np.empty((chunk, V), np.float32)

    def numpy_sgemm():
        for lo in range(0, B, chunk):
            n = min(chunk, B - lo)
            np.matmul(H[lo:lo + n], E.T, out=out[:n])

    from threadpoolctl import threadpool_limits
    with threadpool_limits(threads):
        t_np = median_time(numpy_sgemm, 3)
    Ht, Et = torch.from_numpy(H), torch.from_numpy(E)
    seen = torch.from_numpy(np.searchsorted(model.item_ids, S))
    tchunk = min(1024, chunk)

    def torch_topk():
        for lo in range(0, B, tchunk):
            s = Ht[lo:lo + tchunk] @ Et.T
            s.scatter_(1, seen[lo:lo + tchunk], float("-inf"))
            torch.topk(s, K, dim=1)

    t_torch = median_time(torch_topk, 3)
    row.update({
        "forward s": t_fwd,
        "fastsasrec s": t_ours, "fastsasrec GFLOP/s": flops / t_ours / 1e9,
        "numpy sgemm s": t_np, "numpy GFLOP/s": flops / t_np / 1e9,
        "torch (states given) s": t_torch,
        "fastsasrec / numpy rate": t_np / t_ours,
    })
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, nargs="+", default=[1682, 100_000, 1_000_000])
    ap.add_argument("--sessions", type=int, default=500, help="single-session calls per size")
    ap.add_argument("--batch", type=int, default=4096, help="sessions of the batch rows")
    ap.add_argument("--threads", type=int, default=2, help="threads of the batch rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--item-features", action="store_true",
                    help="fit our models with a features table (category, brand, tags, price)")
    ap.add_argument("--train-epochs", type=int, default=0,
                    help="epochs the models train first (0: untrained; give 1 or more to compare "
                         "with --item-features: the feature table starts at zero)")
    args = ap.parse_args()
    bench_latency.ITEM_FEATURES = args.item_features
    bench_latency.TRAIN_EPOCHS = args.train_epochs
    info = common.machine_info(args.threads)
    common.print_machine_info(info)
    singles, batches = [], []
    for V in args.items:
        print(f"[{time.strftime('%H:%M:%S')}] {V:,} items: one session ...", flush=True)
        singles.append(single(V, args.sessions, args.seed))
        print(f"[{time.strftime('%H:%M:%S')}] {V:,} items: batch of {args.batch} ...", flush=True)
        batches.append(batch(V, args.batch, args.threads, args.seed))
    print("\n## One session, 1 thread (p50 ms)\n")
    print(common.markdown_table(singles, formats={k: ".3f" if "ms" in k else ".1f" for k in singles[0] if k != "items"}))
    print(f"\n## {args.batch} sessions, {args.threads} threads\n")
    print(common.markdown_table(batches, formats={k: ".3f" if k.endswith(" s") else ".2f" if "/" in k and "GFLOP" not in k else ".0f"
                                                  for k in batches[0] if k not in ("items", "sessions", "threads")}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": info, "single": singles, "batch": batches}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
