"""Ranking metrics for next-item prediction, and the evaluation protocols behind
``SASRec.evaluate``: leave-one-out (one held-out item per sequence), sampled, several
targets per sequence (``targets=``, e.g. from ``split_by_time``), the most-popular and
content baselines, and the cold-start split.

``rank`` is the 0-based position of the held-out item in the model's ranking of the
whole catalogue (context items excluded), or -1 / >= k when it is not in the top k.

With several targets per sequence (T, the distinct target items; a repeated item counts
once) and the top-k list L, per sequence, averaged over sequences:

- ``HR@k``: 1 when some target is in L;
- ``Recall@k``: |T ∩ L| / |T|, the share of the targets in L;
- ``NDCG@k``: sum over hits of 1 / log2(position + 1), over the same sum for the ideal
  list (the first min(|T|, k) positions all hits);
- ``MRR@k``: 1 / the position (1-based) of the first hit, 0 without one;
- ``MAP@k``: average precision, sum over hits of precision@position, over min(|T|, k).

With one target Recall@k equals HR@k and MAP@k equals MRR@k.  ``coverage@k``: the share
of the catalogue in some top-k list; ``pop_percentile@k``: the mean, over every filled
top-k slot, of the recommended item's popularity percentile (100 times the share of the
catalogue whose training count is at most the item's: 100 is the most popular item).
A target the model does not know, or one already in its context (seen items are not
recommended), is a miss; ``unknown_targets`` counts the first kind.  k may exceed the
catalogue: every item is then in the top k.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from fastsasrec import _eval_ranks, _fitted
from fastsasrec._params import positive_int, seed_or_none
from fastsasrec._splits import ColdStart, TimeSplit, cold_start_split, split_by_time  # noqa: F401
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


def cutoffs(k: Any) -> List[int]:
    """``k`` (an int, or a non-empty list of them) as a list of distinct cut-offs."""
    if isinstance(k, (list, tuple, range, np.ndarray)):
        ks = [positive_int(x, f"k[{i}]") for i, x in enumerate(np.asarray(k, dtype=object).tolist()
                                                               if isinstance(k, np.ndarray) else k)]
        if not ks:
            raise ValueError(f"k must be a positive integer or a non-empty list of them, got {k!r}")
        return list(dict.fromkeys(ks))
    return [positive_int(k, "k")]


def ranking_metrics(hits: np.ndarray, n_targets: np.ndarray, ks: Sequence[int],
                    recall: bool = False) -> Dict[str, float]:
    """HR, (Recall), NDCG, MRR and MAP at each k of ``ks`` (see the module's definitions)
    from ``hits``: (B, K) booleans, position j of row b's top list holds one of its
    ``n_targets[b]`` (>= 1) distinct targets.  Positions past K are misses."""
    hits = np.asarray(hits, dtype=bool)
    n_t = np.asarray(n_targets, dtype=np.int64)
    if hits.ndim != 2 or n_t.shape != (hits.shape[0],) or (n_t < 1).any():
        raise ValueError(f"hits must be (B, K) and n_targets B values >= 1, got {hits.shape} and {n_t.shape}")
    out: Dict[str, float] = {}
    B = hits.shape[0]
    mean = (lambda v: float(np.mean(v))) if B else (lambda v: 0.0)
    for k in ks:
        h = hits[:, :k]
        kk = h.shape[1]
        disc = 1.0 / np.log2(np.arange(min(k, max(kk, int(n_t.max(initial=1))))) + 2.0)
        ideal = np.cumsum(disc)[np.minimum(n_t, k) - 1]
        first = np.where(h.any(axis=1), h.argmax(axis=1), -1)
        precision = np.cumsum(h, axis=1) / np.arange(1, kk + 1)
        out[f"HR@{k}"] = mean(h.any(axis=1))
        if recall:
            out[f"Recall@{k}"] = mean(h.sum(axis=1) / n_t)
        out[f"NDCG@{k}"] = mean((h @ disc[:kk]) / ideal)
        out[f"MRR@{k}"] = mean(np.where(first >= 0, 1.0 / (np.maximum(first, 0) + 1.0), 0.0))
        out[f"MAP@{k}"] = mean((precision * h).sum(axis=1) / np.minimum(n_t, k))
    return out


def popularity_percentiles(popularity: np.ndarray) -> np.ndarray:
    """100 times the share of the catalogue whose count is at most each item's."""
    pop = np.asarray(popularity)
    return 100.0 * np.searchsorted(np.sort(pop), pop, side="right") / max(pop.size, 1)


def _list_metrics(top: np.ndarray, ks: Sequence[int], popularity: np.ndarray) -> Dict[str, float]:
    """coverage@k and pop_percentile@k of top lists of internal ids (0: an empty slot)."""
    pct = np.concatenate([[0.0], popularity_percentiles(popularity)])
    out = {}
    for k in ks:
        t = top[:, :k]
        filled = t[t > 0]
        out[f"coverage@{k}"] = float(np.unique(filled).size / popularity.size)
        out[f"pop_percentile@{k}"] = float(pct[filled].mean()) if filled.size else 0.0
    return out


def _hits(state: Any, top: np.ndarray, targets: Sequences) -> Tuple[np.ndarray, np.ndarray, int]:
    """(hits, distinct targets per row, distinct targets unknown to the model) of top
    lists of internal ids against each row's targets (original ids)."""
    rows = np.repeat(np.arange(len(targets)), targets.lengths)
    t = targets.items
    order = np.lexsort((t, rows))
    t, rows = t[order], rows[order]
    first = np.ones(t.size, dtype=bool)
    first[1:] = (t[1:] != t[:-1]) | (rows[1:] != rows[:-1])
    t, rows = t[first], rows[first]
    n_t = np.bincount(rows, minlength=len(targets))
    t_int = state.encode(t).astype(np.int64)
    width = state.n_items + 1
    keys = (rows * width + t_int)[t_int > 0]
    hits = np.isin(np.arange(top.shape[0])[:, None] * width + top, keys) & (top > 0)
    return hits, n_t, int((t_int == 0).sum())


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


# ----------------------------------------------------------------------------- protocols
def hold_out_last(sequences: Sequences) -> Tuple[Sequences, np.ndarray, np.ndarray]:
    """(contexts, targets, used): each sequence of 2 or more items less its last item, that
    last item, and the indices of those sequences; computed on the flat arrays."""
    used = np.flatnonzero(sequences.lengths >= 2)
    kept = sequences.take(used)
    return kept.head(1), kept.items[kept.offsets[1:] - 1], used


def _split(sequences: Any, targets: Any) -> Tuple[Any, Any]:
    """``split_by_time``'s test side given whole: its contexts and targets."""
    if isinstance(sequences, TimeSplit):
        if targets is not None:
            raise ValueError("sequences is a TimeSplit, which holds its targets: give targets=None")
        return sequences.contexts, sequences.targets
    if isinstance(sequences, ColdStart):
        raise ValueError("sequences is a ColdStart: evaluate its cases with sequences=split.contexts, "
                         "targets=[[t] for t in split.targets], or rank among the held-out items "
                         "(README, new products)")
    return sequences, targets


def _cases(state: Any, sequences: Any, targets: Any) -> Tuple[Sequences, Sequences, int]:
    """(contexts, targets, n): leave-one-out's, or the given contexts and targets less
    the rows with no target, as flat Sequences."""
    sequences = flatten_sequences(sequences, "sequences")
    check_ids_compatible(sequences.items, state.item_ids, "sequences")
    if targets is None:
        contexts, last, used = hold_out_last(sequences)
        if used.size == 0:
            raise ValueError("no sequence has 2 or more items: nothing to evaluate")
        return contexts, Sequences._of(last, np.arange(last.size + 1, dtype=np.int64)), int(used.size)
    targets = flatten_sequences(targets, "targets")
    check_ids_compatible(targets.items, state.item_ids, "targets")
    if len(targets) != len(sequences):
        raise ValueError(f"targets must hold one list per sequence: {len(targets)} lists "
                         f"for {len(sequences)} sequences")
    used = np.flatnonzero(targets.lengths >= 1)
    if used.size == 0:
        raise ValueError("every list of targets is empty: nothing to evaluate")
    return sequences.take(used), targets.take(used), int(used.size)


def evaluate(
    model: Any,
    sequences: Any,
    k: Any = 10,
    protocol: str = "loo",
    n_negatives: int = 100,
    random_state: int = 0,
    targets: Any = None,
) -> Dict[str, Any]:
    """``model.evaluate`` (see SASRec.evaluate for the protocols and the result).
    ``model`` must not change during the call: SASRec.evaluate passes a view holding one
    fitted model."""
    state = model._fitted()
    ks = cutoffs(k)
    sequences, targets = _split(sequences, targets)
    if protocol not in ("loo", "sampled"):
        raise ValueError(f"protocol must be 'loo' or 'sampled', got {protocol!r}")
    if protocol == "sampled" and targets is not None:
        raise ValueError("targets= goes with protocol='loo' (full ranking), got protocol='sampled'")
    contexts, tgt, n = _cases(state, sequences, targets)
    if protocol == "loo":
        ids, _ = _fitted.recommend(state, contexts, max(ks), exclude_seen=True)  # min(k, V) columns
        top = state.encode(ids.reshape(-1)).astype(np.int64).reshape(ids.shape)  # empty slot: 0
        hits, n_t, unknown = _hits(state, top, tgt)
        out: Dict[str, Any] = ranking_metrics(hits, n_t, ks, recall=targets is not None)
        out.update(_list_metrics(top, ks, state.popularity))
        label = ("several targets per sequence, full catalogue ranking" if targets is not None
                 else "leave-one-out, full catalogue ranking")
    else:
        n_negatives = positive_int(n_negatives, "n_negatives")
        random_state = seed_or_none(random_state, "random_state")
        ranks = _eval_ranks.rank_among(state, contexts, tgt.items, n_negatives, random_state)
        hits = np.arange(n_negatives + 1)[None, :] == ranks[:, None]
        out = ranking_metrics(hits, np.ones(ranks.size, dtype=np.int64), ks)
        unknown = int((state.encode(tgt.items) == 0).sum())
        label = f"sampled: {n_negatives} negatives (SASRec paper protocol)"
    out = _ordered(out, ks)
    out["n"] = n
    out["unknown_targets"] = unknown
    out["protocol"] = label
    return out


def _ordered(out: Dict[str, Any], ks: Sequence[int]) -> Dict[str, Any]:
    """The metrics grouped by k, in the order of ``ks``."""
    names = ("HR", "Recall", "NDCG", "MRR", "MAP", "coverage", "pop_percentile")
    return {f"{m}@{k}": out[f"{m}@{k}"] for k in ks for m in names if f"{m}@{k}" in out}


def popular_baseline(model: Any, sequences: Any, k: Any = 10, targets: Any = None) -> Dict[str, Any]:
    """What the most popular items would score under ``evaluate``'s full-ranking protocol
    (leave-one-out, or ``targets=``): each context answered by the fitted model's most
    popular training items (by its ``popularity``, ties by catalogue order, the context's
    items excluded), as ``recommend`` answers a session with no known item.  The same
    keys as ``evaluate``."""
    state = model._fitted()
    ks = cutoffs(k)
    sequences, targets = _split(sequences, targets)
    contexts, tgt, n = _cases(state, sequences, targets)
    top = _eval_ranks.popular_topk(state, contexts, max(ks))
    hits, n_t, unknown = _hits(state, top, tgt)
    out: Dict[str, Any] = ranking_metrics(hits, n_t, ks, recall=targets is not None)
    out.update(_list_metrics(top, ks, state.popularity))
    out = _ordered(out, ks)
    out.update(n=n, unknown_targets=unknown, protocol="most popular items, full catalogue ranking")
    return out


# ----------------------------------------------------------------------------- cold start
def uniform_hit_rate(k: int, n_candidates: int) -> float:
    """HR@k of a uniform random pick of k among ``n_candidates`` items, one of which is
    the target: min(k, n_candidates) / n_candidates."""
    k, n = positive_int(k, "k"), positive_int(n_candidates, "n_candidates")
    return min(k, n) / n


def content_baseline(contexts: Any, candidates: Any, item_values: Mapping, k: int = 10) -> np.ndarray:
    """For each context, the k ``candidates`` that share the most feature values with the
    context's items (the union of their values), the context's own items left out.  Ties
    go to the candidate sharing more values with the most recent context item, then with
    the one before it, and so on, then to the lower id.  ``item_values``: a mapping item
    id -> set of its feature values (an id missing from it has none).  Returns an object
    array (len(contexts), min(k, len(candidates))), None where a context leaves fewer."""
    contexts = flatten_sequences(contexts, "contexts")
    k = positive_int(k, "k")
    if not isinstance(item_values, Mapping):
        raise ValueError(f"item_values must be a mapping of item id -> set of feature values, "
                         f"got {type(item_values).__name__}")
    cand = np.unique(flatten_sequences([list(candidates)], "candidates").items)
    if cand.size == 0:
        raise ValueError("candidates is empty: nothing to recommend")
    cand_list = cand.tolist()
    vocab: Dict[Any, int] = {}
    for c in cand_list:
        for v in item_values.get(c, ()):
            vocab.setdefault(v, len(vocab))
    M = np.zeros((cand.size, max(len(vocab), 1)), dtype=np.int64)
    for i, c in enumerate(cand_list):
        M[i, [vocab[v] for v in item_values.get(c, ())]] = 1

    def row(item: Any) -> np.ndarray:
        r = np.zeros(M.shape[1], dtype=np.int64)
        r[[vocab[v] for v in item_values.get(item, ()) if v in vocab]] = 1
        return r

    kk = min(k, cand.size)
    out = np.empty((len(contexts), kk), dtype=object)
    position = np.arange(cand.size)
    for b, ctx in enumerate(contexts):
        ctx = ctx.tolist()
        S = np.array([row(x) for x in reversed(ctx)], dtype=np.int64).reshape(len(ctx), M.shape[1])
        shared = M @ S.T  # (candidates, context items newest first)
        total = M @ (S.sum(axis=0) > 0)
        keys = [position] + [-shared[:, j] for j in reversed(range(len(ctx)))] + [-total]
        seen = set(ctx)
        best = [cand_list[i] for i in np.lexsort(keys) if cand_list[i] not in seen][:kk]
        out[b, : len(best)] = best
    return out
