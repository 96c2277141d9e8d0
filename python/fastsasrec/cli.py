"""The ``fastsasrec`` command line."""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    from fastsasrec import SASRec
    from fastsasrec.data import leave_one_out
    from fastsasrec.datasets import synthetic_store
    from fastsasrec.metrics import evaluate_topk, most_popular_topk, ranks_from_topk, summarize

    sessions, names = synthetic_store(n_sessions=args.sessions, random_state=args.seed)
    # New visitors: train on 80% of the sessions, then predict the last item of each of
    # the other 20% from the items before it.
    n_test = len(sessions) // 5
    train, test = sessions[n_test:], sessions[:n_test]
    contexts, targets = leave_one_out(test)
    print(f"synthetic store: {len(sessions):,} sessions over {len(names)} products "
          f"({len(train):,} to train on, {len(contexts):,} new visitors to predict)")
    model = SASRec(factors=48, n_layers=2, max_seq=20, n_negatives=64, iterations=args.epochs,
                   random_state=args.seed, verbose=0)
    t0 = time.perf_counter()
    model.fit(train)
    print(f"trained {args.epochs} epochs in {time.perf_counter() - t0:.1f}s "
          f"(final loss {model.loss_history_[-1]:.3f})")
    k = 10
    ours = evaluate_topk(model, contexts, targets, k=k)
    pop = summarize(ranks_from_topk(most_popular_topk(contexts, train, k), targets), k)
    print(f"\nnext item of new visitors' sessions, ranked over the full catalogue (seen items excluded)")
    print(f"  {'':14s}" + "".join(f"{m:>10s}" for m in ours))
    print(f"  {'SASRec':14s}" + "".join(f"{v:10.3f}" for v in ours.values()))
    print(f"  {'most popular':14s}" + "".join(f"{v:10.3f}" for v in pop.values()))
    rng = np.random.default_rng(args.seed)
    print("\nbased on what you viewed:")
    for i in rng.choice(len(contexts), size=3, replace=False):
        ctx = contexts[i][-3:]
        ids, scores = model.recommend(ctx, n=3)
        print("  viewed: " + " -> ".join(names[x] for x in ctx))
        print("  next:   " + ", ".join(f"{names[x]} ({s:.2f})" for x, s in zip(ids, scores)))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fastsasrec", description="fast SASRec next-item recommendation")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train on built-in synthetic store sessions and show recommendations")
    d.add_argument("--sessions", type=int, default=4000)
    d.add_argument("--epochs", type=int, default=15)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"fastsasrec: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
