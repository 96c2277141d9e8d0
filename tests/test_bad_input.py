"""Bad input gets a clear exception naming the argument and the value."""
import os
import re
import zipfile

import numpy as np
import pandas as pd
import pytest

import fastsasrec
from fastsasrec import SASRec

SMALL = dict(factors=8, n_layers=1, max_seq=5, n_negatives=2, iterations=1, num_threads=1)
SEQS = [[1, 2, 3, 4], [2, 3, 4, 5], [5, 4, 3]]


@pytest.fixture(scope="module")
def model():
    return SASRec(**SMALL).fit(SEQS)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(factors=0), "factors must be >= 1, got 0"),
        (dict(factors=-3), "factors must be >= 1, got -3"),
        (dict(factors=2.5), "factors must be an integer"),
        (dict(factors=True), "factors must be an integer"),
        (dict(factors=2**40), "factors must be a 32-bit integer, got 1099511627776"),
        (dict(n_layers=-1), r"n_layers must be in 0\.\.300, got -1"),
        (dict(n_layers=301), r"n_layers must be in 0\.\.300, got 301"),
        (dict(n_heads=0), "n_heads must be >= 1, got 0"),
        (dict(factors=10, n_heads=3), r"factors \(10\) must be divisible by n_heads \(3\)"),
        (dict(max_seq=0), "max_seq must be in 1..65536, got 0"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1$"),
        (dict(dropout=-0.1), "dropout"),
        (dict(dropout=float("nan")), "dropout must be a finite number"),
        (dict(loss="mse"), "loss must be one of"),
        (dict(n_negatives=0), "n_negatives must be >= 1, got 0"),
        (dict(learning_rate=0), "learning_rate must be > 0, got 0"),
        (dict(learning_rate=float("inf")), "learning_rate must be a finite number"),
        (dict(weight_decay=-1), "weight_decay must be >= 0, got -1"),
        (dict(weight_decay="0"), "weight_decay must be a finite number, got '0'"),
        (dict(batch_size=0), "batch_size must be >= 1, got 0"),
        (dict(iterations=-1), "iterations must be >= 0, got -1"),
        (dict(verbose=-1), "verbose must be >= 0, got -1"),
        (dict(batch_size=np.int64(0)), "batch_size must be >= 1, got 0"),
        (dict(device="tpu"), "device must be one of"),
        (dict(random_state=-1), "random_state"),
        (dict(num_threads=-2), "num_threads must be >= 0, got -2"),
        (dict(num_threads=1.5), "num_threads must be an integer, got 1.5"),
        (dict(precision="fp16"), r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SASRec(**kwargs)


def test_set_params_checks_everything_before_setting_anything():
    m = SASRec(factors=8, n_heads=2)
    with pytest.raises(ValueError, match=r"factors \(10\) must be divisible by n_heads \(4\)"):
        m.set_params(factors=10, n_heads=4)
    with pytest.raises(ValueError, match="dropout must be in"):
        m.set_params(factors=16, dropout=2.0)
    assert (m.factors, m.n_heads, m.dropout) == (8, 2, "auto"), "a failed set_params changes nothing"


def test_cuda_device_is_a_clear_error_without_backend():
    if fastsasrec.cuda_available():
        pytest.skip("a usable CUDA backend is present")
    with pytest.raises(ValueError, match="device='cuda' is not available"):
        SASRec(device="cuda")
    assert SASRec(device="auto", **SMALL).fit(SEQS).recommend([1], n=1)[0].size == 1


@pytest.mark.parametrize(
    "seqs, match",
    [
        ([], "sequences is empty"),
        (None, "got None"),
        ("abc", "got a string"),
        ([[1, 2], None], r"sequences\[1\] must be a sequence"),
        ([[1, 2], 5], r"sequences\[1\] must be a sequence"),
        ([[1, None, 3]], r"sequences\[0\]\[1\] is None"),
        ([[1, float("nan"), 3]], r"sequences\[0\]\[1\] is NaN"),
        ([[1, 2.5, 3]], r"sequences\[0\]\[1\] is the float 2.5"),
        ([[1, 2], ["a", "b"]], "all integers or all strings"),
        ([[1, "a", 2]], "all integers or all strings"),
        ([[True, False]], "boolean"),
        ([[1, True, 3]], r"sequences\[0\]\[1\] is a boolean"),  # numpy would make it 1
        ([[1, 2**70]], r"sequences\[0\]\[1\] is 1180591620717411303424: .*64 bits"),
        ([[1], [2]], "fewer than 2 items: nothing to train on"),
        ([[[1, 2], [3, 4]]], "must be 1-dimensional"),
    ],
)
def test_bad_sequences(seqs, match):
    with pytest.raises(ValueError, match=match):
        SASRec(**SMALL).fit(seqs)


def test_short_sequences_skipped_with_one_warning():
    with pytest.warns(UserWarning, match="skipped 2 of 5 sequences with fewer than 2 items") as rec:
        m = SASRec(**SMALL).fit(SEQS + [[9], []])
    assert len(rec) == 1
    assert 9 not in m.item_ids.tolist(), "items seen only in skipped sequences have no embedding"


def test_n_negatives_must_be_below_catalogue():
    with pytest.raises(ValueError, match=r"n_negatives \(5\) must be smaller than the catalogue \(5 items\)"):
        SASRec(**dict(SMALL, n_negatives=5, loss="sampled_softmax")).fit(SEQS)


def test_bce_needs_two_items():
    with pytest.raises(ValueError, match="loss='bce' needs at least 2 items, got 1"):
        SASRec(**dict(SMALL, loss="bce")).fit([[7, 7, 7]])


def test_auto_loss_follows_the_catalogue_size():
    m = SASRec(**SMALL).fit(SEQS)  # 5 items: no error from the negatives with "auto"
    assert m.loss == "auto" and m.loss_ == "softmax"
    from fastsasrec import _auto

    big = [[i, i + 1, i + 2] for i in range(1, _auto.SOFTMAX_MAX_ITEMS + 100, 2)]
    m = SASRec(**dict(SMALL, n_negatives=16)).fit(big)
    assert m.loss_ == "sampled_softmax"


def test_not_fitted():
    """As scikit-learn's: both ValueError and AttributeError, so hasattr answers."""
    from fastsasrec import NotFittedError

    m = SASRec()
    for call in (lambda: m.recommend([1]), lambda: m.recommend_batch([[1]]), lambda: m.item_ids_,
                 lambda: m.max_seq_, lambda: m.popularity_, lambda: m.similar_items(1)):
        with pytest.raises(NotFittedError, match="not fitted") as e:
            call()
        assert isinstance(e.value, ValueError) and isinstance(e.value, AttributeError)
    assert not hasattr(m, "item_ids_") and not hasattr(m, "max_seq_")
    m.fit([[1, 2, 3], [2, 3, 4]] * 10)
    assert hasattr(m, "item_ids_") and m.max_seq_ >= 1 and m.popularity_.sum() == 60
    assert list(m.item_ids_) == list(m.item_ids) == [1, 2, 3, 4]


@pytest.mark.parametrize("n, match", [(0, "n must be a positive integer"), (-1, "n must be"),
                                      (2.0, "n must be"), (True, "n must be")])
def test_bad_n(model, n, match):
    with pytest.raises(ValueError, match=match):
        model.recommend([1, 2], n=n)
    with pytest.raises(ValueError, match=match):
        model.recommend_batch([[1, 2]], n=n)
    with pytest.raises(ValueError, match=match.replace("n must", "k must")):
        model.evaluate(SEQS, k=n)


def test_bad_evaluate_arguments(model):
    with pytest.raises(ValueError, match="protocol must be 'loo' or 'sampled', got 'paper'"):
        model.evaluate(SEQS, protocol="paper")
    with pytest.raises(ValueError, match="n_negatives must be a positive integer, got 0"):
        model.evaluate(SEQS, protocol="sampled", n_negatives=0)
    with pytest.raises(ValueError, match="no sequence has 2 or more items"):
        model.evaluate([[1], [2]])
    with pytest.raises(ValueError, match="this model's item ids are integers"):
        model.evaluate([["a", "b"]])


def test_bad_sessions(model):
    with pytest.raises(ValueError, match=r"session\[1\] is None"):
        model.recommend([1, None])
    with pytest.raises(ValueError, match="session must be a sequence of item ids"):
        model.recommend(5)
    with pytest.raises(ValueError, match="this model's item ids are integers"):
        model.recommend(["a", "b"])
    with pytest.raises(ValueError, match=r"sessions\[1\]\[0\] is NaN"):
        model.recommend_batch([[1], [float("nan")]])
    with pytest.raises(ValueError, match=r"sessions\[0\]\[1\] is a boolean"):
        model.recommend_batch([[1, True]])
    with pytest.raises(ValueError, match=r"sessions\[1\]\[0\] is -9223372036854775809"):
        model.recommend_batch([[1], [-(2**63) - 1]])


def test_engine_rejects_wrong_arrays(model):
    core = model._engine
    with pytest.raises(ValueError, match="items must have dtype int32, got int64"):
        core.train_epoch(np.array([1, 2], dtype=np.int64), np.array([0, 2], dtype=np.int64), 0)
    with pytest.raises(ValueError, match="offsets must be 1-dimensional"):
        core.train_epoch(np.array([1, 2], dtype=np.int32), np.array([[0, 2]], dtype=np.int64), 0)
    with pytest.raises(ValueError, match="item id 99 at position 1 is outside 1..5"):
        core.train_epoch(np.array([1, 99], dtype=np.int32), np.array([0, 2], dtype=np.int64), 0)
    with pytest.raises(ValueError, match=r"offsets\[-1\] \(3\) must equal the number of items \(2\)"):
        core.train_epoch(np.array([1, 2], dtype=np.int32), np.array([0, 3], dtype=np.int64), 0)
    with pytest.raises(ValueError, match="must be a numpy array"):
        core.session_states([1, 2], np.array([0, 2], dtype=np.int64))
    with pytest.raises(ValueError, match="params must have"):
        core.set_params(np.zeros(3, dtype=np.float32))
    # fit drops sequences shorter than 2 items (with a warning); the engine rejects them
    with pytest.raises(ValueError, match="sequence 0 has 1 items; every training sequence needs 2 or more"):
        core.train_epoch(np.array([1, 2, 3], dtype=np.int32), np.array([0, 1, 3], dtype=np.int64), 0)


def test_n_larger_than_catalogue(model):
    ids, scores = model.recommend([1], n=99)
    assert ids.size == 4 and 1 not in ids.tolist()  # 5 items, one seen
    # recommend_batch's rows have min(n, n_items) slots; the seen item leaves the last one
    # empty: id -1 (which fit rejects as an item id) and score -inf.
    bids, bscores = model.recommend_batch([[1]], n=7)
    assert bids.shape == bscores.shape == (1, 5)
    assert bids[0, 4] == -1 and np.isneginf(bscores[0, 4]) and np.isfinite(bscores[0, :4]).all()
    # n and k far beyond the catalogue allocate nothing of their size
    bids, bscores = model.recommend_batch([[1], [], [2, 3]] * 4, n=2 * 10**7)
    assert bids.shape == bscores.shape == (12, 5)
    assert model.evaluate(SEQS, k=10**9)["HR@1000000000"] == 1.0


class TestLoad:
    def test_missing(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            SASRec.load(tmp_path / "nope.fsr")

    def test_foreign_file(self, tmp_path):
        p = tmp_path / "foreign.fsr"
        p.write_bytes(b"this is not a model at all")
        with pytest.raises(ValueError, match="not a valid fastsasrec model file"):
            SASRec.load(p)

    def test_foreign_zip(self, tmp_path):
        p = tmp_path / "other.zip"
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("hello.txt", "hi")
        with pytest.raises(ValueError, match="not a fastsasrec model"):
            SASRec.load(p)

    def test_truncated(self, model, tmp_path):
        p = tmp_path / "m.fsr"
        model.save(p)
        data = p.read_bytes()
        for cut in (len(data) // 3, len(data) - 10):
            q = tmp_path / f"cut{cut}.fsr"
            q.write_bytes(data[:cut])
            with pytest.raises(ValueError):
                SASRec.load(q)

    def test_corrupted_weights(self, model, tmp_path):
        p = tmp_path / "m.fsr"
        model.save(p)
        data = bytearray(p.read_bytes())
        i = data.find(b"params.npy")
        data[i + 200] ^= 0xFF  # flip bits inside the stored weights: the CRC catches it
        q = tmp_path / "bad.fsr"
        q.write_bytes(bytes(data))
        with pytest.raises(ValueError):
            SASRec.load(q)

    def test_newer_version(self, model, tmp_path):
        import json

        p = tmp_path / "m.fsr"
        model.save(p)
        q = tmp_path / "newer.fsr"
        with zipfile.ZipFile(p) as zin, zipfile.ZipFile(q, "w") as zout:
            for item in zin.namelist():
                data = zin.read(item)
                if item == "fastsasrec.json":
                    meta = json.loads(data)
                    meta["format_version"] = 99
                    data = json.dumps(meta).encode()
                zout.writestr(item, data)
        with pytest.raises(ValueError, match="newer fastsasrec"):
            SASRec.load(q)

    def test_save_never_leaves_partial_file(self, model, tmp_path):
        p = tmp_path / "m.fsr"
        model.save(p)
        before = p.read_bytes()
        with pytest.raises(FileNotFoundError):
            model.save(tmp_path / "no-such-dir" / "m.fsr")
        assert p.read_bytes() == before
        assert os.listdir(tmp_path) == ["m.fsr"]


def test_ids_beyond_int64_are_rejected_not_wrapped(model):
    """uint64 ids at or above 2**63 would wrap to negative ids (2**64 - 1 to -1): every
    input path names the offending id instead."""
    big = 2**64 - 1

    def u(*xs):
        return np.array(xs, dtype=np.uint64)

    cases = [
        (lambda: SASRec(**SMALL).fit([u(1, 2, 3), u(4, big)]), r"sequences\[1\]\[1\] is 18446744073709551615"),
        (lambda: SASRec(**SMALL).fit(np.array([[1, 2], [3, big]], dtype=np.uint64)),
         r"sequences\[1\]\[1\] is 18446744073709551615"),
        (lambda: SASRec(**SMALL).fit([[1, 2], [2**63, 1]]), r"sequences\[1\]\[0\] is 9223372036854775808"),
        (lambda: fastsasrec.Sequences(u(1, 2, 2**63), [0, 3]), r"items\[2\] is 9223372036854775808"),
        (lambda: model.recommend(u(1, big)), r"session\[1\] is 18446744073709551615"),
        (lambda: model.recommend([1], exclude=u(big)), r"exclude\[0\] is 18446744073709551615"),
        (lambda: model.recommend_batch([u(1), u(2, big)]), r"sessions\[1\]\[1\] is 18446744073709551615"),
        (lambda: model.recommend_batch(np.array([[1, big]], dtype=np.uint64)), r"sessions\[0\]\[1\] is"),
        (lambda: model.session_embeddings([u(big)]), r"sessions\[0\]\[0\] is"),
        (lambda: model.evaluate([u(1, 2, big)]), r"sequences\[0\]\[2\] is"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match + ".*must fit in 64 bits"):
            call()
    # uint64 ids below 2**63 are ids like any other
    a = model.recommend_batch(np.array([[1, 2]], dtype=np.uint64))
    b = model.recommend_batch([[1, 2]])
    np.testing.assert_array_equal(a[0], b[0])


def test_numpy_integers_of_mixed_types_keep_their_exact_ids():
    """Found by tests/test_fuzz.py: numpy makes float64 of a list mixing uint64 with other
    integers, which rounded ids past 2**53 (2**53 + 1 became 2**53, another item) and
    raised OverflowError near 2**63; the ids now come from the checked values."""
    ids = [2**53, 2**53 + 1, 2**62 + 1, 2**63 - 1, 3]
    m = SASRec(**SMALL).fit([ids, ids[::-1]])
    assert m.item_ids.tolist() == sorted(ids)
    m2 = SASRec(**SMALL).fit([[np.uint64(2**53 + 1), np.int64(2**53)],
                              [np.uint64(2**62 + 1), 2**63 - 1, np.int8(3)]])
    assert m2.item_ids.tolist() == sorted(ids)
    mixed = [[np.uint64(2**53 + 1), np.int64(3)], [np.uint64(1), 2**63 - 1]]
    a = m.recommend_batch(mixed, n=5)
    b = m.recommend_batch([[2**53 + 1, 3], [1, 2**63 - 1]], n=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(m.recommend([np.uint64(2**62 + 1), np.int64(3)])[0],
                                  m.recommend([2**62 + 1, 3])[0])


def test_strings_ending_with_nul_are_refused():
    """Found by tests/test_fuzz.py: NumPy strings drop trailing NUL characters, so "a\\x00"
    was silently the item "a" (and fit merged the two into one item)."""
    with pytest.raises(ValueError, match=r"sequences\[0\]\[1\] is 'a\\x00': ids may not hold "
                                         r"control characters \(below 0x20: NUL"):
        SASRec(**SMALL).fit([["a", "a\x00"], ["b", "a"]])
    m = SASRec(**SMALL).fit([["a", "b", "c"], ["c", "b", "a"]])
    for call, where in [(lambda: m.recommend(["a\x00", "b"]), r"session\[0\]"),
                        (lambda: m.recommend(["b"], exclude=("c\x00",)), r"exclude\[0\]"),
                        (lambda: m.recommend_batch([["a"], ["b", "c\x00"]]), r"sessions\[1\]\[1\]"),
                        (lambda: m.evaluate([("a", "\x00")]), r"sequences\[0\]\[1\]"),
                        (lambda: fastsasrec.Sequences(["a", "b\x00"], [0, 2]), r"items\[1\]")]:
        with pytest.raises(ValueError, match=where + ".*NUL"):
            call()


CONTROL = ["a\x00b", "\x00", "sku\t1", "line\n", "cr\r", "\x1f", "del\x7f", "\x01x"]


@pytest.mark.parametrize("bad", CONTROL)
def test_control_characters_in_ids_are_refused_on_every_path(bad):
    """A control character anywhere in an id (NUL inside one included: NumPy kept it, and
    it was another, unknown, id) is refused by fit, recommend, recommend_batch, exclude,
    evaluate, Sequences and event tables, naming the value."""
    text = re.escape(repr(bad))
    m = SASRec(**SMALL).fit([["a", "b", "c"], ["c", "b", "a"]])
    calls = [(lambda: SASRec(**SMALL).fit([["a", bad], ["b", "a"]]), r"sequences\[0\]\[1\]"),
             (lambda: m.recommend(["a", bad]), r"session\[1\]"),
             (lambda: m.recommend(["a"], exclude=[bad]), r"exclude\[0\]"),
             (lambda: m.recommend_batch([["a"], ["b", bad]]), r"sessions\[1\]\[1\]"),
             (lambda: m.recommend_batch([["a"]], exclude=[[bad]]), r"exclude\[0\]\[0\]"),
             (lambda: m.evaluate([["a", "b", bad]]), r"sequences\[0\]\[2\]"),
             (lambda: fastsasrec.Sequences(np.array(["a", bad], dtype=object), [0, 2]), r"items\[1\]"),
             (lambda: SASRec.from_transactions(pd.DataFrame({"u": [1, 1], "i": ["a", bad]}), "u", "i",
                                               **SMALL), r"column 'i'\[1\]"),
             (lambda: SASRec.from_transactions(pd.DataFrame({"u": ["x", bad], "i": ["a", "b"]}), "u", "i",
                                               **SMALL), r"column 'u'\[1\]")]
    if not bad.endswith("\x00"):  # NumPy drops a trailing NUL of a str array: nothing to see
        calls += [(lambda: fastsasrec.Sequences(np.array(["a", bad]), [0, 2]), r"items\[1\]"),
                  (lambda: m.recommend_batch([np.array(["a", bad])]), r"sessions\[0\]\[1\]")]
    for call, where in calls:
        with pytest.raises(ValueError, match=where + f" is {text}: ids may not hold control characters"):
            call()


def test_printable_unicode_ids_still_pass():
    ids = ["café", "a b", "ü-1", "\u00a0x", "\u2028"]
    m = SASRec(**SMALL).fit([ids, ids[::-1]])
    assert sorted(m.item_ids.tolist()) == sorted(ids)
    assert m.recommend(ids[:2], n=2)[0].size == 2


def test_nested_entries_in_a_session_are_named():
    """Found by tests/test_fuzz.py: a session [()] or [[]] (numpy: shape (1, 0)) passed as an
    empty session, and a nested entry gave numpy's "inhomogeneous shape" error."""
    m = SASRec(**SMALL).fit(SEQS)
    with pytest.raises(ValueError, match=r"sessions\[0\] must be 1-dimensional, got shape \(1, 0\)"):
        m.recommend_batch([[()]])
    with pytest.raises(ValueError, match=r"session must be 1-dimensional"):
        m.recommend([[]])
    with pytest.raises(ValueError, match=r"sessions\[1\]\[1\] is \[2, 3\] \(list\): item ids must be"):
        m.recommend_batch([[1], [1, [2, 3]]])
    with pytest.raises(ValueError, match=r"exclude\[0\] is array\(\[1, 2\]\) \(ndarray\)"):
        m.recommend([1], exclude=[np.array([1, 2]), 3])


@pytest.mark.parametrize("name", ["dropout", "learning_rate", "weight_decay"])
def test_numbers_beyond_the_float_range_are_value_errors(name):
    """Found by tests/test_fuzz.py: float() of 10**400 raised OverflowError."""
    for value in (10**400, -10**400):
        with pytest.raises(ValueError, match=f"{name} must be a finite number, got -?1000"):
            SASRec(**{name: value})
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        SASRec().set_params(**{name: 10**400})


@pytest.mark.parametrize("lib", ["pandas", "polars", "pyarrow"])
def test_event_tables_reject_wide_ids_and_missing_values_alike(lib):
    """One rule for every kind of table: uint64 item ids beyond int64 are named, and a
    null, NaN or NaT (polars and pyarrow keep NaN apart from null) is a missing value
    named by column and row, never a time that reorders events."""
    mod = pytest.importorskip(lib)
    make = {"pandas": lambda d: mod.DataFrame(d), "polars": lambda d: mod.DataFrame(d),
            "pyarrow": lambda d: mod.table(d)}[lib]
    base = dict(user=np.array([1, 1, 1]), item=np.array([1, 2, 3]), ts=np.array([3.0, 2.0, 1.0]))

    def fit(**cols):
        return SASRec.from_transactions(make(dict(base, **cols)), user_col="user", item_col="item",
                                        timestamp_col="ts", **SMALL)

    with pytest.raises(ValueError, match=r"column 'item'\[1\] is 9223372036854775811: .*64 bits"):
        fit(item=np.array([1, 2**63 + 3, 5], dtype=np.uint64))
    with pytest.raises(ValueError, match=r"column 'ts' \(timestamp_col\) has a missing value at row 1"):
        fit(ts=np.array([3.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match=r"column 'user' \(user_col\) has a missing value at row 2"):
        fit(user=np.array([1.0, 1.0, np.nan]))
    with pytest.raises(ValueError, match=r"column 'ts' \(timestamp_col\) has a missing value at row 0"):
        fit(ts=np.array(["NaT", "2020-01-01", "2020-01-02"], dtype="datetime64[ms]"))
    m = fit()  # the same table without them trains, newest event last
    assert m.item_ids.tolist() == [1, 2, 3]


def test_flags_and_seeds_are_checked_by_name():
    """A string where a bool belongs would count as true; a string seed reached NumPy."""
    from fastsasrec import SASRec

    model = SASRec(factors=8, max_seq=5, iterations=1, random_state=0).fit([[1, 2, 3], [2, 3, 4]] * 5)
    for call in (lambda: model.recommend([1, 2], exclude_seen="no"),
                 lambda: model.recommend_batch([[1, 2]], exclude_seen=None)):
        with pytest.raises(ValueError, match="exclude_seen must be True or False, got"):
            call()
    assert model.recommend([1, 2], exclude_seen=np.bool_(False))[0].size == 4
    with pytest.raises(ValueError, match="random_state must be a non-negative integer or None, got '0'"):
        model.evaluate([[1, 2, 3]], protocol="sampled", n_negatives=1, random_state="0")
    model.evaluate([[1, 2, 3]], protocol="sampled", n_negatives=1, random_state=None)


def test_a_session_without_an_order_is_refused_and_an_exclusion_set_is_welcome():
    """A set (or a dict) has no visit order, and its iteration order would silently stand in
    for one: refused as a session and in fit's sequences, by name. exclude, denylist and
    candidates are sets of items, so sets there answer as the same lists do."""
    m = SASRec(factors=8, n_layers=1, max_seq=6, iterations=2, random_state=0, num_threads=1)
    m.fit([[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6], [4, 5, 6, 7]] * 5)
    for unordered in ({1, 2, 3}, frozenset([2, 3]), {1: "a", 2: "b"}, {1: 0}.keys()):
        with pytest.raises(ValueError, match=r"session is a \w+, which has no order"):
            m.recommend(unordered, n=2)
        with pytest.raises(ValueError, match=r"sessions\[1\] is a \w+, which has no order"):
            m.recommend_batch([[1, 2], unordered], n=2)
    with pytest.raises(ValueError, match=r"sequences\[0\] is a set, which has no order"):
        SASRec(iterations=1).fit([{1, 2, 3}, [2, 3, 4]])
    as_list = m.recommend([1, 2], n=3, exclude=[4], denylist=[5], candidates=[3, 4, 5, 6, 7])
    as_set = m.recommend([1, 2], n=3, exclude={4}, denylist={5}, candidates={3, 4, 5, 6, 7})
    np.testing.assert_array_equal(as_set.ids, as_list.ids)
    np.testing.assert_array_equal(as_set.scores, as_list.scores)
    batch = m.recommend_batch([[1, 2], [3]], n=3, exclude=[{4}, frozenset()], denylist={5})
    np.testing.assert_array_equal(batch.ids[0], as_list.ids)
