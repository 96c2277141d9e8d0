"""The interface older notebooks use: ``_item_map``, ``_rev_item_map``, ``_item_emb`` and
``recommend_items``, in internal ids.

Internal ids are 1..n_items: internal id i is ``item_ids[i - 1]``, and row i of
``_item_emb`` is its embedding (row 0 is the padding row).  A thin layer over the public
API, mixed into SASRec.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from fastsasrec import _fitted


class NotebookCompat:
    """``_item_map``, ``_rev_item_map``, ``_item_emb`` and ``recommend_items`` over a fitted
    model's ``item_ids``, ``item_embeddings`` and ``recommend``."""

    def _maps(self) -> Tuple[Dict[Any, int], Dict[int, Any]]:
        state = self._fitted()
        maps = state.cache.get("maps")  # built once per fitted model
        if maps is None:
            ids = state.item_ids.tolist()
            maps = ({x: i + 1 for i, x in enumerate(ids)}, {i + 1: x for i, x in enumerate(ids)})
            state.cache["maps"] = maps
        return maps

    @property
    def _item_map(self) -> Dict[Any, int]:
        """original id -> internal id."""
        return self._maps()[0]

    @property
    def _rev_item_map(self) -> Dict[int, Any]:
        """internal id -> original id."""
        return self._maps()[1]

    @property
    def _item_emb(self) -> np.ndarray:
        """(n_items + 1, factors): row i is internal id i's embedding, row 0 padding."""
        E = self.item_embeddings
        return np.vstack([np.zeros((1, E.shape[1]), dtype=E.dtype), E])

    def recommend_items(
        self, user_sequence: Sequence[int], n: int = 10, exclude: Optional[Sequence[int]] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """``recommend`` in internal ids: ``user_sequence`` and ``exclude`` are internal
        ids (see ``_item_map``); returns (internal ids, scores).  Only ``exclude`` is
        excluded."""
        state = self._fitted()  # one model throughout, whatever a refit publishes
        item_ids = state.item_ids
        V = item_ids.size
        seq = np.asarray(list(user_sequence), dtype=np.int64)
        if seq.size and (seq.min() < 1 or seq.max() > V):
            raise ValueError(f"user_sequence holds internal ids outside 1..{V}")
        ex = np.asarray(list(exclude) if exclude is not None else [], dtype=np.int64)
        if ex.size and (ex.min() < 1 or ex.max() > V):
            raise ValueError(f"exclude holds internal ids outside 1..{V}")
        ids, scores = _fitted.recommend_one(state, item_ids[seq - 1], n, False, item_ids[ex - 1])
        return state.encode(np.asarray(ids)).astype(np.int64), scores
