"""The store use cases: event logs in, the notebook's compatibility layer, similar items,
session quality, evaluation protocols, and the training experience (validation, early
stopping, callbacks, interruption, progress).  Every test that trains or serves a model
runs once per device (the conftest's device fixture), except the exact comparisons of
TestFromTransactions (a CPU property: deterministic) and the argument checks."""
import numpy as np
import pytest

from fastsasrec import SASRec
from conftest import chain_sessions, epochs

KW = dict(factors=24, n_layers=2, n_heads=2, max_seq=12, dropout=0.1, batch_size=64, num_threads=1)


@pytest.fixture(scope="module")
def model(chain_data, device):
    return SASRec(iterations=epochs(device, 40), random_state=3, device=device, **KW).fit(chain_data)


def events_frame(sessions, shuffle_seed=0):
    pd = pytest.importorskip("pandas")
    rows = [(f"u{u}", item, t) for u, s in enumerate(sessions) for t, item in enumerate(s)]
    df = pd.DataFrame(rows, columns=["user", "item", "ts"])
    return df.sample(frac=1.0, random_state=shuffle_seed).reset_index(drop=True)  # order must not matter


class TestFromTransactions:  # exact comparisons after training: CPU (deterministic)
    def test_pandas_matches_fit_on_sequences(self, chain_data):
        seqs = chain_data[:120]
        df = events_frame(seqs)
        a = SASRec.from_transactions(df, user_col="user", item_col="item", timestamp_col="ts",
                                     iterations=2, random_state=5, device="cpu", **KW)
        # users sort as strings: u0, u1, u10, ...
        order = sorted(range(len(seqs)), key=lambda u: f"u{u}")
        b = SASRec(iterations=2, random_state=5, device="cpu", **KW).fit([seqs[u] for u in order])
        np.testing.assert_array_equal(a.item_embeddings, b.item_embeddings)

    def test_stable_order_for_equal_times(self):
        pd = pytest.importorskip("pandas")
        df = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "item_id": [5, 6, 7, 6, 5], "timestamp": [0, 0, 0, 1, 1]})
        from fastsasrec._event_table import transactions_to_sequences

        flat, off, users = transactions_to_sequences(df, "user_id", "item_id", "timestamp")
        assert flat.tolist() == [5, 6, 7, 6, 5] and off.tolist() == [0, 3, 5] and users.tolist() == [1, 2]

    @pytest.mark.parametrize("lib", ["pandas", "polars", "pyarrow"])
    def test_datetimes_with_a_zone(self, lib):
        # Logs from parquet or Spark often hold times with a zone: they order as the
        # instants they are, in every kind of table, as the same times without a zone.
        pd = pytest.importorskip("pandas")
        mod = pytest.importorskip(lib)
        from fastsasrec._event_table import transactions_to_sequences

        naive = pd.to_datetime(["2024-01-01 00:30", "2024-01-01 01:00", "2024-01-01 00:00",
                                "2024-01-02 00:00", "2024-01-01 00:00"])
        df = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "item_id": [11, 12, 10, 10, 13], "ts": naive})
        zoned = df.assign(ts=naive.tz_localize("UTC").tz_convert("America/New_York"))
        assert isinstance(zoned["ts"].dtype, pd.DatetimeTZDtype)
        table = zoned if lib == "pandas" else mod.from_pandas(zoned) if lib == "polars" else mod.Table.from_pandas(zoned)
        flat, off, users = transactions_to_sequences(table, "user_id", "item_id", "ts")
        assert flat.tolist() == [10, 11, 12, 13, 10] and off.tolist() == [0, 3, 5]
        assert [a.tolist() for a in transactions_to_sequences(df, "user_id", "item_id", "ts")] == \
            [flat.tolist(), off.tolist(), users.tolist()]

    @pytest.mark.parametrize("lib", ["polars", "pyarrow"])
    def test_polars_and_pyarrow(self, chain_data, lib):
        mod = pytest.importorskip(lib)
        df = events_frame(chain_data[:80])
        table = mod.from_pandas(df) if lib == "polars" else mod.Table.from_pandas(df)
        a = SASRec.from_transactions(table, user_col="user", item_col="item", timestamp_col="ts",
                                     iterations=2, random_state=5, device="cpu", **KW)
        b = SASRec.from_transactions(df, user_col="user", item_col="item", timestamp_col="ts",
                                     iterations=2, random_state=5, device="cpu", **KW)
        np.testing.assert_array_equal(a.item_embeddings, b.item_embeddings)

    def test_bad_tables(self):
        pd = pytest.importorskip("pandas")
        df = pd.DataFrame({"user_id": [1, 1], "item_id": [5, 6], "timestamp": [0, 1]})
        with pytest.raises(ValueError, match=r"item_col='product' is not a column.*\['user_id', 'item_id', 'timestamp'\]"):
            SASRec.from_transactions(df, item_col="product")
        with pytest.raises(ValueError, match="empty"):
            SASRec.from_transactions(df.iloc[:0])
        bad = pd.DataFrame({"user_id": [1, 1], "item_id": [5.0, np.nan], "timestamp": [0, 1]})
        with pytest.raises(ValueError, match=r"column 'item_id' \(item_col\) has a missing value at row 1"):
            SASRec.from_transactions(bad)
        with pytest.raises(ValueError, match="must be a pandas DataFrame"):
            SASRec.from_transactions({"user_id": [1]})
        with pytest.raises(ValueError, match=r"column 'timestamp' \(timestamp_col\) must hold numbers or "
                           r"dates: row 0 is 'a', neither a number nor a date"):
            SASRec.from_transactions(df.assign(timestamp=["a", "b"]))
        with pytest.raises(ValueError, match=r"column 'timestamp' \(timestamp_col\) must hold numbers, "
                           r"datetimes or dates as text, got bool"):
            SASRec.from_transactions(df.assign(timestamp=[True, False]))


class TestCompatibilityLayer:
    def test_maps_and_embeddings(self, model):
        imap, rev = model._item_map, model._rev_item_map
        assert len(imap) == model.n_items and all(rev[imap[x]] == x for x in imap)
        E = model._item_emb
        assert E.shape == (model.n_items + 1, KW["factors"]) and not E[0].any()
        np.testing.assert_array_equal(E[imap[110]], model.item_embeddings[imap[110] - 1])

    def test_recommend_items_matches_recommend(self, model):
        imap = model._item_map
        enc = [imap[110], imap[111], imap[112]]
        ids, scores = model.recommend_items(user_sequence=enc, n=5, exclude=enc)
        oids, oscores = model.recommend([110, 111, 112], n=5)
        assert [model._rev_item_map[i] for i in ids] == oids.tolist()
        np.testing.assert_array_equal(scores, oscores)
        with pytest.raises(ValueError, match="outside"):
            model.recommend_items(user_sequence=[0], n=2)


def test_similar_items(model):
    ids, sims = model.similar_items(110, n=5)
    assert ids.shape == (5,) and 110 not in ids.tolist()
    assert np.all(np.diff(sims) <= 0) and np.all(sims <= 1.0 + 1e-6)
    E = model.item_embeddings
    col = {v: i for i, v in enumerate(model.item_ids.tolist())}
    u, v = E[col[110]], E[col[ids[0]]]
    assert sims[0] == pytest.approx(u @ v / np.linalg.norm(u) / np.linalg.norm(v), rel=1e-5)
    with pytest.raises(ValueError, match="not in the model's catalogue"):
        model.similar_items(99999)


def test_session_quality(model):
    E = model.item_embeddings
    col = {v: i for i, v in enumerate(model.item_ids.tolist())}
    sess = [110, 111, 125, 133]
    U = E[[col[x] for x in sess]].astype(np.float64)
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    S = U @ U.T
    want = np.clip((S.sum() - 4) / 12, 0, 1)
    assert model.session_quality(sess) == pytest.approx(want, abs=1e-6)
    assert model.session_quality([110]) == 0.0 and model.session_quality([99999, 5]) == 0.0
    assert 0.0 <= model.session_quality([110, 111, 112, 113]) <= 1.0


class TestEvaluate:
    @pytest.mark.emulated_gpu
    def test_loo_matches_metrics_by_hand(self, model):
        test = chain_sessions(n_sessions=60, seed=11)
        res = model.evaluate(test, k=10)
        assert res["protocol"] == "leave-one-out, full catalogue ranking" and res["n"] == 60
        ids, _ = model.recommend_batch([s[:-1] for s in test], n=10)
        hits = [s[-1] in row for s, row in zip(test, ids.tolist())]
        assert res["HR@10"] == pytest.approx(np.mean(hits))
        assert 0 < res["coverage@10"] <= 1 and res["MRR@10"] <= res["NDCG@10"] <= res["HR@10"]

    def test_sampled_is_labelled_and_easier(self, model):
        test = chain_sessions(n_sessions=60, seed=12)
        loo = model.evaluate(test, k=1)
        sampled = model.evaluate(test, k=1, protocol="sampled", n_negatives=20)
        assert "sampled" in sampled["protocol"] and "SASRec paper" in sampled["protocol"]
        assert sampled["HR@1"] >= loo["HR@1"]

    def test_bad_arguments(self, model):
        with pytest.raises(ValueError, match="protocol must be"):
            model.evaluate([[110, 111]], protocol="full")
        with pytest.raises(ValueError, match="nothing to evaluate"):
            model.evaluate([[110]])


class TestTrainingExperience:
    def test_early_stopping_restores_best(self, chain_data, device):
        train, val = chain_data[:200], chain_data[200:]
        m = SASRec(iterations=12, learning_rate=3e-2, random_state=2, device=device, **KW)
        m.fit(train, validation=val, early_stopping_patience=2)
        scores = [h["val_NDCG@10"] for h in m.history_]
        assert m.best_epoch_ == 1 + int(np.argmax(scores))
        assert m.evaluate(val)["NDCG@10"] == pytest.approx(max(scores))
        if len(scores) < 12:
            assert len(scores) - m.best_epoch_ == 2

    def test_callbacks_can_stop(self, chain_data, device):
        seen = []

        def cb(model, epoch, logs):
            seen.append((epoch, round(logs["loss"], 6)))
            return epoch == 3

        m = SASRec(iterations=10, device=device, **KW).fit(chain_data, callbacks=[cb])
        assert [e for e, _ in seen] == [1, 2, 3] and len(m.loss_history_) == 3

    def test_keyboard_interrupt_keeps_a_usable_model(self, chain_data, device):
        def cb(model, epoch, logs):
            if epoch == 2:
                raise KeyboardInterrupt

        with pytest.warns(UserWarning, match="interrupted: the model keeps the weights of epoch 2"):
            m = SASRec(iterations=10, device=device, **KW).fit(chain_data, callbacks=[cb])
        assert len(m.loss_history_) == 2
        assert m.recommend([110, 111], n=3)[0].shape == (3,)

    def test_bad_fit_arguments(self, chain_data):
        with pytest.raises(ValueError, match="needs validation"):
            SASRec(**KW).fit(chain_data, early_stopping_patience=2)
        with pytest.raises(ValueError, match="early_stopping_patience must be a positive integer"):
            SASRec(**KW).fit(chain_data, validation=chain_data, early_stopping_patience=0)
        with pytest.raises(ValueError, match="callbacks must be"):
            SASRec(**KW).fit(chain_data, callbacks=[3])

    def test_progress_bar_when_verbose(self, chain_data, capsys, device):
        SASRec(iterations=2, verbose=1, device=device, **KW).fit(chain_data)
        err = capsys.readouterr().err
        assert "SASRec" in err and "tok/s" in err and "2/2" in err


def test_recommend_batch_leaves_out_each_sessions_own_exclusions():
    """exclude= (a cart per session) is left out like the session's own items, row by row;
    unknown ids in it are ignored, and a cold session's popular items skip it too."""
    from fastsasrec import SASRec
    rng = np.random.default_rng(11)
    seqs = [rng.integers(1, 40, size=8).tolist() for _ in range(200)]
    m = SASRec(factors=16, n_layers=1, iterations=2, num_threads=1, device="cpu").fit(seqs)
    sessions = [[1, 2, 3], [4, 5], [999], [6]]
    base, _ = m.recommend_batch(sessions, n=10)
    carts = [base[0][:3].tolist(), [], base[2][:2].tolist() + [12345], [7, 8]]
    ids, scores = m.recommend_batch(sessions, n=10, exclude=carts)
    for b, (s, cart) in enumerate(zip(sessions, carts)):
        assert not set(ids[b].tolist()) & (set(cart) | set(s)), b
        one, one_scores = m.recommend(s, n=10, exclude=cart)
        np.testing.assert_array_equal(ids[b], one)
        np.testing.assert_array_equal(scores[b], one_scores)
    np.testing.assert_array_equal(ids[1], base[1])  # an empty entry changes nothing
    with pytest.raises(ValueError, match="exclude must have one entry per session: 3 entries for 4"):
        m.recommend_batch(sessions, exclude=carts[:3])
