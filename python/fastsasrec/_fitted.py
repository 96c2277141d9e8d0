"""The fitted model as one immutable snapshot, and the one function that scores sessions.

A ``Fitted`` holds the engine, its configuration, the catalogue and the fit's record; fit,
partial_fit, load and to() build one aside and the estimator publishes it with a single
assignment, so a call that reads the snapshot once gets wholly one model.

``recommend`` is the only code that turns sessions into top-k lists: encoding the ids,
"seen" (every item of the session it is given, however long; the model reads only the
last ``max_seq``), the per-session exclude lists, the denylist, the fallback for a session
with no known item (the most popular items, flagged), the engine call and the ids back.
``recommend``, ``recommend_batch``, ``similar_items``, evaluation, the server, batch
scoring, Spark and Ray all reach it through the estimator's public methods.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import numpy as np

from fastsasrec.data import (
    Sequences,
    catalogue_lookup,
    check_ids_compatible,
    drop_unknown,
    encode,
    flatten_sequences,
)
from fastsasrec._new_products import read_items, unread
from fastsasrec._params import flag, positive_int


class NotFittedError(ValueError, AttributeError):
    """A call that needs a fitted model on one that is not: both ValueError and
    AttributeError, so ``hasattr(model, "item_ids_")`` answers False before ``fit``."""


def not_fitted() -> NotFittedError:
    return NotFittedError("this SASRec model is not fitted yet: call fit() or load() first")


class Recommendations(tuple):
    """``(ids, scores)``, unpacked as a pair, with ``fallback``: for ``recommend`` a bool,
    for ``recommend_batch`` a bool array with one entry per session; True where the session
    had no item the model knows and got the most popular items (scored by their share of
    training interactions, not by the model).  ``unknown``: how many of the session's ids
    the model does not know (and so did not read): an int for ``recommend``, an int array
    per session for ``recommend_batch``, 0 for ``similar_items``.  ``names``: the items'
    display names beside ``ids`` (same shape; "" for an item without one, or an empty
    slot) when the model was fitted with ``item_names``, else None."""

    fallback: Any
    unknown: Any
    names: Any

    def __new__(cls, ids: Any, scores: Any, fallback: Any, unknown: Any = 0,
                names: Any = None) -> "Recommendations":
        self = super().__new__(cls, (ids, scores))
        self.fallback = fallback
        self.unknown = unknown
        self.names = names
        return self

    @property
    def ids(self) -> Any:
        return self[0]

    @property
    def scores(self) -> Any:
        return self[1]

    def __reduce__(self):  # pickles (Spark, Ray) as itself, fallback included
        return (Recommendations, (self[0], self[1], self.fallback, self.unknown, self.names))


@dataclasses.dataclass(frozen=True, eq=False)
class Fitted:
    """One fitted model, never changed once published (a change publishes a new one).

    ``engine``: the C++ model.  ``config``: the configuration the engine was built with
    (its shape: n_items, factors, max_seq, ...).  ``params``: the estimator's parameters
    this model was fitted (or loaded) with.  ``item_ids``: the catalogue, entry i the
    original id of internal id i + 1 (read-only; ascending after fit, new items appended
    after the old ones by partial_fit); ``popularity``: each item's count of training
    interactions (read-only).  ``loss_history``, ``history``, ``best_epoch``: the fit's
    record; ``interrupted``: the fit was stopped by Ctrl-C (the weights are those of
    ``best_epoch``).  ``cache``: values computed from this model on first use (item
    embeddings, the id lookup, the encoded denylist); two threads filling an entry at once
    store equal values."""

    engine: Any
    config: Dict[str, Any]
    params: Dict[str, Any]
    item_ids: np.ndarray
    popularity: np.ndarray
    loss_history: Tuple[float, ...] = ()
    history: Tuple[Dict[str, Any], ...] = ()
    best_epoch: int = 0
    interrupted: bool = False
    validation: Optional[Dict[str, Any]] = None
    defaults: Optional[Dict[str, Dict[str, Any]]] = None
    features: Any = None  # _features.ModelFeatures: the items' feature bags and names
    cache: Dict[str, Any] = dataclasses.field(default_factory=dict, init=False, repr=False)

    @property
    def n_items(self) -> int:
        return int(self.item_ids.size)

    def names_of(self, internal: np.ndarray) -> Optional[np.ndarray]:
        """The display names of internal ids (0: an empty slot, named ""); None when the
        model has no names."""
        f = self.features
        if f is None or f.names is None:
            return None
        named = self.cache.get("names")
        if named is None:  # entry 0 for the empty slot
            named = self.cache["names"] = np.concatenate((np.array([""], dtype=f.names.dtype), f.names))
        return named[internal]

    def lookup(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(sorted ids, their internal indices or None): what ``encode`` searches."""
        found = self.cache.get("lookup")
        if found is None:
            found = self.cache["lookup"] = catalogue_lookup(self.item_ids)
        return found

    def encode(self, flat: np.ndarray) -> np.ndarray:
        """Internal ids (int32, 1..V) of original ids; 0 for ids not in the catalogue."""
        return encode(flat, *self.lookup())

    def popular(self, n: int, excluded: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The n most popular items less ``excluded`` (internal ids), with their share of
        training interactions: what a session with no known item gets.  Ties go to the
        lower internal id.  The order is sorted once per model, not per call."""
        found = self.cache.get("popular")
        if found is None:
            share = self.popularity / max(int(self.popularity.sum()), 1)
            order = np.lexsort((np.arange(share.size), -share)) + 1
            found = self.cache["popular"] = (order, share)
        order, share = found
        head = order[: n + excluded.size]  # the exclusions remove at most that many
        if excluded.size:
            head = head[~np.isin(head, excluded)]
        head = head[:n]
        return head, share[head - 1].astype(np.float32)

    def candidates(self, given: Any) -> Optional[np.ndarray]:
        """The internal ids of recommend's ``candidates``, increasing, int32; ids the model
        does not know dropped; None for None.  Encoded once per model and per list object,
        as the denylist: pass the same object while it is unchanged."""
        if given is None:
            return None
        ids = self._known_once("candidates", given)
        if ids.size == 0:
            raise ValueError("candidates: none of the ids given is in the model's catalogue, so "
                             "there is nothing to rank")
        return ids

    def item_embeddings(self) -> np.ndarray:
        E = self.cache.get("item_embeddings")
        if E is None:
            E = self.engine.item_embeddings()
            E.setflags(write=False)
            self.cache["item_embeddings"] = E
        return E

    def denylist(self, deny: Any) -> np.ndarray:
        """The internal ids of ``deny`` (ids unknown to the model dropped), encoded once per
        model and per denylist object: pass the same object while the list is unchanged."""
        return _NONE if deny is None else self._known_once("denylist", deny)

    def _known_once(self, name: str, given: Any) -> np.ndarray:
        """The sorted unique internal ids of the known ids in ``given`` (a list of original
        ids, named ``name`` in errors), kept under ``name`` for the same object's next use."""
        cached = self.cache.get(name)
        if cached is not None and cached[0] is given:
            return cached[1]
        ids = encode_flat(self, given, name, ordered=False)
        ids = np.unique(ids[ids > 0]).astype(np.int32)
        self.cache[name] = (given, ids)
        return ids


_NONE = np.zeros(0, dtype=np.int32)


def read_only(a: np.ndarray) -> np.ndarray:
    a = a.view()
    a.flags.writeable = False
    return a


def filler(item_ids: np.ndarray) -> Any:
    """The id of recommend_batch's empty slots: "" for string catalogues, -1 otherwise."""
    return "" if item_ids.dtype.kind == "U" else -1


def check_catalogue(item_ids: np.ndarray) -> None:
    """Rejects a catalogue holding the id that marks recommend_batch's empty slots (a real
    item's score can be -inf, so the id is what marks a slot empty)."""
    fill = filler(item_ids)
    if item_ids.size and bool((item_ids == fill).any()):
        raise ValueError(
            f"item id {fill!r} is reserved: recommend_batch fills the slots it has no item for "
            "with it (-1 for integer ids, \"\" for string ids); drop or rename that item"
        )


# ----------------------------------------------------------------------------- encoding
def encode_sessions(state: Fitted, sessions: Any, name: str,
                    ordered: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """(internal ids, offsets) of many sessions of original ids; unknown ids are 0.
    ``ordered``: an unordered collection (a set) is refused, as sessions need their order."""
    flat = flatten_sequences(sessions, name, ordered)
    check_ids_compatible(flat.items, state.item_ids, name)
    return state.encode(flat.items), flat.offsets


def encode_flat(state: Fitted, ids: Any, name: str, ordered: bool = True) -> np.ndarray:
    """Internal ids (0 for unknown) of one collection of original ids (a session, a cart,
    the denylist), its positions named as ``name[i]`` in errors; ``ordered`` as for
    encode_sessions (False for a cart, the denylist, candidates: sets welcome)."""
    if ids is None or isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__"):
        raise ValueError(f"{name} must be a sequence of item ids, got {ids!r}")
    try:
        internal, _ = encode_sessions(state, [ids], name, ordered)
    except ValueError as e:  # name the position inside this one collection
        raise ValueError(str(e).replace(f"{name}[0]", name)) from None
    return internal


def _rows(items: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The flat (items, offsets) of rows ``rows`` of a flat (items, offsets)."""
    taken = Sequences._of(items, offsets).take(rows)
    return taken.items, taken.offsets


def _merge_rows(parts) -> Tuple[np.ndarray, np.ndarray]:
    """Row r of the result is row r of each part in turn (flat forms with the same rows)."""
    parts = [p for p in parts if p is not None]
    if len(parts) == 1:
        return parts[0]
    if parts[0][1].size == 2:  # one row: a concatenation
        items = np.concatenate([i for i, _ in parts]).astype(np.int32, copy=False)
        return items, np.array([0, items.size], dtype=np.int64)
    lengths = [np.diff(o) for _, o in parts]
    row = np.concatenate([np.repeat(np.arange(l.size), l) for l in lengths])
    order = np.argsort(row, kind="stable")
    items = np.concatenate([i for i, _ in parts]).astype(np.int32)[order]
    return items, np.concatenate(([0], np.cumsum(sum(lengths)))).astype(np.int64)


# ----------------------------------------------------------------------------- the scorer
def recommend(state: Fitted, sessions: Any, n: Any, exclude_seen: Any = True, exclude: Any = None,
              denylist: Any = None, name: str = "sessions", candidates: Any = None) -> Recommendations:
    """Top-n for many sessions of original ids: (ids, scores) of shape (B, min(n, n_items)),
    best first, with ``fallback`` (B,).  Each row leaves out its own session's items (every
    one given, when ``exclude_seen``), its ``exclude`` list and the denylist; a slot with no
    item left is id -1 (or "") and score -inf, last in its row.  ``candidates``: only these
    are ranked (n at most their number)."""
    cand = state.candidates(candidates)
    n = min(positive_int(n, "n"), state.n_items if cand is None else cand.size)
    exclude_seen = flag(exclude_seen, "exclude_seen")
    given, given_off = encode_sessions(state, sessions, name)
    internal, offsets = drop_unknown(given, given_off)
    extra = None
    if exclude is not None:
        extra = drop_unknown(*encode_sessions(state, exclude, "exclude", ordered=False))
        if extra[1].size != offsets.size:
            raise ValueError(f"exclude must have one entry per session: {extra[1].size - 1} "
                             f"entries for {offsets.size - 1} sessions")
    ids, scores, cold = score(state, internal, offsets, n, exclude_seen, extra, state.denylist(denylist),
                              cand)
    unknown = np.diff(given_off) - np.diff(offsets) if internal is not given else \
        np.zeros(offsets.size - 1, dtype=np.int64)
    return Recommendations(to_original(state, ids), scores, cold, unknown, state.names_of(ids))


def recommend_one(state: Fitted, session: Any, n: Any, exclude_seen: Any = True,
                  exclude: Any = None, denylist: Any = None, candidates: Any = None) -> Recommendations:
    """``recommend`` for one session: (ids, scores) without empty slots, ``fallback`` a bool."""
    cand = state.candidates(candidates)
    n = min(positive_int(n, "n"), state.n_items if cand is None else cand.size)
    exclude_seen = flag(exclude_seen, "exclude_seen")
    given = encode_flat(state, session, "session")
    known = given[given > 0]
    extra = None
    if exclude is not None:
        ex = encode_flat(state, exclude, "exclude", ordered=False)
        ex = ex[ex > 0]
        extra = (ex, np.array([0, ex.size], dtype=np.int64))
    ids, scores, cold = score(state, known, np.array([0, known.size], dtype=np.int64), n,
                              exclude_seen, extra, state.denylist(denylist), cand)
    ids, scores = ids[0], scores[0]
    valid = ids > 0
    if not valid.all():
        ids, scores = ids[valid], scores[valid]
    return Recommendations(state.item_ids[ids - 1], scores, bool(cold[0]), int(given.size - known.size),
                           state.names_of(ids))


def score(state: Fitted, internal: np.ndarray, offsets: np.ndarray, n: int, exclude_seen: bool,
          extra: Optional[Tuple[np.ndarray, np.ndarray]], deny: np.ndarray,
          cand: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The engine call behind every recommendation, in internal ids: sessions (known items
    only, flat), n <= n_items, each row's extra exclusions (flat, known only) and the
    denylist; ``cand`` (increasing internal ids, n <= its size): only those ranked.
    Returns (ids (B, n), 0 in an empty slot; scores, -inf there; cold (B,))."""
    read, read_off = read_items(state, internal, offsets)
    if read is not internal:  # what the model does not read is still the session's, and seen
        if exclude_seen:
            extra = _merge_rows([(internal, offsets), extra])
            exclude_seen = False
        internal, offsets = read, read_off
    B = offsets.size - 1
    if deny.size and deny.size * B > DENY_IN_ROWS:
        # Rank among the items the denylist leaves: the same top-n and ties as leaving it
        # out of every row, at the cost of one table of those items (cached while the list
        # and the model last), not of the denylist copied into every row.  (A live
        # session's short list stays in its row: no set difference on every request.)
        allowed = _allowed(state, deny) if cand is None else np.setdiff1d(cand, deny, assume_unique=True)
        if allowed.size >= n:
            cand, deny = allowed, _NONE
    if cand is not None:
        return _score_among(state, internal, offsets, n, exclude_seen, extra, deny, cand)
    if int(offsets[1]) > 0 if B == 1 else bool((offsets[1:] > offsets[:-1]).all()):
        # Every session warm (a live session, most batches): straight to the engine.
        ex_items, ex_off = _exclusions(internal, offsets, exclude_seen, extra, deny)
        ids, scores = state.engine.recommend(internal, offsets, n, ex_items, ex_off)
        return ids, scores, np.zeros(B, dtype=bool)
    lengths = offsets[1:] - offsets[:-1]
    cold = lengths == 0
    ids = np.zeros((B, n), dtype=np.int32)
    scores = np.full((B, n), -np.inf, dtype=np.float32)
    warm = np.flatnonzero(~cold)
    if warm.size:
        if warm.size == B:
            w_items, w_off = internal, offsets
        else:
            w_items, w_off = _rows(internal, offsets, warm)
        w_extra = (_rows(*extra, warm) if warm.size != B else extra) if extra is not None else None
        ex_items, ex_off = _exclusions(w_items, w_off, exclude_seen, w_extra, deny)
        ids[warm], scores[warm] = state.engine.recommend(
            np.ascontiguousarray(w_items, dtype=np.int32), w_off, n,
            np.ascontiguousarray(ex_items, dtype=np.int32), ex_off)
    for b in np.flatnonzero(cold):
        parts = [deny]
        if extra is not None:
            parts.append(extra[0][extra[1][b]:extra[1][b + 1]])
        excl = np.concatenate(parts) if len(parts) > 1 else parts[0]
        pi, ps = popular_cached(state, n, excl)
        ids[b, :pi.size], scores[b, :ps.size] = pi, ps
    return ids, scores, cold


DENY_IN_ROWS = 1 << 20  # denylist entries copied into a batch's rows, at most (then _allowed)


def _allowed(state: Fitted, deny: np.ndarray) -> np.ndarray:
    """The internal ids the denylist ``deny`` leaves, increasing; kept for the same array."""
    found = state.cache.get("allowed")
    if found is None or found[0] is not deny:
        keep = np.ones(state.n_items + 1, dtype=bool)
        keep[0] = False
        keep[deny] = False
        found = state.cache["allowed"] = (deny, np.flatnonzero(keep).astype(np.int32))
    return found[1]


def _exclusions(internal: np.ndarray, offsets: np.ndarray, exclude_seen: bool,
                extra: Optional[Tuple[np.ndarray, np.ndarray]],
                deny: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Each session's items to leave out, flat (items, offsets): its own items (when
    ``exclude_seen``), its row of ``extra`` and the denylist, in that order."""
    B = offsets.size - 1
    parts = [(internal, offsets) if exclude_seen else None, extra]
    if deny.size:
        parts.append((np.tile(deny, B), np.arange(B + 1, dtype=np.int64) * deny.size))
    parts = [p for p in parts if p is not None]
    return _merge_rows(parts) if parts else (_NONE, np.zeros(B + 1, dtype=np.int64))


def _score_among(state: Fitted, internal: np.ndarray, offsets: np.ndarray, n: int,
                 exclude_seen: bool, extra: Optional[Tuple[np.ndarray, np.ndarray]],
                 deny: np.ndarray, cand: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``score`` over the candidates alone.  The engine ranks the candidates' rows of the
    item table with the same kernel and ties rule as the whole catalogue, so each row is
    the whole catalogue's top-n less every item outside ``cand``; exclusions outside it
    are dropped, the others become positions in it.  A session with no known item gets
    the most popular candidates."""
    B = offsets.size - 1
    ex_items, ex_off = _exclusions(internal, offsets, exclude_seen, extra, deny)
    pos = np.searchsorted(cand, ex_items)
    inside = (pos < cand.size) & (cand[np.minimum(pos, cand.size - 1)] == ex_items)
    kept = np.concatenate(([0], np.cumsum(inside)))
    sub_ex = (pos[inside] + 1).astype(np.int32)
    sub_off = kept[ex_off].astype(np.int64)
    lengths = np.diff(offsets)
    cold = lengths == 0
    ids = np.zeros((B, n), dtype=np.int32)
    scores = np.full((B, n), -np.inf, dtype=np.float32)
    warm = np.flatnonzero(~cold)
    if warm.size:
        w_items, w_off = (internal, offsets) if warm.size == B else _rows(internal, offsets, warm)
        x_items, x_off = (sub_ex, sub_off) if warm.size == B else _rows(sub_ex, sub_off, warm)
        got, scores[warm] = state.engine.recommend(
            np.ascontiguousarray(w_items, dtype=np.int32), w_off, n,
            np.ascontiguousarray(x_items, dtype=np.int32), x_off, cand)
        ids[warm] = np.where(got > 0, cand[np.maximum(got, 1) - 1], 0)
    if cold.any():
        order, share = _popular_among(state, cand)
        for b in np.flatnonzero(cold):
            excl = cand[sub_ex[sub_off[b]:sub_off[b + 1]] - 1]
            left = ~np.isin(order, excl) if excl.size else slice(None)
            head, sh = order[left][:n], share[left][:n]
            ids[b, :head.size], scores[b, :head.size] = head, sh
    return ids, scores, cold


def _popular_among(state: Fitted, cand: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The candidates, most popular first, with their shares: sorted once per candidate
    array (``Fitted.candidates`` keeps one per list object), not per call."""
    found = state.cache.get("popular_among")
    if found is None or found[0] is not cand:
        order, share = state.popular(state.n_items, _NONE)  # every item, most popular first
        among = np.isin(order, cand)
        found = state.cache["popular_among"] = (cand, order[among], share[among])
    return found[1], found[2]


def popular_cached(state: Fitted, n: int, excl: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``state.popular`` with the common no-exclusion answer computed once per n."""
    if excl.size:
        return state.popular(n, excl)
    key = ("popular_n", n)
    found = state.cache.get(key)
    if found is None:
        found = state.cache[key] = state.popular(n, _NONE)
    return found


def to_original(state: Fitted, ids: np.ndarray) -> np.ndarray:
    """Internal ids (0: an empty slot) to original ids (the filler there)."""
    out = state.item_ids[np.maximum(ids, 1) - 1]
    empty = ids == 0
    if empty.any():
        out[empty] = filler(state.item_ids)
    return out


def recommend_cupy(state: Fitted, sessions: Any, n: int, exclude_seen: bool) -> Recommendations:
    """recommend_batch for a 2-D CuPy array of known ids on the model's GPU: mapped and
    scored there, CuPy ids and scores back (no session can be cold: every id is known).
    Sessions holding new products are scored by the host path, which reads them as
    ``read_items`` says."""
    import cupy as cp

    engine = state.engine
    if engine.device_index < 0:
        raise ValueError(
            f"sessions is a CuPy array but this model is on {engine.device!r}: move it "
            "with .to('cuda'), or pass a NumPy array or lists"
        )
    if sessions.device.id != engine.device_index:
        raise ValueError(
            f"sessions is on GPU {sessions.device.id} but this model is on GPU "
            f"{engine.device_index}: copy it there first (cupy.asarray inside "
            f"`with cupy.cuda.Device({engine.device_index}):`)"
        )
    if sessions.ndim != 2 or sessions.dtype.kind not in "iu":
        raise ValueError(
            "sessions as a CuPy array must be 2-D integer item ids (sessions x items), got "
            f"shape {sessions.shape} of {sessions.dtype}"
        )
    if state.item_ids.dtype.kind not in "iu":
        raise ValueError("this model's item ids are strings: CuPy sessions cannot name them")
    B, L = sessions.shape
    if L == 0 or B == 0:
        raise ValueError(f"sessions must have at least one item per session, got shape {sessions.shape}")
    if sessions.dtype.kind == "u" and sessions.dtype.itemsize == 8:
        top = int(sessions.max())  # one scalar crosses to the host
        if top >= 2**63:
            raise ValueError(f"sessions holds {top}: integer item ids must fit in 64 bits (int64)")
    ids_gpu, sorted_gpu, order_gpu = _cupy_item_ids(state, cp)
    x = sessions.astype(cp.int64, copy=False)
    pos = cp.minimum(cp.searchsorted(sorted_gpu, x), sorted_gpu.size - 1)
    found = sorted_gpu[pos] == x
    if not bool(found.all()):  # one scalar crosses to the host
        bad = int(x.ravel()[int(cp.argmin(found.ravel()))])
        raise ValueError(
            f"sessions: item id {bad} is not in the model's catalogue; CuPy sessions must "
            "hold known ids only (NumPy arrays and lists skip unknown ones)"
        )
    internal = ((pos if order_gpu is None else order_gpu[pos]) + 1).astype(cp.int32)
    new = unread(state)
    if new is not None and bool(cp.asarray(new)[internal].any()):  # one scalar to the host
        # New products in the sessions: the model reads them otherwise (read_items), and
        # the rows may come out ragged; the host path scores them, for the same answers.
        got = recommend(state, list(cp.asnumpy(x)), n, exclude_seen)
        return Recommendations(cp.asarray(got.ids), cp.asarray(got.scores), cp.asarray(got.fallback),
                               cp.zeros(B, dtype=cp.int64))
    fwd = cp.ascontiguousarray(internal[:, -state.config["max_seq"]:])
    excl = internal if exclude_seen else None
    out_ids = cp.empty((B, n), dtype=cp.int32)
    out_scores = cp.empty((B, n), dtype=cp.float32)
    # The engine works on its own stream: what CuPy's stream wrote must be done first.
    cp.cuda.get_current_stream().synchronize()
    engine.recommend_resident(fwd, excl, n, out_ids, out_scores)  # returns once its stream is done
    ids = ids_gpu[cp.maximum(out_ids, 1) - 1]
    ids[out_ids == 0] = filler(state.item_ids)
    return Recommendations(ids, out_scores, cp.zeros(B, dtype=bool), cp.zeros(B, dtype=cp.int64))


def _cupy_item_ids(state: Fitted, cp: Any) -> Any:
    """(catalogue, sorted ids, their internal indices or None) on the GPU."""
    found = state.cache.get("cupy_item_ids")
    if found is None:
        sorted_ids, order = state.lookup()
        ids = cp.asarray(state.item_ids)
        found = (ids, ids if order is None else cp.asarray(sorted_ids),
                 None if order is None else cp.asarray(order))
        state.cache["cupy_item_ids"] = found
    return found


# ----------------------------------------------------------------------------- the rest
def session_states(state: Fitted, sessions: Any) -> np.ndarray:
    """(B, factors): each session's final hidden state (its items read as ``read_items`` says);
    NaN rows for no known item."""
    internal, offsets = read_items(state, *drop_unknown(*encode_sessions(state, sessions, "sessions")))
    lengths = np.diff(offsets)
    out = np.full((lengths.size, state.config["factors"]), np.nan, dtype=np.float32)
    warm = np.flatnonzero(lengths > 0)
    if warm.size:
        w_items, w_off = _rows(internal, offsets, warm) if warm.size != lengths.size else (internal, offsets)
        out[warm] = state.engine.session_states(w_items, w_off)
    return out


def _cosine_rows(state: Fitted) -> np.ndarray:
    U = state.cache.get("cosine_rows")
    if U is None:
        E = state.item_embeddings()
        U = E / np.clip(np.linalg.norm(E, axis=1, keepdims=True), 1e-8, None)
        U.setflags(write=False)
        state.cache["cosine_rows"] = U
    return U


def similar(state: Fitted, item: Any, n: Any, denylist: Any = None) -> Recommendations:
    """The n items closest to ``item`` by cosine (itself and the denylist left out)."""
    n = positive_int(n, "n")
    internal = encode_flat(state, [item], "item")
    if internal[0] == 0:
        raise ValueError(f"item {item!r} is not in the model's catalogue")
    U = _cosine_rows(state)
    sims = U @ U[internal[0] - 1]
    sims[internal[0] - 1] = -np.inf
    deny = state.denylist(denylist)
    if deny.size:
        sims[deny - 1] = -np.inf
    k = min(n, sims.size - 1 - int(deny[deny != internal[0]].size))
    top = np.argpartition(-sims, k - 1)[:k] if k > 0 else np.zeros(0, dtype=np.int64)
    top = top[np.lexsort((top, -sims[top]))]
    return Recommendations(state.item_ids[top], sims[top].astype(np.float32), False, 0,
                           state.names_of(top + 1))


def session_quality(state: Fitted, session: Any) -> float:
    """The mean pairwise cosine of the session's known items, clipped to [0, 1]."""
    given = encode_flat(state, session, "session")
    known = given[given > 0]
    m = known.size
    if m < 2:
        return 0.0
    U = _cosine_rows(state)[known - 1].astype(np.float64)
    sim = U @ U.T
    mean = (sim.sum() - np.trace(sim)) / (m * (m - 1))
    return float(np.clip(mean, 0.0, 1.0))
