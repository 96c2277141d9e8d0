"""Behaviour of the SASRec estimator: learning, determinism, files, the API contract.
Every test that trains or serves a model runs once per device (the conftest's device
fixture); the determinism tests are CPU properties, and the parameter checks touch no
device."""
import numpy as np
import pytest

from fastsasrec import SASRec
from conftest import chain_sessions, epochs

SMALL = dict(factors=24, n_layers=2, n_heads=2, max_seq=12, dropout=0.1, n_negatives=16,
             batch_size=64, num_threads=1)


@pytest.fixture(scope="module")
def trained(chain_data, device):
    return SASRec(iterations=epochs(device, 60), random_state=3, device=device, **SMALL).fit(chain_data)


@pytest.mark.parametrize("loss", ["sampled_softmax", "bce", "softmax"])
def test_loss_falls_and_next_item_is_found(chain_data, loss, device):
    model = SASRec(loss=loss, iterations=60, random_state=1, device=device, **SMALL).fit(chain_data)
    hist = model.loss_history_
    assert len(hist) == 60
    assert hist[-1] < 0.5 * hist[0], f"{loss}: loss went {hist[0]:.3f} -> {hist[-1]:.3f}"
    # In the chain data, 110, 111, 112 is always followed by 113.
    hits = 0
    for start in range(0, 40, 4):
        session = [100 + (start + k) % 40 for k in range(4)]
        want = 100 + (start + 4) % 40
        ids, _ = model.recommend(session, n=1)
        hits += int(ids[0] == want)
    assert hits >= 9, f"{loss}: the true next item was top-1 for only {hits}/10 sessions"


@pytest.mark.emulated_gpu
def test_recommend_contract(trained):
    ids, scores = trained.recommend([110, 111, 112], n=5)
    assert ids.shape == (5,) and scores.shape == (5,)
    assert scores.dtype == np.float32
    assert np.all(np.diff(scores) <= 0), "scores must be sorted best first"
    assert not {110, 111, 112} & set(ids.tolist()), "seen items must be excluded"
    ids2, _ = trained.recommend([110, 111, 112], n=5, exclude_seen=False)
    ids3, _ = trained.recommend([110, 111, 112], n=5, exclude=[113])
    assert 113 not in ids3.tolist()
    assert set(ids.tolist()) <= set(trained.item_ids.tolist())
    # scores are the model's: h . E
    h = trained.session_embeddings([[110, 111, 112]])[0]
    E = trained.item_embeddings
    col = {v: i for i, v in enumerate(trained.item_ids.tolist())}
    np.testing.assert_allclose(scores, E[[col[i] for i in ids]] @ h, rtol=1e-4, atol=1e-4)
    assert ids2.shape == (5,)


def test_unknown_items_and_cold_sessions(trained):
    ids_a, s_a = trained.recommend([110, 111, 112], n=3)
    got = trained.recommend([99999, 110, 111, -5, 112], n=3)
    ids_b, s_b = got
    assert got.unknown == 2 and trained.recommend([110, 111, 112], n=3).unknown == 0
    batch = trained.recommend_batch([[99999, 110], [110, 111], [99999, 123456], []], n=3)
    np.testing.assert_array_equal(batch.unknown, [1, 0, 2, 0])
    np.testing.assert_array_equal(batch.fallback, [False, False, True, True])
    # unknown ids are ignored entirely
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_allclose(s_a, s_b, rtol=1e-6)
    cold_ids, cold_scores = trained.recommend([99999, 123456], n=4)
    pop = trained._popularity
    expect = trained.item_ids[np.argsort(-pop, kind="stable")[:4]]
    np.testing.assert_array_equal(cold_ids, expect)
    assert np.all(np.diff(cold_scores) <= 0)
    assert trained.recommend([], n=2)[0].shape == (2,)


@pytest.mark.emulated_gpu
def test_recommend_batch_matches_single(trained):
    sessions = [[110, 111], [130, 131, 132, 133], [99999], [120]]
    ids, scores = trained.recommend_batch(sessions, n=4)
    assert ids.shape == (4, 4) and scores.shape == (4, 4)
    for b, s in enumerate(sessions):
        i1, s1 = trained.recommend(s, n=4)
        np.testing.assert_array_equal(ids[b], i1)
        np.testing.assert_allclose(scores[b], s1, rtol=1e-5, atol=1e-6)


@pytest.mark.emulated_gpu
def test_candidates_ranks_only_those_as_the_whole_catalogue_does(trained):
    """recommend(candidates=S) is the whole catalogue's ranking less every item outside S: the
    same ids in the same order, the same scores bit for bit (a score depends on its
    session and item only), with every exclusion and the fallback among S."""
    rng = np.random.default_rng(4)
    all_ids = trained.item_ids_
    V = all_ids.size
    sessions = [[110, 111, 112], [130, 131], [99999], [], [139, 100, 101, 102, 103]]
    carts = [[113, 125], [], [101], [], [104]]
    deny = [120, 121]
    prev_how = trained._engine.scoring
    try:
        for how in ("fp32", "int8"):
            trained._engine.scoring = how
            for size in (1, 3, 17, V):
                S = rng.choice(all_ids, size=size, replace=False).tolist() + [424242]  # one unknown
                full = trained.recommend_batch(sessions, n=V, exclude=carts, denylist=deny)
                got = trained.recommend_batch(sessions, n=6, exclude=carts, denylist=deny, candidates=S)
                assert got.ids.shape == (len(sessions), min(6, size))
                np.testing.assert_array_equal(got.fallback, full.fallback)
                for b in range(len(sessions)):
                    keep = np.isin(full.ids[b], S)
                    want_ids, want_sc = full.ids[b][keep][:6], full.scores[b][keep][:6]
                    n = want_ids.size
                    np.testing.assert_array_equal(got.ids[b][:n], want_ids, err_msg=f"{how} {size} {b}")
                    np.testing.assert_array_equal(got.scores[b][:n], want_sc, err_msg=f"{how} {size} {b}")
                    assert (got.ids[b][n:] == -1).all() and np.isneginf(got.scores[b][n:]).all()
                    one = trained.recommend(sessions[b], n=6, exclude=carts[b], denylist=deny, candidates=S)
                    np.testing.assert_array_equal(one.ids, want_ids)
                    np.testing.assert_array_equal(one.scores, want_sc)
    finally:
        trained._engine.scoring = prev_how


def test_candidates_are_checked_by_name(trained):
    with pytest.raises(ValueError, match="candidates: none of the ids given is in the model's catalogue"):
        trained.recommend([110], n=3, candidates=[424242, 535353])
    with pytest.raises(ValueError, match="candidates"):
        trained.recommend([110], n=3, candidates=[[110, 111]])
    assert trained.recommend([110, 111], n=5, candidates=[112, 113]).ids.tolist() == [112, 113]
    # The engine checks what the ids index: candidates increasing in 1..V, exclusions and
    # n within the candidates.
    eng, V = trained._engine, trained.item_ids_.size
    items, off = np.array([1, 2], np.int32), np.array([0, 2], np.int64)
    none, none_off = np.zeros(0, np.int32), np.zeros(2, np.int64)
    for cand, match in ((np.array([3, 2], np.int32), "candidates must be increasing ids in 1..40: entry 1 is 2"),
                        (np.array([0, 2], np.int32), "entry 0 is 0"),
                        (np.array([2, V + 1], np.int32), f"entry 1 is {V + 1}")):
        with pytest.raises(ValueError, match=match):
            eng.recommend(items, off, 1, none, none_off, cand)
    with pytest.raises(ValueError, match="n must be in 1..2, got 3"):
        eng.recommend(items, off, 3, none, none_off, np.array([4, 5], np.int32))
    with pytest.raises(ValueError, match="exclude"):
        eng.recommend(items, off, 1, np.array([3], np.int32), np.array([0, 1], np.int64),
                      np.array([4, 5], np.int32))


def test_scores_follow_the_weights(chain_data):
    """The CPU scores from a table packed from the item embeddings; it is packed again
    whenever the weights change, so after training on, every way of scoring returns the
    current weights' scores."""
    m = SASRec(iterations=2, random_state=5, **SMALL).fit(chain_data)
    sessions = [[110, 111], [130, 131, 132], [120]]
    row = {int(i): r for r, i in enumerate(m.item_ids)}

    def check():
        h = m.session_embeddings(sessions).astype(np.float64)
        E = np.asarray(m.item_embeddings, np.float64)
        out = {}
        for how in ("fp32", "int8", "auto"):
            m._engine.scoring = how
            ids, sc = m.recommend_batch(sessions, n=5)
            for b in range(len(sessions)):
                want = E[[row[int(i)] for i in ids[b]]] @ h[b]
                np.testing.assert_allclose(sc[b], want, rtol=1e-5, atol=1e-5, err_msg=how)
            out[how] = ids, sc
        for how in ("int8", "auto"):
            np.testing.assert_array_equal(out[how][0], out["fp32"][0])
            np.testing.assert_array_equal(out[how][1], out["fp32"][1])
        return out["fp32"][1]

    before = check()
    m.partial_fit(chain_data, epochs=1)
    after = check()
    assert not np.array_equal(before, after)
    with pytest.raises(ValueError, match="scoring must be 'auto', 'fp32' or 'int8', got 'fp16'"):
        m._engine.scoring = "fp16"


def test_engine_scores_follow_optimizer_steps(chain_data):
    """The same at the engine: a top-k (which packs the table), an epoch of optimizer
    steps, a top-k again: its scores are the new weights'."""
    m = SASRec(iterations=1, random_state=6, **SMALL).fit(chain_data)
    eng = m._engine
    V = len(m.item_ids)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, V + 1, int(rng.integers(2, 9))) for _ in range(64)]
    items = np.concatenate(seqs).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in seqs])]).astype(np.int64)
    none = np.zeros(0, np.int32)

    cand = np.arange(2, V + 1, 3, dtype=np.int32)

    def scores_are_current():
        ids, sc = eng.recommend(items, offsets, 5, none, np.zeros(len(seqs) + 1, np.int64))
        h = eng.session_states(items, offsets).astype(np.float64)
        E = np.asarray(eng.item_embeddings(), np.float64)  # rows 1..V
        want = np.einsum("bkc,bc->bk", E[ids - 1], h)
        np.testing.assert_allclose(sc, want, rtol=1e-5, atol=1e-5)
        # The candidates' table (kept between calls with the same set) follows the weights
        # too: the whole catalogue's ranking less every other item.
        for _ in range(2):
            c_ids, c_sc = eng.recommend(items, offsets, 4, none, np.zeros(len(seqs) + 1, np.int64), cand)
            every, every_sc = eng.recommend(items, offsets, V, none, np.zeros(len(seqs) + 1, np.int64))
            for b in range(len(seqs)):
                keep = np.isin(every[b], cand)
                np.testing.assert_array_equal(cand[c_ids[b] - 1], every[b][keep][:4])
                np.testing.assert_array_equal(c_sc[b], every_sc[b][keep][:4])
        return sc

    for how in ("fp32", "int8"):
        eng.scoring = how
        before = scores_are_current()
        eng.train_epoch(items, offsets, 99, False, None)
        assert not np.array_equal(scores_are_current(), before)


@pytest.mark.emulated_gpu
def test_recommend_batch_pads_when_exclusions_leave_too_few(device):
    seqs = [[1, 2, 3], [2, 3, 1], [3, 1, 2]]
    m = SASRec(factors=8, n_layers=1, max_seq=4, n_negatives=1, iterations=2, num_threads=1,
               device=device).fit(seqs)
    ids, scores = m.recommend_batch([[1, 2]], n=3)
    assert ids[0, 0] == 3 and ids[0, 1] == -1 and ids[0, 2] == -1
    assert np.isneginf(scores[0, 1:]).all()
    one, _ = m.recommend([1, 2], n=3)
    assert one.tolist() == [3]


def test_session_embeddings(trained):
    E = trained.session_embeddings([[110, 111], [99999], [110, 111]])
    assert E.shape == (3, SMALL["factors"]) and E.dtype == np.float32
    assert np.isnan(E[1]).all()
    np.testing.assert_array_equal(E[0], E[2])
    # only the last max_seq items matter
    long = list(range(100, 140)) * 2
    a = trained.session_embeddings([long])[0]
    b = trained.session_embeddings([long[-SMALL["max_seq"]:]])[0]
    np.testing.assert_array_equal(a, b)


def test_session_embeddings_of_mixed_lengths_across_forwards(trained, chain_data):
    """A forward takes as many sessions as fill the backend's row budget with their last
    max_seq items (16,384 rows on the CPU): a large batch of mixed lengths, some beyond
    max_seq, gives every session the state it has on its own."""
    rng = np.random.default_rng(12)
    items = sorted(set(x for s in chain_data for x in s))
    sessions = [rng.choice(items, size=int(n)).tolist() for n in rng.integers(1, 30, size=4000)]
    assert sum(min(len(s), SMALL["max_seq"]) for s in sessions) > 2 * 16_384
    big = trained.session_embeddings(sessions)
    small = np.concatenate([trained.session_embeddings(sessions[i:i + 50])
                            for i in range(0, len(sessions), 50)])
    np.testing.assert_allclose(big, small, rtol=0, atol=1e-6)


def test_item_ids_and_embeddings_align(trained, chain_data):
    ids = trained.item_ids
    assert sorted(set(x for s in chain_data for x in s)) == ids.tolist()
    E = trained.item_embeddings
    assert E.shape == (ids.size, SMALL["factors"]) and E.dtype == np.float32


def test_string_ids(device):
    seqs = [[f"p{x}" for x in s] for s in chain_sessions(n_sessions=200, n_items=30, seed=5)]
    m = SASRec(iterations=40, device=device, **SMALL).fit(seqs)
    assert m.item_ids.dtype.kind == "U"
    ids, _ = m.recommend(["p103", "p104", "p105"], n=1)
    assert ids[0] == "p106"


def test_determinism(chain_data):
    # A CPU property (for a given seed and thread count); the CUDA backend accumulates
    # item gradients with atomics, so its last bits may vary between runs.
    kw = dict(SMALL, device="cpu")
    a = SASRec(iterations=3, random_state=7, **kw).fit(chain_data)
    b = SASRec(iterations=3, random_state=7, **kw).fit(chain_data)
    c = SASRec(iterations=3, random_state=8, **kw).fit(chain_data)
    assert a.loss_history_ == b.loss_history_
    np.testing.assert_array_equal(a.item_embeddings, b.item_embeddings)
    assert not np.array_equal(a.item_embeddings, c.item_embeddings)


def test_determinism_two_threads(chain_data):
    kw = dict(SMALL, num_threads=2, device="cpu")
    a = SASRec(iterations=2, random_state=7, **kw).fit(chain_data)
    b = SASRec(iterations=2, random_state=7, **kw).fit(chain_data)
    np.testing.assert_array_equal(a.item_embeddings, b.item_embeddings)


@pytest.mark.emulated_gpu
def test_save_load_round_trip(trained, tmp_path):
    path = tmp_path / "model.fsr"
    trained.save(path)
    loaded = SASRec.load(path, device=trained.device)  # same device: identical answers
    sessions = [[110, 111, 112], [130], [99999], [125, 126, 127, 128, 129]]
    for s in sessions:
        a, sa = trained.recommend(s, n=5)
        b, sb = loaded.recommend(s, n=5)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(sa, sb)
    np.testing.assert_array_equal(loaded.item_ids, trained.item_ids)
    np.testing.assert_array_equal(loaded.item_embeddings, trained.item_embeddings)
    # Every parameter comes back but the thread count, which is never taken from a file.
    assert {**loaded.get_params(), "num_threads": None} == {**trained.get_params(), "num_threads": None}
    assert loaded.num_threads == 0
    assert not list(tmp_path.glob(".fastsasrec-*")), "no temporary file may be left behind"


def test_sklearn_style_params():
    m = SASRec(factors=32)
    assert m.get_params()["factors"] == 32
    m.set_params(factors=16, n_heads=2)
    assert m.factors == 16
    assert "factors=16" in repr(m)
    with pytest.raises(ValueError, match="unknown parameter"):
        m.set_params(colour="red")


def test_pandas_series_input(chain_data, device):
    pd = pytest.importorskip("pandas")
    s = pd.Series(chain_data[:100])
    m = SASRec(iterations=1, device=device, **SMALL).fit(s)
    assert m.n_items > 0


def test_concurrent_recommend_calls_agree(trained):
    """One model serving a thread pool: concurrent calls (the engine runs without the GIL)
    give the same answers as serial ones."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [[[100 + (s + b + k) % 40 for k in range(3 + (s + b) % 10)] for s in range(200)]
               for b in range(8)]
    want = [trained.recommend_batch(b, n=5)[0].tolist() for b in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda b: trained.recommend_batch(b, n=5)[0].tolist(), batches * 3))
    assert got == want * 3


def test_bf16_precision_learns_and_survives_save_load(chain_data, tmp_path, device):
    """precision="bf16" (the linear layers' products on bfloat16 operands) learns the chain
    as fp32 does, differs from fp32 only by that rounding, and is kept by save/load."""
    fp32 = SASRec(iterations=60, random_state=1, device=device, **SMALL).fit(chain_data)
    bf16 = SASRec(iterations=60, random_state=1, precision="bf16", device=device, **SMALL).fit(chain_data)
    assert bf16.loss_history_ != fp32.loss_history_  # the rounding is really applied
    assert abs(bf16.loss_history_[0] - fp32.loss_history_[0]) < 1e-2 * fp32.loss_history_[0]
    hits = sum(int(bf16.recommend([100 + (s + k) % 40 for k in range(4)], n=1)[0][0]
                   == 100 + (s + 4) % 40) for s in range(0, 40, 4))
    assert hits >= 9, f"bf16: the true next item was top-1 for only {hits}/10 sessions"
    assert "precision='bf16'" in repr(bf16)
    bf16.save(tmp_path / "m.fsr")
    loaded = SASRec.load(tmp_path / "m.fsr", device=bf16.device)
    assert loaded.precision == "bf16"
    a, sa = bf16.recommend([110, 111, 112], n=5)
    b, sb = loaded.recommend([110, 111, 112], n=5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa, sb)
