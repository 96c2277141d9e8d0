"""Quality under one protocol, side by side with the PyTorch reference: full-catalogue
leave-one-out HR@10 / NDCG@10 on MovieLens 100K, Amazon Beauty and Sports, and the
synthetic store, for fastsasrec's defaults and each of its losses, the PyTorch reference's
binary loss (the paper's settings) and full cross-entropy (dropout 0.2 and 0.5), and the
most popular items; mean and spread over seeds.

Protocol (each sequence in time order; the Amazon READMEs' leave-one-out):
  * test target: each sequence's last item, ranked over the whole catalogue with the
    sequence's other items excluded; validation target: the second to last;
  * every row but "defaults" trains on each sequence less its last two items and chooses
    its epoch on the validation targets (early stopping: NDCG@10 after every epoch, the
    patience and cap of fastsasrec's iterations="auto"); the test metrics are those of the
    model of that epoch, scored with the validation item in its context;
  * "defaults" is what a user gets: SASRec() (every setting "auto") fit on each sequence
    less its last item, its epochs chosen on a slice it carves itself; it never sees the
    validation targets as such;
  * --split val reports the validation targets instead (the test targets are never read):
    the rows train on each sequence less its last two items and report the validation
    targets at the epoch they choose on them (optimistic, equally for every row); used to
    choose the defaults' rules.
  * "sampled" (Beauty): the paper's protocol, the target ranked among 100 random items
    the sequence does not hold (the same draws for every row).

Every (split, data set, row, seed) is cached as JSON under benchmarks/.quality_cache and
skipped when present, so an interrupted run resumes: the whole table takes hours on two
cores.  --table prints the markdown table from the cache.

    python benchmarks/bench_quality.py --datasets ml-100k beauty --seeds 0 1 2
    python benchmarks/bench_quality.py --table
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import in_fresh_process, load_ml100k  # noqa: E402

DATA = Path(os.environ.get("FASTSASREC_DATA", HERE.parent.parent / "shared" / "data"))
CACHE = HERE / ".quality_cache"
K = 10

# fastsasrec rows: parameters over the defaults (every other setting "auto").
OURS = {
    "defaults": {},
    "softmax": dict(loss="softmax"),
    "sampled_softmax": dict(loss="sampled_softmax", negatives="uniform"),
    "sampled_softmax_mixed": dict(loss="sampled_softmax", negatives="mixed"),
    "sampled_softmax_popularity": dict(loss="sampled_softmax", negatives="popularity"),
    "sampled_softmax_in_batch": dict(loss="sampled_softmax", negatives="in_batch"),
    "gbce": dict(loss="gbce"),
    "bce": dict(loss="bce"),
}
# The PyTorch reference: the paper's binary loss and settings, and full cross-entropy.
REFERENCE = {
    "torch_bce_paper": dict(loss="bce", dropout=0.5),
    "torch_softmax_d0.2": dict(loss="softmax", dropout=0.2),
    "torch_softmax_d0.5": dict(loss="softmax", dropout=0.5),
    # the better configuration with the window the defaults choose on long histories
    "torch_softmax_d0.5_T200": dict(loss="softmax", dropout=0.5, max_seq=200),
}
ROWS = list(OURS) + list(REFERENCE) + ["most_popular"]


# ----------------------------------------------------------------------------- data
def load(name: str) -> tuple[list[list[int]], int]:
    """(sequences of internal ids 1..V in time order, V)."""
    if name == "ml-100k":
        ds = load_ml100k(DATA / "ml-100k")
        seqs = [c + [int(t)] for c, t in zip(ds.contexts, ds.targets)]
        return seqs, ds.n_items
    if name in ("beauty", "sports"):
        path = DATA / "amazon" / ("Beauty.txt" if name == "beauty" else "Sports_and_Outdoors.txt")
        if not path.exists():
            raise SystemExit(f"{path} not found (set FASTSASREC_DATA to the folder of amazon/)")
        seqs = [[int(x) for x in line.split()[1:]] for line in path.read_text().splitlines() if line.strip()]
        return _reindex(seqs)
    if name == "synthetic":
        from fastsasrec.datasets import synthetic_store
        seqs, _ = synthetic_store(n_sessions=20000, random_state=0, min_len=4, max_len=6)
        return _reindex(seqs)
    raise SystemExit(f"unknown data set {name!r}")


def _reindex(seqs):
    ids = np.unique(np.concatenate([np.asarray(s) for s in seqs]))
    pos = {int(v): i + 1 for i, v in enumerate(ids)}
    return [[pos[x] for x in s] for s in seqs], int(ids.size)


def split(seqs, which):
    """(train sequences, selection (contexts, targets), report (contexts, targets))."""
    seqs = [s for s in seqs if len(s) >= 3]
    train = [s[:-2] for s in seqs]
    val = ([s[:-2] for s in seqs], np.array([s[-2] for s in seqs]))
    test = ([s[:-1] for s in seqs], np.array([s[-1] for s in seqs]))
    return train, val, (val if which == "val" else test)


def metrics(topk: np.ndarray, targets: np.ndarray) -> dict:
    hit = topk == targets[:, None]
    rank = np.where(hit.any(1), hit.argmax(1), K)
    return {"HR@10": float((rank < K).mean()),
            "NDCG@10": float(np.where(rank < K, 1.0 / np.log2(rank + 2.0), 0.0).mean())}


def sampled_metrics(score_fn, contexts, targets, V, seed=12345, n_neg=100) -> dict:
    """The paper's protocol: the target among 100 random items the sequence does not hold."""
    rng = np.random.default_rng(seed)
    ranks = np.empty(len(targets), np.int64)
    for b0 in range(0, len(targets), 1024):
        ctx, tg = contexts[b0:b0 + 1024], targets[b0:b0 + 1024]
        scores = score_fn(ctx)  # (B, V + 1)
        for i, (c, t) in enumerate(zip(ctx, tg)):
            seen = set(c) | {int(t)}
            neg = []
            while len(neg) < n_neg:
                x = int(rng.integers(1, V + 1))
                if x not in seen:
                    neg.append(x)
            s = scores[i]
            ranks[b0 + i] = int((s[neg] > s[t]).sum())
    return {"sampled_HR@10": float((ranks < K).mean()),
            "sampled_NDCG@10": float(np.where(ranks < K, 1.0 / np.log2(ranks + 2.0), 0.0).mean())}


# ----------------------------------------------------------------------------- rows
def run_ours(row, seqs, V, which, seed, threads, sampled):
    from fastsasrec import SASRec
    import warnings
    train, val, report = split(seqs, which)
    model = SASRec(random_state=seed, num_threads=threads, **OURS[row])
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if row == "defaults":
            fit_on = train if which == "val" else [c for c in report[0]]
            model.fit([s for s in fit_on if len(s) >= 2])
        else:
            model.fit([s for s in train if len(s) >= 2],
                      validation=[c + [int(t)] for c, t in zip(*val)])
    seconds = time.perf_counter() - t0
    ids, _ = model.recommend_batch(report[0], n=K, exclude_seen=True)
    out = metrics(np.asarray(ids), report[1])
    if sampled:
        emb = model.item_embeddings  # (V, C) in internal order of the model's catalogue
        pos = np.zeros(V + 1, np.int64)
        pos[np.asarray(model.item_ids)] = np.arange(len(model.item_ids))

        def score(ctx):
            h = model.session_embeddings(ctx)
            full = np.full((len(ctx), V + 1), -np.inf, np.float32)
            known = np.zeros(V + 1, bool)
            known[np.asarray(model.item_ids)] = True
            full[:, known] = h @ emb[pos[known]].T
            return full
        out.update(sampled_metrics(score, report[0], report[1], V))
    defaults = model.defaults_
    out.update(seconds=seconds, epochs=int(model.best_epoch_), epochs_run=len(model.loss_history_),
               defaults={k: v["value"] for k, v in defaults.items()},
               config={k: defaults[k]["value"] if k in defaults else model.fitted_params_[k]
                       for k in ("dropout", "max_seq", "loss", "negatives")})
    return out


def run_reference_alone(*args) -> dict:
    """run_reference in a fresh process that loads PyTorch before anything else
    (common.in_fresh_process: in one process PyTorch and fastsasrec would share one
    libgomp and its waiting policy)."""
    return in_fresh_process(run_reference, *args)


def run_reference(row, seqs, V, which, seed, threads, sampled):
    import torch
    from torch_reference import TorchSASRec
    sys.path.insert(0, str(HERE.parent / "python"))
    from fastsasrec import _auto
    torch.set_num_threads(threads)
    train, val, report = split(seqs, which)
    train = [s for s in train if len(s) >= 2]
    cfg = REFERENCE[row]
    model = TorchSASRec(V, factors=64, n_layers=2, n_heads=1, max_seq=cfg.get("max_seq", 50),
                        dropout=cfg["dropout"],
                        loss=cfg["loss"], random_state=seed, threads=threads)
    plan = _auto.schedule(len(train), 128)
    best, best_epoch, since, epoch = -1.0, 0, 0, 0
    kept = None
    t0 = time.perf_counter()
    while epoch < plan["max_epochs"] and since < plan["patience"]:
        model.fit(train, 1)
        epoch += 1
        score = metrics(model.topk(val[0], K), val[1])["NDCG@10"]
        if score > best:
            best, best_epoch, since = score, epoch, 0
            kept = metrics(model.topk(report[0], K), report[1])
            if sampled:
                kept.update(sampled_metrics(lambda c: model.score_last(c).numpy(), report[0],
                                            report[1], V))
        else:
            since += 1
    seconds = time.perf_counter() - t0
    kept.update(seconds=seconds, epochs=best_epoch, epochs_run=epoch)
    return kept


def run_popular(seqs, V, which):
    train, _, report = split(seqs, which)
    counts = np.bincount(np.concatenate([np.asarray(s) for s in train]), minlength=V + 1)
    counts[0] = -1
    order = np.argsort(-counts, kind="stable")
    top = []
    for c in report[0]:
        seen = set(c)
        top.append([i for i in order[: K + len(seen)] if i not in seen][:K])
    return metrics(np.asarray(top), report[1])


# ----------------------------------------------------------------------------- driver
def cached(split_, ds, row, seed):
    return CACHE / split_ / ds / f"{row}-seed{seed}.json"


def table(split_: str) -> str:
    lines = [f"| data set | row | HR@10 | NDCG@10 | NDCG@10 seeds | epochs | train s | settings |",
             "|---|---|---|---|---|---|---|---|"]
    root = CACHE / split_
    for ds in sorted(p.name for p in root.iterdir()) if root.exists() else []:
        for row in ROWS:
            runs = [json.loads(p.read_text()) for p in sorted((root / ds).glob(f"{row}-seed*.json"))]
            if not runs:
                continue
            hr = np.array([r["HR@10"] for r in runs])
            nd = np.array([r["NDCG@10"] for r in runs])
            ep = "/".join(str(r.get("epochs", "")) for r in runs)
            secs = np.mean([r.get("seconds", 0.0) for r in runs])
            settings = runs[0].get("config", "")
            if settings:
                settings = ", ".join(f"{k} {v}" for k, v in settings.items()
                                     if k != "negatives" or settings.get("loss") == "sampled_softmax")
            samp = ""
            if "sampled_NDCG@10" in runs[0]:
                samp = f" (sampled HR@10 {np.mean([r['sampled_HR@10'] for r in runs]):.3f})"
            lines.append(f"| {ds} | {row}{samp} | {hr.mean():.4f} | {nd.mean():.4f} ± {nd.std():.4f} | "
                         + " / ".join(f"{x:.4f}" for x in nd) + f" | {ep} | {secs:.0f} | {settings} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["ml-100k", "beauty", "sports", "synthetic"])
    ap.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--split", choices=["test", "val"], default="test")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="print the table from the cache and exit")
    args = ap.parse_args()
    if args.table:
        print(table(args.split))
        return
    for ds in args.datasets:
        seqs, V = load(ds)
        for row in args.rows:
            for seed in args.seeds if row != "most_popular" else [0]:
                path = cached(args.split, ds, row, seed)
                if path.exists():
                    continue
                sampled = ds == "beauty" and args.split == "test" and row != "most_popular"
                print(f"[{time.strftime('%H:%M:%S')}] {args.split} {ds} {row} seed {seed}", flush=True)
                if row == "most_popular":
                    out = run_popular(seqs, V, args.split)
                elif row in OURS:
                    out = run_ours(row, seqs, V, args.split, seed, args.threads, sampled)
                else:
                    out = run_reference_alone(row, seqs, V, args.split, seed, args.threads, sampled)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(out, indent=1))
                os.replace(tmp, path)
                print(f"    HR@10 {out['HR@10']:.4f}  NDCG@10 {out['NDCG@10']:.4f}  "
                      f"epochs {out.get('epochs')}  {out.get('seconds', 0):.0f} s", flush=True)


if __name__ == "__main__":
    main()
