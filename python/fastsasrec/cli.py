"""The ``fastsasrec`` command line::

    fastsasrec demo [--movielens [PATH]]          train on built-in data, show the store use cases
    fastsasrec train EVENTS -o MODEL              fit a model on an event log (.csv or .parquet)
    fastsasrec update MODEL EVENTS -o MODEL       continue training on new events (and new items)
    fastsasrec recommend MODEL --session 12,40,7  next items for a session
    fastsasrec evaluate MODEL EVENTS              hold out each user's last item (or split by time), rank
                                                  it, beside the most popular items
    fastsasrec score MODEL EVENTS -o RECS         recommendations for every user of a log (nightly)
    fastsasrec serve MODEL [--port 8000]          the HTTP server for the live widget
    fastsasrec plot HISTORY.csv -o curves.png     loss and validation NDCG@10 per epoch

Errors in what the user gave (files, columns, ids, arguments) print one line on stderr
and exit with status 2.  Ctrl-C exits with status 130; ``train`` and ``update`` then write
no model unless ``--keep-partial`` asks for the model as it stands.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fastsasrec._cli_items import _add_candidates, _candidates, _denylist, _parse_ids, _say_new_products


class CLIError(Exception):
    """A problem with the command's input: reported on stderr, exit status 2."""


# ----------------------------------------------------------------------------- helpers
def _read(args: argparse.Namespace, items: Optional[str] = None):
    """The EVENTS file as a DataFrame of its user, item and time columns (the one reader)."""
    from fastsasrec import _events

    time_col = None if args.no_time else args.time_col
    return _events.read(args.events, args.user_col, args.item_col, time_col, items=items), time_col


def _refuse_inputs(outputs: Sequence[Tuple[str, Optional[str]]], inputs: Sequence[Tuple[str, str]]) -> None:
    """Refuses, before any work, an output path that is an input (a symlink to one too)."""
    from fastsasrec._events import same_file

    for flag, out in outputs:
        for name, path in inputs:
            if out is not None and same_file(out, path):
                raise CLIError(f"{flag} {out!r} is the {name} file {path!r}: it would be overwritten; "
                               "give another path")


def _plural(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def _inputs(args: argparse.Namespace) -> List[Tuple[str, str]]:
    """The files a command reads (what no output may overwrite)."""
    out = [("EVENTS", args.events)] if args.events is not None else []
    if getattr(args, "item_features", None) is not None:
        out.append(("--item-features", args.item_features))
    return out


def _load_model(path: str, threads: Optional[int] = None, device: str = "auto"):
    from fastsasrec import SASRec

    if threads is not None and threads < 0:
        raise CLIError(f"--threads must be >= 0 (0: all cores), got {threads}")
    if not os.path.exists(path):
        raise CLIError(f"MODEL file {path!r} does not exist")
    try:
        return SASRec.load(path, device=device, num_threads=threads)
    except (ValueError, OSError) as e:
        raise CLIError(f"cannot load MODEL {path!r}: {' '.join(str(e).splitlines())}") from None
    except MemoryError:
        raise CLIError(f"cannot load MODEL {path!r}: not enough memory for it") from None


def _check_output(output: str) -> None:
    from fastsasrec._events import check_output

    check_output(output, "--output")


def _auto_or(kind):
    """An argparse type: "auto" or a value of ``kind``."""
    def parse(text: str):
        if text == "auto":
            return text
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__} or 'auto', got {text!r}") from None
    parse.__name__ = f"{kind.__name__} or 'auto'"
    return parse


def _count(text: str) -> int:
    """An argparse type: a whole number >= 1 (how many items)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return n


# The estimator's parameter names, as train's flags: its errors name what the user typed.
_FLAGS = {"random_state": "--seed", "iterations": "--epochs", "n_layers": "--layers", "n_heads": "--heads",
          "learning_rate": "--lr", "num_threads": "--threads", "batch_size": "--batch-size",
          "max_seq": "--max-seq", "factors": "--factors", "dropout": "--dropout", "loss": "--loss",
          "negatives": "--negatives", "id_dropout": "--id-dropout"}


def _model_params(args: argparse.Namespace) -> Dict[str, Any]:
    """train's estimator parameters, checked (an error names the flags, not the Python names)."""
    import re

    from fastsasrec._params import DEFAULTS, checked

    given = dict(factors=args.factors, iterations=args.epochs, max_seq=args.max_seq, loss=args.loss,
                 negatives=getattr(args, "negatives", None),
                 random_state=args.seed, num_threads=args.threads, n_layers=args.layers,
                 n_heads=args.heads, dropout=args.dropout, learning_rate=args.lr,
                 batch_size=args.batch_size, id_dropout=getattr(args, "id_dropout", None))
    params = {k: v for k, v in given.items() if v is not None}
    params["verbose"] = _verbosity(args)
    try:
        checked(dict(DEFAULTS), params)
    except ValueError as e:
        words = re.compile(r"\b(" + "|".join(_FLAGS) + r")\b")
        raise CLIError(words.sub(lambda m: _FLAGS[m.group(1)], str(e))) from None
    return params


def _verbosity(args: argparse.Namespace) -> int:
    """The model's verbose: -q 0; -v 2 (one line per epoch, and the live line on a
    terminal); otherwise the live line when stderr is a terminal, nothing in a pipe."""
    if args.quiet:
        return 0
    return 2 if args.verbose else int(sys.stderr.isatty())


# ----------------------------------------------------------------------------- score
def _score(args: argparse.Namespace) -> int:
    from fastsasrec import _events, batch

    _events.check_file(args.events)
    out = args.output
    if not out.lower().endswith((".parquet", ".pq", ".csv")):
        raise CLIError(f"-o/--output must end in .parquet or .csv, got {out!r}")
    lists = [(flag, text[1:]) for flag, text in (("--candidates", args.candidates), ("--denylist", args.denylist))
             if isinstance(text, str) and text.startswith("@")]
    _refuse_inputs([("-o/--output", out), ("-o/--output", out + ".meta.json")],
                   [("EVENTS", args.events), ("MODEL", args.model)] + lists)
    _check_output(out)
    if args.chunk_rows < 1:
        raise CLIError(f"--chunk-rows must be >= 1, got {args.chunk_rows}")
    exclude_seen = _exclude_seen(args, "--include-seen")
    model = _load_model(args.model, device=args.device, threads=args.threads)
    cand, deny = _candidates(args, model), _denylist(args, model)
    time_col = None if args.no_time else args.time_col
    total = _events.count_rows(args.events)
    show = not args.quiet and sys.stderr.isatty()  # a log file gets no carriage returns
    last = [0.0]

    def progress(read: int, users: int) -> None:
        now = time.perf_counter()
        if not show or now - last[0] < 0.5:
            return
        last[0] = now
        share = f" ({100 * read / total:.0f}%)" if total else ""
        print(f"\rread {read:,} events{share}, scored {users:,} users", end="", file=sys.stderr, flush=True)

    try:
        done = batch.score_file(model, args.model, args.events, out, user_col=args.user_col,
                                item_col=args.item_col, time_col=time_col, n=args.n,
                                exclude_seen=exclude_seen, sorted_by_user=args.sorted_by_user,
                                chunk_rows=args.chunk_rows, progress=progress, candidates=cand,
                                denylist=deny)
    except ValueError as e:
        raise CLIError(f"EVENTS {args.events!r}: {e}") from None
    if show:
        print(f"\rread {done['events_read']:,} events, scored {done['users']:,} users", file=sys.stderr)
    print(f"scored {done['users']:,} users ({done['events_read']:,} events) in {done['seconds']:.1f}s: "
          f"{done['rows']:,} rows to {out} (model sha256 {done['model_sha256'][:12]})")
    return 0


def _exclude_seen(args: argparse.Namespace, old: str) -> bool:
    """--exclude-seen / --no-exclude-seen, or the deprecated ``old`` flag (with a note)."""
    if args.deprecated_keep_seen:
        print(f"note: {old} is deprecated: use --no-exclude-seen", file=sys.stderr)
        return False
    return bool(args.exclude_seen)


# ----------------------------------------------------------------------------- train
def _finish(model, args: argparse.Namespace, what: str) -> int:
    """Saves a trained model to --output, unless Ctrl-C stopped the training and
    --keep-partial was not given; returns the exit status (130 when interrupted)."""
    if model.interrupted_:
        epochs, best = len(model.loss_history_), model.best_epoch_
        if not args.keep_partial:
            print(f"interrupted: {what} stopped after epoch {epochs}; {args.output} not written "
                  "(--keep-partial saves the model as it stands)", file=sys.stderr)
            return 130
        model.save(args.output)
        which = f"epoch {best}" + (f", the best validated of {epochs}" if best != epochs else "")
        print(f"interrupted: saved the model of {which} to {args.output}", file=sys.stderr)
        return 130
    model.save(args.output)
    print(f"saved {args.output}")
    return 0


def _check_checkpoint_args(args: argparse.Namespace) -> Dict[str, Any]:
    """fit's checkpoint keywords from --checkpoint, --checkpoint-every and --resume."""
    if args.checkpoint is None:
        if args.resume or args.checkpoint_every is not None:
            raise CLIError("--resume and --checkpoint-every go with --checkpoint PATH")
        return {}
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise CLIError(f"--checkpoint-every must be >= 1 (epochs), got {args.checkpoint_every}")
    from fastsasrec._events import same_file

    if same_file(args.checkpoint, args.output):
        raise CLIError("--checkpoint and --output must be different files")
    kw: Dict[str, Any] = {"checkpoint": args.checkpoint,
                          "checkpoint_every": args.checkpoint_every or 1}
    if args.resume and os.path.exists(args.checkpoint):
        kw["resume"] = args.checkpoint
    else:
        from fastsasrec._events import check_output

        check_output(args.checkpoint, "--checkpoint")  # before any work, not at the first save
        if args.resume:
            print(f"note: no checkpoint at {args.checkpoint} yet: training from the start",
                  file=sys.stderr)
    return kw


def _item_features(args: argparse.Namespace, item_ids: np.ndarray) -> Any:
    """The --item-features table as fit takes it (None without the flag)."""
    from fastsasrec import ItemFeatures, _events

    if getattr(args, "item_features", None) is None:
        for flag in ("item_names", "item_list_col", "item_time_col", "item_cat_col"):
            if getattr(args, flag, None):
                raise CLIError(f"--{flag.replace('_', '-')} reads a column of --item-features: give "
                               "--item-features ITEMS too")
        if getattr(args, "id_dropout", None):
            raise CLIError(f"--id-dropout {args.id_dropout} leaves items to their features: give "
                           "--item-features ITEMS too")
        return None
    multi = {}
    for spec in args.item_list_col or ():
        col, _, sep = spec.partition(":")
        multi[col] = sep or "|"
    frame = _events.read_items(args.item_features, args.item_id_col or args.item_col,
                               _events.item_mode(item_ids))
    return ItemFeatures(frame, names=args.item_names, multi=multi or None,
                        time=args.item_time_col or None, categorical=args.item_cat_col or None)


def _add_item_feature_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--item-features", metavar="ITEMS",
                   help="a .csv or .parquet of item features, one row per item (category, brand, "
                        "price, tags): numbers (and --item-time-col dates) become buckets, other "
                        "columns categories; items with no event (new products) join the catalogue")
    p.add_argument("--item-id-col", metavar="COL", help="ITEMS' item id column (default: --item-col's)")
    p.add_argument("--item-names", metavar="COL",
                   help="ITEMS' column of display names, shown beside ids (never a feature; "
                        "update reads the column train named, when ITEMS has it)")
    p.add_argument("--item-list-col", metavar="COL[:SEP]", action="append",
                   help="an ITEMS column holding several values per item, split on SEP "
                        "(default |), e.g. genres:|  (repeatable)")
    p.add_argument("--item-cat-col", metavar="COL", action="append",
                   help="an ITEMS column read as categories whatever it holds (numbers as codes, a "
                        "column the reader would warn of), each cell a value (repeatable)")
    p.add_argument("--item-time-col", metavar="COL", action="append",
                   help="an ITEMS column of dates or times (a release date, the day listed): "
                        "bucketed by time, new products in the newest bucket (repeatable; a "
                        "Parquet timestamp column is one already)")


def _lineage(model: Any, times: List[Tuple[str, int, float]]) -> str:
    """What the model's epochs are, where an epoch count was chosen: the slice's kept epochs
    and the refit's (the two phases ran more epochs than the model has: early stopping's
    patience is not in it), or "" where there was no refit."""
    refit = sum(n for p, n, _ in times if p == "refit")
    kept = (model.defaults_ or {}).get("iterations", {}).get("value")
    if not refit or not isinstance(kept, int):
        return ""
    if len(model.loss_history_) == kept + refit:  # the kept weights went on training
        return f" (the held-out slice's best {kept}, then {refit} more on everything)"
    return f" (a fresh model on everything, for the slice's best {kept})"


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _train(args: argparse.Namespace) -> int:
    from fastsasrec import SASRec

    if isinstance(args.epochs, int) and args.epochs < 1:
        raise CLIError(f"--epochs must be >= 1 or auto, got {args.epochs}")
    _refuse_inputs([("-o/--output", args.output), ("--checkpoint", args.checkpoint),
                    ("--history", args.history)], _inputs(args))
    _check_output(args.output)
    if args.history is not None:
        from fastsasrec._events import check_output, same_file

        check_output(args.history, "--history")
        if any(p is not None and same_file(args.history, p) for p in (args.output, args.checkpoint)):
            raise CLIError(f"--history {args.history!r} is the model or checkpoint file: give another path")
    checkpoint_kw = _check_checkpoint_args(args)
    params = _model_params(args)  # a bad flag is said before the events are read
    df, time_col = _read(args)
    feats = _item_features(args, df[args.item_col].to_numpy()[:1])
    t0 = time.perf_counter()
    model = SASRec.from_transactions(df, user_col=args.user_col, item_col=args.item_col,
                                     timestamp_col=time_col, **params, **checkpoint_kw,
                                     **({"item_features": feats} if feats is not None else {}))
    dt = time.perf_counter() - t0
    n_users = int(df[args.user_col].nunique())
    loss = f", final loss {model.loss_history_[-1]:.4f}" if model.loss_history_ else ""
    from fastsasrec._progress import PHASES, phase_times

    times = phase_times(model.history_)
    print(f"trained on {len(df):,} events of {n_users:,} users over {model.n_items:,} items: "
          f"{_epochs(len(model.loss_history_))}{_lineage(model, times)} in {dt:.1f}s "
          f"({model.loss_} loss{loss})")
    if model.defaults_:
        print("chosen from the data: " + ", ".join(f"{k} {v['value']}" for k, v in model.defaults_.items())
              + (" (epoch kept)" if "iterations" in model.defaults_ else ""))
        if args.verbose:
            for k, v in model.defaults_.items():
                print(f"  {k}: {v['why']}")
    if feats is not None:
        print(f"item features: {model.describe_item_features()}")
    print("time: " + "; ".join(f"{PHASES.get(p, p)} {_epochs(n)} in {sec:.1f}s" for p, n, sec in times))
    if args.history is not None:
        from fastsasrec.plot import write_history

        write_history(model.history_, args.history)
        print(f"wrote the history of {len(model.history_)} epochs to {args.history}")
    return _finish(model, args, "training")


def _update(args: argparse.Namespace) -> int:
    from fastsasrec import Sequences, _events
    from fastsasrec._event_table import transactions_to_sequences

    if args.epochs < 1:
        raise CLIError(f"--epochs must be >= 1, got {args.epochs}")
    if args.events is None and args.item_features is None:
        raise CLIError("give EVENTS (new events to train on), or --item-features ITEMS (new "
                       "products to list), or both")
    _refuse_inputs([("-o/--output", args.output)], _inputs(args))
    _check_output(args.output)
    model = _load_model(args.model, args.threads)
    feats = _item_features(args, model.item_ids)
    before = model.n_items
    if args.events is None:  # products listed before any event: nothing trains
        model.partial_fit([], item_features=feats)
        print(f"listed {_plural(model.n_items - before, 'new product')} ({model.n_items:,} items in "
              "all); nothing trained")
    else:
        df, time_col = _read(args, _events.item_mode(model.item_ids))
        items, offsets, _ = transactions_to_sequences(df, args.user_col, args.item_col, time_col)
        model.set_params(verbose=_verbosity(args))
        t0 = time.perf_counter()
        model.partial_fit(Sequences(items, offsets), epochs=args.epochs, item_features=feats)
        dt = time.perf_counter() - t0
        done = len(model.loss_history_)
        print(f"updated on {len(df):,} events: {_plural(model.n_items - before, 'new item')} "
              f"({model.n_items:,} in all), epochs {done - args.epochs + 1}..{done} in {dt:.1f}s"
              if not model.interrupted_ else f"updated on {len(df):,} events, interrupted")
    if feats is not None:
        print(f"item features: {model.describe_item_features()}")
    return _finish(model, args, "the update")


# ----------------------------------------------------------------------------- recommend
def _recommend(args: argparse.Namespace) -> int:
    model = _load_model(args.model, args.threads)
    session = _parse_ids(args.session, model, "--session")
    exclude = _parse_ids(args.exclude, model, "--exclude") if args.exclude is not None else None
    cand = _candidates(args, model)
    known = np.isin(np.asarray(session), model.item_ids)
    if not known.all():
        unknown = ", ".join(str(x) for x, k in zip(session, known) if not k)
        if known.any():
            print(f"note: not in the model's catalogue, ignored: {unknown}", file=sys.stderr)
        else:
            print(f"note: no item of --session is in the model's catalogue ({unknown}): "
                  "these are the most popular items", file=sys.stderr)
    _say_new_products(model, session)
    got = model.recommend(session, n=args.n, exclude_seen=_exclude_seen(args, "--keep-seen"),
                          exclude=exclude, candidates=cand)
    ids, scores = got
    width = max([4] + [len(str(x)) for x in ids.tolist()])
    names = got.names.tolist() if got.names is not None else None
    print(f"rank  {'item':>{width}}  score" + ("   name" if names is not None else ""))
    for r, (x, s) in enumerate(zip(ids.tolist(), scores.tolist()), 1):
        print(f"{r:>4}  {str(x):>{width}}  {s:.4f}" + (f"  {names[r - 1]}" if names is not None else ""))
    return 0


# ----------------------------------------------------------------------------- parser
def _add_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user-col", default="user_id", help="column of user (or session) ids (default: user_id)")
    p.add_argument("--item-col", default="item_id", help="column of item ids (default: item_id)")
    p.add_argument("--time-col", default="timestamp",
                   help="column of event times: numbers, datetimes or date strings (default: timestamp)")
    p.add_argument("--no-time", action="store_true", help="no time column: keep each user's events in file order")


def _add_seen(p: argparse.ArgumentParser, old: str, what: str) -> None:
    p.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=True,
                   help=f"leave out {what} (default); --no-exclude-seen allows them")
    p.add_argument(old, dest="deprecated_keep_seen", action="store_true",
                   help="deprecated: --no-exclude-seen")


def _add_verbosity(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", help="no progress, only the summary")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="one plain line per epoch on stderr (for logs), and the reasons of the "
                        "settings chosen (default: a live progress line when stderr is a terminal)")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastsasrec", description="fast SASRec next-item recommendation")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from fastsasrec import demo

    demo.add_parser(sub)

    t = sub.add_parser("train", help="fit a model on an event log and save it",
                       description="Fit SASRec on an event log (one row per event), one sequence per user "
                                   "sorted by time, and save the model.")
    t.add_argument("events", metavar="EVENTS", help="event log: .csv or .parquet (parquet needs pyarrow)")
    _add_columns(t)
    t.add_argument("-o", "--output", required=True, metavar="MODEL", help="where to save the model")
    t.add_argument("--factors", type=int, help="embedding width (default: 64)")
    t.add_argument("--epochs", type=_auto_or(int), metavar="N|auto",
                   help="training epochs (default: auto, early stopping on a held-out slice)")
    t.add_argument("--max-seq", type=_auto_or(int), metavar="N|auto",
                   help="most recent items read per user (default: auto, from the sequence lengths)")
    t.add_argument("--loss", choices=["auto", "softmax", "sampled_softmax", "gbce", "bce"],
                   help="default: auto (from the catalogue size)")
    t.add_argument("--negatives", choices=["auto", "uniform", "popularity", "in_batch", "mixed"],
                   help="the sampled softmax's negatives (default: auto)")
    t.add_argument("--layers", type=int, help="transformer blocks (default: 2)")
    t.add_argument("--heads", type=int, help="attention heads (default: 1)")
    t.add_argument("--dropout", type=_auto_or(float), metavar="P|auto",
                   help="default: auto, from the data's density")
    t.add_argument("--lr", type=_auto_or(float), metavar="LR|auto",
                   help="learning rate (default: auto, from the training targets a batch holds)")
    t.add_argument("--batch-size", type=int, help="default: 128")
    t.add_argument("--seed", type=int, help="random seed (default: 42)")
    t.add_argument("--threads", type=int, help="CPU threads (default: 0, all cores)")
    _add_verbosity(t)
    t.add_argument("--history", metavar="FILE.csv",
                   help="write the history (one row per epoch of each phase: loss, tokens/s, "
                        "seconds, validation NDCG@10 ...) to FILE.csv, for fastsasrec plot")
    _add_item_feature_args(t)
    t.add_argument("--id-dropout", type=float, metavar="P",
                   help="with --item-features: the probability that a training step leaves an "
                        "item's id embedding out, so that its features must carry it (default: "
                        "SASRec's id_dropout)")
    t.add_argument("--checkpoint", metavar="PATH",
                   help="write a training checkpoint (weights, optimizer, progress) to PATH")
    t.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="with --checkpoint: every N epochs (default: 1), and at the end")
    t.add_argument("--resume", action="store_true",
                   help="with --checkpoint: continue from PATH when it exists (same events and "
                        "settings; --epochs may grow)")
    t.add_argument("--keep-partial", action="store_true",
                   help="on Ctrl-C, save the model as it stands to --output: its best validated "
                        "epoch so far, or its last completed one (exit 130)")
    t.set_defaults(func=_train)

    u = sub.add_parser("update", help="continue training a model on new events",
                       description="Continue training a saved model on an event log of new events "
                                   "(from its current weights); items it has never seen join its "
                                   "catalogue.  Writes the updated model to --output.")
    u.add_argument("model", metavar="MODEL")
    u.add_argument("events", metavar="EVENTS", nargs="?",
                   help="event log of new events: .csv or .parquet (left out with --item-features: "
                        "the table's new products join the catalogue, and nothing trains)")
    _add_columns(u)
    u.add_argument("-o", "--output", required=True, metavar="MODEL",
                   help="where to save the updated model (may be MODEL itself)")
    u.add_argument("--epochs", type=int, default=1, help="epochs over the new events (default: 1)")
    _add_item_feature_args(u)
    u.add_argument("--threads", type=int, default=None)
    u.add_argument("--keep-partial", action="store_true",
                   help="on Ctrl-C, save the model as it stands to --output: its best validated "
                        "epoch so far, or its last completed one (exit 130)")
    _add_verbosity(u)
    u.set_defaults(func=_update)

    r = sub.add_parser("recommend", help="next items for a session",
                       description="Print the top-n next items for a session, with their scores.")
    r.add_argument("model", metavar="MODEL")
    r.add_argument("--session", required=True, help="comma-separated item ids, oldest first: 12,40,7")
    r.add_argument("-n", type=_count, default=10, help="how many items (default: 10)")
    r.add_argument("--exclude", help="comma-separated item ids never to recommend (e.g. the cart)")
    _add_candidates(r)
    _add_seen(r, "--keep-seen", "the session's own items")
    r.add_argument("--threads", type=int, default=None)
    r.set_defaults(func=_recommend)

    from fastsasrec import _cli_evaluate

    _cli_evaluate.add_parser(sub)

    sc = sub.add_parser("score", help="recommendations for every user of an event log (nightly jobs)",
                        description="Build each user's session from an event log (the model reads their "
                                    "most recent max_seq known events; all of their items count as seen), "
                                    "score it and write (user, rank, item[, name], score) rows "
                                    "to a .parquet or .csv file, the model file's SHA-256 in its metadata "
                                    "(a .csv gets it in OUTPUT.meta.json). The log is read in chunks.")
    sc.add_argument("model", metavar="MODEL", help="a model file written by train")
    sc.add_argument("events", metavar="EVENTS", help="event log: .csv or .parquet")
    _add_columns(sc)
    sc.add_argument("-o", "--output", required=True, metavar="RECS",
                    help="where to write: .parquet (needs pyarrow) or .csv")
    sc.add_argument("-n", type=_count, default=10, help="recommendations per user (default: 10)")
    _add_seen(sc, "--include-seen", "every item of the user's events in EVENTS")
    _add_candidates(sc)
    sc.add_argument("--denylist", metavar="IDS",
                    help="comma-separated item ids, or @FILE (one per line): never recommend these "
                         "(e.g. out of stock)")
    sc.add_argument("--sorted-by-user", action="store_true",
                    help="EVENTS holds each user's events together, users in ascending order (as text, "
                         "or as numbers for integer ids): memory is then one chunk and one user "
                         "(otherwise, per user, max_seq events plus the distinct items seen before them)")
    sc.add_argument("--chunk-rows", type=int, default=1_000_000, help="rows per chunk (default: 1,000,000)")
    sc.add_argument("--threads", type=int, help="CPU threads (default: 0, all cores)")
    sc.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    sc.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    sc.set_defaults(func=_score)

    from fastsasrec import _cli_serve

    _cli_serve.add_parser(sub)

    from fastsasrec import plot

    plot.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 2 bad input, 1 failure)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or argparse's own usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    prefix = f"fastsasrec {args.command}: error:"

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"fastsasrec {args.command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():  # a warning is a line for people, not a source location
        warnings.showwarning = show_warning
        return _run(args, prefix)


def _run(args: argparse.Namespace, prefix: str) -> int:
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (`| head`): quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return 141  # 128 + SIGPIPE, what a shell reports for a tool its pipe closed on
    except (CLIError, ValueError, FileNotFoundError, ConnectionError, ImportError) as e:
        print(f"{prefix} {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:  # e.g. the disk filling up while the model is saved
        print(f"{prefix} {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
