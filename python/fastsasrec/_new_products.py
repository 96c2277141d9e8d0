"""What the model reads of a session that holds new products: items in the catalogue by their
features, with no training event.

Training never shows the model an item by its features alone (but where id dropout drops
an id), and such an input misleads it more than it tells (BENCHMARKS.md, "A new product
in the session").  So ``read_items``, under every scoring path:

* beside items with events, leaves the new products out of the model's input (they stay
  the session's, and seen);
* in a session of new products alone, reads each as its look-alike (``lookalikes``): the
  item with events that shares the most of its feature values, the most popular of those
  that tie, then the lowest id; an item that shares none is read by its features.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np


def unread(state: Any) -> Optional[np.ndarray]:
    """(V + 1,) bool, True at the internal ids of new products (no training event: the
    model's features hold them); None when there are none (every model without features)."""
    found = state.cache.get("unread")
    if found is None:
        new = np.asarray(state.popularity) == 0
        found = state.cache["unread"] = ((None,) if state.features is None or not new.any()
                                         else (np.concatenate(([False], new)),))
    return found[0]


def _index(state: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(starts, items: the items with events holding each value, a CSR over the values;
    rank: each internal id's place by popularity, 0 the most popular, ties to the lower id;
    offsets, values: each internal id's values that count, a CSR), once per model."""
    found = state.cache.get("lookalike_index")
    if found is not None:
        return found
    feats = state.features
    V = int(state.n_items)
    pop = np.concatenate(([0], np.asarray(state.popularity, dtype=np.int64)))
    real = np.ones(feats.space.size, dtype=bool)
    real[0] = False  # "no features"
    for base in feats.space.bases():
        real[base:base + 2] = False  # the column's unknown and missing values
    values = np.asarray(feats.values, dtype=np.int64)
    owner = np.repeat(np.arange(V + 1), np.diff(np.asarray(feats.offsets, dtype=np.int64)))
    use = real[values]
    values, owner = values[use], owner[use]
    own_off = np.searchsorted(owner, np.arange(V + 2))
    warm = pop[owner] > 0
    order = np.argsort(values[warm], kind="stable")
    w_val, w_item = values[warm][order], owner[warm][order]
    starts = np.searchsorted(w_val, np.arange(real.size + 1))
    rank = np.empty(V + 1, dtype=np.int64)
    rank[np.lexsort((np.arange(V + 1), -pop))] = np.arange(V + 1)
    found = state.cache["lookalike_index"] = (starts, w_item, rank, own_off, values)
    return found


def lookalikes(state: Any, ids: np.ndarray) -> np.ndarray:
    """The internal ids the model reads for the new products ``ids`` (internal) in a session
    of new products alone: each one's look-alike (module docstring), or itself when it
    shares no value with an item with events.  The "no features", missing and unknown
    values do not count as shared.  Each product's is found once per model."""
    known = state.cache.setdefault("lookalikes", {})
    out = np.empty(ids.size, dtype=np.int32)
    for k, i in enumerate(ids.tolist()):
        got = known.get(i)
        if got is None:
            starts, w_item, rank, own_off, values = _index(state)
            vs = values[own_off[i]:own_off[i + 1]].tolist()
            holders = np.concatenate([w_item[starts[v]:starts[v + 1]] for v in vs]) if vs else w_item[:0]
            got = i
            if holders.size:
                cand, shared = np.unique(holders, return_counts=True)
                best = cand[shared == shared.max()]
                got = int(best[np.argmin(rank[best])])
            known[i] = got
        out[k] = got
    return out


def read_items(state: Any, internal: np.ndarray, offsets: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The items of each session (known items, flat (items, offsets)) that the model reads:
    new products left out beside items with events, and read as their look-alikes in a
    session that holds nothing else.  Returns the arguments themselves when every item is
    read as it is."""
    mask = unread(state)
    if mask is None or internal.size == 0:
        return internal, offsets
    new = mask[internal]
    if not new.any():
        return internal, offsets
    B = offsets.size - 1
    row = np.repeat(np.arange(B), np.diff(offsets))
    alone = np.bincount(row[~new], minlength=B) == 0  # sessions of new products alone
    stand_in = new & alone[row]
    items = internal
    if stand_in.any():
        items = internal.copy()
        items[stand_in] = lookalikes(state, internal[stand_in])
    beside = new & ~stand_in
    if not beside.any():
        return items, offsets
    keep = ~beside
    new_off = np.zeros(offsets.size, dtype=np.int64)
    np.cumsum(np.bincount(row[keep], minlength=B), out=new_off[1:])
    return items[keep], new_off
