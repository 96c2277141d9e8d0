"""Time to quality of the default fit's procedure, on validation targets only: the levers
of `iterations="auto"` measured side by side (the learning rate, the patience of early
stopping, and a refit that starts fresh or continues from the slice's best weights).

Protocol: bench_quality.py's ``--split val`` for its "defaults" row (each sequence less its
last two items to fit on, the second to last reported; the test targets are never read).
Each variant is SASRec() with every setting "auto" but those named:

    python benchmarks/bench_time_to_quality.py --dataset ml-100k --variants defaults previous
    python benchmarks/bench_time_to_quality.py --dataset beauty --threads 1 --seeds 0 1
    python benchmarks/bench_time_to_quality.py --dataset store-250k --variants defaults floor5

Prints one JSON line per (variant, seed): HR@10, NDCG@10, fit seconds, each phase's
epochs and seconds, and the slice's NDCG@10 after each epoch (``slice_curve``: training
does not depend on the patience until it stops, so a curve run with a long patience,
``floor10``, tells where any shorter one would have stopped).  The procedure's own module settings (``_auto.REFIT``,
``REFIT_SHARE``, ``REFIT_DECAY``, ``STEPS_PATIENCE``, ``STEPS_SMOOTH``,
``PATIENCE_MIN_EPOCHS``, ``PATIENCE_MIN_VIEWS``) are set here per variant.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import K, load, metrics, split  # noqa: E402

# name: (SASRec parameters, the procedure's own module settings in _auto for this variant)
PREVIOUS = {"REFIT": "fresh", "STEPS_PATIENCE": 200, "STEPS_SMOOTH": 1}  # before 2026-12-06
VARIANTS = {
    "defaults": ({}, {}),
    "previous": ({"learning_rate": 1e-3}, PREVIOUS),
    "previous_lr": ({}, PREVIOUS),                       # the learning-rate rule alone
    "fresh": ({}, {"REFIT": "fresh"}),
    "no_decay": ({}, {"REFIT_DECAY": False}),
    "share0.1": ({}, {"REFIT_SHARE": 0.1}),
    "share0.3": ({}, {"REFIT_SHARE": 0.3}),
    "pat100": ({}, {"STEPS_PATIENCE": 100}),
    "lr1e-3": ({"learning_rate": 1e-3}, {}),
    "no_smooth": ({}, {"STEPS_SMOOTH": 1}),
    "pat200": ({}, {"STEPS_PATIENCE": 200}),
    "cap250": ({}, {"MAX_SEQ_CAP": 250}),                # max_seq's rule with a longer cap
    "heads2": ({"n_heads": 2}, {}),                      # two heads of 32 instead of one of 64
    "heads4": ({"n_heads": 4}, {}),
    "batch64": ({"batch_size": 64}, {}),                 # half the batch (the lr rule follows it)
    "drop0.6": ({"dropout": 0.6}, {}),
    # early stopping's floor of epochs, whatever the events per item (where an epoch is more
    # than 150 steps, the patience); "floor5" is the rule before 2026-12-07
    "floor2": ({}, {"PATIENCE_MIN_EPOCHS": 2, "PATIENCE_MIN_VIEWS": 10**12}),
    "floor3": ({}, {"PATIENCE_MIN_EPOCHS": 3, "PATIENCE_MIN_VIEWS": 10**12}),
    "floor5": ({}, {"PATIENCE_MIN_VIEWS": 10**12}),
    "floor10": ({}, {"PATIENCE_MIN_EPOCHS": 10, "PATIENCE_MIN_VIEWS": 10**12}),  # a long curve, to
    #                                                                         replay shorter floors on
    # the first measurements (2026-12-05): a warm refit without decay, no smoothing
    "warm": ({"learning_rate": 1e-3}, {"STEPS_PATIENCE": 200, "STEPS_SMOOTH": 1, "REFIT_DECAY": False}),
    "lr3e-3_warm": ({"learning_rate": 3e-3}, {"STEPS_PATIENCE": 200, "STEPS_SMOOTH": 1,
                                              "REFIT_DECAY": False}),
}


def load_any(dataset: str):
    """bench_quality's data sets, and "store-Nk": the synthetic store of N thousand sessions
    of 4-6 views (store-250k: bench_scale.py's size, about 1,950 optimizer steps an epoch)."""
    if dataset.startswith("store-") and dataset.endswith("k"):
        from bench_quality import _reindex
        from fastsasrec.datasets import synthetic_store
        seqs, _ = synthetic_store(n_sessions=1000 * int(dataset[6:-1]), random_state=0, min_len=4, max_len=6)
        return _reindex(seqs)
    return load(dataset)


def run(dataset: str, variant: str, seed: int, threads: int) -> dict:
    from fastsasrec import SASRec, _auto

    params, settings = VARIANTS[variant]
    saved = {k: getattr(_auto, k) for k in settings}
    for k, v in settings.items():
        setattr(_auto, k, v)
    try:
        seqs, _ = load_any(dataset)
        train, _, report = split(seqs, "val")
        model = SASRec(random_state=seed, num_threads=threads, **params)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit([s for s in train if len(s) >= 2])
        seconds = time.perf_counter() - t0
    finally:
        for k, v in saved.items():
            setattr(_auto, k, v)
    ids, _ = model.recommend_batch(report[0], n=K)
    out = dict(dataset=dataset, variant=variant, seed=seed, threads=threads,
               **metrics(np.asarray(ids), report[1]), seconds=round(seconds, 1))
    phases: dict = {}
    for h in model.history_:
        n, s = phases.get(h["phase"], (0, 0.0))
        phases[h["phase"]] = (n + 1, s + h["seconds"])
    out["phases"] = {k: [n, round(s, 1)] for k, (n, s) in phases.items()}
    # the slice's score per epoch (what early stopping watched), to replay other patiences on
    out["slice_curve"] = [round(h["val_NDCG@10"], 5) for h in model.history_
                          if h["phase"] == "slice" and h.get("val_NDCG@10") is not None]
    out["kept_epoch"] = model.defaults_.get("iterations", {}).get("value")
    out["learning_rate"] = model.defaults_.get("learning_rate", {}).get("value", params.get("learning_rate"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="ml-100k",
                    help="ml-100k, beauty, sports, synthetic, or store-Nk (the synthetic store, N "
                         "thousand sessions)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    for seed in args.seeds:
        for v in args.variants:
            print(json.dumps(run(args.dataset, v, seed, args.threads)), flush=True)


if __name__ == "__main__":
    main()
