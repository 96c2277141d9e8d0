"""A fitted model is one snapshot, published whole: safe to hold in a long-lived process.

A call running while another thread refits gets wholly the old model or wholly the new
one; a fit that fails leaves the estimator exactly as it was; set_params changes only the
next fit; recommend_batch never allocates more columns than the catalogue has, and its
empty slots are marked by an id no item can have.  CPU only: the comparisons are exact
(training is deterministic for a seed and a thread count), and the snapshot is Python's.
"""
import threading
import time
import types

import numpy as np
import pytest

import fastsasrec._training as training_module
from fastsasrec import SASRec
from conftest import chain_sessions

KW = dict(factors=8, n_layers=1, n_heads=1, max_seq=6, dropout=0.1, n_negatives=4,
          batch_size=32, iterations=2, random_state=7, num_threads=1, device="cpu")
A = chain_sessions(n_sessions=80, n_items=30, offset=1)
B = [[x + 1000 for x in s] for s in A]  # the same shape, another catalogue: a mix shows
# Sessions each model reads differently: the known part of a mixed session, a session
# only one model knows (cold for the other), and one neither knows (cold for both).
SESSIONS = [[1, 2, 3, 1001, 1002, 1003], [7, 8], [1010, 1011, 1012], [99999], [20, 1021, 22, 1023]]


def ref(data):
    """A model fitted alone on data, and its answers for SESSIONS."""
    m = SASRec(**KW).fit(data)
    ids, scores = m.recommend_batch(SESSIONS, n=5)
    one = m.recommend(SESSIONS[0], n=4)
    return types.SimpleNamespace(model=m, ids=ids, scores=scores, one=one,
                                 catalogue=set(m.item_ids.tolist()),
                                 loss_history=m.loss_history_, ev=m.evaluate(A[:20], k=5))


@pytest.fixture(scope="module")
def refs():
    return {"A": ref(A), "B": ref(B)}


def which(refs, ids, scores):
    """The name of the model whose answer (ids, scores) is, or None for a mix."""
    for name, r in refs.items():
        if np.array_equal(ids, r.ids) and np.allclose(scores, r.scores, rtol=1e-5, atol=1e-6):
            return name
    return None


def test_the_two_catalogues_answer_differently(refs):
    """The premise of the concurrency tests: a mix of the two models is detectable."""
    a, b = refs["A"], refs["B"]
    assert not a.catalogue & b.catalogue
    assert set(a.ids.ravel().tolist()) <= a.catalogue and set(b.ids.ravel().tolist()) <= b.catalogue
    assert not np.allclose(a.scores, b.scores)


def test_refit_while_serving_gives_each_call_wholly_one_model(refs):
    """Threads call recommend_batch, recommend and evaluate in a loop while the main thread
    refits on the other catalogue, alternately: every answer is exactly model A's or
    exactly model B's (each catalogue's ids, that model's own scores), never a mix."""
    m = SASRec(**KW).fit(A)
    stop = threading.Event()
    n_workers = 3
    seen = [set() for _ in range(n_workers)]
    bad, calls = [], [0] * n_workers

    def serve(w):
        try:
            while not stop.is_set() and calls[w] < 20_000:
                ids, scores = m.recommend_batch(SESSIONS, n=5)
                name = which(refs, ids, scores)
                if name is None:
                    bad.append(("recommend_batch", ids.tolist(), scores.tolist()))
                    return
                seen[w].add(name)
                calls[w] += 1
                if calls[w] % 10 == 0:
                    one_ids, one_scores = m.recommend(SESSIONS[0], n=4)
                    if not any(np.array_equal(one_ids, r.one[0]) and np.allclose(one_scores, r.one[1], rtol=1e-5)
                               for r in refs.values()):
                        bad.append(("recommend", one_ids.tolist(), one_scores.tolist()))
                        return
                if w == 0 and calls[w] % 50 == 0:
                    ev = m.evaluate(A[:20], k=5)  # B's: every held-out item unknown
                    if ev not in (refs["A"].ev, refs["B"].ev):
                        bad.append(("evaluate", ev))
                        return
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            bad.append(("error", repr(e)))

    threads = [threading.Thread(target=serve, args=(w,)) for w in range(n_workers)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    refits = 0
    try:
        while time.monotonic() < deadline and not bad:
            m.fit(B if refits % 2 == 0 else A)
            refits += 1
            if refits >= 20 and all(s == {"A", "B"} for s in seen):
                break
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not bad, bad[0]
    assert all(s == {"A", "B"} for s in seen), (seen, refits, calls)
    # The last refit is the model now, wholly.
    last = refs["B" if refits % 2 == 1 else "A"]
    assert which(refs, *m.recommend_batch(SESSIONS, n=5)) == ("B" if refits % 2 == 1 else "A")
    assert set(m.item_ids.tolist()) == last.catalogue and m.loss_history_ == last.loss_history


def test_a_fit_in_progress_is_seen_by_its_callbacks_only(refs):
    """While a refit trains, the estimator keeps serving its previous model; the
    callbacks' model is the one being trained."""
    m = SASRec(**KW).fit(A)
    during = []

    def cb(model, epoch, logs):
        during.append((which(refs, *m.recommend_batch(SESSIONS, n=5)),
                       set(model.item_ids.tolist()) == refs["B"].catalogue,
                       model.loss_history_, m.loss_history_))

    m.fit(B, callbacks=[cb])
    assert [d[0] for d in during] == ["A", "A"] and all(d[1] for d in during)
    assert [d[2] for d in during] == [refs["B"].loss_history[:1], refs["B"].loss_history]
    assert all(d[3] == refs["A"].loss_history for d in during)
    assert which(refs, *m.recommend_batch(SESSIONS, n=5)) == "B"


def _held_writer(m, call):
    """Starts ``call(callbacks)`` in a thread and holds it in its first epoch's callback
    until released: (thread, release, errors)."""
    inside, release, errors = threading.Event(), threading.Event(), []

    def hold(model, epoch, logs):
        inside.set()
        assert release.wait(60)

    def run():
        try:
            call([hold])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    assert inside.wait(60)
    return t, release, errors


def test_two_concurrent_fits_are_serialised_and_the_later_one_wins(refs):
    """Writers are serialised: a fit started while another runs waits for it to end (it
    never trains beside it), then its own complete model is published."""
    for first, last in (("A", "B"), ("B", "A")):
        m = SASRec(**KW)
        data = {"A": A, "B": B}
        t1, release, errors = _held_writer(m, lambda cbs: m.fit(data[first], callbacks=cbs))
        t2 = threading.Thread(target=lambda: m.fit(data[last]))
        t2.start()
        t2.join(0.5)
        assert t2.is_alive() and m._state is None  # waits for the first writer
        release.set()
        t1.join(60)
        t2.join(60)
        assert not errors, errors
        assert which(refs, *m.recommend_batch(SESSIONS, n=5)) == last
        assert set(m.item_ids.tolist()) == refs[last].catalogue
        assert m.loss_history_ == refs[last].loss_history
    # Racing freely: whichever wins, the model is wholly it.
    for _ in range(3):
        m = SASRec(**KW)
        threads = [threading.Thread(target=m.fit, args=(d,)) for d in (A, B)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        name = which(refs, *m.recommend_batch(SESSIONS, n=5))
        assert name is not None
        assert set(m.item_ids.tolist()) == refs[name].catalogue
        assert m.loss_history_ == refs[name].loss_history and m._state.config["n_items"] == 30


def test_overlapping_partial_fits_lose_nothing():
    """A second partial_fit called while one runs waits and trains on its result: both
    calls' new items and epochs are in the model (the second used to start from the
    model as it was and drop the first's)."""
    m = SASRec(**KW).fit(A)
    base = len(m.loss_history_)
    day1 = [[1, 2, 500, 501]] * 8
    day2 = [[3, 4, 600, 601]] * 8
    t1, release, errors = _held_writer(m, lambda cbs: m.partial_fit(day1, epochs=2, callbacks=cbs))
    t2 = threading.Thread(target=lambda: m.partial_fit(day2, epochs=3))
    t2.start()
    t2.join(0.5)
    assert t2.is_alive()
    release.set()
    t1.join(60)
    t2.join(60)
    assert not errors, errors
    assert {500, 501, 600, 601} <= set(m.item_ids.tolist())
    assert len(m.loss_history_) == base + 5


def test_a_thread_count_set_during_partial_fit_is_kept():
    """set_params(num_threads=...) applies at once, and the model a partial_fit running
    meanwhile publishes keeps it (it used to be reverted to the count the call began with)."""
    m = SASRec(**dict(KW, num_threads=2)).fit(A)
    t, release, errors = _held_writer(m, lambda cbs: m.partial_fit(A[:10], epochs=1, callbacks=cbs))
    m.set_params(num_threads=1)
    release.set()
    t.join(60)
    assert not errors, errors
    assert m.num_threads == 1 and m.fitted_params_["num_threads"] == 1 and m._engine.threads == 1


def snapshot(m):
    return (m.recommend_batch(SESSIONS, n=5), m.item_ids.tolist(), m.loss_history_, m.history_,
            m.best_epoch_, m.loss_, m.n_items)


def same(a, b):
    (ia, sa), *ra = a
    (ib, sb), *rb = b
    return np.array_equal(ia, ib) and np.array_equal(sa, sb) and ra == rb


@pytest.mark.parametrize("how", ["diverges", "callback raises", "bad validation", "bad catalogue"])
def test_a_failed_fit_keeps_the_previous_model(refs, tmp_path, how):
    m = SASRec(**KW).fit(A)
    before = snapshot(m)
    state = m._state
    kwargs, data, err = {}, B, RuntimeError
    if how == "diverges":  # learning_rate=1e9: the loss of epoch 2 is NaN
        m.set_params(learning_rate=1e9, iterations=3)
    elif how == "callback raises":
        def cb(model, epoch, logs):
            if epoch == 2:
                raise ValueError("from the callback")
        kwargs, err = dict(callbacks=[cb]), ValueError
    elif how == "bad validation":
        kwargs, err = dict(validation=[["x", "y"]]), ValueError
    else:
        data, err = [s + [-1] for s in B], ValueError
    with pytest.raises(err):
        m.fit(data, **kwargs)
    assert m._state is state and same(snapshot(m), before)
    m.save(tmp_path / "m.fsr")  # the previous model, whole, and a file that loads
    loaded = SASRec.load(tmp_path / "m.fsr", device="cpu")
    assert same(snapshot(loaded)[:2], before[:2])


def test_a_failed_first_fit_leaves_the_model_unfitted(tmp_path):
    m = SASRec(**dict(KW, learning_rate=1e9, iterations=3))
    with pytest.raises(RuntimeError, match=r"diverged at epoch \d+: loss is nan"):
        m.fit(A)
    assert m._state is None and m.loss_history_ == [] and m.loss_ is None
    for call in (lambda: m.recommend([1, 2]), lambda: m.recommend_batch([[1]]),
                 lambda: m.save(tmp_path / "m.fsr"), lambda: m.item_ids, lambda: m.evaluate(A)):
        with pytest.raises(ValueError, match="not fitted"):
            call()
    assert not (tmp_path / "m.fsr").exists()


def test_weights_that_are_not_finite_are_never_published(monkeypatch):
    """Each epoch's loss can be finite while the last step's weights are not: the weights
    themselves are checked before the model is published."""
    m = SASRec(**KW).fit(A)
    state = m._state
    real = training_module._core

    class NaNAfterTraining:  # an engine whose last optimizer step overflowed
        def __init__(self, *args, **kwargs):
            self._e = real.Model(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._e, name)

        def get_params(self):
            p = self._e.get_params()
            p[-1] = np.inf
            return p

    monkeypatch.setattr(training_module, "_core", types.SimpleNamespace(Model=NaNAfterTraining))
    with pytest.raises(RuntimeError, match="weights after epoch 2 are not finite"):
        m.fit(B)
    with pytest.raises(RuntimeError, match="not finite"):
        SASRec(**KW).fit(B)._state
    assert m._state is state


def test_keyboard_interrupt_still_installs_the_last_completed_epoch(refs):
    m = SASRec(**dict(KW, iterations=5)).fit(A)

    def cb(model, epoch, logs):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.warns(UserWarning, match="keeps the weights of epoch 2"):
        m.fit(B, callbacks=[cb])
    assert set(m.item_ids.tolist()) == refs["B"].catalogue
    assert m.loss_history_ == refs["B"].loss_history  # the same two epochs as a 2-epoch fit
    assert which(refs, *m.recommend_batch(SESSIONS, n=5)) == "B"


def test_set_params_after_fit_changes_only_the_next_fit(refs, tmp_path):
    m = SASRec(**KW).fit(A)
    want = m.recommend_batch(SESSIONS, n=5)
    long = [1 + k % 30 for k in range(40)]
    emb = m.session_embeddings([long, long[-KW["max_seq"]:]])
    ev = m.evaluate(A[:20], k=5)
    m.set_params(factors=16, n_heads=2, max_seq=30, loss="bce", learning_rate=0.5, num_threads=2)
    assert m.get_params()["factors"] == 16 and m.fitted_params_["factors"] == 8
    assert m.fitted_params_["num_threads"] == 2 and m._engine.threads == 2  # the exception
    assert m.loss_ == refs["A"].model.loss_ == "softmax"
    got = m.recommend_batch(SESSIONS, n=5)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    e = m.session_embeddings([long, long[-KW["max_seq"]:]])
    assert e.shape == (2, 8)  # the fitted width, and the fitted max_seq: the last 6 items
    np.testing.assert_array_equal(e, emb)
    np.testing.assert_array_equal(e[0], e[1])
    assert m.evaluate(A[:20], k=5) == ev
    assert m.item_embeddings.shape == (30, 8)
    # The file holds the fitted model and the parameters it was fitted with.
    m.save(tmp_path / "m.fsr")
    loaded = SASRec.load(tmp_path / "m.fsr", device="cpu")
    got = loaded.recommend_batch(SESSIONS, n=5)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert {k: loaded.get_params()[k] for k in ("factors", "n_heads", "max_seq", "loss")} == \
        dict(factors=8, n_heads=1, max_seq=6, loss="auto")
    assert loaded.session_embeddings([long]).shape == (1, 8)
    # to() moves the fitted model, not the next fit's configuration.
    m.to("cpu")
    assert m._state.config["factors"] == 8 and m._state.config["max_seq"] == 6
    got = m.recommend_batch(SESSIONS, n=5)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    # The next fit takes the new parameters.
    m.set_params(loss="auto", learning_rate=1e-2)
    m.fit(A)
    assert m.session_embeddings([long]).shape == (1, 16)
    assert m._state.config["n_heads"] == 2 and m._state.config["max_seq"] == 30
    assert m.fitted_params_ == m.get_params()


class TestEmptySlots:
    def test_n_is_clamped_to_the_catalogue(self, refs):
        m = refs["A"].model
        ids, scores = m.recommend_batch(SESSIONS, n=2 * 10**7)
        assert ids.shape == scores.shape == (len(SESSIONS), 30)
        assert m.evaluate(A[:20], k=10**9)["HR@1000000000"] == 1.0
        assert m.recommend(SESSIONS[0], n=10**9)[0].size == 27  # 30 less the 3 seen

    def test_an_empty_slot_is_the_filler_id_with_score_minus_inf(self):
        seqs = [[1, 2, 3], [2, 3, 1], [3, 1, 2]]
        m = SASRec(**dict(KW, iterations=1)).fit(seqs)
        ids, scores = m.recommend_batch([[1, 2], [3], []], n=3)
        assert ids.tolist() == [[3, -1, -1], ids[1, :2].tolist() + [-1], ids[2].tolist()]
        assert np.isneginf(scores[0, 1:]).all() and np.isneginf(scores[1, 2])
        assert np.isfinite(scores[0, 0]) and np.isfinite(scores[2]).all()
        s = SASRec(**dict(KW, iterations=1)).fit([[str(x) for x in q] for q in seqs])
        ids, scores = s.recommend_batch([["1", "2"]], n=3)
        assert ids.tolist() == [["3", "", ""]] and np.isneginf(scores[0, 1:]).all()

    @pytest.mark.parametrize("seqs, fill", [([[1, -1, 2], [2, 1]], "-1"), ([["a", ""], ["b", "a"]], "''")])
    def test_fit_rejects_the_filler_as_an_item_id(self, seqs, fill):
        with pytest.raises(ValueError, match=f"item id {fill} is reserved"):
            SASRec(**KW).fit(seqs)

    def test_a_real_item_can_score_minus_inf(self):
        """Why the id marks an empty slot, not the score: finite but huge weights overflow a
        real item's score to -inf (and it is still recommended, as the last resort)."""
        m = SASRec(**dict(KW, iterations=1)).fit([[1, 2, 3, 4], [2, 3, 4, 5], [5, 4, 3]])
        p = m._engine.get_params()
        offsets = {name: (o, int(np.prod(s))) for name, o, s in m._engine.tensors()}
        o, size = offsets["final_ln.weight"]
        p[o:o + size] = 1e20
        m._engine.set_params(p)
        h = m.session_embeddings([[1, 2]])[0]
        p[8 * 5:8 * 6] = -np.sign(h) * 1e20  # item 5's embedding against the state
        m._engine.set_params(p)
        ids, scores = m.recommend_batch([[1, 2]], n=5, exclude_seen=False)
        assert ids[0, -1] == 5 and np.isneginf(scores[0, -1])

    def test_an_unknown_held_out_item_is_a_miss_even_if_it_equals_the_filler(self):
        m = SASRec(**dict(KW, iterations=1)).fit([[1, 2, 3], [2, 3, 1], [3, 1, 2]])
        # the context [1, 2] leaves one item: slots 2 and 3 are empty (-1)
        assert m.evaluate([[1, 2, -1]], k=3)["HR@3"] == 0.0
        assert m.evaluate([[1, 2, 3]], k=3)["HR@3"] == 1.0
