"""Ranking metrics for next-item prediction (one held-out item per session).

``rank`` is the 0-based position of the held-out item in the model's ranking of the
whole catalogue (context items excluded), or -1 / >= k when it is not in the top k.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np


def ranks_from_topk(topk_ids: np.ndarray, targets: Sequence[Any]) -> np.ndarray:
    """0-based rank of each target in its row of top-k ids, -1 when absent."""
    topk_ids = np.asarray(topk_ids)
    targets = np.asarray(list(targets), dtype=topk_ids.dtype)
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


def evaluate_topk(model, contexts: Sequence[Sequence[Any]], targets: Sequence[Any], k: int = 10) -> Dict[str, float]:
    """HR@k, NDCG@k, MRR@k of a fitted model ranking the full catalogue for each context
    (the context's items excluded): the leave-one-out protocol."""
    ids, _ = model.recommend_batch(contexts, n=k, exclude_seen=True)
    return summarize(ranks_from_topk(ids, targets), k)


def most_popular_topk(contexts: Sequence[Sequence[Any]], train: Sequence[Sequence[Any]], k: int = 10) -> np.ndarray:
    """The most-popular-unseen baseline: for each context, the k most frequent training
    items it does not contain.  Returns an object array (len(contexts), k)."""
    from collections import Counter

    counts = Counter(x for s in train for x in s)
    order = [item for item, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]  # ties: lower id
    out = np.empty((len(contexts), k), dtype=object)
    for b, ctx in enumerate(contexts):
        seen = set(ctx)
        row = [x for x in order[: k + len(seen)] if x not in seen][:k]
        out[b, : len(row)] = row
    return out
