"""Batch scoring on Ray Data: a callable class for ``Dataset.map_batches`` that loads the
model once per actor.

    import ray
    from fastsasrec.ray import Recommender
    sessions = ray.data.from_pandas(df)            # a user column and a list-of-items column
    recs = sessions.map_batches(Recommender, fn_constructor_kwargs={"model_path": "model.fsr"},
                                batch_format="pandas", concurrency=4, num_cpus=1)
    recs.write_parquet("recs/")

Each input row is one session: ``user_col`` and ``items_col`` (the items oldest first; the
model reads the last max_seq).  Each output row is (user_col, rank, item, score), best
first, rank from 1.  ``candidates`` (rank only these) and ``denylist`` (never these) act
on every row as in ``recommend_batch``.  An actor given a GPU (``num_gpus=1``) runs the
model there with ``device="auto"``.  Needs ray (the ``ray`` extra).
"""
from __future__ import annotations

from typing import Any, Optional


class Recommender:
    """Loads the model at ``model_path`` once (per Ray actor) and scores pandas batches of
    sessions; see the module's docstring.  ``num_threads``: CPU threads of this actor's
    model (match the actor's ``num_cpus``); ``device``: "cpu", "cuda:N", or "auto" (the
    actor's GPU when Ray gave it one, else the CPU)."""

    def __init__(self, model_path: str, n: int = 10, user_col: str = "user_id",
                 items_col: str = "items", exclude_seen: bool = True, num_threads: int = 1,
                 device: str = "auto", candidates: Any = None, denylist: Any = None) -> None:
        from fastsasrec import SASRec
        from fastsasrec.batch import pick
        from fastsasrec._params import flag, positive_int

        self.n = positive_int(n, "n")
        self.exclude_seen = flag(exclude_seen, "exclude_seen")
        self.user_col, self.items_col = user_col, items_col
        if device == "auto":
            device = "cuda" if _actor_has_gpu() else "cpu"
        self.model = SASRec.load(model_path, device=device, num_threads=num_threads)
        self.k = min(self.n, self.model.n_items)
        self.chosen = pick(self.model, candidates, denylist)

    def __call__(self, batch: Any) -> Any:
        from fastsasrec.batch import long_rows

        for col in (self.user_col, self.items_col):
            if col not in batch.columns:
                raise ValueError(f"the batch has no column {col!r} (user_col / items_col); its "
                                 f"columns are {list(batch.columns)}")
        cells = batch[self.items_col].tolist()
        bad = next((r for r, x in enumerate(cells) if x is None or isinstance(x, (float, str, bytes))), None)
        if bad is not None:
            raise ValueError(f"column {self.items_col!r} (items_col), row {bad} of the batch (user "
                             f"{batch[self.user_col].tolist()[bad]!r}): {cells[bad]!r} is not a list of "
                             "item ids (an empty session is [])")
        sessions = [list(x) for x in cells]
        got = self.model.recommend_batch(sessions, n=self.k, exclude_seen=self.exclude_seen, **self.chosen)
        return long_rows(batch[self.user_col].to_numpy(), got[0], got[1], self.user_col, got.names)


def _actor_has_gpu() -> bool:
    try:
        import ray

        # Outside a Ray job (a Recommender called directly), asking would start a cluster.
        return ray.is_initialized() and bool(ray.get_gpu_ids())
    except Exception:  # noqa: BLE001 - not inside Ray, or no GPU given
        return False


def sessions_frame(events: Any, user_col: str = "user_id", item_col: str = "item_id",
                   time_col: Optional[str] = "timestamp", items_col: str = "items") -> Any:
    """A pandas event table as one row per user (``user_col``, ``items_col``: their items in
    time order), the input ``Recommender`` takes (``ray.data.from_pandas`` of it)."""
    import pandas as pd

    from fastsasrec._event_table import transactions_to_sequences

    items, offsets, users = transactions_to_sequences(events, user_col, item_col, time_col)
    return pd.DataFrame({user_col: users,
                         items_col: [items[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]})
