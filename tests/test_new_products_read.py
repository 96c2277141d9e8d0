"""A new product in a session (an item with features and no training event): the model does
not read it beside items it knows, reads it where the session holds nothing else, and it
stays a seen item all the same (with id_dropout 0 and above).  Every scoring path agrees
(``_fitted.read_items``)."""
import numpy as np
import pytest

from test_item_features import _model, _sessions, _table

NEW = [999, 998]  # in the table, in no session: categories 2 and 3


def _fit(**kw):
    return _model(**kw).fit(_sessions(), item_features=_table(extra=[(999, 2), (998, 3)]),
                            item_names="title")


@pytest.fixture(scope="module")
def plain():
    return _fit()


@pytest.fixture(scope="module")
def dropped():
    return _fit(id_dropout=0.3)


def _same(a, b):
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert np.array_equal(np.asarray(a.fallback), np.asarray(b.fallback))


@pytest.mark.parametrize("fixture", ["plain", "dropped"])
def test_a_new_product_beside_known_items_is_not_read_and_stays_seen(request, fixture):
    m = request.getfixturevalue(fixture)
    V = m.n_items_
    with_new = m.recommend([300, 999, 301], n=V)
    # What the model reads is the session less the new product; 999 is still left out.
    _same(with_new, m.recommend([300, 301], n=V, exclude=[999]))
    assert 999 not in with_new.ids.tolist() and not with_new.fallback
    _same(m.recommend([300, 999, 301], n=V, exclude_seen=False),
          m.recommend([300, 301], n=V, exclude_seen=False))
    got = m.recommend([300, 999, 301], n=5, candidates=[999, 998, 302, 303])
    _same(got, m.recommend([300, 301], n=5, candidates=[999, 998, 302, 303], exclude=[999]))
    assert got.unknown == 0  # known, not read
    np.testing.assert_array_equal(m.session_embeddings([[300, 999, 301]]),
                                  m.session_embeddings([[300, 301]]))


def test_the_feature_rows_would_change_the_answer(plain):
    """The test above is not vacuous: the new product's vector is not zero, so reading it
    would move the session's state."""
    E = plain.item_embeddings_
    assert np.abs(E[list(plain.item_ids_).index(999)]).sum() > 0
    from fastsasrec import _fitted

    state = plain._fitted()
    internal = state.encode(np.array([300, 999, 301]))
    read_all = state.engine.session_states(internal, np.array([0, 3], dtype=np.int64))
    assert not np.allclose(read_all, plain.session_embeddings([[300, 301]]))
    assert _fitted.read_items(state, internal, np.array([0, 3]))[0].tolist() == \
        state.encode(np.array([300, 301])).tolist()


@pytest.mark.parametrize("fixture", ["plain", "dropped"])
def test_a_session_of_new_products_alone_is_read(request, fixture):
    """With nothing else to read, the model reads the new products by their features: 998
    is in category 3 (items 400..409), which leads its answer."""
    m = request.getfixturevalue(fixture)
    got = m.recommend([998], n=3)
    assert not got.fallback and 998 not in got.ids.tolist()
    assert all(400 <= i < 410 for i in got.ids.tolist()), got.ids
    state = m._fitted()
    internal = state.encode(np.array(NEW))
    np.testing.assert_array_equal(state.engine.session_states(internal, np.array([0, 2], dtype=np.int64)),
                                  m.session_embeddings([NEW]))
    both = m.recommend(NEW, n=m.n_items_)
    assert not set(NEW) & set(both.ids.tolist())
    assert set(NEW) <= set(m.recommend(NEW, n=m.n_items_, exclude_seen=False).ids.tolist())


@pytest.mark.parametrize("fixture", ["plain", "dropped"])
def test_recommend_batch_gives_each_session_what_recommend_gives(request, fixture):
    m = request.getfixturevalue(fixture)
    sessions = [[300, 999, 301], NEW, [999], [100, 101], [777, 998], [998, 400, 401, 999]]
    batch = m.recommend_batch(sessions, n=6)
    for b, s in enumerate(sessions):
        one = m.recommend(s, n=6)
        k = one.ids.size
        assert batch.ids[b, :k].tolist() == one.ids.tolist(), s
        np.testing.assert_array_equal(batch.scores[b, :k], one.scores)
        assert bool(batch.fallback[b]) == one.fallback and int(batch.unknown[b]) == one.unknown


def test_a_new_product_is_read_once_it_has_events():
    m = _fit()
    m.partial_fit([[300, 999, 301, 302]] * 20, epochs=1)
    assert m.popularity_[list(m.item_ids_).index(999)] > 0
    after = m.recommend([300, 999, 301], n=m.n_items_)
    without = m.recommend([300, 301], n=m.n_items_, exclude=[999])
    assert 999 not in after.ids.tolist()
    assert not np.array_equal(after.scores, without.scores)
