#!/usr/bin/env python
"""Single-session recommend latency on the CPU with one thread: fastsasrec's
`model.recommend(session, n=10)` against the PyTorch reference port in eager mode.

    python benchmarks/bench_latency.py
    python benchmarks/bench_latency.py --impl torch --sessions 2000 --epochs 3

Both models are trained briefly on MovieLens 100K (factors 64, 2 layers, 1 head,
max_seq 50), then each is asked for the top 10 of 2000 sessions, one call per
session. Sessions are the last (up to) 50 items of users' contexts, users drawn
with replacement by a seeded RNG. The PyTorch timing covers a whole request:
original ids to internal ids, the forward pass under torch.inference_mode() with
torch.set_num_threads(1), scoring the catalogue, excluding the session's items,
top-k, and mapping back to original ids. Reports p50 / p90 / p99 in milliseconds.
"""
import _env  # noqa: I001  (first: strips OpenBLAS variables before numpy loads)

if __name__ == "__main__":
    _env.strip_openblas_env()

import argparse  # noqa: E402
import sys  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402

THREADS = 1
CONFIG = dict(common.CONFIG, loss="sampled_softmax")
K = 10


def import_fastsasrec():
    try:
        from fastsasrec import SASRec
    except ImportError as e:
        raise SystemExit(
            f"error: fastsasrec is not importable ({e}).\n"
            "Install it first (from the repository root: pip install .), "
            "or time only the PyTorch reference with --impl torch."
        )
    return SASRec


def time_calls(fn, sessions, warmup: int) -> np.ndarray:
    for s in sessions[:warmup]:
        fn(s)
    out = np.empty(len(sessions))
    clock = time.perf_counter_ns
    for i, s in enumerate(sessions):
        t0 = clock()
        fn(s)
        out[i] = clock() - t0
    return out / 1e6  # ms


def torch_request(net, item_to_idx, item_ids, t_max: int = CONFIG["max_seq"], k: int = K):
    """One whole request on the PyTorch reference's network (eval mode): original ids to
    internal ids, the forward pass under torch.inference_mode(), scores over the catalogue,
    the session's items excluded, top-k, back to original ids."""
    import torch

    emb = net.item_emb.weight

    def recommend(session):
        idx = [item_to_idx[i] for i in session if i in item_to_idx][-t_max:]
        x = torch.zeros(1, t_max, dtype=torch.long)
        if idx:
            x[0, t_max - len(idx):] = torch.tensor(idx)
        with torch.inference_mode():
            scores = net(x)[0, -1] @ emb.T  # (V+1,)
            scores[0] = float("-inf")
            if idx:
                scores[idx] = float("-inf")
            top = scores.topk(k)
        return item_ids[top.indices.numpy()], top.values.numpy()

    return recommend


def torch_recommender(ds: common.Dataset, epochs: int):
    import torch_reference as tr

    model = tr.TorchSASRec(ds.n_items, threads=THREADS, **CONFIG)
    model.fit(ds.contexts, epochs)
    return torch_request(model.net.eval(), ds.item_to_idx, ds.item_ids)


# --item-features: the fastsasrec models are fitted with a features table (feature_table),
# to show that features cost nothing at inference.
ITEM_FEATURES = False
# Epochs the synthetic models train (0: untrained; with item features the feature table
# stays at its zero start until trained, so a comparison with features trains both).
TRAIN_EPOCHS = 0


def feature_table(n_items: int, seed: int = 0):
    """A store's table over items 1..n_items: a category (50 values), a brand (1,000), a
    list of 1-3 tags (200) and a price (10 buckets)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "category": rng.integers(0, 50, n_items).astype(str),
        "brand": rng.integers(0, 1000, n_items).astype(str),
        "tags": [rng.integers(0, 200, int(rng.integers(1, 4))).astype(str).tolist()
                 for _ in range(n_items)],
        "price": rng.lognormal(3, 1, n_items),
    }, index=np.arange(1, n_items + 1))


def fit_kw(n_items: int) -> dict:
    return {"item_features": feature_table(n_items)} if ITEM_FEATURES else {}


def synthetic(n_items: int, n_sessions: int, seed: int, length: int = 20):
    """An untrained fastsasrec model and PyTorch reference over n_items items (ids 1..n;
    latency does not depend on the weights), and n_sessions sessions of `length` random
    items."""
    from fastsasrec import SASRec
    import torch_reference as tr

    vocab = [[i, i + 1] for i in range(1, n_items + 1, 2)]
    cfg = {k: v for k, v in CONFIG.items() if k not in ("n_negatives",)}
    ours = SASRec(**cfg, n_negatives=min(256, n_items - 1), iterations=TRAIN_EPOCHS, verbose=0,
                  num_threads=THREADS).fit(vocab, **fit_kw(n_items))
    theirs = tr.TorchSASRec(n_items, threads=THREADS, **CONFIG).net.eval()
    item_ids = np.arange(n_items + 1)
    item_to_idx = {i: i for i in range(1, n_items + 1)}
    rng = np.random.default_rng(seed)
    sessions = rng.integers(1, n_items + 1, size=(n_sessions, length)).tolist()
    return ours, torch_request(theirs, item_to_idx, item_ids), sessions


def fastsasrec_recommender(SASRec, ds: common.Dataset, epochs: int):
    model = SASRec(**CONFIG, iterations=epochs, device="cpu", verbose=0, num_threads=THREADS)
    model.fit(ds.to_original(ds.contexts), **fit_kw(ds.n_items))

    def recommend(session):
        return model.recommend(session, n=K)

    return recommend


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impl", choices=("both", "fastsasrec", "torch"), default="both")
    ap.add_argument("--epochs", type=int, default=3, help="brief training before timing")
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=50, help="untimed calls first")
    ap.add_argument("--seed", type=int, default=0, help="seed of the session draw")
    ap.add_argument("--data", default=None, help="ml-100k folder or u.data (default: <repo>/../shared/data/ml-100k)")
    ap.add_argument("--items", type=int, default=None,
                    help="an untrained model over this many synthetic items instead of ML-100K "
                         "(sessions of 20 random items)")
    ap.add_argument("--out", default=None, help="write results as JSON here")
    ap.add_argument("--item-features", action="store_true",
                    help="fit our models with a features table (category, brand, tags, price)")
    args = ap.parse_args(argv)
    global ITEM_FEATURES
    ITEM_FEATURES = args.item_features
    if args.items is not None:
        return main_synthetic(args)

    impls = ["torch", "fastsasrec"] if args.impl == "both" else [args.impl]
    SASRec = import_fastsasrec() if "fastsasrec" in impls else None
    if "torch" in impls:
        import torch

        torch.set_num_threads(THREADS)

    ds = common.load_ml100k(args.data)
    rng = np.random.default_rng(args.seed)
    users = rng.integers(0, len(ds.contexts), size=args.sessions)
    sessions = ds.to_original([ds.contexts[u][-CONFIG["max_seq"]:] for u in users])
    info = common.machine_info(THREADS)
    common.print_machine_info(info)
    print(f"{len(sessions)} sessions, mean length {np.mean([len(s) for s in sessions]):.1f}; "
          f"{ds.n_items} items; trained {args.epochs} epochs; top {K}; config {CONFIG}\n", flush=True)

    rows = []
    for impl in impls:
        print(f"[{impl}] training {args.epochs} epochs, then timing ...", flush=True)
        if impl == "torch":
            fn = torch_recommender(ds, args.epochs)
            label = "torch (eager, inference_mode)"
        else:
            fn = fastsasrec_recommender(SASRec, ds, args.epochs)
            label = "fastsasrec"
        ms = time_calls(fn, sessions, args.warmup)
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        rows.append({"impl": label, "threads": THREADS, "sessions": len(sessions), "p50 ms": float(p50),
                     "p90 ms": float(p90), "p99 ms": float(p99), "mean ms": float(ms.mean())})

    print("\n## Single-session recommend latency, CPU, 1 thread (ML-100K model)\n")
    print(common.markdown_table(rows, formats={c: ".3f" for c in ("p50 ms", "p90 ms", "p99 ms", "mean ms")}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": info, "config": CONFIG, "epochs": args.epochs, "rows": rows}, f, indent=2)
        print(f"\nwrote {args.out}")
    return 0


def main_synthetic(args) -> int:
    import torch

    torch.set_num_threads(THREADS)
    info = common.machine_info(THREADS)
    common.print_machine_info(info)
    ours, theirs, sessions = synthetic(args.items, args.sessions, args.seed)
    print(f"{len(sessions)} sessions of 20 items; {args.items:,} items (untrained); top {K}\n",
          flush=True)
    rows = []
    for label, fn in (("torch (eager, inference_mode)", theirs),
                      ("fastsasrec", lambda s: ours.recommend(s, n=K))):
        ms = time_calls(fn, sessions, args.warmup)
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        rows.append({"impl": label, "threads": THREADS, "sessions": len(sessions), "p50 ms": float(p50),
                     "p90 ms": float(p90), "p99 ms": float(p99), "mean ms": float(ms.mean())})
    print(f"\n## Single-session recommend latency, CPU, 1 thread ({args.items:,} items)\n")
    print(common.markdown_table(rows, formats={c: ".3f" for c in ("p50 ms", "p90 ms", "p99 ms", "mean ms")}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": info, "items": args.items, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
