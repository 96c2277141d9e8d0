"""The evaluation a data scientist expects: several cut-offs in one call, MAP, Recall with
several targets, the popularity bias, the split by time, the most-popular baseline and
the cold-start protocol with its content baseline; every metric against a value worked
out by hand."""
import math

import numpy as np
import pandas as pd
import pytest

from fastsasrec import SASRec, Sequences
from fastsasrec.metrics import (
    content_baseline, cold_start_split, popular_baseline, popularity_percentiles, ranking_metrics,
    split_by_time, uniform_hit_rate,
)

L2, L3, L5 = 1 / math.log2(2), 1 / math.log2(3), 1 / math.log2(5)  # discounts of positions 1, 2, 4


# ----------------------------------------------------------------------------- the metrics
def test_ranking_metrics_by_hand():
    # row 0: 3 targets, hits at positions 2 and 4; row 1: 1 target, hit at position 1
    hits = np.array([[0, 1, 0, 1], [1, 0, 0, 0]], dtype=bool)
    m = ranking_metrics(hits, [3, 1], [4, 2], recall=True)
    assert m["HR@4"] == 1.0
    assert m["Recall@4"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["NDCG@4"] == pytest.approx(((L3 + L5) / (L2 + L3 + 0.5) + 1) / 2)
    assert m["MRR@4"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["MAP@4"] == pytest.approx(((1 / 2 + 2 / 4) / 3 + 1) / 2)
    # at k=2 row 0 has one hit, at position 2, and at most 2 of its 3 targets fit
    assert m["Recall@2"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["NDCG@2"] == pytest.approx((L3 / (L2 + L3) + 1) / 2)
    assert m["MAP@2"] == pytest.approx(((1 / 2) / 2 + 1) / 2)
    assert list(m)[:5] == ["HR@4", "Recall@4", "NDCG@4", "MRR@4", "MAP@4"]


def test_one_target_gives_todays_metrics():
    from fastsasrec.metrics import summarize

    ranks = np.array([0, 3, -1, 9, 1])
    hits = np.arange(10)[None, :] == ranks[:, None]
    m = ranking_metrics(hits, np.ones(5, dtype=np.int64), [5])
    old = summarize(ranks, 5)
    assert m["HR@5"] == old["HR@5"] and m["NDCG@5"] == old["NDCG@5"] and m["MRR@5"] == old["MRR@5"]
    assert m["MAP@5"] == m["MRR@5"] == pytest.approx((1 + 1 / 4 + 1 / 2) / 5)


def test_popularity_percentiles_by_hand():
    # counts 5, 2, 1, 1, 1: at most 5 -> all five items; at most 2 -> 4 of 5; at most 1 -> 3 of 5
    assert popularity_percentiles(np.array([5, 2, 1, 1, 1])).tolist() == [100.0, 80.0, 60.0, 60.0, 60.0]


def test_uniform_hit_rate():
    assert uniform_hit_rate(10, 168) == 10 / 168
    assert uniform_hit_rate(5, 3) == 1.0
    with pytest.raises(ValueError, match="n_candidates must be a positive integer, got 0"):
        uniform_hit_rate(10, 0)


# ----------------------------------------------------------------------------- through a model
# Training counts: item 1 five times, item 2 twice, items 3, 4, 5 once each.
POP_SEQS = [[1, 2], [1, 3], [1, 2], [1, 4], [5, 1]]


@pytest.fixture(scope="module")
def pop_model():
    return SASRec(factors=8, max_seq=4, iterations=1, num_threads=1, random_state=0, verbose=0).fit(POP_SEQS)


def test_popular_baseline_with_several_targets_by_hand(pop_model):
    assert pop_model.popularity_.tolist() == [5, 2, 1, 1, 1]
    # context [5]: the most popular items less 5 are 1, 2, 3, 4; targets 2, 4 and 9 (unknown)
    res = popular_baseline(pop_model, [[5]], k=[3, 4], targets=[[2, 4, 9, 2]])
    assert res["n"] == 1 and res["unknown_targets"] == 1
    assert res["HR@3"] == 1.0 and res["Recall@3"] == pytest.approx(1 / 3)  # 2 found, 4 and 9 not
    assert res["MRR@3"] == 0.5 and res["MAP@3"] == pytest.approx((1 / 2) / 3)
    assert res["NDCG@3"] == pytest.approx(L3 / (L2 + L3 + 0.5))
    assert res["Recall@4"] == pytest.approx(2 / 3) and res["MAP@4"] == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert res["coverage@3"] == pytest.approx(3 / 5)  # items 1, 2, 3 of 5
    assert res["pop_percentile@3"] == pytest.approx((100 + 80 + 60) / 3)
    # Recall and MAP differ from HR and MRR once there are several targets
    assert res["Recall@3"] < res["HR@3"] and res["MAP@3"] < res["MRR@3"]


def test_popular_baseline_leave_one_out_by_hand(pop_model):
    # [3, 1, 2]: context [3, 1] -> 2, 4, 5: target 2 first; [2, 5]: context [2] -> 1, 3, 4: 5 missed
    res = popular_baseline(pop_model, [[3, 1, 2], [2, 5], [7]], k=3)
    assert res["n"] == 2 and "Recall@3" not in res
    assert res["HR@3"] == 0.5 and res["MRR@3"] == 0.5 and res["MAP@3"] == 0.5 and res["NDCG@3"] == 0.5
    assert res["coverage@3"] == pytest.approx(5 / 5)
    assert res["pop_percentile@3"] == pytest.approx((80 + 60 + 60 + 100 + 60 + 60) / 6)


def _oracle(model, contexts, targets, k):
    """The metrics worked out row by row from recommend_batch's lists."""
    ids, _ = model.recommend_batch(contexts, n=k)
    known = set(model.item_ids.tolist())
    rows = []
    for top, tg in zip(ids.tolist(), targets):
        t = set(tg)
        hit = [x in t and x in known for x in top]
        first = hit.index(True) if any(hit) else None
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(t), k)))
        ap = sum(sum(hit[: i + 1]) / (i + 1) for i in range(len(hit)) if hit[i]) / min(len(t), k)
        rows.append((any(hit), sum(hit) / len(t), sum(1 / math.log2(i + 2) for i, h in enumerate(hit) if h) / idcg,
                     0.0 if first is None else 1 / (first + 1), ap))
    return dict(zip(("HR", "Recall", "NDCG", "MRR", "MAP"), np.mean(rows, axis=0).tolist()))


@pytest.fixture(scope="module")
def chain_model():
    rng = np.random.default_rng(0)
    seqs = [[(s + j) % 30 + 1 for j in range(int(rng.integers(4, 9)))] for s in rng.integers(0, 30, 300)]
    return SASRec(factors=16, max_seq=8, iterations=15, num_threads=1, random_state=0,
                  verbose=0).fit(seqs), seqs


def test_model_metrics_match_its_recommendations(chain_model):
    model, seqs = chain_model
    contexts = [s[:3] for s in seqs[:60]]
    targets = [s[3:] + [99] * (i % 2) for i, s in enumerate(seqs[:60])]
    res = model.evaluate(contexts, k=[1, 5, 10], targets=targets)
    for k in (1, 5, 10):
        want = _oracle(model, contexts, targets, k)
        for name, v in want.items():
            assert res[f"{name}@{k}"] == pytest.approx(v, abs=1e-12), (name, k)
    assert res["unknown_targets"] == 30 and res["n"] == 60
    assert res["Recall@10"] < res["HR@10"]


def test_a_list_of_k_is_the_int_calls_in_one(chain_model):
    model, seqs = chain_model
    both = model.evaluate(seqs[:50], k=[10, 5])
    assert list(both)[:6] == ["HR@10", "NDCG@10", "MRR@10", "MAP@10", "coverage@10", "pop_percentile@10"]
    for k in (5, 10):
        one = model.evaluate(seqs[:50], k=k)
        assert {key: v for key, v in both.items() if key.endswith(f"@{k}")} == \
            {key: v for key, v in one.items() if "@" in key}
        assert one["MAP@%d" % k] == one["MRR@%d" % k]  # one target each
    sampled = model.evaluate(seqs[:50], k=[1, 3], protocol="sampled", n_negatives=5)
    assert sampled["HR@3"] == model.evaluate(seqs[:50], k=3, protocol="sampled", n_negatives=5)["HR@3"]
    assert "coverage@3" not in sampled and sampled["unknown_targets"] == 0


@pytest.mark.parametrize("k, match", [([], "k must be a positive integer or a non-empty list"),
                                      ([5, 0], r"k\[1\] must be a positive integer, got 0"),
                                      ((5, 2.5), r"k\[1\] must be a positive integer, got 2.5"),
                                      (-3, "k must be a positive integer, got -3")])
def test_bad_k(pop_model, k, match):
    with pytest.raises(ValueError, match=match):
        pop_model.evaluate(POP_SEQS, k=k)
    with pytest.raises(ValueError, match=match):
        popular_baseline(pop_model, POP_SEQS, k=k)


def test_bad_targets(pop_model):
    with pytest.raises(ValueError, match="targets must hold one list per sequence: 1 lists for 2 sequences"):
        pop_model.evaluate([[1], [2]], targets=[[3]])
    with pytest.raises(ValueError, match="every list of targets is empty"):
        pop_model.evaluate([[1]], targets=[[]])
    with pytest.raises(ValueError, match="targets= goes with protocol='loo'"):
        pop_model.evaluate([[1]], targets=[[2]], protocol="sampled")
    with pytest.raises(ValueError, match="this model's item ids are integers"):
        pop_model.evaluate([[1]], targets=[["a"]])
