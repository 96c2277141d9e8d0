"""A new product in the session: a visitor has just viewed a product listed after the model
was trained (in the features table, no events), and the next item, one with events, is
what the model should find.  How should the model read such a session?

Each seed holds 10% of the training items out of training (their features known: new
products in the catalogue) and scores sessions of people the model never saw, at every
position where a held-out item is followed by a kept one: the context is the session up to
and including it (the new product last), the target the next item, ranked over the whole
catalogue.  Three readings of the same fitted model:
  * shipped: as recommend reads a session (``_new_products.read_items``: the new products
    left out of the model's input beside items with events; in a session of new products
    alone, each read as its look-alike, the item with events sharing the most of its feature
    values; all of them stay seen);
  * read: every known item read, the new products by their features (recommend before);
  * left_out: the new products dropped from the context, as an id-only model drops ids it
    does not know (a context of new products alone: the most popular items).
Each is reported over all cases, the cases whose context holds a kept item too ("beside"),
and those whose context is new products alone ("alone").  The "ids" row is SASRec() on ids
alone (the new products are not in its catalogue: its one reading is left_out).

Data sets: ml-100k (a fifth of the users, drawn by seed, are the sessions scored; the model
trains on the others; genres and year as features; the context's seen items are excluded)
and store (the synthetic store: 5,000 sessions of seed s to train on and 3,000 of seed
1000 + s to score; category and brand as features; seen items allowed, as journeys
revisit).  Cached as JSON under benchmarks/.features_cache (viewed_<dataset>_<row>_<seed>).

    python benchmarks/bench_viewed_new.py --dataset store --rows ids features_mean features_mean_iddrop0.1 --seeds 0 1 2
    python benchmarks/bench_viewed_new.py --dataset ml-100k --rows ids features_mean --seeds 0 1 2 --threads 1
    python benchmarks/bench_viewed_new.py --table
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
from bench_features import CACHE, movie_table, row_params  # noqa: E402
from bench_quality import DATA, K, load, metrics  # noqa: E402

HELD_SHARE = 0.1


def world(dataset, seed):
    """(training sequences without the held-out items, features table, cases: contexts,
    targets, whether each context holds a kept item; exclude_seen, held-out items)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    if dataset == "ml-100k":
        seqs = [[int(i) for i in s] for s in load("ml-100k")[0]]
        order = rng.permutation(len(seqs))
        scored = [seqs[u] for u in order[: len(seqs) // 5]]
        train = [seqs[u] for u in order[len(seqs) // 5:]]
        table, exclude_seen = movie_table(), True
    elif dataset == "store":
        from fastsasrec.datasets import synthetic_store, synthetic_store_catalog

        cat = synthetic_store_catalog()
        table = pd.DataFrame({"category": {i: c for i, (_, c) in cat.items()},
                              "brand": {i: n.split(" ")[0] for i, (n, _) in cat.items()},
                              "title": {i: n for i, (n, _) in cat.items()}})
        train = [[int(i) for i in s] for s in synthetic_store(5000, random_state=seed)[0]]
        scored = [[int(i) for i in s] for s in synthetic_store(3000, random_state=1000 + seed)[0]]
        exclude_seen = False
    else:
        raise SystemExit(f"unknown data set {dataset!r}: ml-100k or store")
    items = np.unique(np.concatenate([np.asarray(s) for s in train]))
    held = set(rng.choice(items, size=int(round(HELD_SHARE * items.size)), replace=False).tolist())
    train = [t for t in ([i for i in s if i not in held] for s in train) if len(t) >= 2]
    contexts, targets = [], []
    for s in scored:
        for p in range(1, len(s)):
            if s[p - 1] in held and s[p] not in held:
                contexts.append(s[:p])
                targets.append(s[p])
    beside = np.array([any(i not in held for i in c) for c in contexts])
    return train, table, contexts, np.asarray(targets), beside, exclude_seen, held


def run(dataset, row, seed, threads):
    from fastsasrec import SASRec, _fitted

    train, table, contexts, targets, beside, exclude_seen, held = world(dataset, seed)
    params = row_params(row)
    model = SASRec(random_state=seed, num_threads=threads, **params)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(train, **({"item_features": table, "item_names": "title"} if params else {}))
    out = {"seconds": time.perf_counter() - t0, "cases": int(targets.size),
           "beside": int(beside.sum()), "alone": int((~beside).sum()), "held_out": len(held)}
    left_out = [[i for i in c if i not in held] or [-1] for c in contexts]  # -1: known to none

    def read(ctx, prefix):
        ids, _ = model.recommend_batch(ctx, n=K, exclude_seen=exclude_seen)
        ids = np.asarray(ids)
        for part, rows in (("", slice(None)), ("beside_", beside), ("alone_", ~beside)):
            for k, v in metrics(ids[rows], targets[rows]).items():
                out[f"{prefix}{part}{k}"] = v

    read(left_out, "left_out_")
    if params:
        read(contexts, "shipped_")
        keep = _fitted.read_items
        _fitted.read_items = lambda state, internal, offsets: (internal, offsets)
        try:
            read(contexts, "read_")
        finally:
            _fitted.read_items = keep
    return out


def table_text() -> str:
    lines = []
    for dataset in ("ml-100k", "store"):
        found = {}
        for f in sorted(CACHE.glob(f"viewed_{dataset}_*.json")):
            row = f.stem[len(f"viewed_{dataset}_"):].rsplit("_", 1)[0]
            found.setdefault(row, []).append(json.loads(f.read_text()))
        if not found:
            continue
        lines.append(f"\n{dataset}: NDCG@10 / HR@10 of the next item, mean over seeds (n)\n")
        lines.append("| row | n | cases (beside / alone) | reading | all | beside | alone |")
        lines.append("|---|---|---|---|---|---|---|")
        for row, rs in found.items():
            for how in ("shipped", "read", "left_out"):
                if f"{how}_NDCG@10" not in rs[0]:
                    continue
                cells = [" / ".join(f"{np.mean([r[f'{how}_{part}{m}@10'] for r in rs]):.4f}"
                                    for m in ("NDCG", "HR")) for part in ("", "beside_", "alone_")]
                cases = (f"{np.mean([r['cases'] for r in rs]):.0f} ({np.mean([r['beside'] for r in rs]):.0f}"
                         f" / {np.mean([r['alone'] for r in rs]):.0f})")
                lines.append(f"| {row} | {len(rs)} | {cases} | {how} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=["ml-100k", "store"], default="store")
    ap.add_argument("--rows", nargs="+", default=["ids", "features_mean"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if args.table:
        print(table_text())
        return
    if args.dataset == "ml-100k" and not (DATA / "ml-100k" / "u.item").exists():
        raise SystemExit(f"{DATA / 'ml-100k'} not found (set FASTSASREC_DATA)")
    CACHE.mkdir(exist_ok=True)
    for seed in args.seeds:
        for row in args.rows:
            path = CACHE / f"viewed_{args.dataset}_{row}_{seed}.json"
            if path.exists():
                continue
            out = run(args.dataset, row, seed, args.threads)
            out.update(dataset=args.dataset, row=row, seed=seed, threads=args.threads)
            path.write_text(json.dumps(out, indent=1))
            print(json.dumps(out), flush=True)
    print(table_text())


if __name__ == "__main__":
    main()
