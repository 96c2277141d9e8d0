"""One scorer: every path that turns sessions into recommendations goes through
``fastsasrec._fitted`` and gives the same answer, with the fallback made visible."""
import os
import re

import numpy as np
import pytest

from fastsasrec import Recommendations, SASRec
from conftest import chain_sessions

KW = dict(factors=8, n_layers=1, max_seq=4, dropout=0.1, n_negatives=4, iterations=3,
          random_state=3, num_threads=1, device="cpu")
PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python", "fastsasrec")


@pytest.fixture(scope="module")
def model():
    return SASRec(**KW).fit(chain_sessions(n_sessions=120, n_items=30, offset=1))


def test_only_the_scorer_calls_the_engines_scoring():
    """No module but _fitted.py calls the engine's recommend or recommend_resident: there
    is one place where sessions become top-k lists."""
    calls = re.compile(r"engine\.(recommend|recommend_resident)\(")
    found = {}
    for name in sorted(os.listdir(PKG)):
        path = os.path.join(PKG, name)
        files = [path] if name.endswith(".py") else (
            [os.path.join(path, f) for f in os.listdir(path) if f.endswith(".py")] if os.path.isdir(path) else [])
        for f in files:
            with open(f, encoding="utf-8") as fh:
                hits = calls.findall(fh.read())
            if hits:
                found[os.path.relpath(f, PKG)] = hits
    assert set(found) == {"_fitted.py"}, found


def test_the_fallback_is_flagged(model):
    warm = model.recommend([1, 2, 3], n=5)
    cold = model.recommend([99999], n=5)
    assert isinstance(warm, Recommendations) and warm.fallback is False and cold.fallback is True
    ids, scores = cold  # still a pair
    order = np.lexsort((np.arange(model.n_items_), -model.popularity_))
    assert ids.tolist() == model.item_ids_[order[:5]].tolist()
    batch = model.recommend_batch([[1, 2, 3], [99999], [], [5, 77777]], n=5)
    assert batch.fallback.tolist() == [False, True, True, False]
    assert batch.ids.shape == (4, 5) and batch.scores.shape == (4, 5)


def test_seen_is_the_whole_history_given(model):
    """The model reads the last max_seq items; every item given is excluded."""
    long = [1, 2, 3, 4, 5, 6, 7, 8, 9]  # longer than max_seq (4)
    tail = long[-KW["max_seq"]:]
    ids = model.recommend(long, n=20).ids
    assert not set(ids.tolist()) & set(long)
    same_state = model.recommend(tail, n=20, exclude=long[:-KW["max_seq"]])
    assert ids.tolist() == same_state.ids.tolist()
    assert model.recommend_batch([long], n=20).ids[0].tolist() == ids.tolist()


def test_the_denylist_applies_to_every_path(model):
    deny = [2, 3, 4, 5, 6]
    one = model.recommend([1], n=10, denylist=deny)
    assert not set(one.ids.tolist()) & set(deny)
    batch = model.recommend_batch([[1], [99999], [7, 8]], n=10, denylist=deny)
    assert not set(batch.ids.ravel().tolist()) & set(deny)
    cold = model.recommend([99999], n=10, denylist=deny)
    assert cold.fallback and not set(cold.ids.tolist()) & set(deny)
    sim = model.similar_items(1, n=10, denylist=deny)
    assert not set(sim.ids.tolist()) & set(deny) and 1 not in sim.ids.tolist()
    assert len(sim.ids) == 10
    # Without the denylist the same calls may return them.
    assert set(model.similar_items(1, n=29).ids.tolist()) & set(deny)
    # Unknown ids in the denylist are ignored; a denylist of everything leaves nothing.
    everything = model.item_ids_.tolist() + [12345]
    assert model.recommend([1], n=5, denylist=everything).ids.size == 0
    assert (model.recommend_batch([[1]], n=5, denylist=everything).ids == -1).all()
    assert model.similar_items(1, n=5, denylist=everything).ids.size == 0


def test_recommend_and_recommend_batch_agree(model):
    sessions = [[1, 2, 3], [5], [99999], [4, 4, 4, 9, 10, 11, 12], []]
    batch = model.recommend_batch(sessions, n=6, exclude=[[7], [], [1], [], [2]], denylist=[30])
    for b, s in enumerate(sessions):
        one = model.recommend(s, n=6, exclude=[[7], [], [1], [], [2]][b], denylist=[30])
        k = one.ids.size
        assert batch.ids[b, :k].tolist() == one.ids.tolist()
        np.testing.assert_array_equal(batch.scores[b, :k], one.scores)
        assert bool(batch.fallback[b]) == one.fallback


def test_load_publishes_once(model, tmp_path, monkeypatch):
    """A loaded model is published whole, once (weights, record and defaults together)."""
    path = tmp_path / "m.fsr"
    model.save(path)
    published = []
    real = SASRec._publish
    monkeypatch.setattr(SASRec, "_publish", lambda self, state: published.append(state) or real(self, state))
    loaded = SASRec.load(path, device="cpu")
    assert len(published) == 1
    assert loaded.loss_history_ == model.loss_history_ and loaded.defaults_ == model.defaults_
