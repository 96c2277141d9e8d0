"""Batch scoring of event logs: each user's session built from their events, scored, and
written as (user, rank, item, score) rows.

A user's session is their most recent ``max_seq`` events (the model reads no more), in
time order; with ``exclude_seen`` those items are left out of their recommendations.  A
user with no item the model knows gets the most popular items.  Rows whose item is an
empty slot (fewer items than ``n`` left) are not written.

``recommend_frame`` scores a table held in memory; ``score_file`` streams an event file
in chunks, holding the chunk and at most 1.5 x ``max_seq`` events per user (the chunk alone
when the file is sorted by user), and writes Parquet or CSV atomically, with the model
file's SHA-256 in the output's metadata.  ``fastsasrec score`` is score_file.
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Callable, Iterator, Optional, Tuple

import numpy as np

from fastsasrec.data import Sequences, _as_ids, _column, _table_kind, transactions_to_sequences
from fastsasrec import _persist
from fastsasrec._params import flag, positive_int

SCORE_BATCH = 1 << 16  # sessions per recommend_batch call
META_KEY = "fastsasrec"  # the output's metadata key (Parquet schema metadata, CSV sidecar)


def _recent(items: np.ndarray, offsets: np.ndarray, T: int) -> Tuple[np.ndarray, np.ndarray]:
    """The last T items of each flat sequence."""
    lengths = np.diff(offsets)
    keep = np.minimum(lengths, T)
    starts = offsets[1:] - keep
    take = np.repeat(starts - np.concatenate(([0], np.cumsum(keep)[:-1])), keep) + np.arange(int(keep.sum()))
    return items[take], np.concatenate(([0], np.cumsum(keep))).astype(np.int64)


def long_rows(users: np.ndarray, ids: np.ndarray, scores: np.ndarray, user_col: str = "user") -> "Any":
    """recommend_batch's (B, k) ids and scores as (user_col, rank, item, score) rows, best
    first, empty slots (id -1 or "") left out: the one output shape of every batch path."""
    import pandas as pd

    k = ids.shape[1]
    mask = ((ids != "") if ids.dtype.kind == "U" else (ids != -1)).ravel()
    return pd.DataFrame({
        user_col: np.repeat(np.asarray(users), k)[mask],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), ids.shape[0])[mask],
        "item": ids.ravel()[mask],
        "score": scores.ravel()[mask].astype(np.float32),
    })


def _score(model: Any, users: np.ndarray, items: np.ndarray, offsets: np.ndarray, n: int,
           exclude_seen: bool) -> "Any":
    """The (user, rank, item, score) frame of flat sessions (their last max_seq items)."""
    import pandas as pd

    T = int(model._config["max_seq"])
    items, offsets = _recent(items, offsets, T)
    parts = []
    for b0 in range(0, users.size, SCORE_BATCH):
        b1 = min(users.size, b0 + SCORE_BATCH)
        o = offsets[b0:b1 + 1]
        ids, scores = model.recommend_batch(Sequences(items[o[0]:o[-1]], o - o[0]), n=n,
                                            exclude_seen=exclude_seen)
        parts.append(long_rows(users[b0:b1], ids, scores))
    if not parts:
        return pd.DataFrame({"user": users[:0], "rank": np.zeros(0, np.int32),
                             "item": np.zeros(0, np.int64), "score": np.zeros(0, np.float32)})
    return pd.concat(parts, ignore_index=True)


def recommend_frame(model: Any, df: Any, user_col: Any = "user_id", item_col: Any = "item_id",
                    time_col: Any = None, n: int = 10, exclude_seen: bool = True) -> "Any":
    """(user, rank, item, score) for every user of the event table ``df`` (pandas or
    polars DataFrame, or pyarrow Table): their session is their most recent max_seq
    events, by ``time_col`` (input order breaks ties, and stands in for time when it is
    None).  Ranks start at 1; the ``user`` column is named ``user_col``."""
    model._fitted()
    n = positive_int(n, "n")
    exclude_seen = flag(exclude_seen, "exclude_seen")
    items, offsets, users = transactions_to_sequences(df, user_col, item_col, time_col)
    return _score(model, users, items, offsets, n, exclude_seen).rename(columns={"user": user_col})


# ----------------------------------------------------------------------------- streaming
def _chunks(path: str, cols: list, chunk_rows: int) -> Iterator[Any]:
    """pandas frames of at most chunk_rows rows of the named columns of a .csv or .parquet."""
    import pandas as pd

    if path.lower().endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        f = pq.ParquetFile(path)
        missing = [c for c in cols if c not in f.schema_arrow.names]
        if missing:
            raise ValueError(f"{path!r} has no column {missing[0]!r}; its columns are: "
                             f"{', '.join(f.schema_arrow.names)}")
        for batch in f.iter_batches(batch_size=chunk_rows, columns=cols):
            yield batch.to_pandas()
    else:
        header = pd.read_csv(path, nrows=0).columns
        missing = [c for c in cols if c not in header]
        if missing:
            raise ValueError(f"{path!r} has no column {missing[0]!r}; its columns are: {', '.join(header)}")
        yield from pd.read_csv(path, usecols=cols, chunksize=chunk_rows)


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
               progress: Optional[Callable[[int, int], None]] = None,
               time_parser: Optional[Callable[[Any], Any]] = None) -> dict:
    """Streams ``events`` (.csv or .parquet) in chunks of ``chunk_rows`` rows and writes
    each user's recommendations to ``output`` (.parquet or .csv); returns a summary (users,
    rows, seconds, model SHA-256).  ``sorted_by_user``: the file holds each user's events
    together, users in ascending order (ORDER BY user, time); memory is then the chunk
    alone, and a user out of order is an error.  Otherwise the most recent max_seq events
    of every user are kept until the end.  ``progress(rows_read, users_scored)`` is called
    after each chunk.  A failure removes the partial output; a finished one replaces
    ``output`` whole."""
    import pandas as pd

    model._fitted()
    n = positive_int(n, "n")
    chunk_rows = positive_int(chunk_rows, "chunk_rows")
    T = int(model._config["max_seq"])
    cols = [c for c in dict.fromkeys((user_col, item_col, time_col)) if c is not None]
    t0 = time.perf_counter()
    meta = {"model": os.path.abspath(model_path), "model_sha256": _persist.file_sha256(model_path),
            "events": os.path.abspath(events), "n": n, "exclude_seen": bool(exclude_seen),
            "session": f"each user's most recent {T} events", "user_col": user_col}
    writer = _Writer(output, meta)
    read = users_done = 0
    state = None  # unsorted: (user, t, seq, item) of at most T events per user, sorted
    pending, pending_rows = [], 0  # unsorted: chunks not merged into state yet
    carry = None  # sorted: the last user's rows of the previous chunk
    last_user = None
    seq = 0
    try:
        for chunk in _chunks(events, cols, chunk_rows):
            try:
                u, it, ts = _chunk_columns(chunk, user_col, item_col, time_col, time_parser)
            except ValueError as e:  # rows numbered in the file, not the chunk
                raise ValueError(re.sub(r"(at row |\[)(\d+)",
                                        lambda g: f"{g.group(1)}{int(g.group(2)) + read}", str(e))) from None
            frame = pd.DataFrame({"user": u, "t": ts, "seq": np.arange(seq, seq + len(u)), "item": it})
            seq += len(u)
            read += len(u)
            if sorted_by_user:
                if len(frame):
                    first = frame["user"].iloc[0]
                    order_ok = frame["user"].is_monotonic_increasing and (
                        last_user is None or not first < last_user)
                    if not order_ok:
                        bad = _first_out_of_order(frame["user"].to_numpy(), last_user)
                        raise ValueError(
                            f"--sorted-by-user: user {frame['user'].iloc[bad].item()!r} at row "
                            f"{read - len(u) + bad} "
                            "comes after a greater user id; the file must hold users in ascending "
                            "order (or drop --sorted-by-user)")
                    last_user = frame["user"].iloc[-1]
                    if carry is not None:
                        frame = pd.concat([carry, frame], ignore_index=True)
                    tail = frame["user"] == last_user
                    carry, ready = frame[tail], frame[~tail]
                    if len(ready):
                        users_done += _emit(model, ready, T, n, exclude_seen, writer)
            else:
                # Chunks wait until they hold half as many rows as the kept events (or a
                # chunk's worth), then all are merged at once: each event is sorted a few
                # times in all, not once per chunk (every chunk of an event log touches most
                # users), for at most 1.5x the kept events in memory.
                pending.append(frame)
                pending_rows += len(frame)
                if pending_rows >= max(chunk_rows, 0 if state is None else len(state) // 2):
                    state = _merge(state, pending, T)
                    pending, pending_rows = [], 0
            if progress is not None:
                progress(read, users_done)
        if sorted_by_user:
            if carry is not None and len(carry):
                users_done += _emit(model, carry, T, n, exclude_seen, writer)
        else:
            if pending:
                state = _merge(state, pending, T)
            if state is not None and len(state):
                users_done += _emit(model, state, T, n, exclude_seen, writer, is_sorted=True)
        empty = _score(model, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(1, np.int64),
                       n, exclude_seen)
        writer.close(empty.rename(columns={"user": user_col}))
    except BaseException:
        writer.abort()
        raise
    if progress is not None:
        progress(read, users_done)
    return dict(meta, users=users_done, rows=writer.rows, events_read=read,
                seconds=time.perf_counter() - t0)


def _chunk_columns(chunk: Any, user_col: str, item_col: str, time_col: Optional[str],
                   time_parser: Optional[Callable[[Any], Any]]) -> Tuple[Any, Any, Any]:
    """(users, item ids, times) of one chunk; ValueError naming a column and a row."""
    import pandas as pd

    kind = _table_kind(chunk)
    u = _column(chunk, kind, user_col, "user_col")
    it = _as_ids(_column(chunk, kind, item_col, "item_col"), f"column {item_col!r}")
    if time_col is None:
        return u, it, np.zeros(len(u), np.int64)
    ts = _column(chunk, kind, time_col, "timestamp_col")
    if time_parser is not None:
        ts = np.asarray(time_parser(pd.Series(ts)))
    if ts.dtype.kind not in "iufM":
        raise ValueError(f"column {time_col!r} must hold numbers or datetimes, got {ts.dtype}")
    return u, it, ts


def _first_out_of_order(users: np.ndarray, before: Any) -> int:
    prev = before
    for i, x in enumerate(users.tolist()):
        if prev is not None and x < prev:
            return i
        prev = x
    return 0


def _merge(state: Any, pending: list, T: int) -> Any:
    """The kept events (sorted by user, time, file order; at most T a user) merged with the
    pending chunks'.  The frames are in file order and the sort is stable, so sorting by
    (user, time) keeps the file order of equal times."""
    import pandas as pd

    both = pd.concat(([] if state is None else [state]) + pending, ignore_index=True)
    both = both.sort_values(["user", "t"], kind="stable")
    return both.groupby("user", sort=False).tail(T)


def _emit(model: Any, rows: Any, T: int, n: int, exclude_seen: bool, writer: _Writer,
          is_sorted: bool = False) -> int:
    """Scores the complete users of ``rows`` (user, t, seq, item) and writes them."""
    if not is_sorted:
        rows = rows.sort_values(["user", "t", "seq"], kind="stable")
    u = rows["user"].to_numpy()
    starts = np.flatnonzero(np.concatenate(([True], u[1:] != u[:-1])))
    offsets = np.append(starts, u.size).astype(np.int64)
    frame = _score(model, u[starts], rows["item"].to_numpy(), offsets, n, exclude_seen)
    writer.write(frame.rename(columns={"user": writer.meta.get("user_col", "user")}))
    return int(starts.size)
