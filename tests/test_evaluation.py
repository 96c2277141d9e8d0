"""The evaluation a data scientist expects: several cut-offs in one call, MAP, Recall with
several targets, the popularity bias, the split by time, the most-popular baseline and
the cold-start protocol with its content baseline; every metric against a value worked
out by hand."""
import math

import numpy as np
import pandas as pd
import pytest

from fastsasrec import SASRec
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


# ----------------------------------------------------------------------------- split by time
def _log():
    rows = [("a", 1, 1), ("a", 2, 2), ("a", 3, 5), ("a", 4, 6),   # context [1, 2], targets [3, 4]
            ("b", 2, 3), ("b", 6, 7), ("b", 6, 9), ("b", 2, 4),   # context [2], targets [2, 6, 6]
            ("c", 5, 8),                                           # no event before: left out
            ("d", 1, 1)]                                           # no event after: left out
    df = pd.DataFrame(rows, columns=["user", "item", "t"])
    return df.sample(frac=1.0, random_state=3).reset_index(drop=True)


def test_split_by_time_by_hand():
    df = _log()
    train, test = split_by_time(df, at=4, user_col="user", item_col="item", time_col="t")
    assert sorted(map(tuple, train[["user", "item", "t"]].values.tolist())) == \
        [("a", 1, 1), ("a", 2, 2), ("b", 2, 3), ("d", 1, 1)]
    assert test.users.tolist() == ["a", "b"] and test.at == 4
    assert [s.tolist() for s in test.contexts] == [[1, 2], [2]]
    assert [s.tolist() for s in test.targets] == [[3, 4], [2, 6, 6]]  # at 4 is after; in time order
    assert (test.no_events_before, test.no_events_after) == (1, 1)
    # items 3, 4 (user a) and 6 (user b, once) have no event before 4; 5 is c's, left out
    assert test.new_item_targets == 3


def test_split_by_time_at_a_share_of_the_events():
    df = _log()
    # times in order 1 1 2 3 4 5 6 7 8 9: the event at 50% (index 5) is at time 5
    train, test = split_by_time(df, at=0.5, user_col="user", item_col="item", time_col="t")
    assert test.at == 5 and len(train) == 5
    assert [s.tolist() for s in test.targets] == [[3, 4], [6, 6]]


def test_split_by_time_on_dates_and_its_evaluation(pop_model):
    df = _log()
    df["t"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(df["t"], unit="D")
    train, test = split_by_time(df, at="2024-01-05", user_col="user", item_col="item", time_col="t")
    assert [s.tolist() for s in test.contexts] == [[1, 2], [2]] and len(train) == 4
    # the popular lists: [3, 4, 5] for a (less 1, 2), [1, 3, 4] for b (less 2); 2 seen, 6 unknown
    res = popular_baseline(pop_model, test.contexts, k=3, targets=test.targets)
    assert res["HR@3"] == 0.5 and res["Recall@3"] == pytest.approx((1.0 + 0.0) / 2)
    assert res["MAP@3"] == pytest.approx((1.0 + 0.0) / 2) and res["unknown_targets"] == 1
    # The split given whole is the same call; with targets besides, or a ColdStart, refused.
    assert popular_baseline(pop_model, test, k=3) == res
    assert pop_model.evaluate(test, k=3) == pop_model.evaluate(test.contexts, targets=test.targets, k=3)
    with pytest.raises(ValueError, match="sequences is a TimeSplit, which holds its targets"):
        pop_model.evaluate(test, targets=test.targets)
    with pytest.raises(ValueError, match=r"sequences is a ColdStart: evaluate its cases with"):
        popular_baseline(pop_model, cold_start_split([[1, 2, 3, 4, 5, 6]] * 3, share=0.2), k=3)


def test_split_by_time_on_datetimes_with_a_zone():
    # Event logs often arrive with a zone (UTC from parquet or Spark, or local): the same
    # instants in another zone split the same way, compared in UTC.
    df = _log()
    utc = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(df["t"], unit="D")
    for zone in ("UTC", "America/New_York", "Asia/Kolkata"):
        train, test = split_by_time(df.assign(t=utc.dt.tz_convert(zone)), at="2024-01-05",
                                    user_col="user", item_col="item", time_col="t")
        assert [s.tolist() for s in test.contexts] == [[1, 2], [2]] and len(train) == 4
        assert [s.tolist() for s in test.targets] == [[3, 4], [2, 6, 6]]
        assert test.at == np.datetime64("2024-01-05")
    # an at with a zone is the instant it names: 2024-01-05 02:00 in Kolkata is 20:30 UTC
    # on the 4th, after the event of day 3 and before that of day 4 (00:00 UTC on the
    # 5th): the same split as at=4
    _, test = split_by_time(df.assign(t=utc), at=pd.Timestamp("2024-01-05 02:00", tz="Asia/Kolkata"),
                            user_col="user", item_col="item", time_col="t")
    _, by_number = split_by_time(df, at=4, user_col="user", item_col="item", time_col="t")
    assert [s.tolist() for s in test.targets] == [s.tolist() for s in by_number.targets]


@pytest.mark.parametrize("kwargs, match", [
    (dict(at=1), r"at=1 leaves no event on one side: the events run from 1 to 9"),
    (dict(at=10), "at=10 leaves no event on one side"),
    (dict(at=0.0), "at=0.0 leaves no event on one side"),
    (dict(at="x"), r"at must be a share of the events in \(0, 1\) or a time like column 't' \(numbers\), got 'x'"),
    (dict(at=4, time_col="when"), r"events has no column 'when' \(time_col\); its columns: \['user', 'item', 't'\]"),
    (dict(at=4, item_col="sku"), r"events has no column 'sku' \(item_col\)"),
])
def test_split_by_time_refuses_bad_input(kwargs, match):
    args = dict(user_col="user", item_col="item", time_col="t")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        split_by_time(_log(), **args)


def test_split_by_time_refuses_what_is_not_a_frame_or_a_time():
    with pytest.raises(ValueError, match="events must be a pandas DataFrame, got list"):
        split_by_time([[1, 2, 3]], at=0.5)
    df = _log().astype({"t": bool})
    with pytest.raises(ValueError, match=r"column 't' \(time_col\) must hold numbers, datetimes or dates as "
                       r"text, got bool"):
        split_by_time(df, at=0.5, user_col="user", item_col="item", time_col="t")
    df = _log().astype({"t": str}).assign(t=lambda d: d["t"].where(d.index != 3, "soon"))
    with pytest.raises(ValueError, match=r"column 't' \(time_col\) at row 3 is 'soon': the rows before hold numbers"):
        split_by_time(df, at=0.5, user_col="user", item_col="item", time_col="t")
    df = _log()
    df["t"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(df["t"], unit="D")
    with pytest.raises(ValueError, match=r"a time like column 't' \(datetimes\), got 'soon'"):
        split_by_time(df, at="soon", user_col="user", item_col="item", time_col="t")


# ----------------------------------------------------------------------------- cold start
A, B, C = [1, 2, 3], [3, 1], [2, 4, 1, 3]
# For each single held-out item: (training sequences, contexts, targets), worked out by hand.
BY_HAND = {
    1: ([[2, 3], [2, 4, 3]], [[3], [2, 4]], [1, 1]),        # B is left with one item; A's 1 is first
    2: ([[1, 3], [3, 1], [4, 1, 3]], [[1]], [2]),           # C's 2 is first: no context
    3: ([[1, 2], [2, 4, 1]], [[1, 2], [2, 4, 1]], [3, 3]),
    4: ([A, B, [2, 1, 3]], [[2]], [4]),
}


def test_cold_start_split_by_hand():
    seen = set()
    for seed in range(12):
        train, held, contexts, targets = cold_start_split([A, B, C], share=0.25, random_state=seed)
        assert held.size == 1
        want = BY_HAND[int(held[0])]
        assert [s.tolist() for s in train] == want[0]
        assert [s.tolist() for s in contexts] == want[1] and targets.tolist() == want[2]
        seen.add(int(held[0]))
    assert len(seen) >= 3  # the seed draws the items
    again = cold_start_split([A, B, C], share=0.25, random_state=5)
    assert again.held_out.tolist() == cold_start_split([A, B, C], share=0.25, random_state=5).held_out.tolist()


def test_cold_start_contexts_drop_the_held_out_items():
    seqs = [[5, 1, 6, 2, 3], [7, 8]]
    splits = (cold_start_split(seqs, share=0.25, random_state=seed) for seed in range(1000))  # 2 of 8
    split = next(s for s in splits if s.held_out.tolist() == [1, 2])
    assert [s.tolist() for s in split.train] == [[5, 6, 3], [7, 8]]
    assert [s.tolist() for s in split.contexts] == [[5], [5, 6]] and split.targets.tolist() == [1, 2]


@pytest.mark.parametrize("share, match", [(0, "share must be a number strictly between 0 and 1, got 0"),
                                          (1.0, "got 1.0"), ("0.1", "got '0.1'"),
                                          (0.05, "share=0.05 holds out 0 of 4 items")])
def test_cold_start_split_refuses_bad_shares(share, match):
    with pytest.raises(ValueError, match=match):
        cold_start_split([A, B, C], share=share)
    with pytest.raises(ValueError, match="random_state must be a non-negative integer or None, got -1"):
        cold_start_split([A, B, C], random_state=-1)


VALUES = {12: {"horror"}, 10: {"drama", "1995"}, 11: {"comedy", "1990"},
          20: {"drama", "comedy"}, 21: {"comedy"}, 22: {"drama"}, 23: {"1990", "comedy"},
          25: {"drama", "1995"}, 26: {"comedy"}, 30: {"comedy", "horror"}}  # 24: none


def test_content_baseline_by_hand():
    cands = [30, 26, 25, 24, 23, 22, 21, 20]
    # context 12, 10, 11 (11 the newest).  Shared with the whole context, then with 11, 10, 12:
    # 23: 2 (2, 0, 0); 20: 2 (1, 1, 0); 30: 2 (1, 0, 1); 25: 2 (0, 2, 0);
    # 21 and 26: 1 (1, 0, 0), lower id first; 22: 1 (0, 1, 0); 24: 0
    top = content_baseline([[12, 10, 11], [20]], cands, VALUES, k=8)
    assert top[0].tolist() == [23, 20, 30, 25, 21, 26, 22, 24]
    # context [20]: 20 itself left out; every other candidate with a value shares one
    assert top[1].tolist() == [21, 22, 23, 25, 26, 30, 24, None]
    assert content_baseline([[12, 10, 11]], cands, VALUES, k=3).tolist() == [[23, 20, 30]]


def test_content_baseline_refuses_bad_input():
    with pytest.raises(ValueError, match="item_values must be a mapping of item id -> set of feature values, got list"):
        content_baseline([[1]], [2], [{"a"}], k=1)
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        content_baseline([[1]], [2], {}, k=0)
    with pytest.raises(ValueError, match="candidates is empty"):
        content_baseline([[1]], [], {}, k=1)


def test_a_share_splits_at_the_event_it_names_in_exact_arithmetic():
    # 0.07 x 100 is 7.000000000000001 in floats: the split must still leave 7 events before it.
    from fastsasrec.metrics import split_by_time

    n = 100
    ev = pd.DataFrame({"user_id": np.arange(n) % 10, "item_id": np.arange(n) % 7 + 1, "timestamp": np.arange(n)})
    for at in (0.07, 0.14, 0.28, 0.29, 0.55, 0.56, 0.57, 0.8, np.float32(0.07)):
        assert len(split_by_time(ev, at=at)[0]) == round(float(str(at)) * n), at


def test_the_sampled_protocol_counts_a_target_in_its_context_as_a_miss():
    seqs = [[1, 2, 3, 4, 5, 6][i % 3:i % 3 + 4] for i in range(60)]
    m = SASRec(factors=8, n_layers=1, max_seq=4, iterations=2, num_threads=1, random_state=0).fit(seqs)
    seen = [[1, 2, 3, 2], [2, 3, 4, 5]]  # the first target is already in its context
    got = m.evaluate(seen, k=5, protocol="sampled", n_negatives=2, random_state=0)
    assert got["HR@5"] == 0.5 and got["n"] == 2  # the second always ranks among 3 items
    assert m.evaluate(seen[:1], k=5, protocol="sampled", n_negatives=2)["HR@5"] == 0.0


def test_the_sampled_protocol_breaks_ties_as_the_full_ranking_does():
    # Items with the same vector (here every item: the weights set equal) tie; the full
    # ranking puts the lower id first, and so must the sampled one.
    import dataclasses

    from fastsasrec._weights import set_tensor, tensor_rows

    seqs = [[1, 2, 3, 4, 5, 6][i % 3:i % 3 + 4] for i in range(60)]
    m = SASRec(factors=8, n_layers=1, max_seq=4, iterations=1, num_threads=1, random_state=0).fit(seqs)
    rows = tensor_rows(m._fitted().engine, "item_emb")
    rows[1:] = rows[1]
    set_tensor(m._fitted().engine, "item_emb", rows)
    m._state = dataclasses.replace(m._state)  # a fresh cache: the new weights' item table
    low, high = [[5, 6, 1]], [[1, 2, 6]]  # targets 1 (below every negative's id) and 6 (above)
    assert m.evaluate(low, k=1, protocol="sampled", n_negatives=2)["HR@1"] == 1.0
    assert m.evaluate(high, k=1, protocol="sampled", n_negatives=2)["HR@1"] == 0.0
    assert m.evaluate(low, k=1)["HR@1"] == 1.0 and m.evaluate(high, k=1)["HR@1"] == 0.0  # as "loo"
