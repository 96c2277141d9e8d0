"""Item features on MovieLens 100K (each movie's genres and release year), side by side
with the id-only model in the same run, and the cold-start protocol.

Quality (--part quality): bench_quality.py's protocol (full-catalogue leave-one-out; the
"defaults" row: SASRec() fit on each sequence less its last item, its epochs chosen on
a slice it carves itself), for
  * ids: SASRec() on ids alone;
  * features_mean, features_sum: SASRec(feature_pooling=...) with item_features = a
    table of genres (a list per movie) and year (a number: 10 buckets by quantile).
--split val reports the validation targets (each sequence's second to last item, the
model trained without the last two): what the pooling is chosen on.

Cold start (--part cold): fastsasrec.metrics.cold_start_split holds a share (10%) of the
movies, drawn by seed, out of training entirely; their features known.  The model trains
on each user's other movies less the last one (a leave-one-out of the warm movies), with
the held-out movies in the catalogue as new products (in the features table, in no
sequence).  Reported:
  * cold HR@10 / NDCG@10: every event of a held-out movie that follows a warm one, its
    context the warm movies before it, ranked over the whole catalogue; beside a uniform
    pick among the held-out movies (HR@10 = 10 / held-out count) and the content baseline
    (metrics.content_baseline: the held-out movies sharing the most genres and release
    decade with the session, the newest session item's first);
  * warm NDCG@10: the warm leave-one-out, against the same model trained without the
    held-out movies in its catalogue (<row>_off_catalogue; features_off_catalogue is
    features_mean's);
  * what a new product's id embedding holds, from the same fit: zero (what fit keeps;
    unprefixed), as training left it (trained_id_*), the warm items' mean (idmean_*) and
    the mean of the warm items sharing the most feature values with it (idnear_*);
  * offset_frontier: a constant added to every new movie's score, from 0 to the one that
    puts a new movie first in 95% of the cold cases: the new next item's HR@10 over the
    whole catalogue against the warm movies' NDCG@10, the trade-off any rule pays that
    does not know which sessions end in a new movie.

Synthetic (--part synthetic): the synthetic store's products with their category and brand
as features, validation targets (a second data set for choosing the features' defaults).

Thin (--part thin): --part quality (--split val or test) on a fifth of ML-100K's users, drawn
by seed (about 15 events a movie instead of 59; every movie of the table in the catalogue with
features, as new products where no kept user rated it): whether the features' defaults
hold where ids are thin, the sparse catalogues a store has.

A row ending in _date (features_mean_date) reads the release date as a time column (the
time kind: 10 buckets by quantile of the dates) in place of the year; --part quality and thin.

Each (part, split, row, seed) is cached as JSON under benchmarks/.features_cache.

    python benchmarks/bench_features.py --part quality --split val --rows ids features_mean features_sum --seeds 0 1
    python benchmarks/bench_features.py --part quality --split test --rows ids features_mean --seeds 0 1 2
    python benchmarks/bench_features.py --part cold --seeds 0 1 2
    python benchmarks/bench_features.py --part cost --threads 2 --reps 3   # training time
    python benchmarks/bench_features.py --part synthetic --rows ids features_mean features_mean_iddrop0.1 --seeds 0 1 2
    python benchmarks/bench_features.py --part cold --rows features_mean_iddrop0.1 --seeds 0 1 2
    python benchmarks/bench_features.py --part thin --split val --rows ids features_mean features_mean_iddrop0.1 --seeds 0 1 2 3 4 5 6 7
    python benchmarks/bench_features.py --part quality --split val --rows features_mean_date --seeds 0 1 2 3 4 5
    python benchmarks/bench_features.py --table
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
from bench_quality import DATA, K, load, metrics, split  # noqa: E402

CACHE = HERE / ".features_cache"
GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western"]
ROWS = {"ids": None, "features_mean": "mean", "features_sum": "sum"}


def row_params(row):
    """The estimator's parameters of a row: {} for "ids"; features_<pooling> with
    id_dropout 0, features_<pooling>_iddrop<p> with id_dropout p; a row ending in _date
    reads the release date as a time column in place of the year (``date_row``)."""
    if row == "ids":
        return {}
    base, _, p = row.removesuffix("_date").partition("_iddrop")
    if base not in ROWS or ROWS[base] is None:
        raise SystemExit(f"unknown row {row!r}: ids, features_mean, features_sum, "
                         "features_<pooling>_iddrop<p>")
    return {"feature_pooling": ROWS[base], "id_dropout": float(p) if p else 0.0}


def date_row(row):
    """Whether a row's table has the release date (a time column) in place of the year."""
    return row.endswith("_date")


def movie_table(dates=False):
    """(a DataFrame indexed by movie id: genres (list), year (float, NaN when unknown),
    title), from u.item (latin-1); ``dates``: the release date (a datetime, NaT when
    unknown: the time kind, 10 buckets by quantile of the dates) in place of the year."""
    import pandas as pd

    rows = []
    with open(DATA / "ml-100k" / "u.item", encoding="latin-1") as f:
        for line in f:
            p = line.rstrip("\n").split("|")
            if len(p) < 24:
                continue
            date = p[2].strip()
            year = float(date[-4:]) if len(date) >= 4 and date[-4:].isdigit() else np.nan
            genres = [g for g, flag in zip(GENRES, p[5:24]) if flag == "1"]
            rows.append({"item_id": int(p[0]), "genres": genres, "year": year, "title": p[1],
                         "released": date})
    table = pd.DataFrame(rows).set_index("item_id")
    released = pd.to_datetime(table.pop("released"), format="%d-%b-%Y", errors="coerce")
    if dates:
        table["year"] = released
        table = table.rename(columns={"year": "released"})
    return table


def fit(row, seqs, seed, threads, table):
    from fastsasrec import SASRec

    params = row_params(row)
    model = SASRec(random_state=seed, num_threads=threads, **params)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit([s for s in seqs if len(s) >= 2],
                  **({"item_features": table, "item_names": "title"} if params else {}))
    return model, time.perf_counter() - t0


THIN_SHARE = 0.2  # --part thin: the share of ML-100K's users kept (a draw by seed)


def thin_users(seqs, seed, share=THIN_SHARE):
    """A draw (by seed) of ``share`` of the users, whole sequences kept: the same movies,
    each with about a fifth of its events (ML-100K's 59 a movie become about 15), the
    regime of a sparse catalogue, where an id embedding has little to learn from.  Each
    seed draws other users, so that more seeds read more validation targets (about 200 a
    draw); the rows of one seed share its draw, and are compared seed by seed."""
    keep = np.random.default_rng([20261207, seed]).random(len(seqs)) < share
    return [s for s, k in zip(seqs, keep) if k]


def run_quality(row, which, seed, threads, thin=False):
    seqs, _ = load("ml-100k")  # internal ids are the movie ids (1..1682, every one rated)
    if thin:
        seqs = thin_users(seqs, seed)
    train, _, report = split(seqs, which)
    fit_on = train if which == "val" else report[0]
    model, seconds = fit(row, fit_on, seed, threads, movie_table(dates=date_row(row)))
    ids, _ = model.recommend_batch(report[0], n=K, exclude_seen=True)
    out = metrics(np.asarray(ids), report[1])
    out.update(seconds=seconds, epochs=int(model.best_epoch_), epochs_run=len(model.loss_history_))
    return out


def _cold_metrics(model, cold, coldcases):
    ids, _ = model.recommend_batch(coldcases[0], n=K, exclude_seen=True)
    out = {f"cold_{k}": v for k, v in metrics(np.asarray(ids), coldcases[1]).items()}
    out["cold_items_in_top10_share"] = float(np.isin(np.asarray(ids), np.asarray(cold)).mean())
    # the model's ranking among the held-out movies alone (the content baseline's candidates)
    pos = {int(i): k for k, i in enumerate(model.item_ids_.tolist())}
    cand = np.asarray(cold)
    E = model.item_embeddings_[[pos[int(c)] for c in cand]]
    top = np.zeros((len(coldcases[1]), K), dtype=np.int64)
    for b0 in range(0, len(coldcases[1]), 2048):
        h = model.session_embeddings(coldcases[0][b0:b0 + 2048])
        order = np.argsort(-(h @ E.T), axis=1, kind="stable")[:, :K]
        top[b0:b0 + len(h)] = cand[order]
    out.update({f"cold_among_new_{k}": v for k, v in metrics(top, coldcases[1]).items()})
    return out


def _id_rows(model):
    """A copy of the fitted engine's id embeddings (row i: internal id i, 0 the padding)."""
    from fastsasrec import _weights

    return _weights.tensor_rows(model._state.engine, "item_emb").copy()


def _set_id_rows(model, rows):
    import dataclasses

    from fastsasrec import _weights

    _weights.set_tensor(model._state.engine, "item_emb", rows)
    model._state = dataclasses.replace(model._state)  # a fresh cache of the fused table


def _id_part_choices(model, trained):
    """What a new product's id embedding could hold, each a full table (warm rows as
    trained): "mean", the mean of the warm items' rows; "near", the mean of the rows of
    the warm items sharing the most feature values with it (all those tied at the most)."""
    st = model._state
    cold = np.flatnonzero(np.asarray(st.popularity) == 0) + 1
    warm = np.flatnonzero(np.asarray(st.popularity) > 0) + 1
    f = st.features
    bags = np.zeros((f.offsets.size - 1, f.space.size), dtype=np.float32)
    for i in range(f.offsets.size - 1):
        bags[i, f.values[f.offsets[i]:f.offsets[i + 1]]] = 1.0
    shared = bags[cold] @ bags[warm].T
    mean, near = trained.copy(), trained.copy()
    mean[cold] = trained[warm].mean(axis=0)
    for c, row in zip(cold.tolist(), shared):
        near[c] = trained[warm[row == row.max()]].mean(axis=0)
    return {"mean": mean, "near": near}


def _scores(model, contexts):
    """(len(contexts), catalogue) float64 scores, each context's own items at -inf, and the
    catalogue's ids (column order)."""
    E = np.asarray(model.item_embeddings_, dtype=np.float64)
    pos = {int(i): k for k, i in enumerate(model.item_ids_.tolist())}
    out = np.asarray(model.session_embeddings(contexts), dtype=np.float64) @ E.T
    for r, c in enumerate(contexts):
        out[r, [pos[int(i)] for i in c if int(i) in pos]] = -np.inf
    return out, np.asarray(model.item_ids_)


def _offset_frontier(model, cold, coldcases, warm, steps=16):
    """What a constant added to every new movie's score buys and costs, from the same fit:
    for offsets from 0 to the one that puts a new movie first in 95% of the cold cases,
    the next new movie's HR@10 over the whole catalogue, the share of top-10 slots the new
    movies hold there, and the warm movies' NDCG@10 (their leave-one-out).  A score offset
    moves the new movies together (their order among themselves stays), as any rule that
    does not know which sessions end in a new movie must."""
    sc, ids = _scores(model, coldcases[0])
    sw, _ = _scores(model, warm[0])
    is_new = np.isin(ids, np.asarray(cold))
    gap = np.where(is_new, -np.inf, sc).max(1) - np.where(is_new, sc, -np.inf).max(1)
    top_off = float(np.quantile(gap[np.isfinite(gap)], 0.95))
    rows = []
    for b in np.linspace(0.0, max(top_off, 1e-6), steps):
        tc = ids[np.argsort(-(sc + b * is_new), axis=1, kind="stable")[:, :K]]
        tw = ids[np.argsort(-(sw + b * is_new), axis=1, kind="stable")[:, :K]]
        rows.append({"offset": float(b), "cold_HR@10": metrics(tc, coldcases[1])["HR@10"],
                     "new_share_top10": float(np.isin(tc, cold).mean()),
                     "warm_new_share_top10": float(np.isin(tw, cold).mean()),
                     "warm_NDCG@10": metrics(tw, warm[1])["NDCG@10"]})
    return rows


def run_cold(row, seed, threads, share=0.1):
    """One fit per row: "features_mean" reports the new products' id embeddings both as
    training left them (trained_id_*: pushed down as negatives) and at zero (what fit
    keeps), from the same fit; "features_off_catalogue" trains without them."""
    import pandas as pd

    from fastsasrec import _training

    from fastsasrec.metrics import cold_start_split, content_baseline, uniform_hit_rate

    if date_row(row):  # the content baseline shares the year's decade
        raise SystemExit(f"row {row!r}: the release-date rows are for --part quality and thin")
    seqs, _ = load("ml-100k")
    table = movie_table()
    cs = cold_start_split(seqs, share=share, random_state=seed)
    cold = cs.held_out.tolist()
    warm_seqs = [s.tolist() for s in np.split(cs.train.items, cs.train.offsets[1:-1])]
    # the warm movies' leave-one-out: train on each sequence less its last item
    train = [s[:-1] for s in warm_seqs if len(s) >= 3]
    warm = ([s[:-1] for s in warm_seqs if len(s) >= 3], np.array([s[-1] for s in warm_seqs if len(s) >= 3]))
    coldcases = ([c.tolist() for c in np.split(cs.contexts.items, cs.contexts.offsets[1:-1])], cs.targets)
    out = {"held_out": len(cold), "cold_cases": int(len(coldcases[1]))}
    if row.endswith("off_catalogue"):
        base = row[:-len("_off_catalogue")] if row != "features_off_catalogue" else "features_mean"
        model, out["seconds"] = fit(base, train, seed, threads, table.drop(index=cold))
    else:
        keep = _training._finished
        _training._finished = lambda state: state
        try:
            model, out["seconds"] = fit(row, train, seed, threads, table)
        finally:
            _training._finished = keep
        out.update({f"trained_id_{k}": v for k, v in _cold_metrics(model, cold, coldcases).items()})
        ids, _ = model.recommend_batch(warm[0], n=K, exclude_seen=True)
        out.update({f"trained_id_warm_{k}": v for k, v in metrics(np.asarray(ids), warm[1]).items()})
        trained = _id_rows(model)
        for name, rows in _id_part_choices(model, trained).items():  # the alternatives
            _set_id_rows(model, rows)
            out.update({f"id{name}_{k}": v for k, v in _cold_metrics(model, cold, coldcases).items()})
            ids, _ = model.recommend_batch(warm[0], n=K, exclude_seen=True)
            out.update({f"id{name}_warm_{k}": v for k, v in metrics(np.asarray(ids), warm[1]).items()})
        _set_id_rows(model, trained)
        model._state = _training._finished(model._state)  # the zero id embeddings fit gives them
        out.update(_cold_metrics(model, cold, coldcases))
        out["offset_frontier"] = _offset_frontier(model, cold, coldcases, warm)
        out["uniform_cold_HR@10"] = uniform_hit_rate(K, len(cold))
        # content baseline: genres and the year's decade as the shared values
        values = {int(i): {*(f"g:{g}" for g in r.genres),
                           *((f"d:{int(r.year) // 10}",) if not pd.isna(r.year) else ())}
                  for i, r in table.iterrows()}
        top = content_baseline(coldcases[0], cold, values, K)
        top = np.where(top == None, -1, top).astype(np.int64)  # noqa: E711 (object array)
        out.update({f"content_cold_{k}": v for k, v in metrics(top, coldcases[1]).items()})
    ids, _ = model.recommend_batch(warm[0], n=K, exclude_seen=True)
    out.update({f"warm_{k}": v for k, v in metrics(np.asarray(ids), warm[1]).items()})
    return out


def run_synthetic(row, seed, threads):
    """The synthetic store (fastsasrec.datasets; 300 products, 5,000 sessions of seed
    `seed`), each product's category and brand as its features: validation targets only
    (each session of 4+ views fit less its last two, scored on the second to last over
    the whole catalogue, seen items allowed: journeys revisit)."""
    import pandas as pd

    from fastsasrec import SASRec
    from fastsasrec.datasets import synthetic_store, synthetic_store_catalog

    cat = synthetic_store_catalog()
    table = pd.DataFrame({"category": {i: c for i, (_, c) in cat.items()},
                          "brand": {i: n.split(" ")[0] for i, (n, _) in cat.items()}})
    seqs = [s for s in synthetic_store(5000, random_state=seed)[0] if len(s) >= 4]
    train, target = [s[:-2] for s in seqs], np.array([s[-2] for s in seqs])
    params = row_params(row)
    model = SASRec(random_state=seed, num_threads=threads, **params)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(train, **({"item_features": table} if params else {}))
    seconds = time.perf_counter() - t0
    ids, _ = model.recommend_batch(train, n=K, exclude_seen=False)
    out = metrics(np.asarray(ids), target)
    out.update(seconds=seconds, epochs=int(model.best_epoch_))
    return out


def run_cost(reps, threads, epochs=5):
    """Training time per epoch, ids against features (genres and year), at fixed settings
    (factors 64, 2 layers, max_seq 50, dropout 0.2, batch 128), the two interleaved."""
    from fastsasrec import SASRec

    seqs, _ = load("ml-100k")
    table = movie_table()
    out = {}
    for loss in ("softmax", "sampled_softmax"):
        times = {"ids": [], "features": []}
        for rep in range(reps):
            for row in (("ids", "features") if rep % 2 == 0 else ("features", "ids")):
                m = SASRec(factors=64, n_layers=2, max_seq=50, dropout=0.2, batch_size=128,
                           loss=loss, negatives="uniform" if loss != "softmax" else "auto",
                           iterations=epochs, num_threads=threads, random_state=rep)
                t0 = time.perf_counter()
                m.fit(seqs, **({"item_features": table} if row == "features" else {}))
                times[row].append((time.perf_counter() - t0) / epochs)
        ids, feats = np.median(times["ids"]), np.median(times["features"])
        out[loss] = {"ids_s_per_epoch": float(ids), "features_s_per_epoch": float(feats),
                     "ratio": float(feats / ids), "runs": times}
        print(f"{loss}: {ids:.2f} s/epoch ids, {feats:.2f} features: {feats / ids:.2f}x "
              f"(medians of {reps}, {threads} threads)", flush=True)
    return out


def cache_path(part, which, row, seed):
    return CACHE / f"{part}_{which}_{row}_{seed}.json"


def table_text() -> str:
    lines = []
    for part, which in (("quality", "val"), ("quality", "test"), ("cold", "test"),
                        ("synthetic", "val"), ("thin", "val"), ("thin", "test")):
        found = {}
        for f in sorted(CACHE.glob(f"{part}_{which}_*.json")):
            row, seed = f.stem[len(part) + len(which) + 2:].rsplit("_", 1)
            found.setdefault(row, []).append(json.loads(f.read_text()))
        if not found:
            continue
        keys = sorted({k for rs in found.values() for r in rs for k, v in r.items()
                       if isinstance(v, (int, float))})
        lines.append(f"\n{part}, {which} targets (mean over seeds; n = seeds)\n")
        lines.append("| row | n | " + " | ".join(keys) + " |")
        lines.append("|---|---|" + "---|" * len(keys))
        for row, rs in found.items():
            cells = []
            for k in keys:
                v = [r[k] for r in rs if k in r]
                cells.append("" if not v else f"{np.mean(v):.4f}" if abs(np.mean(v)) < 10 else f"{np.mean(v):.0f}")
            lines.append(f"| {row} | {len(rs)} | " + " | ".join(cells) + " |")
    for f in sorted(CACHE.glob("cold_test_*.json")):
        rows = json.loads(f.read_text()).get("offset_frontier")
        if not rows:
            continue
        lines.append(f"\ncold, {f.stem[len('cold_test_'):]}: a constant added to the new movies' "
                     "scores (whole catalogue)\n")
        lines.append("| offset | new next item's HR@10 | top-10 slots held by new movies | "
                     "warm NDCG@10 |")
        lines.append("|---|---|---|---|")
        for r in rows:
            lines.append(f"| {r['offset']:.2f} | {r['cold_HR@10']:.4f} | {r['new_share_top10']:.1%} "
                         f"| {r['warm_NDCG@10']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["quality", "cold", "cost", "synthetic", "thin"], default="quality")
    ap.add_argument("--reps", type=int, default=3, help="--part cost: interleaved repeats")
    ap.add_argument("--split", choices=["val", "test"], default="test")
    ap.add_argument("--rows", nargs="+", default=None)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if args.table:
        print(table_text())
        return
    if args.part != "synthetic" and not (DATA / "ml-100k" / "u.item").exists():
        raise SystemExit(f"{DATA / 'ml-100k'} not found (set FASTSASREC_DATA)")
    CACHE.mkdir(exist_ok=True)
    if args.part == "cost":
        out = run_cost(args.reps, args.threads)
        (CACHE / f"cost_{args.threads}threads.json").write_text(json.dumps(out, indent=1))
        return
    rows = args.rows or (["features_mean", "features_off_catalogue"] if args.part == "cold"
                         else ["ids", "features_mean"])
    which = {"quality": args.split, "synthetic": "val", "thin": args.split}.get(args.part, "test")
    run = {"quality": lambda row, seed: run_quality(row, which, seed, args.threads),
           "thin": lambda row, seed: run_quality(row, which, seed, args.threads, thin=True),
           "cold": lambda row, seed: run_cold(row, seed, args.threads),
           "synthetic": lambda row, seed: run_synthetic(row, seed, args.threads)}[args.part]
    for seed in args.seeds:
        for row in rows:
            path = cache_path(args.part, which, row, seed)
            if path.exists():
                continue
            out = run(row, seed)
            out.update(row=row, seed=seed, split=which, threads=args.threads)
            path.write_text(json.dumps(out, indent=1))
            print(json.dumps(out), flush=True)
    print(table_text())


if __name__ == "__main__":
    main()
