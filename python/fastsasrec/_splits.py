"""Evaluation splits (``fastsasrec.metrics`` exports them): by time, where a user's
targets are all of their events after the split, and the cold-start split, where a
random share of the items never appears in training."""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, NamedTuple, Tuple

import numpy as np

from fastsasrec._params import seed_or_none
from fastsasrec._event_table import _utc_naive, event_times, transactions_to_sequences
from fastsasrec.data import Sequences, flatten_sequences


@dataclasses.dataclass(frozen=True)
class TimeSplit:
    """The test side of ``split_by_time``: one row per user with events on both sides.

    ``users``: their ids; ``contexts``: each one's events before the split, in time order;
    ``targets``: each one's events after it, in time order (all of them, repeats
    included); ``at``: the split time; ``no_events_before`` / ``no_events_after``: the
    users left out because all their events fall after / before it; ``new_item_targets``:
    the targets (distinct items per user) whose item has no event before the split, so
    that a model trained on the training side cannot know it (a miss, whatever the model).
    Evaluate with ``model.evaluate(test, k=...)`` (the same as ``model.evaluate(
    test.contexts, targets=test.targets, k=...)``)."""

    users: np.ndarray
    contexts: Sequences
    targets: Sequences
    at: Any
    no_events_before: int
    no_events_after: int
    new_item_targets: int


def _split_time(times: np.ndarray, at: Any, time_col: Any) -> Any:
    """``at`` as a value comparable with ``times``: a float strictly between 0 and 1 is a
    share of the events (the time of the event at that share in time order), anything
    else a time."""
    if isinstance(at, (float, np.floating)) and 0.0 < at < 1.0:  # np.float32 too
        from fractions import Fraction

        # The share as written (np.float32(0.8) is 0.8), in exact arithmetic: 0.07 of 100
        # events is 7, where the float product 7.000000000000001 would round up to 8.
        share = Fraction(str(float(str(at))))
        ordered = np.sort(times)
        return ordered[min(math.ceil(share * ordered.size), ordered.size - 1)]
    if times.dtype.kind == "M":
        import pandas as pd

        try:
            ts = pd.Timestamp(at)
            return np.datetime64(ts if ts.tz is None else ts.tz_convert("UTC").tz_localize(None))
        except (ValueError, TypeError) as e:
            raise ValueError(f"at must be a share of the events in (0, 1) or a time like column "
                             f"{time_col!r} (datetimes), got {at!r} ({e})") from None
    if isinstance(at, (bool, np.bool_)) or not isinstance(at, numbers.Real):
        raise ValueError(f"at must be a share of the events in (0, 1) or a time like column "
                         f"{time_col!r} (numbers), got {at!r}")
    return at


def split_by_time(events: Any, at: Any = 0.8, user_col: Any = "user_id", item_col: Any = "item_id",
                  time_col: Any = "timestamp") -> Tuple[Any, TimeSplit]:
    """(train_events, test): the rows of ``events`` (a pandas DataFrame) before the split
    time, and a ``TimeSplit`` holding, for each user with events on both sides, the
    events before it (the context) and ALL the events at or after it (the targets).

    ``at``: a float strictly between 0 and 1 is a share of the events: the split time is
    the time of the event at that share of the log in time order (0.8: about 80% of the
    events are before it; equal times stay on one side); anything else is a time of the
    column's kind (a number, or for datetimes a datetime or a date string; a column of
    text is read as ``from_transactions`` reads it, numbers when the first cell is one, else
    dates).  An event at
    exactly the split time is after it.  ``at`` must leave events on both sides.
    Datetimes with a time zone are compared in UTC (an ``at`` without one is read as
    UTC), and ``test.at`` is in UTC."""
    import pandas as pd

    if not isinstance(events, pd.DataFrame):
        raise ValueError(f"events must be a pandas DataFrame, got {type(events).__name__}")
    for arg, col in (("user_col", user_col), ("item_col", item_col), ("time_col", time_col)):
        if col not in events.columns:
            raise ValueError(f"events has no column {col!r} ({arg}); its columns: {list(events.columns)}")
    if len(events) == 0:
        raise ValueError("events is empty: nothing to split")
    times = _utc_naive(events[time_col]).to_numpy()  # times with a zone: in UTC
    if pd.isna(times).any():
        raise ValueError(f"column {time_col!r} (time_col) has a missing value at row {int(np.argmax(pd.isna(times)))}")
    times = event_times(times, time_col, "time_col")  # text: as transactions_to_sequences reads it
    when = _split_time(times, at, time_col)
    first, last = times.min(), times.max()
    if not first < when <= last:
        raise ValueError(f"at={at!r} leaves no event on one side: the events run from {first} to {last} "
                         "(an event at the split time is after it)")
    before = times < when
    train = events[before]
    read = events.copy(deep=False)  # the times as read once, for both sides (text is parsed once)
    read[time_col] = times
    items_b, off_b, users_b = transactions_to_sequences(read[before], user_col, item_col, time_col)
    items_a, off_a, users_a = transactions_to_sequences(read[~before], user_col, item_col, time_col)
    users, rows_b, rows_a = np.intersect1d(users_b, users_a, assume_unique=True, return_indices=True)
    contexts = Sequences._of(items_b, off_b).take(rows_b)
    targets = Sequences._of(items_a, off_a).take(rows_a)
    rows = np.repeat(np.arange(len(targets)), targets.lengths)
    pairs = pd.DataFrame({"u": rows, "i": targets.items}).drop_duplicates()
    new = int((~np.isin(pairs["i"].to_numpy(), np.unique(items_b))).sum())
    test = TimeSplit(users=users, contexts=contexts, targets=targets, at=when,
                     no_events_before=int(users_a.size - users.size),
                     no_events_after=int(users_b.size - users.size), new_item_targets=new)
    return train, test


class ColdStart(NamedTuple):
    """``cold_start_split``'s result.  ``train``: the sequences less the held-out items
    (those left with fewer than 2 items dropped); ``held_out``: the held-out item ids,
    ascending; ``contexts`` and ``targets``: one test case per held-out item that follows
    at least one item of its sequence that is not held out: the items before it, held-out
    ones removed, and the held-out item."""

    train: Sequences
    held_out: np.ndarray
    contexts: Sequences
    targets: np.ndarray


def cold_start_split(sequences: Any, share: float = 0.1, random_state: Any = 0) -> ColdStart:
    """Holds a random ``share`` of the items (round(share * items), drawn by
    ``random_state``) out of training entirely, for the cold-start protocol: a model
    trained on ``train`` (the held-out items known only by their features) ranks the
    whole catalogue for each test context, and the held-out target is what it should
    find.  A context drops the held-out items before the target: they are the new
    products, which no model trained on ``train`` has seen in a session, and without
    them every model and baseline reads the same context.  A case whose context is then
    empty is left out."""
    seqs = flatten_sequences(sequences, "sequences")
    if isinstance(share, (bool, np.bool_)) or not isinstance(share, numbers.Real) or not 0 < share < 1:
        raise ValueError(f"share must be a number strictly between 0 and 1, got {share!r}")
    rng = np.random.default_rng(seed_or_none(random_state, "random_state"))
    items = np.unique(seqs.items)
    n_held = int(round(share * items.size))
    if not 1 <= n_held < items.size:
        raise ValueError(f"share={share!r} holds out {n_held} of {items.size} items: "
                         "it must hold out at least one and leave one")
    held = np.sort(rng.choice(items, size=n_held, replace=False))
    is_held = np.isin(seqs.items, held)
    starts = seqs.offsets[:-1]
    seq_of = np.repeat(np.arange(len(seqs)), seqs.lengths)
    kept_len = np.bincount(seq_of[~is_held], minlength=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(kept_len, out=offsets[1:])
    kept = Sequences._of(seqs.items[~is_held], offsets)
    train = kept.take(np.flatnonzero(kept_len >= 2))
    ctx, ctx_len, targets = [], [], []
    for p in np.flatnonzero(is_held).tolist():
        lo = int(starts[seq_of[p]])
        c = seqs.items[lo:p][~is_held[lo:p]]
        if c.size:
            ctx.append(c)
            ctx_len.append(c.size)
            targets.append(seqs.items[p])
    c_off = np.zeros(len(ctx) + 1, dtype=np.int64)
    np.cumsum(ctx_len, out=c_off[1:])
    flat = np.concatenate(ctx) if ctx else seqs.items[:0]
    return ColdStart(train, held, Sequences._of(flat, c_off), np.asarray(targets, dtype=seqs.items.dtype))
