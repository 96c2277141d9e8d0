"""The evaluation protocols' own rankings (``metrics.evaluate``): a target's rank among
sampled negatives (the sampled protocol) and the most-popular baseline's lists."""
from __future__ import annotations

from typing import Any

import numpy as np

from fastsasrec._fitted import Fitted, session_states
from fastsasrec.data import Sequences


def rank_among(state: Fitted, contexts: Sequences, targets: np.ndarray, n_neg: int,
               seed: Any) -> np.ndarray:
    """The sampled protocol's ranks: each target's rank among n_neg random items its
    context does not contain, by the model's scores, ties to the lower id (-1, a miss, when
    the target or the whole context is unknown to the model, or the target is in its
    context)."""
    H = session_states(state, contexts).astype(np.float64)
    E = state.item_embeddings().astype(np.float64)
    V = state.n_items
    t_int = state.encode(np.asarray(targets))
    c_int, bounds = state.encode(contexts.items), contexts.offsets.tolist()
    rng = np.random.default_rng(seed)
    ranks = np.full(len(contexts), -1, dtype=np.int64)
    for b in range(len(contexts)):
        if t_int[b] == 0 or np.isnan(H[b, 0]):
            continue  # unknown target or context: a miss
        ctx = set(c_int[bounds[b]:bounds[b + 1]].tolist())
        seen = ctx | {int(t_int[b])}
        if V - len(seen) < n_neg:
            raise ValueError(f"n_negatives ({n_neg}) exceeds the items a sequence does not contain")
        neg = []
        while len(neg) < n_neg:
            for x in rng.integers(1, V + 1, size=2 * n_neg).tolist():
                if x not in seen:
                    seen.add(x)
                    neg.append(x)
                    if len(neg) == n_neg:
                        break
        negs = np.asarray(neg)
        s_t = H[b] @ E[t_int[b] - 1]
        s_n = E[negs - 1] @ H[b]
        # Ties go to the lower id, as the full-catalogue ranking breaks them (items with the
        # same vector: new products of the same features); a seen target is a miss, as there.
        above = (s_n > s_t) | ((s_n == s_t) & (negs < t_int[b]))
        ranks[b] = -1 if t_int[b] in ctx else int(above.sum())
    return ranks


def popular_topk(state: Fitted, contexts: Sequences, k: int) -> np.ndarray:
    """(B, min(k, V)) internal ids: the most popular items less each context's, as a
    session with no known item gets them (0: an empty slot): the most-popular baseline."""
    ctx = state.encode(contexts.items)
    bounds = contexts.offsets
    kk = min(k, state.n_items)
    top = np.zeros((len(contexts), kk), dtype=np.int64)
    for b in range(len(contexts)):
        ids, _ = state.popular(kk, ctx[bounds[b]:bounds[b + 1]])
        top[b, : ids.size] = ids
    return top
