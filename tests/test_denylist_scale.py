"""A long denylist over many sessions is ranked among the items it leaves (one table of
them) instead of being copied into every row: the answers are the same, ids and scores
bit for bit and ties alike, on every scoring mode, with and without candidates, seen
items, extra exclusions and sessions with no known item."""
import numpy as np
import pytest

from fastsasrec import SASRec, _fitted


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 3000, size=rng.integers(2, 12)).tolist() for _ in range(2000)]
    return SASRec(iterations=1, factors=16, n_layers=1, max_seq=10, num_threads=1, random_state=0).fit(seqs)


def _both(monkeypatch, call):
    monkeypatch.setattr(_fitted, "DENY_IN_ROWS", 1 << 60)  # the denylist in every row
    rows = call()
    monkeypatch.setattr(_fitted, "DENY_IN_ROWS", 0)  # among the items it leaves
    table = call()
    return rows, table


@pytest.mark.parametrize("scoring", ["fp32", "int8"])
def test_the_two_ways_of_leaving_a_denylist_out_agree_bit_for_bit(model, monkeypatch, scoring):
    rng = np.random.default_rng(1)
    ids = model.item_ids_
    deny = rng.choice(ids, 700, replace=False).tolist()
    sessions = [rng.choice(ids, rng.integers(1, 8)).tolist() for _ in range(300)]
    sessions += [[], [10**9], [deny[0], deny[1]]]  # cold, unknown, and denied items alone
    extra = [rng.choice(ids, 3).tolist() for _ in sessions]
    cand = rng.choice(ids, 900, replace=False).tolist()
    model._fitted().engine.scoring = scoring
    try:
        for kw in ({}, {"exclude_seen": False}, {"exclude": extra}, {"candidates": cand},
                   {"candidates": cand, "exclude": extra}):
            rows, table = _both(monkeypatch, lambda: model.recommend_batch(sessions, n=25, denylist=deny, **kw))
            np.testing.assert_array_equal(rows.ids, table.ids)
            np.testing.assert_array_equal(rows.scores, table.scores)
            np.testing.assert_array_equal(rows.fallback, table.fallback)
            assert not set(table.ids.ravel().tolist()) & set(deny)
            assert model._fitted().cache["allowed"][1].size == model.n_items_ - len(deny)  # the table way ran
    finally:
        model._fitted().engine.scoring = "auto"


def test_a_denylist_that_leaves_fewer_items_than_asked_keeps_its_empty_slots(model, monkeypatch):
    deny = model.item_ids_[5:].tolist()  # five items left
    rows, table = _both(monkeypatch, lambda: model.recommend_batch([[1, 2], [3]], n=8, denylist=deny))
    np.testing.assert_array_equal(rows.ids, table.ids)
    assert ((table.ids != -1).sum(axis=1) <= 5).all()
