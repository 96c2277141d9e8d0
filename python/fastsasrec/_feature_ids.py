"""Whether a features table's ids are the items' ids: fit refuses a table whose ids sit in
a column while its index is row numbers (what pd.read_csv gives), naming that column,
rather than train the features on the wrong items without a word."""
from __future__ import annotations

from typing import Any, List

import numpy as np

from fastsasrec._features import ItemFeatures, Table, _frame


def check_ids(item_features: Any, table: Table, items: np.ndarray, new_only: bool = False) -> None:
    """Refuses a features table whose ids are not the items' ids, where that can be told:
    none of its ids is one of ``items`` (sorted, unique: fit's training items), so every
    row would join the catalogue as a new product (``new_only``: partial_fit, where a table
    of new products alone is what it should be, skips this); or its index is row numbers (a
    default index: 0, 1, 2, ..., unnamed) while a column of distinct values holds at least
    as many of the items, and some.  Both come of a frame read from a file with its ids in
    a column, and would train features on the wrong items without a word."""
    if table.ids.size == 0 or items.size == 0:
        return
    import pandas as pd

    named = isinstance(item_features, ItemFeatures) and item_features.id_col is not None
    covered = int((table.rows_of(items) >= 0).sum())
    if covered and named:  # the ids' column was named, and it holds items: nothing to ask
        return
    df = _frame(item_features.frame if isinstance(item_features, ItemFeatures) else item_features)
    idx = df.index
    row_numbers = (not named and isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1
                   and idx.name is None)
    if covered and not row_numbers:
        return
    best_n, best_col = 0, None
    for c in df.columns:  # the column holding most of the items, its values distinct
        try:
            vals = flatten_ids(df[c].tolist())
        except (TypeError, ValueError):
            continue
        if vals.dtype.kind == items.dtype.kind and np.unique(vals).size == vals.size:
            n = int(np.isin(items, vals).sum())
            if n > best_n:
                best_n, best_col = n, c
    hint = (f"column {best_col!r} holds {best_n:,} of the {items.size:,} items: pass "
            f"item_features=frame.set_index({best_col!r}), or ItemFeatures(frame, id_col={best_col!r})"
            if best_col is not None else "")
    if covered == 0 and not new_only:
        shown = ", ".join(repr(v) for v in table.ids[table.order][:3].tolist())
        id_name = item_features.id_col if named else idx.name
        where = f" in column {id_name!r}" if id_name is not None else ""
        if id_name is not None:  # the ids' column was named (the command line: --item-id-col)
            advice = (f"; column {best_col!r} holds {best_n:,} of the {items.size:,} items: is it "
                      "the id column?" if best_col is not None else "")
        else:
            advice = (f"; {hint}" if hint else "; index the frame by item id, or name its id column "
                      "with ItemFeatures(frame, id_col=...)")
        raise ValueError(
            f"item_features: none of its {table.ids.size:,} item ids{where} ({shown}"
            f"{', ...' if table.ids.size > 3 else ''}) is an item of the training sequences "
            f"({', '.join(repr(v) for v in items[:3].tolist())}{', ...' if items.size > 3 else ''})"
            + ("; its index is row numbers (0, 1, 2, ...), not item ids" if row_numbers else "")
            + advice)
    if best_col is not None and best_n >= covered:
        raise ValueError(
            f"item_features: its index is row numbers (0, 1, 2, ..., unnamed), which match "
            f"{covered:,} of the {items.size:,} training items, and its {hint}. Say which holds "
            "the ids: set the index to the id column, or, if the row numbers are the ids, name "
            "the index (frame.index.name = 'item')")


def flatten_ids(values: List[Any]) -> np.ndarray:
    """A column's cells as ids (integers or strings), or a TypeError / ValueError."""
    from fastsasrec.data import flatten_sequences

    return flatten_sequences([values], "ids").items
