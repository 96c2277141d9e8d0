#!/usr/bin/env python
"""recommend(candidates=S): ranking a candidate set (a "new for you" slot, a category
page) against the whole catalogue and against the way it was done before candidates=
existed, exclude= every item outside S, in one run.

    python benchmarks/bench_candidates.py --items 100000 --candidates 100 1000 10000

An untrained model over the catalogue (factors 64, 2 layers, max_seq 50; scoring cost does
not depend on the weights), sessions of 20 random items, top 10, 1 thread; the p50 of
single-session calls:

* whole catalogue: `recommend(s, n=10)`;
* candidates=S: `recommend(s, n=10, candidates=S)`, S a fixed random set (the same
  object each call, as a store passes its list of new products);
* exclude=: `recommend(s, n=10, exclude=complement of S)`: the same answer (asserted).

And a batch: `recommend_batch(sessions, n=10, candidates=S)` against the whole
catalogue's, 2 threads.

`--denylist D ...`: a batch with a denylist of D items (out of stock), the two ways
`recommend_batch` can leave it out, asserted equal: copied into every session's row
(what it did for every list before), and ranked among the items it leaves (one table of
them, what a batch of more than 2**20 denylist row entries takes now); time and Python's peak
memory (tracemalloc) of each call.

    python benchmarks/bench_candidates.py --items 100000 --denylist 100 1000 10000 --batch 16384
"""
import _env  # noqa: I001  (first: strips OpenBLAS variables before numpy loads)

if __name__ == "__main__":
    _env.strip_openblas_env()

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402
from bench_latency import time_calls  # noqa: E402
from common import median_time  # noqa: E402

K = 10


def run(V: int, sizes, n_sessions: int, batch: int, seed: int) -> list:
    from fastsasrec import SASRec

    rng = np.random.default_rng(seed)
    vocab = [[i, i + 1] for i in range(1, V + 1, 2)]
    model = SASRec(factors=64, max_seq=50, n_layers=2, loss="sampled_softmax",
                   n_negatives=min(256, V - 1), iterations=1, verbose=0,
                   num_threads=1).fit(vocab)
    sessions = rng.integers(1, V + 1, size=(n_sessions, 20)).tolist()
    full = float(np.percentile(time_calls(lambda s: model.recommend(s, n=K), sessions, 20), 50))
    rows = []
    for size in sizes:
        S = np.sort(rng.choice(np.arange(1, V + 1), size=size, replace=False))
        outside = np.setdiff1d(np.arange(1, V + 1), S)
        for s in sessions[:20]:  # the same answer both ways
            a = model.recommend(s, n=K, candidates=S)
            b = model.recommend(s, n=K, exclude=outside)
            assert np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores)
        t_items = float(np.percentile(time_calls(lambda s: model.recommend(s, n=K, candidates=S), sessions, 20), 50))
        t_excl = float(np.percentile(time_calls(lambda s: model.recommend(s, n=K, exclude=outside),
                                                sessions[: max(50, n_sessions // 10)], 5), 50))
        model.set_params(num_threads=2)
        B = np.asarray(rng.integers(1, V + 1, size=(batch, 20)))
        t_batch_full = median_time(lambda: model.recommend_batch(B, n=K), 3)
        t_batch_items = median_time(lambda: model.recommend_batch(B, n=K, candidates=S), 3)
        model.set_params(num_threads=1)
        rows.append({"items": V, "candidates": size, "whole catalogue p50 ms": full,
                     "candidates= p50 ms": t_items, "exclude= p50 ms": t_excl,
                     f"batch of {batch}, whole catalogue s": t_batch_full,
                     f"batch of {batch}, candidates= s": t_batch_items})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run_denylist(V: int, sizes, batch: int, seed: int) -> list:
    import time
    import tracemalloc

    from fastsasrec import SASRec, _fitted

    rng = np.random.default_rng(seed)
    vocab = [[i, i + 1] for i in range(1, V + 1, 2)]
    model = SASRec(factors=64, max_seq=50, n_layers=2, loss="sampled_softmax",
                   n_negatives=min(256, V - 1), iterations=1, verbose=0, num_threads=2).fit(vocab)
    B = np.asarray(rng.integers(1, V + 1, size=(batch, 20)))
    rows = []
    for size in sizes:
        deny = np.sort(rng.choice(np.arange(1, V + 1), size=size, replace=False))
        got = {}
        for way, limit in (("in every row", 1 << 62), ("among the items left", 0)):
            _fitted.DENY_IN_ROWS = limit
            model.recommend_batch(B[:64], n=K, denylist=deny)  # the allowed table, built once
            tracemalloc.start()
            t0 = time.perf_counter()
            out = model.recommend_batch(B, n=K, denylist=deny)
            got[way] = (time.perf_counter() - t0, tracemalloc.get_traced_memory()[1] / 2**20, out)
            tracemalloc.stop()
        a, b = got["in every row"][2], got["among the items left"][2]
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores)
        rows.append({"items": V, "denylist": size, "sessions": batch,
                     "in every row s": got["in every row"][0], "in every row peak MiB": got["in every row"][1],
                     "among the items left s": got["among the items left"][0],
                     "among the items left peak MiB": got["among the items left"][1]})
        print(json.dumps(rows[-1]), flush=True)
    _fitted.DENY_IN_ROWS = 1 << 20
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--candidates", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--sessions", type=int, default=500)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--denylist", type=int, nargs="+", help="denylist sizes: the denylist run instead")
    args = ap.parse_args()
    common.print_machine_info(common.machine_info(threads=1))
    rows = (run_denylist(args.items, args.denylist, args.batch, args.seed) if args.denylist
            else run(args.items, args.candidates, args.sessions, args.batch, args.seed))
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else f"{v:,}" for v in r.values()) + " |")


if __name__ == "__main__":
    main()
