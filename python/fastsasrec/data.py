"""Turning users' sequences of original item ids into the engine's flat int32 arrays.

``Sequences`` is the flat form of many sequences (items one after the other, and offsets);
lists of lists and the other inputs are flattened into one.  The engine sees items as
internal ids 1..V (0 is padding); ``item_ids[i - 1]`` is the original id of internal id
``i``.  Ids are either all integers or all strings; a string id holding a control character
(below 0x20, NUL, tab and newline included, or 0x7f) is refused wherever ids come in.
"""
from __future__ import annotations

import math
import numbers
import re
from collections.abc import KeysView, Mapping, ValuesView
from itertools import chain
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from fastsasrec import _core

_INT_KINDS = "iu"
# Collections without an order of their own: never a session (fine for exclude lists).
_UNORDERED = (set, frozenset, Mapping, KeysView, ValuesView)
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_CONTROL_WHY = ("ids may not hold control characters (below 0x20: NUL, tab, newline...; "
                "or 0x7f)")


def _first_control(strs: List[str]) -> int:
    """The index of the first string of ``strs`` holding a control character, or -1: one
    regular-expression pass over them all, then a walk only when there is one."""
    if not strs or _CONTROL.search("".join(strs)) is None:
        return -1
    return next(i for i, x in enumerate(strs) if _CONTROL.search(x))


def _first_control_array(a: np.ndarray) -> int:
    """``_first_control`` of a NumPy str array, on its code points (a NUL inside an id
    is one; NumPy has already dropped a trailing one, which a Python str path catches)."""
    if a.size == 0 or a.dtype.itemsize == 0:
        return -1
    codes = np.ascontiguousarray(a).reshape(-1).view(np.uint32).reshape(a.size, -1)
    bad = (codes < 0x20) | (codes == 0x7F)
    if not bad.any():
        return -1
    bad &= np.arange(codes.shape[1]) < np.char.str_len(a.reshape(-1))[:, None]  # not padding
    rows = np.flatnonzero(bad.any(axis=1))
    return int(rows[0]) if rows.size else -1


def _check_text(a: np.ndarray, where: Any) -> np.ndarray:
    """A str array of ids, or ValueError naming ``where(i)`` of its first control character."""
    i = _first_control_array(a)
    if i >= 0:
        raise ValueError(f"{where(i)} is {str(a.reshape(-1)[i])!r}: {_CONTROL_WHY}")
    return a


def _describe(x: Any) -> str:
    return f"{x!r} ({type(x).__name__})"


def _int64(a: np.ndarray, where: Any) -> np.ndarray:
    """Integer ids ``a`` as int64, or ValueError naming the first id at or above 2**63 (a
    uint64 would wrap to a negative id); ``where(i)`` names flat position i."""
    if a.dtype.kind == "u" and a.dtype.itemsize == 8 and a.size:
        flat = a.reshape(-1)
        big = np.flatnonzero(flat >= np.uint64(2**63))
        if big.size:
            i = int(big[0])
            raise ValueError(f"{where(i)} is {int(flat[i])}: integer item ids must fit in 64 bits (int64)")
    return a.astype(np.int64, copy=False)


class Sequences:
    """Many sequences of original item ids in one flat form.

    ``items`` holds every sequence's ids one after the other (a 1-D array of integers or
    of strings) and sequence ``i`` is ``items[offsets[i]:offsets[i + 1]]``: ``offsets`` has
    one entry more than there are sequences, starts at 0, never decreases and ends at
    ``len(items)``.  ``fit``, ``evaluate``, ``recommend_batch`` and ``session_embeddings``
    take it as it is, with no work per item; ``Sequences.from_lists`` builds one from lists.

    >>> s = Sequences(np.array([5, 6, 7, 6, 5]), np.array([0, 3, 5]))
    >>> len(s), s[1].tolist(), s.lengths.tolist()
    (2, [6, 5], [3, 2])

    The arrays are checked on construction (ValueError naming the argument and the value)
    and kept read-only.  ``offsets`` is copied (8 bytes a sequence), so changing the array
    given afterwards changes nothing here; ``items`` is a view when it is already int64 (or
    strings), not a copy, so a changed item is seen, and checked again, by the next call
    that reads it, like any bad id.  (A plain tuple ``(items, offsets)`` would read as two sequences: this type
    says that the arrays are flat.)
    """

    __slots__ = ("_items", "_offsets")

    def __init__(self, items: Any, offsets: Any) -> None:
        items = _as_item_array(items)
        offsets = _as_offsets(offsets, items.size)
        for name, a in (("_items", items), ("_offsets", offsets)):
            a = a.view()
            a.flags.writeable = False
            object.__setattr__(self, name, a)

    @classmethod
    def _of(cls, items: np.ndarray, offsets: np.ndarray) -> "Sequences":
        """A Sequences of arrays this module built itself (1-D int64 or str ids, valid
        int64 offsets): not checked again, which would cost a one-session call more than
        the conversion itself."""
        self = object.__new__(cls)
        for name, a in (("_items", items), ("_offsets", offsets)):
            a = a.view()
            a.flags.writeable = False
            object.__setattr__(self, name, a)
        return self

    @classmethod
    def from_lists(cls, sequences: Any, name: str = "sequences") -> "Sequences":
        """The flat form of a list of sequences (lists, arrays, a pandas Series of lists, a
        2-D integer array with one sequence per row); ValueError names the first bad entry."""
        return flatten_sequences(sequences, name)

    @property
    def items(self) -> np.ndarray:
        """Every sequence's original ids, one sequence after the other (read-only)."""
        return self._items

    @property
    def offsets(self) -> np.ndarray:
        """int64, len(self) + 1: sequence i is items[offsets[i]:offsets[i + 1]] (read-only)."""
        return self._offsets

    @property
    def lengths(self) -> np.ndarray:
        """int64: the number of items of each sequence."""
        return np.diff(self._offsets)

    def __len__(self) -> int:
        return self._offsets.size - 1

    def __getitem__(self, i: Any) -> np.ndarray:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, numbers.Integral):
            raise TypeError(f"Sequences indices must be integers, got {type(i).__name__}")
        n = len(self)
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"sequence index {i} is out of range for {n} sequences")
        return self._items[self._offsets[j]:self._offsets[j + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        bounds = self._offsets.tolist()
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            yield self._items[lo:hi]

    # The flat slicing every caller needs, written once (no per-sequence Python loop).
    def take(self, rows: Any) -> "Sequences":
        """The sequences ``rows`` (integer indices, in that order) as a new Sequences."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = np.diff(self._offsets)[rows]
        offsets = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        take = np.repeat(self._offsets[rows] - offsets[:-1], lengths) + np.arange(int(offsets[-1]))
        return Sequences._of(self._items[take], offsets)

    def tail(self, n: int) -> "Sequences":
        """Each sequence's last ``n`` items (all of a shorter one)."""
        keep = np.minimum(np.diff(self._offsets), n)
        offsets = np.zeros(keep.size + 1, dtype=np.int64)
        np.cumsum(keep, out=offsets[1:])
        take = np.repeat(self._offsets[1:] - keep - offsets[:-1], keep) + np.arange(int(offsets[-1]))
        return Sequences._of(self._items[take], offsets)

    def head(self, drop: Any) -> "Sequences":
        """Each sequence less its last ``drop[i]`` items (``drop``: an int or one per
        sequence; a sequence shorter than that becomes empty)."""
        lengths = np.diff(self._offsets)
        keep = np.maximum(lengths - np.asarray(drop, dtype=np.int64), 0)
        offsets = np.zeros(keep.size + 1, dtype=np.int64)
        np.cumsum(keep, out=offsets[1:])
        take = np.repeat(self._offsets[:-1] - offsets[:-1], keep) + np.arange(int(offsets[-1]))
        return Sequences._of(self._items[take], offsets)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Sequences is immutable")

    def __reduce__(self):
        return Sequences, (self._items, self._offsets)

    def __repr__(self) -> str:
        def show(seq: np.ndarray) -> str:
            head = ", ".join(repr(x) for x in seq[:5].tolist())
            return f"[{head}{', ...' if seq.size > 5 else ''}]"

        shown = ", ".join(show(self[i]) for i in range(min(len(self), 3)))
        more = ", ..." if len(self) > 3 else ""
        kind = "str" if self._items.dtype.kind == "U" else "int64"
        return (f"Sequences({len(self)} sequences, {self._items.size} {kind} items: "
                f"[{shown}{more}])")


def _as_item_array(items: Any) -> np.ndarray:
    """items as a 1-D int64 or str array, or ValueError naming the first bad entry."""
    if isinstance(items, (str, bytes)) or items is None:
        raise ValueError(f"items must be a 1-D array of item ids, got {items!r}")
    # Lists go through object arrays: numpy would silently turn [1, "a"] into strings.
    a = np.asarray(items) if hasattr(items, "dtype") else np.asarray(list(items), dtype=object)
    if a.ndim != 1:
        raise ValueError(f"items must be a 1-D array of item ids, got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    return _as_ids(a, "items")


def _as_offsets(offsets: Any, n_items: int) -> np.ndarray:
    """offsets as int64, checked against the n_items they cut, or ValueError."""
    o = np.asarray(offsets)
    if o.ndim != 1 or o.size == 0:
        raise ValueError("offsets must be a 1-D array of len(sequences) + 1 integers, "
                         f"got shape {o.shape}")
    if o.dtype.kind not in _INT_KINDS:
        raise ValueError(f"offsets must be integers, got {o.dtype}")
    # The engine takes numpy's own int64 dtype object only; an equal one that is another
    # object (an unpickled array's, np.longlong's) is refused there: view it as that dtype.
    # Always a copy (8 bytes a sequence): a caller changing its array afterwards must not
    # change, or break, the sequences already checked.
    o = o.astype(np.int64, copy=True).view(np.int64)
    if o[0] != 0:
        raise ValueError(f"offsets must start at 0, got offsets[0] = {int(o[0])}")
    down = np.flatnonzero(o[1:] < o[:-1])
    if down.size:
        i = int(down[0]) + 1
        raise ValueError(f"offsets must be non-decreasing, got offsets[{i}] = {int(o[i])} "
                         f"after offsets[{i - 1}] = {int(o[i - 1])}")
    if o[-1] != n_items:
        raise ValueError(f"offsets must end at len(items) = {n_items}, got offsets[-1] = {int(o[-1])}")
    return o


def _looks_flat(t: Any) -> bool:
    """Whether a 2-tuple is (items, offsets): the second a cut of the first."""
    try:
        _as_offsets(t[1], len(t[0]))
    except (ValueError, TypeError):
        return False
    return len(t[1]) >= 2


def _as_sequence_list(sequences: Any, name: str) -> List[Any]:
    """Accepts a list/tuple of sequences, a pandas Series of lists or a numpy object array."""
    if sequences is None:
        raise ValueError(f"{name} must be a list of sequences of item ids, got None")
    if isinstance(sequences, (str, bytes)):
        raise ValueError(f"{name} must be a list of sequences of item ids, got a string")
    if isinstance(sequences, tuple) and len(sequences) == 2 and _looks_flat(sequences):
        raise ValueError(
            f"{name} is a tuple that looks like flat (items, offsets): pass "
            f"fastsasrec.Sequences(items, offsets) for flat arrays, or a list for two sequences"
        )
    if hasattr(sequences, "to_list") and hasattr(sequences, "index"):  # pandas Series
        sequences = sequences.to_list()
    if isinstance(sequences, np.ndarray):
        if sequences.ndim == 2:
            sequences = list(sequences)
        elif sequences.ndim == 1 and sequences.dtype == object:
            sequences = list(sequences)
        else:
            raise ValueError(
                f"{name} must be a list of sequences; got a {sequences.ndim}-d array of "
                f"{sequences.dtype} (wrap a single session as [session])"
            )
    if isinstance(sequences, dict):
        sequences = list(sequences.values())
    try:
        seqs = list(sequences)
    except TypeError:
        raise ValueError(
            f"{name} must be a list of sequences of item ids, got {type(sequences).__name__}"
        ) from None
    return seqs


def _check_item(x: Any, where: str) -> None:
    """Raises ValueError for ids that are neither integers nor strings."""
    if x is None:
        raise ValueError(f"{where} is None: item ids must be integers or strings")
    if isinstance(x, (bool, np.bool_)):
        raise ValueError(f"{where} is a boolean {x!r}: item ids must be integers or strings")
    if isinstance(x, float) or isinstance(x, np.floating):
        if math.isnan(x):
            raise ValueError(f"{where} is NaN: item ids must be integers or strings")
        raise ValueError(
            f"{where} is the float {x!r}: item ids must be integers or strings "
            "(convert float columns with .astype(int) once missing values are removed)"
        )
    if not isinstance(x, (numbers.Integral, str)):
        raise ValueError(f"{where} is {_describe(x)}: item ids must be integers or strings")
    if isinstance(x, numbers.Integral) and not -(2**63) <= int(x) < 2**63:
        raise ValueError(f"{where} is {x}: integer item ids must fit in 64 bits (int64)")
    if isinstance(x, str) and _CONTROL.search(x):
        raise ValueError(f"{where} is {x!r}: {_CONTROL_WHY}")


def _array_of(lst: List[Any]) -> np.ndarray:
    """np.asarray(lst), or a 1-D object array of its entries where numpy cannot make one
    (nested or ragged entries), for the checks to name the bad one."""
    try:
        return np.asarray(lst)
    except (ValueError, TypeError, OverflowError):
        a = np.empty(len(lst), dtype=object)
        for i, x in enumerate(lst):
            a[i] = x
        return a


def _flatten_plain_lists(seqs: List[Any]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The common cases, fast: lists of Python ints (read in C++) or lists of str.  None
    otherwise, for the general path to convert or to name the bad entry."""
    if not seqs:
        return None
    ints = _core.flatten_int_lists(seqs)  # None unless every session is a list of ints
    if ints is not None or set(map(type, seqs)) != {list}:
        return ints
    flat = list(chain.from_iterable(seqs))
    if set(map(type, flat)) != {str} or _first_control(flat) >= 0:
        return None  # the general path names a string with a control character
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs)), out=offsets[1:])
    return np.array(flat, dtype=str), offsets


def flatten_sequences(sequences: Any, name: str = "sequences", ordered: bool = True) -> Sequences:
    """The flat form of many sequences: a Sequences as it is, or lists of sequences (of
    lists or arrays, a pandas Series of lists, a 2-D integer array with one per row).

    Raises ValueError naming the first bad entry: None, NaN, floats, booleans, a mix of
    integers and strings, or a sequence that is not a list.
    """
    if isinstance(sequences, Sequences):
        # Items are a view of the caller's array (no copy of the bulk), so a text id changed
        # since construction is checked again here; an integer one needs no check (any
        # int64 is an id; the reserved -1 is refused where it matters, by fit).
        if sequences.items.dtype.kind == "U":
            _check_text(sequences.items, lambda i: f"{name}: item {i}")
        return sequences
    if (isinstance(sequences, np.ndarray) and sequences.ndim == 2
            and sequences.dtype.kind in _INT_KINDS):  # fixed-length sessions, one per row
        B, L = sequences.shape
        flat = _int64(sequences, lambda i: f"{name}[{i // L}][{i % L}]")
        return Sequences._of(np.ascontiguousarray(flat).reshape(-1),
                             np.arange(B + 1, dtype=np.int64) * L)
    seqs = _as_sequence_list(sequences, name)
    fast = _flatten_plain_lists(seqs)
    if fast is not None:
        return Sequences._of(*fast)
    lengths = np.empty(len(seqs), dtype=np.int64)
    parts, originals = [], []
    for i, s in enumerate(seqs):
        if s is None or isinstance(s, (str, bytes)) or not hasattr(s, "__len__"):
            raise ValueError(
                f"{name}[{i}] must be a sequence of item ids, got {_describe(s)}"
            )
        if ordered and isinstance(s, _UNORDERED):
            raise ValueError(f"{name}[{i}] is a {type(s).__name__}, which has no order: a session is its "
                             f"items in the order they were seen (a list, tuple or array)")
        lst = None if isinstance(s, np.ndarray) else (s if isinstance(s, list) else list(s))
        a = s if lst is None else _array_of(lst)
        if lst is not None and a.dtype.kind == "U" and not all(isinstance(x, str) for x in lst):
            a = np.asarray(lst, dtype=object)  # numpy turned integers into strings: keep the mix
        if lst is not None and a.dtype.kind in _INT_KINDS and any(
                isinstance(x, (bool, np.bool_)) for x in lst):
            a = np.asarray(lst, dtype=object)  # numpy turned booleans into 0/1: name them below
        if a.ndim != 1:  # [()] or [[]] is no empty session: numpy made it shape (1, 0)
            raise ValueError(f"{name}[{i}] must be 1-dimensional, got shape {a.shape}")
        lengths[i] = a.size
        parts.append(a.reshape(-1))
        originals.append(lst)
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if not parts or offsets[-1] == 0:
        return Sequences._of(np.zeros(0, dtype=np.int64), offsets)
    kinds = {p.dtype.kind for p in parts if p.size}
    if kinds <= set(_INT_KINDS):
        flat = np.concatenate([_int64(p, lambda j, i=i: f"{name}[{i}][{j}]")
                               for i, p in enumerate(parts) if p.size])
        return Sequences._of(flat, offsets)
    if kinds <= {"U"} and not any(o is not None and _first_control(o) >= 0 for o in originals):
        for i, p in enumerate(parts):  # arrays given as they are: their NULs inside ids
            if originals[i] is None:
                _check_text(p, lambda j, i=i: f"{name}[{i}][{j}]")
        return Sequences._of(np.concatenate([p for p in parts if p.size]), offsets)
    # Mixed, float, bool or object: find the first offending entry and name it.
    saw_int = saw_str = None
    for i, p in enumerate(parts):
        for j, x in enumerate(originals[i] if originals[i] is not None else p.tolist()):
            where = f"{name}[{i}][{j}]"
            _check_item(x, where)
            if isinstance(x, str):
                saw_str = saw_str or where
            else:
                saw_int = saw_int or where
            if saw_int and saw_str:
                raise ValueError(
                    f"item ids must be all integers or all strings; {saw_int} is an integer "
                    f"and {saw_str} is a string"
                )
    # From the values checked above, not from numpy's conversion of them: a list mixing
    # numpy uint64 with other integers became float64, which would round ids past 2**53.
    values = [originals[i] if originals[i] is not None else p.tolist()
              for i, p in enumerate(parts) if p.size]
    if saw_str:
        return Sequences._of(np.concatenate([np.asarray(v, dtype=str) for v in values]), offsets)
    return Sequences._of(np.concatenate([np.array([int(x) for x in v], dtype=np.int64)
                                         for v in values]), offsets)


def check_ids_compatible(flat: np.ndarray, item_ids: np.ndarray, name: str) -> None:
    if flat.size == 0:
        return
    if (flat.dtype.kind == "U") != (item_ids.dtype.kind == "U"):
        want = "strings" if item_ids.dtype.kind == "U" else "integers"
        raise ValueError(f"{name}: this model's item ids are {want}, got {flat.dtype} ids")


def is_ascending(item_ids: np.ndarray) -> bool:
    """Whether the catalogue is strictly ascending (fit's order; a grown one need not be)."""
    return item_ids.size < 2 or bool((item_ids[1:] > item_ids[:-1]).all())


def encode(flat: np.ndarray, sorted_ids: np.ndarray, order: Optional[np.ndarray] = None) -> np.ndarray:
    """Internal ids (int32, 1..V) of original ids; 0 for ids not in the catalogue.

    ``sorted_ids``: the catalogue's ids in ascending order, unique.  ``order``: the
    internal index (0-based) of each of them; None when the catalogue is itself ascending
    (fit's np.unique order).  A catalogue grown by partial_fit appends its new items after
    the old ones, so its internal order is not sorted: ``catalogue_lookup`` gives both."""
    if flat.size == 0 or sorted_ids.size == 0:
        return np.zeros(flat.size, dtype=np.int32)
    ids = sorted_ids
    if (order is None and ids.dtype.kind in _INT_KINDS and flat.dtype.kind in _INT_KINDS
            and int(ids[-1]) - int(ids[0]) + 1 == ids.size):
        # A contiguous range of integer ids (sorted, unique): a subtraction, no search.
        rel = flat.astype(np.int64, copy=False) - int(ids[0])
        ok = (rel >= 0) & (rel < ids.size)
        return np.where(ok, rel + 1, 0).astype(np.int32)
    pos = np.searchsorted(ids, flat)
    pos_c = np.minimum(pos, ids.size - 1)
    found = ids[pos_c] == flat
    internal = pos_c if order is None else order[pos_c]
    return np.where(found, internal + 1, 0).astype(np.int32)


def catalogue_lookup(item_ids: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(sorted ids, order) for ``encode`` of a catalogue in internal order: the catalogue
    itself and None when it is ascending, else its sorted copy and the argsort."""
    if is_ascending(item_ids):
        return item_ids, None
    order = np.argsort(item_ids, kind="stable")
    return item_ids[order], order


def drop_unknown(internal: np.ndarray, offsets: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Removes zeros (unknown items) from a flat array, fixing the offsets."""
    keep = internal != 0
    if keep.all():
        return internal, offsets
    csum = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))
    return internal[keep], csum[offsets]


def leave_one_out(sequences: Sequence[Sequence[Any]]) -> Tuple[List[List[Any]], List[Any]]:
    """Splits each sequence into (all but its last item, its last item).

    Sequences with fewer than 2 items are dropped.  This is the protocol of the SASRec
    paper's test split: train on the contexts, rank the full catalogue for the held-out
    item."""
    contexts, targets = [], []
    for s in _as_sequence_list(sequences, "sequences"):
        s = list(s)
        if len(s) >= 2:
            contexts.append(s[:-1])
            targets.append(s[-1])
    return contexts, targets


def _as_ids(values: np.ndarray, what: str) -> np.ndarray:
    """int64 or str array of ids, or ValueError naming the first bad row."""
    if values.dtype.kind in _INT_KINDS:
        return _int64(values, lambda i: f"{what}[{i}]")
    if values.dtype.kind == "U":
        return _check_text(values, lambda i: f"{what}[{i}]")
    listed = values.tolist()
    if values.ndim == 1 and set(map(type, listed)) == {str} and _first_control(listed) < 0:
        return values.astype(str)  # text (a CSV column read as text): one pass, no walk
    for i, x in enumerate(listed):
        _check_item(x, f"{what}[{i}]")
    kinds = {isinstance(x, str) for x in listed}
    if len(kinds) > 1:
        raise ValueError(f"{what} mixes integers and strings; ids must be all one kind")
    return values.astype(str) if kinds == {True} else values.astype(np.int64)
