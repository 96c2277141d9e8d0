"""A features table's cells, one value at a time: what counts as missing, the scalar a
vocabulary holds and its key, instants read as seconds (a column of kind "time") and
named back as dates, the warnings for a column likely meant otherwise, and the check of
ItemFeatures' column lists (``check_kinds``).  The kinds and the fitted space are
``fastsasrec._features``'s."""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    try:
        import pandas as pd

        return v is pd.NA or v is pd.NaT
    except ImportError:  # pragma: no cover - pandas is how tables arrive
        return False


def _scalar(v: Any, column: str, item: Any) -> Any:
    """A cell's value as a JSON scalar (str, int, float, bool), the one form a vocabulary
    holds: numpy scalars become Python ones; other objects are refused by name."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return int(v) if v.is_integer() and abs(v) < 2**53 else v
    import datetime

    hint = (f"; a column of dates is read as time when it holds datetimes "
            f"(pd.to_datetime) or is named in ItemFeatures(time=[{column!r}])"
            if isinstance(v, (datetime.date, datetime.time)) else "")
    raise ValueError(f"item_features column {column!r}, item {item!r}: value {v!r} of type "
                     f"{type(v).__name__} is not a string, number or boolean{hint}")


def _warn_if_odd(column: str, data: List[Any], ids: np.ndarray) -> None:
    """Warns of a column read as categorical that was likely meant otherwise: numbers with a
    few strings among them (each number becomes its own value, no buckets), lists in text
    (genres as ``Action|Comedy``: each combination would be a value of its own), dates in
    text (each date a value, no buckets), or a distinct value for every item (a second id:
    it tells nothing of a new product)."""
    present = [v for v in data if not _is_missing(v)]
    nums = [v for v in present if isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))]
    keep = (f"or say categorical=[{column!r}] (ItemFeatures; --item-cat-col {column}) to keep it as "
            "it is and silence this")
    if nums and len(nums) < len(present):
        at = next(i for i, v in enumerate(data) if not _is_missing(v) and isinstance(v, str))
        warnings.warn(f"item_features column {column!r} holds numbers and strings (item "
                      f"{ids[at].item()!r}: {data[at]!r}), so it is read as categorical, each "
                      f"number a value of its own; clean it, or say numeric=[{column!r}] or "
                      f"categorical=[{column!r}] (ItemFeatures; --item-cat-col {column}) to silence this",
                      UserWarning, stacklevel=6)
        return
    distinct = list({_key(v): v for v in present}.values())
    lists = _list_separator(distinct)
    if lists is not None:
        sep, n_values = lists
        warnings.warn(f"item_features column {column!r} looks like lists separated by {sep!r}: "
                      f"its {len(distinct):,} different cells hold {n_values:,} values once split, "
                      f"but it is read as categorical, each whole cell a value; say "
                      f"multi={{{column!r}: {sep!r}}} (ItemFeatures; --item-list-col "
                      f"{column}:{sep}) to read each value on its own, " + keep,
                      UserWarning, stacklevel=6)
    elif len(present) >= 20 and len(distinct) == len(present):
        dates = (f"; if they are dates, say time=[{column!r}] (ItemFeatures; --item-time-col) "
                 "to bucket them by time" if _look_like_dates(present[:20]) else "")
        warnings.warn(f"item_features column {column!r} has a distinct value for each of its "
                      f"{len(present):,} items: it works as a second id, and tells nothing of a "
                      "new product; drop it, make it the names (item_names), or say "
                      f"categorical=[{column!r}] (ItemFeatures; --item-cat-col {column}) to keep it and "
                      "silence this"
                      + dates, UserWarning, stacklevel=6)
    elif len(distinct) >= 20 and _look_like_dates(distinct[:20]):
        warnings.warn(f"item_features column {column!r} holds dates as text ({len(distinct):,} "
                      f"different ones, e.g. {distinct[0]!r}), read as categorical, each date a "
                      f"value of its own; say time=[{column!r}] (ItemFeatures; --item-time-col "
                      f"{column}) to bucket them by time, " + keep, UserWarning, stacklevel=6)


def _warn_if_blank(column: str, data: List[Any]) -> None:
    """Warns of a column that tells the items apart in nothing: every cell missing, or
    every cell the same value (an export's empty or constant column).  Stops at the
    first two cells that differ."""
    if len(data) < 2:
        return
    first, missing = None, False
    for v in data:
        if isinstance(v, (list, tuple, np.ndarray)):
            v = tuple(v)
        if _is_missing(v) or v == ():
            missing = True
            if first is not None:
                return
            continue
        r = repr(v)
        if first is None:
            first = r
            if missing:
                return
        elif r != first:
            return
    if first is None:
        warnings.warn(f"item_features column {column!r} is empty in all its {len(data):,} rows: it "
                      "tells the model nothing; drop it", UserWarning, stacklevel=6)
    else:
        warnings.warn(f"item_features column {column!r} holds the same value in all its "
                      f"{len(data):,} rows ({first}): it tells the model nothing; drop it",
                      UserWarning, stacklevel=6)


_SEPARATORS = ("|", ";", ",")


def _list_separator(distinct: List[Any]) -> Optional[Tuple[str, int]]:
    """The separator of a column that holds lists as text, and how many values its cells
    hold once split, or None: at least 20 different cells, a fifth of them holding the
    separator, and fewer values once split than cells (combinations of a few tags, not
    names that happen to hold a comma)."""
    cells = [v for v in distinct if isinstance(v, str)]
    if len(cells) < 20 or len(cells) < len(distinct):
        return None
    for sep in _SEPARATORS:
        if sum(sep in v for v in cells) * 5 < len(cells):
            continue
        values = {part.strip() for v in cells for part in v.split(sep)} - {""}
        if len(values) < len(cells):
            return sep, len(values)
    return None


def _look_like_dates(values: List[Any]) -> bool:
    """Whether these strings all read as dates (a column of dates in a CSV)."""
    if not all(isinstance(v, str) and any(ch.isdigit() for ch in v) for v in values):
        return False
    import pandas as pd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pd.to_datetime(pd.Series(values), utc=True)
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def _instant(seconds: float, edges: Sequence[float]) -> str:
    """A time bucket's edge as text: a date when every edge is a midnight, else to the
    second, in UTC; -inf and inf as they are."""
    if not math.isfinite(seconds):
        return f"{seconds:g}"
    import pandas as pd

    t = pd.Timestamp(seconds, unit="s")
    if all(float(e) % 86400 == 0 for e in edges):
        return t.strftime("%Y-%m-%d")
    return t.strftime("%Y-%m-%d %H:%M:%S") + " UTC"


def _seconds(series: Any, column: str, ids: np.ndarray) -> List[Any]:
    """A column of instants (datetimes, or text pandas reads as dates) as seconds since
    1970-01-01 UTC, None where missing; a time with no zone is read as UTC.  A value that
    is no date is an error naming the item and the value."""
    import pandas as pd

    if series.dtype.kind == "f" and bool(series.isna().all()):
        return [None] * len(series)  # empty in every row: a CSV reader's floats, all missing
    if series.dtype.kind in "iufcb":  # numbers would be read as nanoseconds since 1970
        raise ValueError(f"item_features column {column!r} is read as times but holds numbers "
                         f"({series.dtype}), not dates or times: give it as datetimes or dates")
    try:
        t = pd.to_datetime(series, utc=True)
    except (ValueError, TypeError, OverflowError):
        from fastsasrec._event_table import first_unread_date

        at = first_unread_date(series) or 0
        raise ValueError(f"item_features column {column!r} (a time column), item "
                         f"{ids[at].item()!r}: {series.iloc[at]!r} is not a date or time, or not "
                         "in the form of the column's first dates") from None
    ns = t.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    missing = pd.isna(t).to_numpy()
    return [None if m else int(x // 1_000_000_000) if x % 1_000_000_000 == 0 else x / 1e9
            for x, m in zip(ns.tolist(), missing.tolist())]


def _is_datetime(series: Any) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_datetime64_any_dtype(series.dtype))


def _key(v: Any) -> Tuple[str, Any]:
    """The vocabulary's key of a value: its kind with it, so 1, True and "1" stay apart."""
    return (type(v).__name__, v)


def check_kinds(categorical: Any, numeric: Any, multi: Any, time: Any) -> None:
    """ItemFeatures' column lists: lists of column names, ``multi`` a dict of delimiters
    (a non-empty string, or None for cells that are lists); no column in two of them."""
    where: Dict[Any, str] = {}
    for label, given in (("categorical", categorical), ("numeric", numeric), ("multi", multi),
                         ("time", time)):
        if given is None:
            continue
        if label == "multi" and not isinstance(given, dict):
            raise ValueError(f"multi must be a dict of column -> delimiter (None for cells that "
                             f"are lists), e.g. {{'tags': '|'}}; got {given!r}")
        if isinstance(given, (str, bytes)) or not isinstance(given, (dict, list, tuple, set, frozenset)):
            raise ValueError(f"{label} must be a list of column names, got {given!r}"
                             + (f" (did you mean [{given!r}]?)" if isinstance(given, str) else ""))
        for c in given:
            if c in where:
                raise ValueError(f"column {c!r} is in both {where[c]} and {label}: give it one kind")
            where[c] = label
            if label == "multi" and given[c] is not None and (not isinstance(given[c], str) or not given[c]):
                raise ValueError(f"multi[{c!r}] must be a non-empty delimiter string (or None for "
                                 f"cells that are lists), got {given[c]!r}")
