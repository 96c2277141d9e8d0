"""fastsasrec.Sequences, the flat form of many sequences: its checks, and that fit, evaluate,
recommend_batch and session_embeddings answer exactly as they do for the same lists."""
import pickle

import numpy as np
import pandas as pd
import pytest

import fastsasrec.data as data
from fastsasrec import SASRec, Sequences
from fastsasrec._event_table import transactions_to_sequences
from fastsasrec.data import flatten_sequences
from fastsasrec.metrics import hold_out_last
from conftest import chain_sessions

SMALL = dict(factors=16, n_layers=1, max_seq=8, n_negatives=8, batch_size=32, iterations=3,
             random_state=4, num_threads=1, device="cpu")


def test_construction_and_access():
    s = Sequences(np.array([5, 6, 7, 6, 5]), [0, 3, 3, 5])
    assert len(s) == 3
    assert s.items.dtype == np.int64 and s.offsets.dtype == np.int64
    assert s[0].tolist() == [5, 6, 7] and s[1].tolist() == [] and s[-1].tolist() == [6, 5]
    assert [x.tolist() for x in s] == [[5, 6, 7], [], [6, 5]]
    assert s.lengths.tolist() == [3, 0, 2]
    assert repr(s) == "Sequences(3 sequences, 5 int64 items: [[5, 6, 7], [], [6, 5]])"
    assert len(Sequences([], [0])) == 0
    t = Sequences(np.array(["a", "b", "c"]), np.array([0, 1, 3], dtype=np.int32))
    assert t.items.dtype.kind == "U" and t[1].tolist() == ["b", "c"]
    assert "str items" in repr(t)
    assert Sequences.from_lists([["a"], ["b", "c"]]).items.tolist() == ["a", "b", "c"]
    long = Sequences.from_lists([list(range(9))] * 5)
    assert repr(long).endswith("[[0, 1, 2, 3, 4, ...], [0, 1, 2, 3, 4, ...], [0, 1, 2, 3, 4, ...], ...])")


def test_immutable_items_not_copied_offsets_copied():
    items, offsets = np.array([1, 2, 3, 4], dtype=np.int64), np.array([0, 2, 4], dtype=np.int64)
    s = Sequences(items, offsets)
    assert np.shares_memory(s.items, items) and not np.shares_memory(s.offsets, offsets)
    assert items.flags.writeable, "the caller's arrays stay as they were"
    with pytest.raises(ValueError):
        s.items[0] = 9
    with pytest.raises(ValueError):
        s.offsets[0] = 1
    with pytest.raises(AttributeError):
        s.items = items
    with pytest.raises(AttributeError):
        s._offsets = offsets
    assert flatten_sequences(s) is s
    back = pickle.loads(pickle.dumps(s))
    assert back.items.tolist() == [1, 2, 3, 4] and back.offsets.tolist() == [0, 2, 4]


@pytest.mark.parametrize("items, offsets, match", [
    (np.array([[1, 2], [3, 4]]), [0, 4], r"items must be a 1-D array of item ids, got shape \(2, 2\)"),
    (None, [0], "items must be a 1-D array of item ids, got None"),
    ("abc", [0, 3], "items must be a 1-D array of item ids, got 'abc'"),
    (np.array([1.0, 2.5]), [0, 2], r"items\[0\] is the float 1.0"),
    (np.array([True, False]), [0, 2], r"items\[0\] is a boolean"),
    ([1, "a"], [0, 2], "items mixes integers and strings"),
    ([1, None], [0, 2], r"items\[1\] is None"),
    (np.array([2**63], dtype=np.uint64), [0, 1], "must fit in 64 bits"),
    ([1, 2, 3], [1, 3], r"offsets must start at 0, got offsets\[0\] = 1"),
    ([1, 2, 3], [0, 2, 1, 3], r"offsets must be non-decreasing, got offsets\[2\] = 1 after offsets\[1\] = 2"),
    ([1, 2, 3], [0, 2], r"offsets must end at len\(items\) = 3, got offsets\[-1\] = 2"),
    ([1, 2, 3], [0, 4], r"offsets must end at len\(items\) = 3, got offsets\[-1\] = 4"),
    ([1, 2, 3], [0.0, 3.0], "offsets must be integers, got float64"),
    ([1, 2, 3], [], r"offsets must be a 1-D array of len\(sequences\) \+ 1 integers, got shape \(0,\)"),
    ([1, 2, 3], [[0, 3]], r"got shape \(1, 2\)"),
])
def test_construction_errors(items, offsets, match):
    with pytest.raises(ValueError, match=match):
        Sequences(items, offsets)


def test_index_errors():
    s = Sequences([1, 2, 3], [0, 1, 3])
    with pytest.raises(IndexError, match="sequence index 2 is out of range for 2 sequences"):
        s[2]
    with pytest.raises(IndexError, match="sequence index -3"):
        s[-3]
    with pytest.raises(TypeError, match="Sequences indices must be integers, got slice"):
        s[0:1]


def test_hold_out_last_is_flat():
    s = Sequences.from_lists([[1, 2, 3], [4], [], [5, 6]])
    contexts, targets, used = hold_out_last(s)
    assert [c.tolist() for c in contexts] == [[1, 2], [5]]
    assert targets.tolist() == [3, 6] and used.tolist() == [0, 3]


# ----------------------------------------------------------------------------- the estimator
@pytest.fixture(scope="module")
def lists():
    return chain_sessions(n_sessions=150, n_items=30, seed=2)


@pytest.fixture(scope="module")
def model(lists):
    return SASRec(**SMALL).fit(lists)


def test_fit_gives_the_same_model(lists, model):
    flat = SASRec(**SMALL).fit(Sequences.from_lists(lists))
    assert flat.loss_history_ == model.loss_history_
    np.testing.assert_array_equal(flat.item_ids, model.item_ids)
    np.testing.assert_array_equal(flat.item_embeddings, model.item_embeddings)


def test_fit_drops_short_sequences_of_a_sequences(lists, model):
    s = Sequences.from_lists([[999]] + lists + [[]])
    with pytest.warns(UserWarning, match="skipped 2 of 152 sequences with fewer than 2 items"):
        m = SASRec(**SMALL).fit(s)
    np.testing.assert_array_equal(m.item_embeddings, model.item_embeddings)


def test_from_transactions_matches_fit_on_its_sequences(lists):
    df = pd.DataFrame({"user": np.repeat(np.arange(len(lists)), [len(s) for s in lists]),
                       "item": [x for s in lists for x in s]})
    a = SASRec.from_transactions(df, user_col="user", item_col="item", timestamp_col=None, **SMALL)
    items, offsets, _ = transactions_to_sequences(df, "user", "item")
    b = SASRec(**SMALL).fit(Sequences(items, offsets))
    np.testing.assert_array_equal(a.item_embeddings, b.item_embeddings)


@pytest.mark.parametrize("how", ["unpickled", "longlong"])
def test_offsets_of_an_equal_int64_dtype(lists, model, how):
    """Found by tests/test_fuzz.py: offsets whose int64 dtype is equal to numpy's but another
    object (an array that came through pickle, as from another process; np.longlong) were
    refused by the engine with "offsets must have dtype int64, got int64"."""
    flat = Sequences.from_lists(lists)
    offsets = flat.offsets.copy()
    offsets = pickle.loads(pickle.dumps(offsets)) if how == "unpickled" else offsets.astype(np.longlong)
    assert offsets.dtype == np.int64
    s = Sequences(flat.items.copy(), offsets)
    np.testing.assert_array_equal(SASRec(**SMALL).fit(s).item_embeddings, model.item_embeddings)
    np.testing.assert_array_equal(model.recommend_batch(s, n=4)[0], model.recommend_batch(lists, n=4)[0])
    np.testing.assert_array_equal(model.session_embeddings(s), model.session_embeddings(lists))
    assert model.evaluate(s) == model.evaluate(lists)


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_recommend_batch_and_session_embeddings_are_the_same(model, exclude_seen):
    sessions = [[110, 111, 112], [99999], [], [125, 99999, 126], list(range(100, 130))]
    a_ids, a_scores = model.recommend_batch(sessions, n=5, exclude_seen=exclude_seen)
    b_ids, b_scores = model.recommend_batch(Sequences.from_lists(sessions), n=5, exclude_seen=exclude_seen)
    np.testing.assert_array_equal(a_ids, b_ids)
    np.testing.assert_array_equal(a_scores, b_scores)
    np.testing.assert_array_equal(model.session_embeddings(sessions),
                                  model.session_embeddings(Sequences.from_lists(sessions)))


@pytest.mark.parametrize("protocol", ["loo", "sampled"])
def test_evaluate_is_the_same(lists, model, protocol):
    test = lists[:60] + [[107], [], [99998, 99999]]
    a = model.evaluate(test, k=5, protocol=protocol, n_negatives=10)
    b = model.evaluate(Sequences.from_lists(test), k=5, protocol=protocol, n_negatives=10)
    assert a == b and a["n"] == 61


def test_string_ids_are_the_same(lists):
    named = [[f"p{x}" for x in s] for s in lists]
    a = SASRec(**SMALL).fit(named)
    b = SASRec(**SMALL).fit(Sequences.from_lists(named))
    np.testing.assert_array_equal(a.item_embeddings, b.item_embeddings)
    sessions = Sequences.from_lists([["p110", "p111"], ["nope"]])
    ids, _ = b.recommend_batch(sessions, n=3)
    np.testing.assert_array_equal(ids, a.recommend_batch([["p110", "p111"], ["nope"]], n=3)[0])
    assert a.evaluate(named[:40]) == b.evaluate(Sequences.from_lists(named[:40]))


def test_flat_paths_build_no_lists(model, lists, monkeypatch):
    """evaluate, recommend_batch and session_embeddings on a Sequences work on its arrays:
    they never list the sequences nor walk them one by one."""
    s = Sequences.from_lists(lists[:50])
    want = model.evaluate(s), model.recommend_batch(s, n=3)[0]

    def boom(*args, **kwargs):
        raise AssertionError("a Sequences was turned into lists")

    monkeypatch.setattr(data, "_as_sequence_list", boom)
    monkeypatch.setattr(Sequences, "__iter__", boom)
    monkeypatch.setattr(Sequences, "__getitem__", boom)
    assert model.evaluate(s) == want[0]
    np.testing.assert_array_equal(model.recommend_batch(s, n=3)[0], want[1])
    model.session_embeddings(s)


def test_a_tuple_of_flat_arrays_is_not_taken_as_flat(model, lists):
    """(items, offsets) as a plain tuple is an error that names Sequences, never read as
    flat arrays (nor silently as two sequences)."""
    flat = Sequences.from_lists(lists)
    pair = (flat.items.copy(), flat.offsets.copy())
    for call in (lambda: SASRec(**SMALL).fit(pair), lambda: model.evaluate(pair),
                 lambda: model.recommend_batch(pair), lambda: model.session_embeddings(pair)):
        with pytest.raises(ValueError, match=r"looks like flat \(items, offsets\).*Sequences\(items, offsets\)"):
            call()
    # a tuple of two real sessions is still two sessions
    ids, _ = model.recommend_batch(([110, 111], [120, 121, 122]), n=2)
    np.testing.assert_array_equal(ids, model.recommend_batch([[110, 111], [120, 121, 122]], n=2)[0])


def test_offsets_are_copied_and_a_changed_item_is_checked_again():
    """Changing the offsets array after construction used to make evaluate raise
    IndexError (out of range) or silently answer for other sequences (in range)."""
    from fastsasrec import SASRec

    seqs = [[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]] * 10
    items = np.array([x for s in seqs for x in s], dtype=np.int64)
    offsets = np.arange(0, items.size + 1, 4, dtype=np.int64)
    s = Sequences(items, offsets)
    m = SASRec(factors=8, n_layers=1, max_seq=4, n_negatives=2, iterations=1, num_threads=1).fit(s)
    before = m.evaluate(s, k=3)
    offsets[1] = 10**9
    assert s.offsets[1] == 4 and m.evaluate(s, k=3) == before
    offsets[1] = 3  # in range: would silently cut other sequences
    assert m.evaluate(s, k=3) == before
    text = np.array(["aa", "bb", "cc", "aa"])
    st = Sequences(text, np.array([0, 2, 4]))
    text[1] = "b\x01"  # the view sees the change: refused like any control character
    with pytest.raises(ValueError, match="control"):
        m2 = SASRec(factors=8, n_layers=1, max_seq=4, n_negatives=1, iterations=1, num_threads=1)
        m2.fit(st)


def test_text_times_in_more_than_one_iso_form_are_read():
    # str(datetime) leaves out zero microseconds, and a date alone its time.
    ev = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [10, 11, 12],
                       "timestamp": ["2024-01-01 10:00:00", "2024-01-01 09:00:00.500000", "2024-01-02"]})
    items, offsets, _ = transactions_to_sequences(ev, "user_id", "item_id", "timestamp")
    assert items.tolist() == [11, 10, 12]


@pytest.mark.parametrize("missing", ["", "NaT", "NaN"])
def test_a_missing_text_time_is_refused_by_row(missing):
    ev = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [10, 11, 12],
                       "timestamp": ["2024-01-03", missing, "2024-01-01"]})
    with pytest.raises(ValueError, match=f"column 'timestamp' .* at row 1 is '{missing}': a missing time"):
        transactions_to_sequences(ev, "user_id", "item_id", "timestamp")
