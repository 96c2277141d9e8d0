"""``fastsasrec demo``: train on synthetic store sessions (or MovieLens 100K), compare with
the most-popular baseline, and show the store's use cases: the "based on what you viewed"
widget, re-engagement, the abandoned-cart upsell, session quality and, in the store, new
products (known by their features alone) in a "new for you" slot."""
from __future__ import annotations

import argparse
import time
from typing import Any, Dict, List, Sequence

import numpy as np


def _fmt_ids(ids: Sequence[Any], names: Dict[Any, str], limit: int = 60) -> List[str]:
    out = []
    for x in ids:
        name = names.get(x.item() if hasattr(x, "item") else x, str(x))
        out.append(name if len(name) <= limit else name[: limit - 1] + "…")
    return out


def _store_examples(names: Dict[int, str]) -> Dict[str, Any]:
    """Hand-picked sessions of the synthetic store for the use cases."""
    pid = {v: k for k, v in names.items()}
    espresso = [pid["Acme espresso machine"], pid["Acme burr grinder"], pid["Acme coffee scale"]]
    focused = [pid[f"Nordic {x}"] for x in ("running shoes", "running socks", "sports watch", "energy gels")]
    scattered = [pid[x] for x in ("Vela tent", "Acme serum", "Kite road bike", "Orbit stroller")]
    camping = [pid[f"Vela {x}"] for x in ("tent", "sleeping bag")]
    return dict(cart_session=espresso, cart=espresso[:2], focused=focused, scattered=scattered,
                focused_label="one journey", scattered_label="four categories",
                new_for=[espresso[:2], camping])


# Listed today: a category and a brand the catalogue has, no view yet.
_NEW_PRODUCTS = {9001: ("Acme cold brew kit", "coffee", "Acme"),
                 9002: ("Vela ultralight tent", "camping", "Vela"),
                 9003: ("Kite bike lights", "cycling", "Kite")}


def _new_products(model: Any, today: List[Any], sessions: List[List[Any]]) -> None:
    """(e): new products join with partial_fit (their features, today's sessions), and a
    "new for you" slot ranks them alone for a session."""
    import pandas as pd

    new = pd.DataFrame([(n, c, b) for n, c, b in _NEW_PRODUCTS.values()],
                       columns=["name", "category", "brand"], index=list(_NEW_PRODUCTS))
    print("\n(e) new products: listed today with a category and a brand, not yet viewed")
    t0 = time.perf_counter()
    model.partial_fit(today, epochs=1, item_features=new, item_names="name")
    print(f"  added with today's {len(today):,} sessions (partial_fit, 1 epoch, "
          f"{time.perf_counter() - t0:.1f}s): " + ", ".join(new["name"]))
    names = dict(zip(model.item_ids_.tolist(), model.item_names_.tolist()))
    for session in sessions:
        got = model.recommend(session, n=1, candidates=new.index.to_numpy())
        print("  viewed: " + " -> ".join(_fmt_ids(session, names))
              + f"  | new for you: {got.names[0]} ({got.scores[0]:.2f})")
    # A visitor on a new product's page: the model reads its look-alike with events.
    first = next(iter(_NEW_PRODUCTS))
    got = model.recommend([first], n=3)
    print(f"  viewed only the new {names[first]}  | based on it: " + ", ".join(got.names))


def run(args: argparse.Namespace) -> int:
    """The demo; returns the exit status."""
    from fastsasrec import SASRec
    from fastsasrec.data import leave_one_out
    from fastsasrec.datasets import movielens_100k, synthetic_store
    from fastsasrec.metrics import most_popular_topk, ranks_from_topk, summarize

    rng = np.random.default_rng(args.seed)
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    if args.download and args.movielens is None:
        raise ValueError("--download goes with --movielens")
    if args.movielens is not None:
        from fastsasrec._event_table import transactions_to_sequences

        path = None if args.movielens == "" else args.movielens
        events, names = movielens_100k(path, download=args.download)
        flat, offsets, _ = transactions_to_sequences(events, "user_id", "item_id", "timestamp")
        sessions = [s.tolist() for s in np.split(flat, offsets[1:-1])]
        who, what, viewed = "users", "movies", "watched"
        epochs = 40 if args.epochs is None else args.epochs
        params = dict(factors=64, n_layers=2, max_seq=50, iterations=epochs)
        print(f"MovieLens 100K: {len(flat):,} ratings of {len(names):,} movies by {len(sessions):,} users")
        features = {}
    else:
        import pandas as pd

        from fastsasrec.datasets import synthetic_store_catalog

        sessions, names = synthetic_store(n_sessions=args.sessions, random_state=args.seed)
        who, what, viewed = "visitors", "products", "viewed"
        epochs = 15 if args.epochs is None else args.epochs
        params = dict(factors=48, n_layers=2, max_seq=20, n_negatives=64, iterations=epochs)
        print(f"synthetic store: {len(sessions):,} sessions over {len(names)} products")
        # What the store knows of each product: its category and brand, and its name.
        catalog = synthetic_store_catalog()
        table = pd.DataFrame({"category": [c for _, c in catalog.values()],
                              "brand": [n.split()[0] for n, _ in catalog.values()],
                              "name": [n for n, _ in catalog.values()]}, index=list(catalog))
        features = {"item_features": table, "item_names": "name"}
        print("  item features: category, brand; names shown beside ids")
    # New visitors: train on 80% of the sessions, then predict the last item of each of
    # the other 20% from the items before it.
    n_test = len(sessions) // 5
    train, test = sessions[n_test:], sessions[:n_test]
    if n_test < 1 or not any(len(s) >= 2 for s in test):
        raise ValueError(f"too few sessions to hold out new {who}: use more of them")
    print(f"  {len(train):,} to train on, {len(test):,} new {who} to predict")
    model = SASRec(random_state=args.seed, verbose=0, num_threads=args.threads, **params)
    t0 = time.perf_counter()
    model.fit(train, **features)
    if model.item_names_ is not None:  # the names the model carries
        names = dict(zip(model.item_ids_.tolist(), model.item_names_.tolist()))
    print(f"trained {epochs} epochs in {time.perf_counter() - t0:.1f}s "
          f"(final loss {model.loss_history_[-1]:.3f})" if model.loss_history_ else "trained 0 epochs")

    # ---- quality against the most-popular baseline
    k = 10
    ours = model.evaluate(test, k=k, protocol="loo")
    contexts, targets = leave_one_out(test)
    pop_top = most_popular_topk(contexts, train, k)
    pop = summarize(ranks_from_topk(pop_top, targets), k)
    shown = {x for x in pop_top.ravel().tolist() if x is not None}
    pop[f"coverage@{k}"] = len(shown) / model.n_items
    cols = [f"HR@{k}", f"NDCG@{k}", f"MRR@{k}", f"coverage@{k}"]
    print(f"\nnext item of {ours['n']:,} new {who} (not seen in training): each one's last item "
          f"held out; {ours['protocol']}, items already {viewed} excluded")
    print(f"  {'':14s}" + "".join(f"{c:>12s}" for c in cols))
    print(f"  {'SASRec':14s}" + "".join(f"{ours[c]:12.3f}" for c in cols))
    print(f"  {'most popular':14s}" + "".join(f"{pop[c]:12.3f}" for c in cols))
    print(f"  (coverage: the share of the {model.n_items:,} {what} shown in some top-{k} list)")

    # ---- (a) "based on what you viewed" widget
    print(f"\n(a) based on what you {viewed}: the widget for a live session")
    usable = [i for i, c in enumerate(contexts) if len(c) >= 2]
    last = None
    for i in rng.choice(usable, size=min(2, len(usable)), replace=False):
        ctx = contexts[i][-3:]
        ids, scores = model.recommend(ctx, n=3)
        print(f"  {viewed}: " + " -> ".join(_fmt_ids(ctx, names)))
        print("  next:   " + ", ".join(f"{n} ({s:.2f})" for n, s in zip(_fmt_ids(ids, names), scores)))
        if last is None and np.isin(ctx[-1], model.item_ids):
            last = ctx[-1]
    if last is not None:  # the same page's "similar products" strip: nearest item embeddings
        sim, cos = model.similar_items(last, n=3)
        print(f"  similar to {_fmt_ids([last], names)[0]}: "
              + ", ".join(f"{n} ({c:.2f})" for n, c in zip(_fmt_ids(sim, names), cos)))

    # ---- (b) re-engagement
    print(f"\n(b) re-engagement: the one {what[:-1]} to feature for lapsed {who}, never one they had")
    for _ in range(3):
        if args.movielens is not None or len(test) < 2:
            history = list(test[int(rng.integers(len(test)))])
        else:  # a returning shopper: two earlier visits
            a, b = rng.choice(len(test), size=2, replace=False)
            history = list(test[a]) + list(test[b])
        recent = history[-10:]
        ids, _ = model.recommend(history, n=1)  # reads the last max_seq; excludes all of it
        shown_recent = _fmt_ids(recent[-3:], names, limit=40)
        more = f"(+{len(recent) - 3} before) " if len(recent) > 3 else ""
        print(f"  last {viewed}: {more}" + ", ".join(shown_recent))
        print(f"  feature:    {_fmt_ids(ids, names)[0]}")

    # ---- (c) abandoned cart
    if args.movielens is None:
        ex = _store_examples(names)
        cart_session, cart = ex["cart_session"], ex["cart"]
    else:
        long_ctx = [c for c in contexts if len(c) >= 3] or contexts
        cart_session = list(long_ctx[int(rng.integers(len(long_ctx)))][-3:])
        cart = cart_session[: max(1, len(cart_session) - 1)]
    print("\n(c) abandoned-cart upsell: recommendations that leave out what is already in the cart")
    print(f"  {viewed}: " + " -> ".join(_fmt_ids(cart_session, names)))
    print("  cart:   " + ", ".join(_fmt_ids(cart, names)))
    ids, scores = model.recommend(cart_session, n=3, exclude_seen=False, exclude=cart)
    print("  upsell: " + ", ".join(f"{n} ({s:.2f})" for n, s in zip(_fmt_ids(ids, names), scores)))

    # ---- (d) session quality
    print("\n(d) session quality: how focused a session is (0 scattered .. 1 one intent)")
    if args.movielens is None:
        focused, scattered = ex["focused"], ex["scattered"]
        focused_label, scattered_label = ex["focused_label"], ex["scattered_label"]
    else:  # the most and least focused of some new users' last 5 movies
        pool = ([c[-5:] for c in contexts if len(c) >= 5] or [c[-5:] for c in contexts if len(c) >= 2]
                or [list(c) for c in contexts])[:200]
        q = [model.session_quality(s) for s in pool]
        focused, scattered = pool[int(np.argmax(q))], pool[int(np.argmin(q))]
        focused_label, scattered_label = f"most focused of {len(pool)}", f"least focused of {len(pool)}"
    for label, s in ((f"focused ({focused_label})", focused), (f"scattered ({scattered_label})", scattered)):
        print(f"  {label}: focus {model.session_quality(s):.2f}")
        print("    " + ", ".join(_fmt_ids(s, names, limit=40)))

    # ---- (e) new products (the store's catalogue has features)
    if args.movielens is None:
        _new_products(model, train[-len(train) // 10:], ex["new_for"])
    return 0


def add_parser(sub: Any) -> None:
    """The ``demo`` subcommand of the command line's parser."""
    d = sub.add_parser("demo", help="train on built-in data and show the store use cases",
                       description="Train on synthetic store sessions (or MovieLens 100K), compare with "
                                   "the most-popular baseline and show the store use cases.")
    d.add_argument("--sessions", type=int, default=4000, help="synthetic sessions (default: 4000)")
    d.add_argument("--epochs", type=int, default=None, help="training epochs (default: 15; 40 for MovieLens)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=0, help="CPU threads (default: 0, all cores)")
    d.add_argument("--movielens", nargs="?", const="", default=None, metavar="PATH",
                   help="use MovieLens 100K from PATH (a folder with u.data and u.item; default: "
                        "./ml-100k or the download cache) instead of the synthetic store")
    d.add_argument("--download", action="store_true",
                   help="with --movielens: download MovieLens 100K from GroupLens when no local copy exists")
    d.set_defaults(func=run)
