"""Batch scoring of event logs: each user's session built from their events, scored, and
written as (user, rank, item, score) rows.

A user's history is all their events, in time order.  The model reads the most recent
``max_seq`` of them that it knows (as ``recommend_batch`` does with a whole history); with
``exclude_seen`` every item of the history is left out of their recommendations, not only
those ``max_seq``.  A user with no item the model knows gets the most popular items.  Rows
whose item is an empty slot (fewer items than ``n`` left) are not written.  ``candidates``
(rank only these: the new products of an e-mail's "new for you") and ``denylist`` (never
these: out of stock) act on every user as they do in ``recommend_batch``.

``recommend_frame`` scores a table held in memory; ``score_file`` streams an event file in
chunks and writes Parquet or CSV atomically, with the model file's SHA-256 in the output's
metadata.  Its memory, for a file in any order: per user, their last ``max_seq`` known
events plus the distinct items they saw before those (``max_seq`` + the user's distinct
items), and the chunks not merged yet (at most half as many rows, or one chunk); with
``sorted_by_user``, one chunk and one user.  ``fastsasrec score`` is score_file.  Files are
read by ``fastsasrec._events``: CSV ids as text, user ids written out as they were read.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Optional, Tuple

import numpy as np

from fastsasrec import _events, _new_products
from fastsasrec._persist import file_sha256
from fastsasrec._params import flag, positive_int
from fastsasrec._event_table import transactions_to_sequences
from fastsasrec.data import Sequences, check_ids_compatible

SCORE_BATCH = 1 << 16  # sessions per recommend_batch call
META_KEY = "fastsasrec"  # the output's metadata key (Parquet schema metadata, CSV sidecar)


def _recent(items: np.ndarray, offsets: np.ndarray, T: int) -> Tuple[np.ndarray, np.ndarray,
                                                                      np.ndarray, np.ndarray]:
    """(items, offsets) of the last T items of each flat sequence, and of the items before."""
    flat = Sequences._of(items, offsets)
    recent, older = flat.tail(T), flat.head(np.minimum(flat.lengths, T))
    return recent.items, recent.offsets, older.items, older.offsets


def _known(model: Any, items: np.ndarray, what: str) -> np.ndarray:
    """Which of ``items`` the model knows (ValueError when their kind is not the model's)."""
    ids = model.item_ids_
    check_ids_compatible(items, ids, what)
    return np.isin(items, ids)


def long_rows(users: np.ndarray, ids: np.ndarray, scores: np.ndarray, user_col: str = "user",
              names: Optional[np.ndarray] = None) -> "Any":
    """recommend_batch's (B, k) ids and scores as (user_col, rank, item, score) rows, best
    first, empty slots (id -1 or "") left out: the one output shape of every batch path;
    with ``names`` (a model fitted with item names) a "name" column after "item"."""
    import pandas as pd

    k = ids.shape[1]
    mask = ((ids != "") if ids.dtype.kind == "U" else (ids != -1)).ravel()
    cols = {
        user_col: np.repeat(np.asarray(users), k)[mask],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), ids.shape[0])[mask],
        "item": ids.ravel()[mask],
    }
    if names is not None:
        cols["name"] = np.asarray(names).ravel()[mask]
    cols["score"] = scores.ravel()[mask].astype(np.float32)
    return pd.DataFrame(cols)


def pick(model: Any, candidates: Any = None, denylist: Any = None) -> dict:
    """``recommend_batch``'s ``candidates`` and ``denylist`` for every batch of a job,
    checked before the first (an error names the argument; candidates none of which the
    model knows are refused) and encoded once: the same objects are passed each time."""
    state = model._fitted()
    state.candidates(candidates)
    state.denylist(denylist)
    return {"candidates": candidates, "denylist": denylist}


def _score(model: Any, users: np.ndarray, recent: Tuple[np.ndarray, np.ndarray],
           older: Tuple[np.ndarray, np.ndarray], n: int, exclude_seen: bool,
           chosen: Optional[dict] = None) -> "Any":
    """The (user, rank, item, score) frame of users whose sessions are ``recent`` (flat
    items, offsets: their last max_seq known items) and who saw ``older`` before them;
    ``chosen``: ``pick``'s candidates and denylist."""
    import pandas as pd

    parts = []
    for b0 in range(0, users.size, SCORE_BATCH):
        b1 = min(users.size, b0 + SCORE_BATCH)
        o = recent[1][b0:b1 + 1]
        sessions = Sequences(recent[0][o[0]:o[-1]], o - o[0])
        if exclude_seen:
            e = older[1][b0:b1 + 1]
            kw = {"exclude": Sequences(older[0][e[0]:e[-1]], e - e[0])}
        else:
            kw = {}
        got = model.recommend_batch(sessions, n=n, exclude_seen=exclude_seen, **kw, **(chosen or {}))
        parts.append(long_rows(users[b0:b1], np.asarray(got[0]), np.asarray(got[1]),
                               names=got.names))
    if not parts:
        empty = {"user": users[:0], "rank": np.zeros(0, np.int32), "item": model.item_ids_[:0]}
        if model.item_names_ is not None:
            empty["name"] = np.zeros(0, dtype=str)
        return pd.DataFrame({**empty, "score": np.zeros(0, np.float32)})
    return pd.concat(parts, ignore_index=True)


def new_products(model: Any, items: np.ndarray) -> Optional[np.ndarray]:
    """Which of ``items`` (ids the model knows) are new products, which the model does not
    read beside items with events (``_new_products``); None when it has none."""
    state = model._fitted()
    mask = _new_products.unread(state)
    return None if mask is None else mask[state.encode(items)]


def _rows_concat(a: Tuple[np.ndarray, np.ndarray], b: Tuple[np.ndarray, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Two flat sequence lists of the same users joined user by user (a's items first)."""
    rows = np.concatenate([np.repeat(np.arange(x[1].size - 1), np.diff(x[1])) for x in (a, b)])
    order = np.argsort(rows, kind="stable")
    off = np.concatenate(([0], np.cumsum(np.diff(a[1]) + np.diff(b[1])))).astype(np.int64)
    return np.concatenate((a[0], b[0]))[order], off


def _score_histories(model: Any, users: np.ndarray, items: np.ndarray, offsets: np.ndarray, n: int,
                     exclude_seen: bool, chosen: Optional[dict] = None) -> "Any":
    """``_score`` of whole histories (flat, in time order, unknown items included).  The
    model's window is the last max_seq items it reads: new products are not among them
    beside items with events (they stay seen), as ``recommend_batch`` reads a history."""
    known = _known(model, items, "items")
    k_items = items[known]
    k_off = np.concatenate(([0], np.cumsum(known))).astype(np.int64)[offsets]
    new = new_products(model, k_items)
    if new is None or not new.any():
        r_items, r_off, o_items, o_off = _recent(k_items, k_off, model.max_seq_)
        return _score(model, users, (r_items, r_off), (o_items, o_off), n, exclude_seen, chosen)
    row = np.repeat(np.arange(users.size), np.diff(k_off))
    read = np.bincount(row[~new], minlength=users.size) > 0  # users with an item with events
    win = ~new | ~read[row]
    w_off = np.concatenate(([0], np.cumsum(win))).astype(np.int64)[k_off]
    x_off = np.concatenate(([0], np.cumsum(~win))).astype(np.int64)[k_off]
    r_items, r_off, o_items, o_off = _recent(k_items[win], w_off, model.max_seq_)
    older = _rows_concat((o_items, o_off), (k_items[~win], x_off))
    return _score(model, users, (r_items, r_off), older, n, exclude_seen, chosen)


def recommend_frame(model: Any, df: Any, user_col: Any = "user_id", item_col: Any = "item_id",
                    time_col: Any = None, n: int = 10, exclude_seen: bool = True,
                    candidates: Any = None, denylist: Any = None) -> "Any":
    """(user, rank, item, score) for every user of the event table ``df`` (pandas or
    polars DataFrame, or pyarrow Table): their history is all their events, by
    ``time_col`` (input order breaks ties, and stands in for time when it is None); the
    model reads its last max_seq known items, and ``exclude_seen`` leaves out all of it.
    ``candidates``: rank only these; ``denylist``: leave these out of every user's rows
    (both as in ``recommend_batch``).  Ranks start at 1; the ``user`` column is named
    ``user_col``."""
    model.item_ids_
    n = positive_int(n, "n")
    exclude_seen = flag(exclude_seen, "exclude_seen")
    chosen = pick(model, candidates, denylist)
    items, offsets, users = transactions_to_sequences(df, user_col, item_col, time_col)
    return _score_histories(model, users, items, offsets, n, exclude_seen, chosen).rename(
        columns={"user": user_col})


# ----------------------------------------------------------------------------- streaming
class _Writer:
    """Rows to a temporary file beside ``path``, renamed over it by close(); abort()
    removes it.  Parquet keeps the metadata in its schema, CSV in PATH.meta.json."""

    def __init__(self, path: str, meta: dict) -> None:
        self.path, self.meta = path, meta
        self.parquet = path.lower().endswith((".parquet", ".pq"))
        d = os.path.dirname(os.path.abspath(path))
        self.tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        self.writer = None
        self.rows = 0
        self.header = True

    def write(self, frame: Any) -> None:
        self.rows += len(frame)
        if self.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.writer is None:
                schema = table.schema.with_metadata({META_KEY: json.dumps(self.meta)})
                self.writer = pq.ParquetWriter(self.tmp, schema)
            self.writer.write_table(table.cast(self.writer.schema))
        else:
            frame.to_csv(self.tmp, mode="w" if self.header else "a", header=self.header, index=False)
            self.header = False

    def close(self, empty: Any) -> None:
        if self.parquet and self.writer is None:
            self.write(empty)
        if not self.parquet and self.header:
            self.write(empty)
        if self.writer is not None:
            self.writer.close()
        if not self.parquet:
            side = self.path + ".meta.json"
            with open(side + ".tmp", "w") as f:
                json.dump({META_KEY: self.meta}, f, indent=1)
            os.replace(side + ".tmp", side)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            if self.writer is not None:
                self.writer.close()
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


def score_file(model: Any, model_path: str, events: str, output: str, user_col: str = "user_id",
               item_col: str = "item_id", time_col: Optional[str] = "timestamp", n: int = 10,
               exclude_seen: bool = True, sorted_by_user: bool = False, chunk_rows: int = 1_000_000,
               progress: Optional[Callable[[int, int], None]] = None, candidates: Any = None,
               denylist: Any = None) -> dict:
    """Streams ``events`` (.csv or .parquet) in chunks of ``chunk_rows`` rows and writes
    each user's recommendations to ``output`` (.parquet or .csv); returns a summary (users,
    rows, seconds, model SHA-256).  ``sorted_by_user``: the file holds each user's events
    together, users ascending (ORDER BY user, time; as text, or as numbers for ids that are
    integers): memory is then one chunk and one user, and a user out of order is an error.
    Otherwise each user's last max_seq known events and the distinct items they saw
    before are kept until the end (the module's docstring).  ``progress(rows_read,
    users_scored)`` is called after each chunk.  ``candidates`` and ``denylist``: as in
    ``recommend_frame`` (the metadata counts the ids of each the model knows).  A failure
    removes the partial output; a finished one replaces ``output`` whole."""
    ids = model.item_ids_
    n = positive_int(n, "n")
    exclude_seen = flag(exclude_seen, "exclude_seen")
    chunk_rows = positive_int(chunk_rows, "chunk_rows")
    chosen = pick(model, candidates, denylist)
    state = model._fitted()
    T = model.max_seq_
    t0 = time.perf_counter()
    meta = {"model": os.path.abspath(model_path), "model_sha256": file_sha256(model_path),
            "events": os.path.abspath(events), "n": n, "exclude_seen": bool(exclude_seen),
            "session": f"each user's most recent {T} known events; seen: every event of the user",
            "user_col": user_col,
            "candidates": None if candidates is None else int(state.candidates(candidates).size),
            "denylist": int(state.denylist(denylist).size)}
    flags = ("user_col", "item_col", "time_col")
    writer = _Writer(output, meta)
    job = (_Sorted(model, n, exclude_seen, writer, chosen) if sorted_by_user
           else _Unsorted(model, n, exclude_seen, writer, chosen, chunk_rows))
    read = 0
    try:
        for chunk in _events.chunks(events, user_col, item_col, time_col, chunk_rows,
                                    _events.item_mode(ids), what="events", flags=flags):
            times = np.zeros(chunk.users.size, np.int64) if chunk.times is None else chunk.times
            job.add(chunk.row, chunk.users, chunk.items, times)
            read += chunk.users.size
            if progress is not None:
                progress(read, job.done)
        job.finish()
        empty = _score(model, np.zeros(0, np.int64), (ids[:0], np.zeros(1, np.int64)),
                       (ids[:0], np.zeros(1, np.int64)), n, exclude_seen, chosen)
        writer.close(empty.rename(columns={"user": user_col}))
    except BaseException:
        writer.abort()
        raise
    if progress is not None:
        progress(read, job.done)
    return dict(meta, users=job.done, rows=writer.rows, events_read=read,
                seconds=time.perf_counter() - t0)


def _frame(users: np.ndarray, times: np.ndarray, items: np.ndarray) -> Any:
    import pandas as pd

    return pd.DataFrame({"user": users, "t": times, "item": items})


def _num_key(x: Any) -> Any:
    """Numeric order of text ids that are canonical integers (all of them before the rest)."""
    if isinstance(x, str):
        return (0, len(x), x) if x.isdigit() and x.isascii() and (x == "0" or x[0] != "0") else (1, 0, x)
    return x


class _Sorted:
    """sorted_by_user: each user's events together, users ascending (as text, or as the
    numbers that canonical integer ids are); the last user of a chunk waits for the next."""

    def __init__(self, model: Any, n: int, exclude_seen: bool, writer: "_Writer", chosen: dict) -> None:
        self.model, self.n, self.exclude_seen, self.writer = model, n, exclude_seen, writer
        self.chosen = chosen
        self.carry = None
        self.last: Any = None
        self.as_text = self.as_number = True
        self.done = 0

    def _check_order(self, row: int, users: np.ndarray) -> None:
        starts = np.flatnonzero(np.concatenate(([True], users[1:] != users[:-1])))
        prev = self.last
        for j, x in zip(starts.tolist(), users[starts].tolist()):
            if prev is not None and not (j == 0 and x == prev):
                self.as_text = self.as_text and prev < x
                self.as_number = self.as_number and _num_key(prev) < _num_key(x)
                if not (self.as_text or self.as_number):
                    raise ValueError(f"sorted_by_user (--sorted-by-user): user {x!r} at row {row + j} "
                                     f"comes after user {prev!r}, a greater user id or one seen before; "
                                     "the file must hold each user's events together, users in "
                                     "ascending order (or drop --sorted-by-user)")
            prev = x
        self.last = prev

    def add(self, row: int, users: np.ndarray, items: np.ndarray, times: np.ndarray) -> None:
        import pandas as pd

        if not users.size:
            return
        self._check_order(row, users)
        frame = _frame(users, times, items)
        if self.carry is not None:
            frame = pd.concat([self.carry, frame], ignore_index=True)
        tail = (frame["user"] == self.last).to_numpy()
        self.carry, ready = frame[tail], frame[~tail]
        if len(ready):
            self._emit(ready)

    def finish(self) -> None:
        if self.carry is not None and len(self.carry):
            self._emit(self.carry)

    def _emit(self, rows: Any) -> None:
        rows = rows.sort_values(["user", "t"], kind="stable")  # file order breaks ties
        u = rows["user"].to_numpy()
        starts = np.flatnonzero(np.concatenate(([True], u[1:] != u[:-1])))
        offsets = np.append(starts, u.size).astype(np.int64)
        frame = _score_histories(self.model, u[starts], rows["item"].to_numpy(), offsets, self.n,
                                 self.exclude_seen, self.chosen)
        self.writer.write(frame.rename(columns={"user": self.writer.meta["user_col"]}))
        self.done += int(starts.size)


class _Last:
    """Per user, the last T events of those given (``recent``: user, t, item) and the
    distinct items of the ones before them (``older``: user, item); the frames given wait in
    ``pending`` until ``merge``."""

    def __init__(self, T: int) -> None:
        self.T = T
        self.recent = self.older = None
        self.pending, self.rows = [], 0

    def add(self, frame: Any) -> None:
        self.pending.append(frame)
        self.rows += len(frame)

    def merge(self) -> None:
        import pandas as pd

        if not self.pending and self.recent is None:
            return  # no chunk read (each chunk leaves a frame, empty or not)
        both = pd.concat(([] if self.recent is None else [self.recent]) + self.pending, ignore_index=True)
        both = both.sort_values(["user", "t"], kind="stable")  # file order breaks ties
        keep = (both.groupby("user", sort=False).cumcount(ascending=False) < self.T).to_numpy()
        self.recent = both[keep]
        if not keep.all() or self.older is not None:
            parts = ([] if self.older is None else [self.older]) + [both.loc[~keep, ["user", "item"]]]
            self.older = pd.concat(parts, ignore_index=True).drop_duplicates()
        self.pending, self.rows = [], 0


class _Unsorted:
    """A file in any order: per user, the last max_seq events of items the model reads
    (``read``: ``_Last``), and apart those of new products (``new``: read only by a user
    with no other known item, and seen by every user), and whether they had events of
    unknown items (``cold``: such a user is scored even with no known item)."""

    def __init__(self, model: Any, n: int, exclude_seen: bool, writer: "_Writer", chosen: dict,
                 chunk_rows: int) -> None:
        self.model, self.n, self.exclude_seen, self.writer = model, n, exclude_seen, writer
        self.chosen = chosen
        self.chunk_rows = chunk_rows
        self.read, self.new = _Last(model.max_seq_), _Last(model.max_seq_)
        self.cold, self.cold_pending = None, []
        self.done = 0

    def add(self, row: int, users: np.ndarray, items: np.ndarray, times: np.ndarray) -> None:
        known = _known(self.model, items, "items")
        new = new_products(self.model, items[known])
        if new is None:
            self.read.add(_frame(users[known], times[known], items[known]))
        else:
            u, t, i = users[known], times[known], items[known]
            self.read.add(_frame(u[~new], t[~new], i[~new]))
            if new.any():
                self.new.add(_frame(u[new], t[new], i[new]))
        if not known.all():
            self.cold_pending.append(users[~known])
        # Chunks wait until they hold half as many rows as the kept events (or a chunk's
        # worth), then all are merged at once: each event is sorted a few times in all, not
        # once per chunk (every chunk of an event log touches most users).
        held = sum(0 if x.recent is None else len(x.recent) for x in (self.read, self.new))
        if self.read.rows + self.new.rows >= max(self.chunk_rows, held // 2):
            self._merge()

    def _merge(self) -> None:
        import pandas as pd

        self.read.merge()
        self.new.merge()
        if self.cold_pending:
            parts = ([] if self.cold is None else [self.cold]) + self.cold_pending
            self.cold = pd.unique(np.concatenate(parts))
        self.cold_pending = []

    def finish(self) -> None:
        import pandas as pd

        self._merge()
        recent, older = self.read.recent, self.read.older
        if recent is None:
            return
        if older is None:
            older = recent.loc[:, ["user", "item"]].iloc[:0]
        if self.new.recent is not None and len(self.new.recent):
            # A user's new products are the window only where they had no other known item;
            # elsewhere they are seen, and the model does not read them.
            beside = self.new.recent["user"].isin(recent["user"]).to_numpy()
            recent = pd.concat([recent, self.new.recent[~beside]], ignore_index=True)
            older = pd.concat([older, self.new.recent.loc[beside, ["user", "item"]]]
                              + ([] if self.new.older is None else [self.new.older]), ignore_index=True)
        users = pd.unique(np.concatenate([recent["user"].to_numpy()]
                                         + ([] if self.cold is None else [self.cold])))
        if not users.size:
            return
        users = np.sort(users)
        index = pd.Index(users)

        def by_user(rows: Any) -> Tuple[np.ndarray, np.ndarray]:  # stable: time order kept
            code = index.get_indexer(rows["user"].to_numpy())
            off = np.concatenate(([0], np.cumsum(np.bincount(code, minlength=users.size))))
            return rows["item"].to_numpy()[np.argsort(code, kind="stable")], off.astype(np.int64)

        frame = _score(self.model, users, by_user(recent), by_user(older), self.n, self.exclude_seen,
                       self.chosen)
        self.writer.write(frame.rename(columns={"user": self.writer.meta["user_col"]}))
        self.done += int(users.size)
