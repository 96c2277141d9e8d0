"""Item features: what a store knows of each product (its category, brand, price, tags),
turned into rows of a feature-value table whose embeddings the engine pools and adds to
each item's id embedding (``feature_pooling``: their mean or their sum).

A table of item features (a pandas DataFrame, one row per item) becomes a ``FeatureSpace``:
per column, its kind and vocabulary, fixed at fit:

- ``categorical``: one value per item (strings, integers, booleans): a row per value seen;
- ``multi``: several values per item, as a list (or tuple, set, array) in each cell or a
  string split on a delimiter (``"Action|Comedy"``): a row per value seen, the item's
  bag holding each of its values once;
- ``numeric``: numbers bucketed by the quantiles of the table's values (``buckets`` of
  them, equal shares of the items; fewer when values repeat), a row per bucket; a number
  outside the fitted range falls in the first or the last bucket;
- ``time``: instants (a datetime column, or one named in ``ItemFeatures(time=)``: a
  release date, the day a product was listed), bucketed as numbers are, by their seconds
  since 1970-01-01 UTC (a time with no zone is read as UTC); a new product listed after
  fit falls in the last bucket, the newest.

Each column also has a ``missing`` row (an empty cell, NaN, None, an empty list) and an
``unknown`` row (a value first seen after fit, by ``partial_fit``: the vocabulary stays as
fitted).  The item's bag records its unknown values (``item_feature_values`` shows them),
but the engine's bag leaves them out (``attach``): they add nothing to the item's vector,
and no training moves the unknown row from zero.  Row 0 of the table is "no features": the
bag of an item the table has no row for.

The item's bag is stored as a CSR over internal ids 0..V (``values``, ``offsets`` of V + 2
entries; item 0, the padding, holds nothing): what the engine's ``set_item_features`` takes.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fastsasrec._feature_cells import (_instant, _is_datetime, _is_missing, _key, _scalar, _seconds,
                                       _warn_if_blank, _warn_if_odd, check_kinds)

KINDS = ("categorical", "multi", "numeric", "time")
BUCKETED = ("numeric", "time")  # kinds whose values are buckets of numbers
NO_FEATURES = 0
_MAX_COLUMNS = 1_000
_MAX_VALUES = 10_000_000  # rows of the feature-value table at most


@dataclasses.dataclass(frozen=True)
class Column:
    """One feature column as fitted: ``values`` (categorical, multi) or ``edges`` (numeric:
    the buckets are (-inf, e0), [e0, e1), ..., [e_last, inf))."""

    name: str
    kind: str
    values: Tuple[Any, ...] = ()
    edges: Tuple[float, ...] = ()
    delimiter: Optional[str] = None

    @property
    def n_values(self) -> int:
        return len(self.edges) + 1 if self.kind in BUCKETED else len(self.values)

    @property
    def size(self) -> int:  # unknown, missing, then the values
        return 2 + self.n_values

    def summary(self) -> str:
        """How the column was read, for people: ``lists split on '|', 19 values``,
        ``time in 10 buckets, edges 1951-01-01 .. 1997-10-03``."""
        if self.kind == "categorical":
            return f"categories, {self.n_values:,} values"
        if self.kind == "multi":
            split = f" split on {self.delimiter!r}" if self.delimiter is not None else ""
            return f"lists{split}, {self.n_values:,} values"
        what = "time" if self.kind == "time" else "numbers"
        if not self.edges:
            return f"{what} in 1 bucket"
        lo, hi = ((_instant(e, self.edges) if self.kind == "time" else f"{e:g}")
                  for e in (self.edges[0], self.edges[-1]))
        return f"{what} in {self.n_values} buckets, edges {lo} .. {hi}"

    def lookup(self) -> Dict[Tuple[str, Any], int]:
        return {_key(v): i for i, v in enumerate(self.values)}

    def cell_values(self, cell: Any, item: Any) -> List[Any]:
        """The values of one cell (an empty list: missing)."""
        if self.kind == "multi":
            if isinstance(cell, str) and self.delimiter is not None:
                parts = [p.strip() for p in cell.split(self.delimiter)]
                return [p for p in parts if p]
            if isinstance(cell, (list, tuple, set, frozenset, np.ndarray)):
                out = [_scalar(v, self.name, item) for v in cell if not _is_missing(v)]
                return out if not isinstance(cell, (set, frozenset)) else sorted(out, key=_key)
            if _is_missing(cell):
                return []
            return [_scalar(cell, self.name, item)]
        if _is_missing(cell):
            return []
        return [_scalar(cell, self.name, item)]


@dataclasses.dataclass(frozen=True)
class FeatureSpace:
    """The fitted columns; row 0 "no features", then each column's rows in turn."""

    columns: Tuple[Column, ...]

    @property
    def size(self) -> int:
        return 1 + sum(c.size for c in self.columns)

    def bases(self) -> List[int]:
        out, at = [], 1
        for c in self.columns:
            out.append(at)
            at += c.size
        return out

    def describe(self, row: int) -> str:
        """The row's meaning, e.g. ``genre=Comedy`` or ``price in [9.5, 20)``."""
        if row == NO_FEATURES:
            return "<no features>"
        for c, base in zip(self.columns, self.bases()):
            if base <= row < base + c.size:
                j = row - base
                if j == 0:
                    return f"{c.name}=<unknown>"
                if j == 1:
                    return f"{c.name}=<missing>"
                j -= 2
                if c.kind not in BUCKETED:
                    return f"{c.name}={c.values[j]!r}"
                lo = c.edges[j - 1] if j > 0 else -math.inf
                hi = c.edges[j] if j < len(c.edges) else math.inf
                if c.kind == "time":
                    return f"{c.name} in [{_instant(lo, c.edges)}, {_instant(hi, c.edges)})"
                return f"{c.name} in [{lo:g}, {hi:g})"
        raise ValueError(f"row {row} is outside the feature table of {self.size} rows")

    # ------------------------------------------------------------------ encoding
    def cells_of(self, table: "Table") -> List[Sequence[Any]]:
        """``table``'s cells of each fitted column, matched by name (a table given after
        fit, to partial_fit, may order its columns otherwise).  A fitted column the table
        lacks, or a column the model does not have, is refused: the columns are fixed at
        fit, and a cell the model cannot read is never dropped in silence.  So is a column
        of times where the model has numbers, and the reverse."""
        have = dict(zip(table.columns, table.cells))
        kind_of = dict(zip(table.columns, table.kinds))
        for c in self.columns:
            given = kind_of.get(c.name)
            if given is not None and (c.kind == "time") != (given == "time") and (
                    c.kind in BUCKETED or given == "time"):
                raise ValueError(
                    f"item_features column {c.name!r} holds {'times' if given == 'time' else 'no times'}"
                    f" but the model read it at fit as {'times' if c.kind == 'time' else c.kind}: "
                    + ("give it as datetimes (or name it in ItemFeatures(time=...), "
                       "--item-time-col)" if c.kind == "time" else "give it as at fit"))
        fitted = [c.name for c in self.columns]
        missing = [n for n in fitted if n not in have]
        known = set(fitted)
        extra = [n for n in table.columns if n not in known]
        listed = ", ".join(map(repr, fitted[:20])) + (", ..." if len(fitted) > 20 else "")
        if missing:
            raise ValueError(f"item_features lacks the feature column(s) "
                             f"{', '.join(map(repr, missing[:20]))} of the fitted model (its columns, "
                             f"fixed at fit: {listed}); give every one, with empty cells where "
                             "an item's value is unknown")
        if extra:
            raise ValueError(f"item_features column(s) {', '.join(map(repr, extra[:20]))} "
                             f"were not feature columns at fit (the model's, fixed at fit: "
                             f"{listed}); drop them, name a display column with item_names "
                             "(--item-names), or fit again to use them")
        delim_of = dict(zip(table.columns, table.delimiters))
        out = []
        for c in self.columns:
            cells, given, d = have[c.name], kind_of[c.name], delim_of[c.name]
            if c.kind == "categorical" and given == "multi":
                raise ValueError(f"item_features column {c.name!r} holds lists but the model read it "
                                 "at fit as categories, one value an item: give it as at fit")
            if c.kind == "multi" and given == "multi" and d is not None and d != c.delimiter:
                # this table's own delimiter (a text file of lists the fit read as lists)
                cells = [[p.strip() for p in v.split(d) if p.strip()] if isinstance(v, str) else v
                         for v in cells]
            out.append(cells)
        return out

    def encode(self, table: "Table", item_ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The CSR (values int32, offsets int64 of V + 2) of the catalogue ``item_ids``
        (internal id i + 1 is item_ids[i]); an item the table has no row for holds row 0.
        An item's values come column by column, each value once."""
        V = int(item_ids.size)
        columns = self.cells_of(table)
        where = table.rows_of(item_ids)  # -1: no row
        has = np.flatnonzero(where >= 0)
        rows = where[has].tolist()
        # (item index, value row) pairs, column after column; then grouped by item
        # (a stable sort keeps the column order within an item).
        items_parts, value_parts = [np.flatnonzero(where < 0)], [np.full(V - has.size, NO_FEATURES)]
        for c, base, cells in zip(self.columns, self.bases(), columns):
            if c.kind in BUCKETED:  # one value per item: its bucket, or the missing row
                x = np.full(len(rows), np.nan)
                for k, (i, r) in enumerate(zip(has.tolist(), rows)):
                    got = c.cell_values(cells[r], item_ids[i].item())
                    if got:
                        v = got[0]
                        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                            raise ValueError(f"item_features column {c.name!r}, item "
                                             f"{item_ids[i].item()!r}: {v!r} is not a finite "
                                             f"number (the column is {c.kind})")
                        x[k] = float(v)
                its = has
                vals_a = np.where(np.isnan(x), base + 1,
                                  base + 2 + np.searchsorted(np.asarray(c.edges), x, side="right"))
                items_parts.append(its.astype(np.int64))
                value_parts.append(vals_a.astype(np.int64))
                continue
            lut = c.lookup()
            its, vals = [], []
            for i, r in zip(has.tolist(), rows):
                got = c.cell_values(cells[r], item_ids[i].item())
                if not got:
                    its.append(i)
                    vals.append(base + 1)
                    continue
                seen = set()
                for v in got:
                    found = lut.get(_key(v))
                    j = base + (0 if found is None else 2 + found)
                    if j not in seen:
                        seen.add(j)
                        its.append(i)
                        vals.append(j)
            vals_a = np.asarray(vals, dtype=np.int64)
            items_parts.append(np.asarray(its, dtype=np.int64))
            value_parts.append(vals_a)
        items_all = np.concatenate(items_parts).astype(np.int64)
        order = np.argsort(items_all, kind="stable")
        values = np.concatenate(value_parts).astype(np.int32)[order]
        counts = np.bincount(items_all, minlength=V)
        offsets = np.zeros(V + 2, dtype=np.int64)
        np.cumsum(counts, out=offsets[2:])
        return values, offsets

    # ------------------------------------------------------------------ the file
    def to_json(self) -> List[Dict[str, Any]]:
        return [{"name": c.name, "kind": c.kind, "values": list(c.values),
                 "edges": list(c.edges), "delimiter": c.delimiter} for c in self.columns]

    @classmethod
    def from_json(cls, data: Any, where: str) -> "FeatureSpace":
        """The space a model file's header describes, every field checked (ValueError
        naming ``where``)."""
        if not isinstance(data, list) or not 1 <= len(data) <= _MAX_COLUMNS:
            raise ValueError(f"{where}: feature columns must be a list of 1..{_MAX_COLUMNS} objects")
        cols = []
        for d in data:
            ok = (isinstance(d, dict) and set(d) == {"name", "kind", "values", "edges", "delimiter"}
                  and isinstance(d["name"], str) and d["kind"] in KINDS
                  and isinstance(d["values"], list) and isinstance(d["edges"], list)
                  and (d["delimiter"] is None or isinstance(d["delimiter"], str))
                  and all(isinstance(v, (str, int, float)) for v in d["values"])
                  and all(isinstance(e, (int, float)) and not isinstance(e, bool)
                          and math.isfinite(e) for e in d["edges"])
                  and all(a < b for a, b in zip(d["edges"], d["edges"][1:]))
                  and (d["kind"] in BUCKETED or not d["edges"])
                  and (d["kind"] not in BUCKETED or not d["values"]))
            if not ok:
                raise ValueError(f"{where}: invalid feature column {str(d)[:200]}")
            if len({_key(v) for v in d["values"]}) != len(d["values"]):
                raise ValueError(f"{where}: feature column {d['name']!r} repeats a value")
            cols.append(Column(d["name"], d["kind"], tuple(d["values"]),
                               tuple(float(e) for e in d["edges"]), d["delimiter"]))
        space = cls(tuple(cols))
        if space.size > _MAX_VALUES:
            raise ValueError(f"{where}: {space.size} feature values, over {_MAX_VALUES}")
        return space


def check_csr(values: np.ndarray, offsets: np.ndarray, n_items: int, n_values: int,
              where: str) -> None:
    """A stored CSR's shape and values: offsets of n_items + 2, from 0, non-decreasing,
    item 0 empty, ending at values' length; values in [0, n_values)."""
    ok = (offsets.ndim == 1 and offsets.size == n_items + 2 and values.ndim == 1
          and int(offsets[0]) == 0 and int(offsets[1]) == 0 and int(offsets[-1]) == values.size
          and bool((np.diff(offsets) >= 0).all()))
    if not ok:
        raise ValueError(f"{where}: the item features' offsets do not describe {n_items} items "
                         f"and {values.size} values")
    if values.size and (int(values.min()) < 0 or int(values.max()) >= n_values):
        raise ValueError(f"{where}: an item feature value is outside the table's {n_values} rows")


# ----------------------------------------------------------------------------- the table
@dataclasses.dataclass(frozen=True)
class Table:
    """A features table as given, checked: its ids (sorted order kept in ``order``), its
    feature columns' cells, their kinds and delimiters, and the names column's cells and
    name."""

    ids: np.ndarray
    order: np.ndarray
    columns: Tuple[str, ...]
    kinds: Tuple[str, ...]
    delimiters: Tuple[Optional[str], ...]
    cells: Tuple[Sequence[Any], ...]
    names: Optional[Sequence[Any]]
    names_column: Optional[str] = None

    def rows_of(self, item_ids: np.ndarray) -> np.ndarray:
        """The table row of each id (-1 where it has none)."""
        if self.ids.size == 0 or item_ids.size == 0:
            return np.full(item_ids.size, -1, dtype=np.int64)
        sorted_ids = self.ids[self.order]
        at = np.minimum(np.searchsorted(sorted_ids, item_ids), sorted_ids.size - 1)
        return np.where(sorted_ids[at] == item_ids, self.order[at], -1)

    def learn(self, buckets: int) -> FeatureSpace:
        """The vocabularies and bucket edges of this table: every value of its rows."""
        cols = []
        for name, kind, delim, cells in zip(self.columns, self.kinds, self.delimiters, self.cells):
            probe = Column(name, kind, delimiter=delim)
            if kind in BUCKETED:
                nums = []
                for r, cell in enumerate(cells):
                    for v in probe.cell_values(cell, self.ids[r].item()):
                        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                            raise ValueError(
                                f"item_features column {name!r}, item {self.ids[r].item()!r}: {v!r} "
                                f"is not a finite number (the column is {kind}: declare it "
                                "categorical= to take any value)")
                        nums.append(float(v))
                edges: Tuple[float, ...] = ()
                if nums:
                    # Time edges are instants of the table (a date stays a date); numbers
                    # interpolate between their neighbours.
                    qs = np.quantile(np.asarray(nums), np.linspace(0, 1, buckets + 1)[1:-1],
                                     method="inverted_cdf" if kind == "time" else "linear")
                    edges = tuple(float(e) for e in np.unique(qs) if e > min(nums))
                cols.append(Column(name, kind, edges=edges))
            else:
                seen: Dict[Tuple[str, Any], Any] = {}
                for r, cell in enumerate(cells):
                    for v in probe.cell_values(cell, self.ids[r].item()):
                        seen.setdefault(_key(v), v)
                values = tuple(v for _, v in sorted(seen.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))))
                cols.append(Column(name, kind, values=values, delimiter=delim))
        return FeatureSpace(tuple(cols))

    def names_of(self, item_ids: np.ndarray) -> Optional[np.ndarray]:
        """The display name of each item (an empty string where there is none)."""
        if self.names is None:
            return None
        where = self.rows_of(item_ids)
        out = ["" if r < 0 or _is_missing(self.names[r]) else str(self.names[r]) for r in where.tolist()]
        return np.asarray(out, dtype=str) if out else np.zeros(0, dtype="U1")


def _columns(obj: Any) -> List[Any]:
    """The column names of a features table (pandas, polars or pyarrow) without converting
    it; anything else: _frame's error."""
    if type(obj).__module__.split(".")[0] == "pyarrow" and hasattr(obj, "column_names"):
        return list(obj.column_names)
    if type(obj).__module__.split(".")[0] in ("pandas", "polars") and hasattr(obj, "columns"):
        return list(obj.columns)
    return list(_frame(obj).columns)


def _frame(obj: Any) -> Any:
    """A pandas DataFrame of ``obj`` (pandas, polars or pyarrow), else ValueError."""
    mod = type(obj).__module__.split(".")[0]
    if mod == "pandas" and hasattr(obj, "columns"):
        return obj
    if mod in ("polars", "pyarrow") and hasattr(obj, "to_pandas"):
        return obj.to_pandas()
    raise ValueError("item_features must be a table (a pandas or polars DataFrame or a pyarrow "
                     f"Table) with one row per item, got {type(obj).__name__}")


def table(item_features: Any, id_col: Optional[str] = None, names: Optional[str] = None,
          categorical: Optional[Sequence[str]] = None, numeric: Optional[Sequence[str]] = None,
          multi: Optional[Dict[str, Optional[str]]] = None, item_kind: Optional[str] = None,
          time: Optional[Sequence[str]] = None, hints: bool = True,
          names_label: str = "item_names") -> Table:
    """The checked ``Table`` of a features frame.  The item id is the frame's index, or the
    column ``id_col``; ``names``: the display-name column (never a feature); every other
    column is a feature: ``multi`` names list-valued columns (each with its delimiter, or
    None for cells that are lists), ``categorical`` and ``numeric`` fix a column's kind;
    otherwise a column of numbers (not booleans) is numeric, a column whose cells are lists
    is multi, a datetime column is time, and any other is categorical; ``time`` names
    columns of dates (text) read as time.  ``item_kind``: "int" or "str", the kind of the
    model's ids, which the table's ids must share.  ``hints``: as ``as_table``'s;
    ``names_label``: how errors name the ``names`` argument."""
    df = _frame(item_features)
    cols = [c for c in df.columns]
    twice = sorted({repr(c) for c in cols if cols.count(c) > 1})
    if twice:
        raise ValueError(f"item_features has two columns named {', '.join(twice[:20])}: give each "
                         "column a name of its own")
    check_kinds(categorical, numeric, multi, time)
    for label, given in (("id_col", id_col), (names_label, names)):
        if given is not None and given not in cols:
            raise ValueError(f"{label}={given!r} is not a column of item_features (columns: "
                             f"{', '.join(map(repr, cols[:20]))})")
    ids_raw = df[id_col].to_numpy() if id_col is not None else df.index.to_numpy()
    feats = [c for c in cols if c != id_col and c != names]
    for label, given in (("categorical", categorical), ("numeric", numeric), ("multi", multi),
                         ("time", time)):
        for c in (given or ()):
            if c not in feats:
                raise ValueError(f"{label}: {c!r} is not a feature column of item_features "
                                 f"(feature columns: {', '.join(map(repr, feats[:20]))})")
    if not feats:
        raise ValueError("item_features has no feature column (only the id"
                         + (f" and the names column {names!r}" if names is not None else "") + ")")
    if len(feats) > _MAX_COLUMNS:
        raise ValueError(f"item_features has {len(feats)} feature columns, over {_MAX_COLUMNS}")
    for c in feats:
        if not isinstance(c, str):
            raise ValueError(f"item_features column names must be strings, got {c!r}")
    from fastsasrec.data import flatten_sequences

    if ids_raw.size == 0:
        raise ValueError("item_features has no rows: give one row per item (or leave "
                         "item_features out)")
    where = f"item_features' item ids (column {id_col!r})" if id_col is not None else "item_features' item ids (the index)"
    try:
        ids = flatten_sequences([list(ids_raw)], where).items
    except ValueError as e:  # "...ids (the index)[0][7] is ..." -> "...ids (the index), row 7, is ..."
        import re

        raise ValueError(re.sub(r"\)\[0\]\[(\d+)\]", r"), row \1,", str(e))) from None
    if ids.size and item_kind is not None and (ids.dtype.kind == "U") != (item_kind == "str"):
        raise ValueError(f"item_features' item ids are {'strings' if ids.dtype.kind == 'U' else 'integers'} "
                         f"but the model's are {'strings' if item_kind == 'str' else 'integers'}")
    uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = uniq[int(np.argmax(counts > 1))].item()
        raise ValueError(f"item_features: item id {dup!r} has {int(counts.max())} rows; give one "
                         "row per item")
    order = np.argsort(ids, kind="stable")
    kinds, delims, cells = [], [], []
    for c in feats:
        series = df[c]
        data = series.tolist()
        if time is not None and c in time or (_is_datetime(series) and not (
                categorical is not None and c in categorical)):
            kind, delim = "time", None
            data = _seconds(series, c, ids)
        elif multi is not None and c in multi:
            kind, delim = "multi", multi[c]
        elif categorical is not None and c in categorical:
            kind, delim = "categorical", None
        elif numeric is not None and c in numeric:
            kind, delim = "numeric", None
        elif any(isinstance(v, (list, tuple, set, frozenset, np.ndarray)) for v in data):
            kind, delim = "multi", None
        elif series.dtype.kind in "iuf":
            kind, delim = "numeric", None
        else:
            kind, delim = "categorical", None
            if hints and (categorical is None or c not in categorical):
                _warn_if_odd(c, data, ids)
        if hints:
            _warn_if_blank(c, data)
        kinds.append(kind)
        delims.append(delim)
        cells.append(data)
    return Table(ids, order, tuple(feats), tuple(kinds), tuple(delims), tuple(cells),
                 df[names].tolist() if names is not None else None, names)


# ----------------------------------------------------------------------------- a model's
@dataclasses.dataclass(frozen=True)
class ItemFeatures:
    """A features table with how to read it, for ``fit(item_features=...)`` when a bare
    DataFrame (index = item id, every column a feature) is not enough: ``id_col`` (the id
    column, instead of the index), ``names`` (a display-name column, never a feature),
    ``categorical`` / ``numeric`` (columns whose kind is fixed rather than read from their
    type), ``multi`` ({column: delimiter}: list-valued columns; None as the delimiter for
    cells that are lists), ``time`` (columns of dates as text, read as instants: a
    datetime column is one already)."""

    frame: Any
    id_col: Optional[str] = None
    names: Optional[str] = None
    categorical: Optional[Sequence[str]] = None
    numeric: Optional[Sequence[str]] = None
    multi: Optional[Dict[str, Optional[str]]] = None
    time: Optional[Sequence[str]] = None

    def table(self, item_kind: Optional[str], names: Optional[str] = None, hints: bool = True) -> Table:
        if names is not None and self.names is not None and names != self.names:
            raise ValueError(f"item_names={names!r} but the ItemFeatures names {self.names!r}")
        return table(self.frame, self.id_col, names or self.names, self.categorical,
                     self.numeric, self.multi, item_kind, self.time, hints,
                     "item_names" if names is not None else "ItemFeatures names")


def as_table(item_features: Any, item_names: Optional[str], item_kind: Optional[str],
             time: Sequence[str] = (), hints: bool = True) -> Table:
    """The checked table of fit's ``item_features`` (a frame or an ItemFeatures).
    ``time``: the columns a fitted model read as times, read as times again (dates as
    text too: ``partial_fit`` need not name them).  ``hints``: warn of columns likely
    meant otherwise, or that tell items apart in nothing (at fit, where the columns are
    learnt; not for partial_fit's new products, a few rows read by the fitted columns)."""
    frame = item_features.frame if isinstance(item_features, ItemFeatures) else item_features
    have = _columns(frame)
    present = [c for c in time if c in have]
    if isinstance(item_features, ItemFeatures):
        if present:
            item_features = dataclasses.replace(
                item_features, time=list(dict.fromkeys([*(item_features.time or ()), *present])))
        return item_features.table(item_kind, item_names, hints)
    return table(item_features, names=item_names, item_kind=item_kind, time=present or None, hints=hints)


def remembered_names(item_features: Any, fitted: "ModelFeatures") -> Optional[str]:
    """The display-name column a fitted model read at fit, when partial_fit's table (one
    that names none itself) has that column and the model has no feature of that name:
    the same items file serves fit and update."""
    col = fitted.names_column
    if col is None or isinstance(item_features, ItemFeatures) and item_features.names is not None:
        return None
    frame = item_features.frame if isinstance(item_features, ItemFeatures) else item_features
    if col in (c.name for c in fitted.space.columns) or col not in _columns(frame):
        return None
    return col


@dataclasses.dataclass(frozen=True)
class ModelFeatures:
    """A fitted model's features: the space, each item's bag (CSR over internal ids 0..V),
    the display names (or None) and the table column they came from (None where unknown:
    a file of format version 4 or older), which partial_fit reads as names again."""

    space: FeatureSpace
    values: np.ndarray
    offsets: np.ndarray
    names: Optional[np.ndarray] = None
    names_column: Optional[str] = None

    def summary(self) -> str:
        """One line for people: each column as read, and how many items have features."""
        single = self.offsets[1:-1][np.diff(self.offsets[1:]) == 1]
        bare = int(np.count_nonzero(self.values[single] == NO_FEATURES))
        V = self.offsets.size - 2
        cols = "; ".join(f"{c.name} ({c.summary()})" for c in self.space.columns)
        return f"{cols}; {V - bare:,} of {V:,} items have a row"

    def attach(self, engine: Any) -> None:
        """Gives the engine the items' bags, less each column's unknown value (module
        docstring).  (A file written before this rule, by a partial_fit that met a new
        value, reads without that value's row, which then had trained.)"""
        values, offsets = self.values, self.offsets
        unknown = np.isin(values, self.space.bases())
        if unknown.any():
            values = values[~unknown]
            kept = np.concatenate(([0], np.cumsum(~unknown)))
            offsets = kept[offsets].astype(np.int64)
        engine.set_item_features(values, offsets)

    def grown(self, table: Optional[Table], item_ids: np.ndarray) -> "ModelFeatures":
        """The features of the catalogue ``item_ids`` (this one's, then new items after):
        the items ``table`` has a row for get their bags (and names) from it, encoded with
        the fitted vocabularies (a value never seen at fit: the column's unknown value);
        the others keep theirs, and a new item without a row holds "no features"."""
        V_old = self.offsets.size - 2
        V = int(item_ids.size)
        bags = [self.values[self.offsets[i]:self.offsets[i + 1]] for i in range(V_old + 1)]
        bags += [np.array([NO_FEATURES], dtype=np.int32)] * (V - V_old)
        names, names_column = None, self.names_column
        if self.names is not None:
            names = np.concatenate((self.names, np.full(V - V_old, "", dtype=self.names.dtype)))
        if table is not None:
            values, offsets = self.space.encode(table, item_ids)
            has_row = table.rows_of(item_ids) >= 0
            for i in np.flatnonzero(has_row).tolist():
                bags[i + 1] = values[offsets[i + 1]:offsets[i + 2]]
            new_names = table.names_of(item_ids)
            if new_names is not None:
                base = names if names is not None else np.full(V, "", dtype=new_names.dtype)
                names = np.where(has_row, new_names, base.astype(np.result_type(base, new_names)))
                names_column = table.names_column
        offsets = np.zeros(V + 2, dtype=np.int64)
        offsets[1:] = np.cumsum([b.size for b in bags])
        values = np.concatenate(bags).astype(np.int32) if offsets[-1] else np.zeros(0, dtype=np.int32)
        return ModelFeatures(self.space, values, offsets, names, names_column)


def fitted(table: Table, item_ids: np.ndarray, buckets: int) -> ModelFeatures:
    space = table.learn(buckets)
    if space.size > _MAX_VALUES:
        raise ValueError(f"item_features have {space.size} distinct values in all, over "
                         f"{_MAX_VALUES}: drop or bucket the columns with the most")
    values, offsets = space.encode(table, item_ids)
    return ModelFeatures(space, values, offsets, table.names_of(item_ids), table.names_column)
