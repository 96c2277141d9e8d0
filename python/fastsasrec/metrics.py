"""Ranking metrics for next-item prediction (one held-out item per session), and the
evaluation protocols behind ``SASRec.evaluate``.

``rank`` is the 0-based position of the held-out item in the model's ranking of the
whole catalogue (context items excluded), or -1 / >= k when it is not in the top k.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

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
    ctx = state.encode(contexts.items)
    bounds = contexts.offsets
    kk = min(k, int(state.popularity.size))
    top = np.zeros((used.size, kk), dtype=np.int64)
    for b in range(used.size):
        ids, _ = state.popular(kk, ctx[bounds[b]:bounds[b + 1]])
        top[b, : ids.size] = ids
    t_int = state.encode(np.asarray(targets)).astype(np.int64)
    hit = (top == t_int[:, None]) & (t_int[:, None] > 0)
    ranks = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    out = summarize(ranks, k)
    out["n"] = int(used.size)
    return out


# ----------------------------------------------------------------------------- protocols
def hold_out_last(sequences: Sequences) -> Tuple[Sequences, np.ndarray, np.ndarray]:
    """(contexts, targets, used): each sequence of 2 or more items less its last item, that
    last item, and the indices of those sequences; computed on the flat arrays."""
    lengths = sequences.lengths
    used = np.flatnonzero(lengths >= 2)
    ends = sequences.offsets[used + 1] - 1  # positions of the held-out items
    keep = np.repeat(lengths >= 2, lengths)
    keep[ends] = False
    offsets = np.zeros(used.size + 1, dtype=np.int64)
    np.cumsum(lengths[used] - 1, out=offsets[1:])
    return Sequences(sequences.items[keep], offsets), sequences.items[ends], used


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
    model._fitted()
    k = positive_int(k, "k")
    if protocol not in ("loo", "sampled"):
        raise ValueError(f"protocol must be 'loo' or 'sampled', got {protocol!r}")
    sequences = flatten_sequences(sequences, "sequences")
    item_ids = model.item_ids
    check_ids_compatible(sequences.items, item_ids, "sequences")
    contexts, targets, used = hold_out_last(sequences)
    if used.size == 0:
        raise ValueError("no sequence has 2 or more items: nothing to evaluate")
    if protocol == "loo":
        ids, _ = model.recommend_batch(contexts, n=k, exclude_seen=True)  # min(k, V) columns
        ranks = ranks_from_topk(ids, targets)
        # A target unknown to the model is a miss (it may equal an empty slot's filler id).
        ranks[model._fitted().encode(targets) == 0] = -1
        out = summarize(ranks, k)
        shown = ids[ids != ("" if ids.dtype.kind == "U" else -1)]  # fit rejects these ids
        out[f"coverage@{k}"] = float(np.unique(shown).size / item_ids.size)
        label = "leave-one-out, full catalogue ranking"
    else:
        n_negatives = positive_int(n_negatives, "n_negatives")
        random_state = seed_or_none(random_state, "random_state")
        out = summarize(_sampled_ranks(model, contexts, targets, n_negatives, random_state), k)
        label = f"sampled: {n_negatives} negatives (SASRec paper protocol)"
    out["n"] = int(used.size)
    out["protocol"] = label
    return out


def _sampled_ranks(model: Any, contexts: Sequences, targets: np.ndarray, n_neg: int,
                   seed: Any) -> np.ndarray:
    """The rank of each target among n_neg random items its sequence does not contain
    (-1 when the target or the whole context is unknown to the model)."""
    item_ids = model.item_ids
    V = item_ids.size
    H = model.session_embeddings(contexts).astype(np.float64)
    E = model.item_embeddings.astype(np.float64)
    state = model._fitted()
    t_int = state.encode(np.asarray(targets))
    c_int, bounds = state.encode(contexts.items), contexts.offsets.tolist()
    rng = np.random.default_rng(seed)
    ranks = np.full(len(contexts), -1, dtype=np.int64)
    for b in range(len(contexts)):
        if t_int[b] == 0 or np.isnan(H[b, 0]):
            continue  # unknown target or context: a miss
        seen = set(c_int[bounds[b]:bounds[b + 1]].tolist()) | {int(t_int[b])}
        if V - len(seen) < n_neg:
            raise ValueError(f"n_negatives ({n_neg}) exceeds the items a sequence does not contain")
        neg: List[int] = []
        while len(neg) < n_neg:
            for x in rng.integers(1, V + 1, size=2 * n_neg).tolist():
                if x not in seen:
                    seen.add(x)
                    neg.append(x)
                    if len(neg) == n_neg:
                        break
        s_t = H[b] @ E[t_int[b] - 1]
        s_n = E[np.asarray(neg) - 1] @ H[b]
        ranks[b] = int((s_n > s_t).sum())
    return ranks
