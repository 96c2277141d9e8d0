"""Ranking metrics for next-item prediction (one held-out item per session), and the
evaluation protocols behind ``SASRec.evaluate``.

``rank`` is the 0-based position of the held-out item in the model's ranking of the
whole catalogue (context items excluded), or -1 / >= k when it is not in the top k.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np

from fastsasrec import _fitted
from fastsasrec._params import positive_int, seed_or_none
from fastsasrec.data import Sequences, check_ids_compatible, flatten_sequences


def ranks_from_topk(topk_ids: np.ndarray, targets: Sequence[Any]) -> np.ndarray:
    """0-based rank of each target in its row of top-k ids, -1 when absent."""
    topk_ids = np.asarray(topk_ids)
    targets = np.asarray(targets if isinstance(targets, np.ndarray) else list(targets), dtype=topk_ids.dtype)
    if topk_ids.ndim != 2 or topk_ids.shape[0] != targets.shape[0]:
        raise ValueError(
            f"topk_ids must have shape (len(targets), k), got {topk_ids.shape} for {targets.shape[0]} targets"
        )
    hit = topk_ids == targets[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def hit_rate(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks)
    return float(np.mean((ranks >= 0) & (ranks < k))) if ranks.size else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks)
    ok = (ranks >= 0) & (ranks < k)
    gains = np.where(ok, 1.0 / np.log2(np.where(ok, ranks, 0) + 2.0), 0.0)
    return float(gains.mean()) if ranks.size else 0.0


def mrr(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks)
    ok = (ranks >= 0) & (ranks < k)
    return float(np.where(ok, 1.0 / (np.where(ok, ranks, 0) + 1.0), 0.0).mean()) if ranks.size else 0.0


def summarize(ranks: np.ndarray, k: int) -> Dict[str, float]:
    return {f"HR@{k}": hit_rate(ranks, k), f"NDCG@{k}": ndcg(ranks, k), f"MRR@{k}": mrr(ranks, k)}


def most_popular_topk(contexts: Sequence[Sequence[Any]], train: Sequence[Sequence[Any]], k: int = 10) -> np.ndarray:
    """The most-popular-unseen baseline: for each context, the k most frequent training
    items it does not contain.  Returns an object array (len(contexts), min(k, number of
    training items)); None where a context leaves fewer items."""
    from collections import Counter

    counts = Counter(x for s in train for x in s)
    order = [item for item, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]  # ties: lower id
    k = min(positive_int(k, "k"), len(order))
    out = np.empty((len(contexts), k), dtype=object)
    for b, ctx in enumerate(contexts):
        seen = set(ctx)
        row = [x for x in order[: k + len(seen)] if x not in seen][:k]
        out[b, : len(row)] = row
    return out


def popular_baseline(model: Any, sequences: Any, k: int = 10) -> Dict[str, Any]:
    """What the most-popular items would score on ``sequences`` under ``evaluate``'s
    leave-one-out protocol: each sequence's last item ranked among the fitted model's
    most popular training items (by its ``popularity``, ties by catalogue order, the
    context's items excluded), as ``recommend`` answers a session with no known item."""
    state = model._fitted()
    k = positive_int(k, "k")
    sequences = flatten_sequences(sequences, "sequences")
    check_ids_compatible(sequences.items, state.item_ids, "sequences")
    contexts, targets, used = hold_out_last(sequences)
    out = summarize(_fitted.popular_ranks(state, contexts, targets, k), k)
    out["n"] = int(used.size)
    return out


# ----------------------------------------------------------------------------- protocols
def hold_out_last(sequences: Sequences) -> Tuple[Sequences, np.ndarray, np.ndarray]:
    """(contexts, targets, used): each sequence of 2 or more items less its last item, that
    last item, and the indices of those sequences; computed on the flat arrays."""
    used = np.flatnonzero(sequences.lengths >= 2)
    kept = sequences.take(used)
    return kept.head(1), kept.items[kept.offsets[1:] - 1], used


def evaluate(
    model: Any,
    sequences: Any,
    k: int = 10,
    protocol: str = "loo",
    n_negatives: int = 100,
    random_state: int = 0,
) -> Dict[str, Any]:
    """``model.evaluate``: each sequence's last item held out and ranked by a fitted model
    from the items before it (see SASRec.evaluate).  ``model`` must not change during the
    call: SASRec.evaluate passes a view holding one fitted model."""
    state = model._fitted()
    k = positive_int(k, "k")
    if protocol not in ("loo", "sampled"):
        raise ValueError(f"protocol must be 'loo' or 'sampled', got {protocol!r}")
    sequences = flatten_sequences(sequences, "sequences")
    item_ids = state.item_ids
    check_ids_compatible(sequences.items, item_ids, "sequences")
    contexts, targets, used = hold_out_last(sequences)
    if used.size == 0:
        raise ValueError("no sequence has 2 or more items: nothing to evaluate")
    if protocol == "loo":
        ids, _ = _fitted.recommend(state, contexts, k, exclude_seen=True)  # min(k, V) columns
        ranks = ranks_from_topk(ids, targets)
        # A target unknown to the model is a miss (it may equal an empty slot's filler id).
        ranks[state.encode(targets) == 0] = -1
        out = summarize(ranks, k)
        shown = ids[ids != ("" if ids.dtype.kind == "U" else -1)]  # fit rejects these ids
        out[f"coverage@{k}"] = float(np.unique(shown).size / item_ids.size)
        label = "leave-one-out, full catalogue ranking"
    else:
        n_negatives = positive_int(n_negatives, "n_negatives")
        random_state = seed_or_none(random_state, "random_state")
        out = summarize(_fitted.rank_among(state, contexts, targets, n_negatives, random_state), k)
        label = f"sampled: {n_negatives} negatives (SASRec paper protocol)"
    out["n"] = int(used.size)
    out["protocol"] = label
    return out
