"""``fastsasrec evaluate``: a model against the most-popular baseline on an event log,
leave-one-out or split by time, at one or several cut-offs."""
from __future__ import annotations

import argparse
from typing import Any, List

import numpy as np

DESCRIPTION = ("Build one sequence per user from an event log, hold out each sequence's last item "
               "(or, with --split-time, all of a user's events after that time) and rank it from "
               "the items before it; the most popular items are scored beside the model by the "
               "same protocol. For an honest figure, use events of users the model was not "
               "trained on (or trained on without their held-out items).")


def add_parser(sub: Any) -> None:
    from fastsasrec.cli import _add_columns

    e = sub.add_parser("evaluate", help="hold out each user's last item and rank it", description=DESCRIPTION)
    e.add_argument("model", metavar="MODEL")
    e.add_argument("events", metavar="EVENTS", help="event log: .csv or .parquet")
    _add_columns(e)
    e.add_argument("-k", "--k", default="10", metavar="K",
                   help="cut-offs of the metrics, comma-separated: 10 or 5,10,20 (default: 10)")
    e.add_argument("--protocol", choices=["loo", "sampled"], default="loo",
                   help="loo: rank the full catalogue (default); sampled: rank against 100 random "
                        "negatives, as in the SASRec paper (easier, not comparable)")
    e.add_argument("--split-time", metavar="AT",
                   help="split by time instead: each user's events before AT are the context, ALL of "
                        "those at or after it the targets. AT: a share of the events strictly between "
                        "0 and 1 (0.8: the time of the event at 80%% of the log in time order) or a "
                        "time like the time column's (a number or a date)")
    e.add_argument("--threads", type=int, default=None)
    e.set_defaults(func=run)


def _cutoffs(text: str) -> List[int]:
    from fastsasrec.cli import CLIError

    tokens = [t.strip() for t in text.split(",")]
    if not all(t.isdigit() and int(t) > 0 for t in tokens):
        raise CLIError(f"--k must be positive integers separated by commas, like 5,10,20, got {text!r}")
    return list(dict.fromkeys(int(t) for t in tokens))


def _at(text: str) -> Any:
    """--split-time's text as a share (a float in (0, 1)), a number, or a date string."""
    try:
        value = float(text)
    except ValueError:
        return text
    if 0.0 < value < 1.0:
        return value
    return int(text) if text.strip().lstrip("-").isdigit() else value


def _when(at: Any) -> str:
    """The split time as the output says it: a datetime in UTC (the zone the command reads
    times in, ``_event_table._utc_naive``), to the second where that is exact; a number as it is."""
    if isinstance(at, np.datetime64):
        exact = at == at.astype("datetime64[s]")
        return np.datetime_as_string(at, unit="s" if exact else "auto").replace("T", " ") + " UTC"
    return str(at)


def run(args: argparse.Namespace) -> int:
    from fastsasrec import Sequences, _events
    from fastsasrec.cli import CLIError, _load_model, _read
    from fastsasrec._event_table import transactions_to_sequences
    from fastsasrec.metrics import popular_baseline, split_by_time

    ks = _cutoffs(args.k)
    if args.split_time is not None and args.no_time:
        raise CLIError("--split-time needs the time column: drop --no-time")
    if args.split_time is not None and args.protocol != "loo":
        raise CLIError("--split-time ranks the full catalogue: drop --protocol sampled")
    model = _load_model(args.model, args.threads)
    df, time_col = _read(args, _events.item_mode(model.item_ids))
    if args.split_time is None:
        items, offsets, _ = transactions_to_sequences(df, args.user_col, args.item_col, time_col)
        sequences, targets = Sequences(items, offsets), None  # flat from the file to the engine
    else:
        try:
            _, test = split_by_time(df, _at(args.split_time), args.user_col, args.item_col, time_col)
        except ValueError as e:
            raise CLIError(f"--split-time {args.split_time}: {e}") from None
        if len(test.users) == 0:
            raise CLIError(f"--split-time {args.split_time}: no user has events both before and after "
                           f"{_when(test.at)} ({test.no_events_before:,} users only after it, "
                           f"{test.no_events_after:,} only before): choose a time inside users' histories")
        sequences, targets = test.contexts, test.targets
    res = model.evaluate(sequences, k=ks, protocol=args.protocol, targets=targets)
    pop = popular_baseline(model, sequences, k=ks, targets=targets) if args.protocol == "loo" else None
    order = "in time order" if time_col is not None else "in file order"
    if targets is None:
        print(f"{res['n']:,} users' last items held out and ranked from the items before them "
              f"({order}); protocol: {res['protocol']}")
        if len(sequences) > res["n"]:
            print(f"({len(sequences) - res['n']:,} users with fewer than 2 events skipped)")
    else:
        print(f"{res['n']:,} users' events from {_when(test.at)} on ({len(targets.items):,} events) ranked "
              f"from their events before it; protocol: {res['protocol']}")
        print(f"(left out: {test.no_events_before:,} users with no event before, "
              f"{test.no_events_after:,} with none after; {test.new_item_targets:,} targets are "
              "items first seen after the split)")
    if res["unknown_targets"]:
        print(f"({res['unknown_targets']:,} targets are items the model does not know: misses)")
    print(f"  {'':18s}{'SASRec':>10s}" + (f"{'most popular':>14s}" if pop else ""))
    for key, v in res.items():
        if key not in ("n", "unknown_targets", "protocol"):
            print(f"  {key:<18s}{v:10.4f}" + (f"{pop[key]:14.4f}" if pop else ""))
    if pop is None:
        print("(the most-popular baseline is scored with full ranking only: --protocol loo)")
    return 0
