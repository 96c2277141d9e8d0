"""recommend_batch for sessions already on the GPU: a 2-D CuPy array of known ids, mapped
and scored on the model's GPU, CuPy ids and scores back (``SASRec.recommend_batch`` sends
CuPy arrays here)."""
from __future__ import annotations

from typing import Any

from fastsasrec._fitted import Fitted, Recommendations, filler, recommend
from fastsasrec._new_products import unread


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
