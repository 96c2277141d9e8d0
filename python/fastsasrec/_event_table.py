"""Event tables into sequences: a pandas or polars DataFrame, or a pyarrow Table, of
(user, item, time) rows becomes one sequence of items per user, in time order.  Every
path that takes an event table in Python (``from_transactions``, ``split_by_time``,
``recommend_frame``, Ray) reads it here: a missing cell is refused by column and row, ids
are checked as ``fastsasrec.data`` checks them, and times as text are read as the
command line reads a CSV's (``text_times``, which the command line's reader,
``fastsasrec._events``, calls too)."""
from __future__ import annotations

import warnings
from typing import Any, Optional, Tuple

import numpy as np

from fastsasrec.data import _CONTROL_WHY, _as_ids, _check_text, _first_control


def _table_kind(df: Any) -> str:
    mod = type(df).__module__.split(".")[0]
    if mod == "pandas" and hasattr(df, "columns"):
        return "pandas"
    if mod == "polars" and hasattr(df, "get_column"):
        return "polars"
    if mod == "pyarrow" and hasattr(df, "column_names"):
        return "pyarrow"
    raise ValueError(
        "df must be a pandas DataFrame, a polars DataFrame or a pyarrow Table, "
        f"got {type(df).__module__}.{type(df).__name__}"
    )


def _utc_naive(col: Any) -> Any:
    """A pandas column of datetimes with a time zone as UTC datetimes without one (what
    NumPy holds, and what polars and pyarrow give for theirs); any other column as it is."""
    import pandas as pd

    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return col.dt.tz_convert("UTC").dt.tz_localize(None)
    return col


def _column(df: Any, kind: str, name: Any, arg: str) -> np.ndarray:
    """The column as a NumPy array; ValueError naming the column and the first row with a
    missing value: null, None, NaN or NaT, the same rule for every kind of table."""
    columns = list(df.column_names) if kind == "pyarrow" else list(df.columns)
    if name not in columns:
        raise ValueError(f"{arg}={name!r} is not a column of the event table; its columns are {columns}")
    if kind == "pandas":
        col = df[name]
        missing = col.isna().to_numpy()  # None, NaN, NaT
        values = None if missing.any() else _utc_naive(col).to_numpy()
    elif kind == "polars":
        col = df.get_column(name)
        missing = col.is_null().to_numpy()
        values = None if missing.any() else col.to_numpy()
    else:
        col = df.column(name)
        missing = np.asarray(col.is_null().to_numpy(zero_copy_only=False))
        values = None if missing.any() else col.to_numpy()
    if values is not None and values.dtype.kind in "fc":  # NaN is not null in polars, pyarrow
        missing = np.isnan(values)
    elif values is not None and values.dtype.kind in "mM":
        missing = np.isnat(values)
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise ValueError(f"column {name!r} ({arg}) has a missing value at row {row}")
    return values


def check_user_ids(users: np.ndarray, what: str) -> np.ndarray:
    """``users`` as they are, or ValueError naming the first text id that holds a control
    character (numbers and other kinds pass)."""
    if users.dtype.kind == "U":
        return _check_text(users, lambda i: f"{what}[{i}]")
    if users.dtype == object:
        strs = [x if isinstance(x, str) else "" for x in users.tolist()]
        i = _first_control(strs)
        if i >= 0:
            raise ValueError(f"{what}[{i}] is {strs[i]!r}: {_CONTROL_WHY}")
    return users


def event_times(values: np.ndarray, col: Any, arg: str) -> np.ndarray:
    """An event table's time column as numbers or datetime64 (UTC, no zone): text (a frame
    fresh from ``pd.read_csv``) is read as the command line reads a CSV's, numbers when
    the first cell is one, else dates; any other kind is refused, naming the column."""
    if values.dtype.kind in "iufM":
        return values
    if values.dtype.kind in "OUS":
        return text_times(values, f"column {col!r} ({arg})")
    raise ValueError(f"column {col!r} ({arg}) must hold numbers, datetimes or dates as text, got "
                     f"{values.dtype} (first value {values[0]!r})")


def text_times(col: Any, where: str, row: int = 0, state: Optional[dict] = None) -> np.ndarray:
    """A column of times as text (a CSV's, or a frame's object column) read the one way
    every path reads it: numbers when the first cell is one, else dates (pandas' parser, a zone
    converted to UTC, none read as UTC) as datetime64 without a zone.  ``where`` names the
    column in errors, which give the first cell that does not read with its row (``row``:
    the first cell's).  ``state`` carries the kind the first chunk found to the next."""
    import pandas as pd

    col = col if isinstance(col, pd.Series) else pd.Series(np.asarray(col, dtype=object))
    state = {} if state is None else state
    if state.get("kind") is None:
        state["kind"] = "numbers" if pd.to_numeric(col.iloc[:1], errors="coerce").notna().all() else "dates"
    if state["kind"] == "numbers":
        num = pd.to_numeric(col, errors="coerce")
        bad = num.isna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{where} at row {row + i} is {col.iloc[i]!r}: the rows before hold numbers")
        return num.to_numpy()
    try:
        with warnings.catch_warnings():  # pandas warns when it falls back to parsing one by one
            warnings.simplefilter("ignore", UserWarning)
            try:
                parsed = pd.to_datetime(col, utc=True)
            except (ValueError, TypeError, OverflowError):
                # ISO 8601 in more than one form (str(datetime) leaves out zero microseconds,
                # a date alone its time): pandas infers one form from the first cell.
                parsed = pd.to_datetime(col, utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError) as e:
        raise ValueError(f"{where} must hold numbers or dates: {_first_bad_date(col, row, e)}") from None
    missing = parsed.isna().to_numpy()
    if missing.any():  # "", "NaT", "NaN" read as no time: refused, as a missing cell is
        i = int(np.argmax(missing))
        raise ValueError(f"{where} at row {row + i} is {col.iloc[i]!r}: a missing time")
    return parsed.dt.tz_localize(None).to_numpy()


def first_unread_date(col: Any) -> Optional[int]:
    """The position of the first cell of ``col`` (a pandas Series), missing ones aside, that
    does not read as a date the way the column's first does (pandas infers one format from
    it); None when each reads.  Event times and item features' time columns name it."""
    import pandas as pd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            bad = pd.to_datetime(col, utc=True, errors="coerce").isna().to_numpy() & ~pd.isna(col).to_numpy()
    except (ValueError, TypeError, OverflowError):
        return None
    return int(np.argmax(bad)) if bad.any() else None


def _first_bad_date(col: Any, row: int, error: Exception) -> str:
    """The first cell of ``col`` that does not read as a date (``first_unread_date``), with
    its row; else pandas' own first line (its advice names arguments of pandas, which a
    command line does not have)."""
    i = first_unread_date(col)
    if i == 0:
        return f"row {row} is {col.iloc[0]!r}, neither a number nor a date"
    if i is not None:
        return (f"row {row + i} is {col.iloc[i]!r}, not a date written as the first row's "
                f"({col.iloc[0]!r})")
    return str(error).split("\n")[0].rstrip(". ")


def transactions_to_sequences(
    df: Any, user_col: Any, item_col: Any, timestamp_col: Any = None
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat item ids, int64 offsets, user ids) of an event log, one sequence per user:
    rows stably sorted by user, then by time (input order breaks ties and stands in for
    time when timestamp_col is None).  df: pandas or polars DataFrame, or pyarrow Table."""
    kind = _table_kind(df)
    items = _as_ids(_column(df, kind, item_col, "item_col"), f"column {item_col!r}")
    if items.size == 0:
        raise ValueError("the event table is empty: nothing to train on")
    users = check_user_ids(_column(df, kind, user_col, "user_col"), f"column {user_col!r}")
    try:
        user_ids, user_code = np.unique(users, return_inverse=True)
    except TypeError:
        raise ValueError(f"column {user_col!r} (user_col) mixes kinds of values that cannot be ordered") from None
    user_code = user_code.reshape(-1)
    if timestamp_col is not None:
        ts = event_times(_column(df, kind, timestamp_col, "timestamp_col"), timestamp_col, "timestamp_col")
        order = np.lexsort((ts, user_code))  # stable: equal times keep their input order
    else:
        order = np.argsort(user_code, kind="stable")
    counts = np.bincount(user_code, minlength=user_ids.size)
    offsets = np.zeros(user_ids.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return items[order], offsets, user_ids
