"""The default fit at a million events and more: what `SASRec()` costs a laptop user with
a large log of short anonymous sessions, beside the PyTorch reference's epoch on the same
data and settings.

The data: `datasets.synthetic_store` sessions (300 products, 3-6 views a session, 15% of
the views random), the shape of the store's anonymous visitors; `--sessions 250000`
holds about 1.1 million events.  Ours: `SASRec(random_state=seed).fit(sessions)` with
every setting "auto" (the slice's early stopping, then the refit), timed whole, and each
phase's epochs and seconds.  Quality: NDCG@10 and HR@10 of the last view of 5,000
sessions drawn apart (another seed), from the views before it, the whole catalogue
ranked, beside the most popular products.  The reference: its second epoch (the first
carries warm-up) of
`torch_reference.TorchSASRec` at the settings the defaults chose (max_seq, dropout, the
full softmax, learning rate; factors 64, 2 layers, batch 128), in a process of its own
(PyTorch's own threads at `--threads`), against our refit's median epoch: a fit of the
reference with its epochs chosen on validation would take hours at this size.

    python benchmarks/bench_scale.py --sessions 250000 --threads 2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import in_fresh_process  # noqa: E402

TEST_SESSIONS = 5_000


def _data(n: int, seed: int):
    from fastsasrec import datasets

    train, _ = datasets.synthetic_store(n_sessions=n, random_state=seed)
    test, _ = datasets.synthetic_store(n_sessions=TEST_SESSIONS, random_state=seed + 10_000)
    return train, test


def reference_epoch(n: int, seed: int, threads: int, cfg: dict) -> dict:
    """The reference's second epoch on the same sessions (ids mapped to 1..V), its seconds."""
    import torch
    from torch_reference import TorchSASRec

    torch.set_num_threads(threads)
    sys.path.insert(0, str(HERE.parent / "python"))
    train, _ = _data(n, seed)
    ids = np.unique(np.concatenate([np.asarray(s) for s in train]))
    code = {int(x): i + 1 for i, x in enumerate(ids.tolist())}
    seqs = [[code[x] for x in s] for s in train]
    model = TorchSASRec(len(ids), factors=64, n_layers=2, n_heads=1, max_seq=cfg["max_seq"],
                        dropout=cfg["dropout"], loss="softmax", learning_rate=cfg["learning_rate"],
                        batch_size=128, random_state=seed, threads=threads)
    model.fit(seqs, 2)  # the second epoch: the first carries PyTorch's warm-up
    return {"reference_epoch_s": float(model.epoch_times[-1])}


def ours(n: int, seed: int, threads: int) -> dict:
    from fastsasrec import SASRec
    from fastsasrec.metrics import popular_baseline

    train, test = _data(n, seed)
    model = SASRec(random_state=seed, num_threads=threads)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(train)
    seconds = time.perf_counter() - t0
    phases: dict = {}
    for h in model.history_:
        p = phases.setdefault(h["phase"], {"epochs": 0, "seconds": 0.0, "epoch_s": []})
        p["epochs"] += 1
        p["seconds"] += h["seconds"]
        p["epoch_s"].append(h["seconds"])
    got = model.evaluate(test, k=10)
    pop = popular_baseline(model, test, k=10)
    refit = phases.get("refit", phases.get("train", {"epoch_s": [float("nan")]}))
    return {
        "sessions": n, "events": int(sum(len(s) for s in train)), "seed": seed, "threads": threads,
        "fit_s": seconds, "NDCG@10": got["NDCG@10"], "HR@10": got["HR@10"],
        "popular_NDCG@10": pop["NDCG@10"],
        "phases": {k: {"epochs": v["epochs"], "seconds": round(v["seconds"], 1)} for k, v in phases.items()},
        "our_epoch_s": float(np.median(refit["epoch_s"])),
        "chosen": {k: v["value"] for k, v in model.defaults_.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, nargs="+", default=[250_000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-reference", action="store_true", help="ours alone")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent / "python"))
    rows = []
    for n in args.sessions:
        for seed in args.seeds:
            row = ours(n, seed, args.threads)
            if not args.no_reference:
                row.update(in_fresh_process(reference_epoch, n, seed, args.threads, row["chosen"]))
                row["epoch_ratio"] = row["reference_epoch_s"] / row["our_epoch_s"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| sessions | events | seed | fit s | epochs (slice + refit) | NDCG@10 | HR@10 | most popular "
          "NDCG@10 | our epoch s | reference epoch s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ph = r["phases"]
        ep = " + ".join(str(v["epochs"]) for v in ph.values())
        ref = r.get("reference_epoch_s")
        print(f"| {r['sessions']:,} | {r['events']:,} | {r['seed']} | {r['fit_s']:.1f} | {ep} | "
              f"{r['NDCG@10']:.4f} | {r['HR@10']:.4f} | {r['popular_NDCG@10']:.4f} | {r['our_epoch_s']:.2f} | "
              + (f"{ref:.2f} | {r['epoch_ratio']:.2f}x |" if ref is not None else "— | — |"))


if __name__ == "__main__":
    main()
