"""A new product in a session (an item with features and no training event): the model does
not read it beside items with events, reads it as its look-alike (the item with events that
shares the most of its feature values, the most popular of those that tie) where the session
holds nothing else, and it stays a seen item all the same, with id_dropout 0 and above.
Every scoring path agrees (``_new_products.read_items``)."""
import numpy as np
import pytest

from fastsasrec import _new_products
from test_item_features import CATS, _events_csv, _items_csv, _model, _sessions, _table

NEW = [999, 998]  # in the table, in no session: categories 2 and 3


def _fit(table=None, **kw):
    table = _table(extra=[(999, 2), (998, 3)]) if table is None else table
    return _model(**kw).fit(_sessions(), item_features=table, item_names="title")


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


def _lookalike(m, category):
    """What the rule should find, worked out from the table: the new product shares its
    category and its tag with its category's items (two values), at most a price bucket
    with any other item (one), so the look-alike is its category's most popular item."""
    items = CATS[category]
    pop = {i: int(p) for i, p in zip(m.item_ids_.tolist(), m.popularity_.tolist())}
    return max(items, key=lambda i: (pop[i], -i))


@pytest.mark.parametrize("fixture", ["plain", "dropped"])
def test_a_new_product_beside_items_with_events_is_not_read_and_stays_seen(request, fixture):
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


def test_the_rule_changes_what_the_engine_reads(plain):
    """The tests here are not vacuous: the new product's vector is not zero, so reading it
    would move the session's state, and its look-alike is another item."""
    E = plain.item_embeddings_
    assert np.abs(E[list(plain.item_ids_).index(999)]).sum() > 0
    state = plain._fitted()
    internal = state.encode(np.array([300, 999, 301]))
    read_all = state.engine.session_states(internal, np.array([0, 3], dtype=np.int64))
    assert not np.allclose(read_all, plain.session_embeddings([[300, 301]]))
    alone = state.encode(np.array([999]))
    assert not np.allclose(state.engine.session_states(alone, np.array([0, 1], dtype=np.int64)),
                           plain.session_embeddings([[999]]))


@pytest.mark.parametrize("fixture", ["plain", "dropped"])
def test_a_session_of_new_products_alone_reads_their_lookalikes(request, fixture):
    m = request.getfixturevalue(fixture)
    V = m.n_items_
    like_999, like_998 = _lookalike(m, 2), _lookalike(m, 3)
    _same(m.recommend([998], n=V, exclude_seen=False), m.recommend([like_998], n=V, exclude_seen=False))
    # Seen is the new product, not its look-alike: that one may be recommended.
    got = m.recommend([998], n=V)
    _same(got, m.recommend([like_998], n=V, exclude_seen=False, exclude=[998]))
    assert 998 not in got.ids.tolist() and not got.fallback and got.unknown == 0
    _same(m.recommend(NEW, n=V, exclude_seen=False),
          m.recommend([like_999, like_998], n=V, exclude_seen=False))
    np.testing.assert_array_equal(m.session_embeddings([NEW]),
                                  m.session_embeddings([[like_999, like_998]]))


def test_a_new_product_that_shares_nothing_is_read_by_its_features():
    """No value in common with an item with events (its own category and tag, no price):
    no look-alike, so the model reads the product itself.  "Missing" is not a shared value."""
    table = _table(extra=[(999, 2)])
    table.loc[997] = {"category": "lonely", "tags": ["zz"], "price": np.nan, "title": "Lonely"}
    table.loc[100, "price"] = np.nan  # an item with events whose price is missing too
    m = _fit(table)
    state = m._fitted()
    i997, i999 = state.encode(np.array([997, 999])).tolist()
    assert _new_products.lookalikes(state, np.array([i997])).tolist() == [i997]
    assert _new_products.lookalikes(state, np.array([i999])).tolist() == \
        state.encode(np.array([_lookalike(m, 2)])).tolist()
    alone = state.engine.session_states(np.array([i997], dtype=np.int32), np.array([0, 1], dtype=np.int64))
    np.testing.assert_array_equal(m.session_embeddings([[997]]), alone)


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


def test_the_command_line_says_which_new_products_it_did_not_read(tmp_path, capsys):
    from fastsasrec.cli import main

    events, items, model = tmp_path / "events.csv", tmp_path / "items.csv", tmp_path / "m.fsr"
    _events_csv(events, _sessions(200))
    table = _table(extra=[(999, 2)])
    table.loc[997] = {"category": "lonely", "tags": ["zz"], "price": np.nan, "title": "Lonely"}
    _items_csv(items, table)
    assert main(["train", str(events), "-o", str(model), "--item-features", str(items),
                 "--item-names", "title", "--item-list-col", "tags", "--epochs", "2",
                 "--factors", "8", "--max-seq", "8", "--threads", "1", "-q"]) == 0
    from fastsasrec import SASRec

    m = SASRec.load(model)
    capsys.readouterr()
    assert main(["recommend", str(model), "--session", "300,999,301", "-n", "3"]) == 0
    got = capsys.readouterr()
    assert "new products (no events in training) are not read beside the session's other " \
        "items: 999" in got.err
    assert [line.split()[1] for line in got.out.splitlines()[1:]] == \
        [str(i) for i in m.recommend([300, 999, 301], n=3).ids.tolist()]
    assert main(["recommend", str(model), "--session", "999", "-n", "3"]) == 0
    got = capsys.readouterr()
    assert f"999 is read as {_lookalike(m, 2)}" in got.err
    assert [line.split()[1] for line in got.out.splitlines()[1:]] == \
        [str(i) for i in m.recommend([999], n=3).ids.tolist()]
    assert main(["recommend", str(model), "--session", "997", "-n", "3"]) == 0
    got = capsys.readouterr()  # no look-alike: read by its own features, and said so
    assert got.err == ("note: a session of new products alone (no events in training): 997 shares "
                       "no feature value with an item with events: read by its features\n")
    assert main(["recommend", str(model), "--session", "997,999", "-n", "3"]) == 0
    assert "999 is read as" in capsys.readouterr().err
