"""The model on the CUDA backend against its CPU twin (skipped, with the reason, where no
GPU is usable), through the engine's Model and the SASRec estimator:
- a training step (the loss and every gradient) against the float64 reference model: the
  GPU's error at most twice the CPU's plus a floor of 1e-6 of the gradient's scale; under
  precision="bf16", against the CPU's bf16 twin (loss within 1e-3, gradients within 5e-3,
  relative);
- session states and top-k recommendations against the CPU's on the same parameters:
  states and scores within absolute tolerances, the same ids (on the awkward top-k shapes,
  up to near-ties within float noise), the same padding, no excluded or repeated ids;
- whole fits on the GPU: saved there and loaded on the CPU, batches of every size, more
  sessions than one scoring chunk, CuPy input and output, and HR@10 after three ML-100K
  epochs within three standard errors of the CPU run's;
- the resident recommend path (sessions and outputs in backend memory), on the CPU.
Each op against the float64 reference, on both devices, is tests/test_ops.py."""
import numpy as np
import pytest

import fastsasrec
from fastsasrec import SASRec
from reference import model as RM

CORE = fastsasrec._core
CUDA_OK, CUDA_WHY = CORE.backend_available("cuda")
needs_cuda = pytest.mark.skipif(not CUDA_OK, reason=f"CUDA backend not usable: {CUDA_WHY}")

GOLDEN = dict(n_items=11, factors=12, n_heads=2, n_layers=2, max_seq=6, dropout=0.3, n_negatives=5, seed=7)
SEQUENCES = [[3, 3, 5, 1, 2, 9, 10, 4, 4], [7, 2], [6], [1, 2, 3], [11, 1, 5, 6, 7, 8], [5, 5, 5, 2]]


def test_cuda_status_is_reported():
    ok, why = CORE.backend_available("cuda")
    assert ok or why, "an unusable CUDA backend must say why"
    info = CORE.build_info()
    assert info["cuda"].startswith(("compiled", "not compiled"))
    assert CORE.cuda_device_count() >= (1 if ok else 0)


@pytest.mark.parametrize("bad", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:01", "cuda:1.0", "cuda: 0",
                                 "cuda:99999999999", 0, None])
def test_device_strings_are_checked(bad):
    with pytest.raises(ValueError, match=r"device must be one of \('auto', 'cpu', 'cuda', 'cuda:N'\)"):
        SASRec(device=bad)


def test_a_gpu_index_is_checked_against_the_machine():
    n = CORE.cuda_device_count()
    with pytest.raises(ValueError, match=f"device='cuda:{n}' is not available"):
        SASRec(device=f"cuda:{n}")
    if CUDA_OK:
        assert "does not exist: this machine has" in CORE.backend_available(f"cuda:{n}")[1]


@needs_cuda
def test_a_model_on_gpu_n_says_so_and_runs_there(tmp_path):
    rng = np.random.default_rng(2)
    seqs = [rng.integers(1, 30, size=6).tolist() for _ in range(50)]
    last = f"cuda:{CORE.cuda_device_count() - 1}"
    m = SASRec(factors=8, n_layers=1, iterations=1, device=last).fit(seqs)
    assert m._engine.device == last and m._engine.device_index == int(last[5:])
    cpu = SASRec(factors=8, n_layers=1, iterations=1, device="cpu").fit(seqs)
    assert cpu._engine.device == "cpu" and cpu._engine.device_index == -1
    ids, _ = m.recommend_batch(seqs[:5], n=3)
    m.save(tmp_path / "m.fsr")
    back = SASRec.load(tmp_path / "m.fsr", device=last)
    np.testing.assert_array_equal(back.recommend_batch(seqs[:5], n=3)[0], ids)
    assert m.to("cuda")._engine.device == last  # already on a GPU: stays


SAMPLERS = {"gbce": dict(loss="gbce", gbce_t=0.5, n_negatives=3),
            "sampled_softmax_mixed": dict(loss="sampled_softmax", negatives="mixed",
                                          logq_correction=True)}


def _pair(loss, seed=5, **extra):
    cfg = dict(GOLDEN, **SAMPLERS.get(loss, {"loss": loss}), **extra)
    cpu, gpu = CORE.Model(cfg, "cpu"), CORE.Model(cfg, "cuda")
    rng = np.random.default_rng(seed)
    params = (cpu.get_params() + 0.1 * rng.standard_normal(cpu.n_params)).astype(np.float32)
    cpu.set_params(params)
    gpu.set_params(params)
    items = np.concatenate(SEQUENCES).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in SEQUENCES])]).astype(np.int64)
    trainable = np.array([i for i, s in enumerate(SEQUENCES) if len(s) >= 2], np.int64)
    counts = RM.target_counts(np.concatenate([SEQUENCES[i] for i in trainable]).astype(np.int32),
                              np.concatenate([[0], np.cumsum([len(SEQUENCES[i]) for i in trainable])]), cfg)
    for m in (cpu, gpu):
        m.set_target_counts(counts)
    batch = cpu.build_batch(items, offsets, trainable, 3)
    return dict(cfg, _counts=counts), cpu, gpu, params, batch


@needs_cuda
@pytest.mark.parametrize("loss", ["bce", "sampled_softmax", "softmax", "gbce", "sampled_softmax_mixed"])
def test_training_step_matches_cpu_and_reference(loss):
    cfg, cpu, gpu, params, b = _pair(loss)
    args = (b["items"], b["targets"], b["pos"], b["cu"], b["negatives"])
    l_cpu = cpu.forward_backward(*args, train=True, grad=True, step=3)
    l_gpu = gpu.forward_backward(*args, train=True, grad=True, step=3)
    P = RM.unflatten(params, cpu.tensors())
    l_ref, g_ref = RM.forward_backward(P, b, cfg, 3, train=True, grad=True)
    err_cpu, err_gpu = abs(l_cpu - l_ref), abs(l_gpu - l_ref)
    assert err_gpu <= 2 * err_cpu + 1e-6 * abs(l_ref), (loss, l_cpu, l_gpu, l_ref)
    gc = RM.unflatten(cpu.get_grads(), cpu.tensors())
    gg = RM.unflatten(gpu.get_grads(), gpu.tensors())
    for name, ref in g_ref.items():
        e_cpu = np.abs(gc[name] - ref).max()
        e_gpu = np.abs(gg[name] - ref).max()
        floor = 1e-6 * max(1.0, np.abs(ref).max())
        assert e_gpu <= 2 * e_cpu + floor, (loss, name, e_cpu, e_gpu)


@needs_cuda
def test_states_and_recommendations_match_cpu():
    _, cpu, gpu, _, _ = _pair("softmax")
    items = np.concatenate(SEQUENCES).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in SEQUENCES])]).astype(np.int64)
    np.testing.assert_allclose(gpu.session_states(items, offsets), cpu.session_states(items, offsets),
                               rtol=0, atol=5e-6)
    ids_c, sc_c = cpu.recommend(items, offsets, 4, items, offsets)
    ids_g, sc_g = gpu.recommend(items, offsets, 4, items, offsets)
    np.testing.assert_allclose(sc_g, sc_c, rtol=0, atol=5e-5)
    # No near-ties here: the closest two of each row's five best scores are 7.6e-3 apart
    # (on the CPU), 150 times the scores' tolerance, so the ids must be the same.
    np.testing.assert_array_equal(ids_g, ids_c)


@needs_cuda
def test_save_on_one_device_load_on_the_other(tmp_path):
    from conftest import chain_sessions

    data = chain_sessions(n_sessions=200)
    m = SASRec(factors=16, iterations=3, device="cuda", max_seq=10).fit(data)
    m.save(tmp_path / "m.fsr")
    on_cpu = SASRec.load(tmp_path / "m.fsr", device="cpu")
    a, sa = m.recommend([110, 111, 112], n=5)
    b, sb = on_cpu.recommend([110, 111, 112], n=5)
    np.testing.assert_allclose(sa, sb, rtol=0, atol=1e-4)
    # The same ids, but where two items score within twice that tolerance (a near-tie the
    # two devices' roundings may order either way).
    h = on_cpu.session_embeddings([[110, 111, 112]])[0].astype(np.float64)
    E = on_cpu.item_embeddings.astype(np.float64)
    col = {v: i for i, v in enumerate(on_cpu.item_ids.tolist())}
    for k in np.nonzero(a != b)[0]:
        assert abs(E[col[a[k]]] @ h - E[col[b[k]]] @ h) <= 2e-4, (k, a, b, sb)
    m.to("cpu")
    c, _ = m.recommend([110, 111, 112], n=5)
    np.testing.assert_array_equal(b, c)


@needs_cuda
@pytest.mark.parametrize("loss", ["sampled_softmax", "softmax", "gbce"])
def test_batches_of_every_size_train_on_cuda(loss):
    """Batches far smaller than the largest one reuse its arena: the loss workspace must be
    large enough for every smaller batch too (an overflow once corrupted the next batch's
    item ids and crashed the embedding kernel)."""
    rng = np.random.default_rng(3)
    seqs = [rng.integers(1, 400, size=int(n)).tolist() for n in rng.integers(2, 260, size=300)]
    m = SASRec(factors=32, max_seq=200, iterations=3, batch_size=37, loss=loss, n_negatives=128,
               device="cuda", random_state=1).fit(seqs)
    assert all(np.isfinite(m.loss_history_))
    ids, scores = m.recommend_batch(seqs[:5], n=4)
    assert ids.shape == (5, 4) and np.isfinite(scores).all()


def _random_sessions(rng, B, V, max_len):
    lens = rng.integers(1, max_len + 1, size=B)
    items = rng.integers(1, V + 1, size=int(lens.sum())).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return items, offsets


@needs_cuda
@pytest.mark.parametrize("C,H,K,V", [
    (64, 1, 10, 3001),   # the tiled kernel, one pass, a partial last item tile
    (64, 1, 100, 1000),  # the tiled kernel, two passes of 64
    (7, 1, 5, 130),      # C not a multiple of 4: scalar loads
    (300, 3, 20, 777),   # too wide for the tiled kernel's shared memory: the general kernel
])
def test_topk_matches_cpu_on_awkward_shapes(C, H, K, V):
    """The GPU's top-k against the CPU's on the same states: the same sorted scores, every
    returned id scoring what the GPU says it scores (float64 product of the CPU's states),
    no excluded, repeated or padding id among real slots, the same padding, and the CPU's
    ids but where two items' scores are within float noise of each other."""
    cfg = dict(n_items=V, factors=C, n_heads=H, n_layers=1, max_seq=8, dropout=0.0, seed=3,
               loss="bce")
    cpu, gpu = CORE.Model(cfg, "cpu"), CORE.Model(cfg, "cuda")
    gpu.set_params(cpu.get_params())
    rng = np.random.default_rng(C + K + V)
    items, offsets = _random_sessions(rng, 300, V, 8)
    excl, excl_off = items.copy(), offsets.copy()
    # Row 0 excludes all but 3 items: its slots past the third are padding (id 0, -inf).
    keep = rng.choice(np.arange(1, V + 1), size=3, replace=False)
    row0 = np.setdiff1d(np.arange(1, V + 1), keep).astype(np.int32)
    excl = np.concatenate([row0, excl[offsets[1]:]]).astype(np.int32)
    excl_off = np.concatenate([[0], offsets[1:] - offsets[1] + row0.size]).astype(np.int64)
    ids_c, sc_c = cpu.recommend(items, offsets, K, excl, excl_off)
    ids_g, sc_g = gpu.recommend(items, offsets, K, excl, excl_off)
    H = cpu.session_states(items, offsets).astype(np.float64)
    E = np.concatenate([np.zeros((1, C)), cpu.item_embeddings().astype(np.float64)])
    mag = np.abs(H) @ np.abs(E).T  # the scale of each score's rounding error
    tol = 1e-5 * mag.max(axis=1, keepdims=True) + 1e-6
    real = ids_c > 0
    np.testing.assert_array_equal(ids_g > 0, real)
    assert real[0].sum() == 3 and set(ids_g[0, :3]) == set(keep)
    np.testing.assert_array_equal(sc_g[~real], sc_c[~real])
    assert np.all(np.abs(sc_g[real] - sc_c[real]) <= np.broadcast_to(tol, sc_c.shape)[real])
    for b in range(ids_g.shape[0]):
        got = ids_g[b][real[b]]
        assert len(set(got.tolist())) == got.size, b
        assert not np.isin(got, excl[excl_off[b]:excl_off[b + 1]]).any(), b
        exact = H[b] @ E[got].T
        assert np.all(np.abs(exact - sc_g[b][real[b]]) <= tol[b]), b
    # The same ids as the CPU's, slot by slot, but for near-ties: each device's scores are
    # within tol of the exact ones, so where the two choose differently, the two items'
    # exact scores are within 2 tol (float noise), never further apart.
    rows, slots = np.nonzero(ids_g != ids_c)
    a, c = ids_g[rows, slots], ids_c[rows, slots]
    gap = np.abs(np.einsum("ij,ij->i", H[rows], E[a] - E[c]))
    assert np.all(gap <= 2 * tol[rows, 0]), (
        f"{rows.size} slots differ from the CPU's ids; rows {rows[gap > 2 * tol[rows, 0]]} "
        f"by more than a near-tie (largest score gap {gap.max():.3g})")


@pytest.mark.emulated_gpu  # the conftest's device fixture: cpu and cuda, also on the emulator
def test_more_sessions_than_one_scoring_chunk(device):
    """recommend_batch scores 65,536 sessions per top-k call: a batch beyond that gives
    each session the same answer as scoring it in a small batch."""
    rng = np.random.default_rng(11)
    data = [rng.integers(1, 60, size=int(n)).tolist() for n in rng.integers(2, 6, size=200)]
    m = SASRec(factors=8, max_seq=4, iterations=1, device=device, random_state=2).fit(data)
    sessions = rng.integers(1, 60, size=(65_536 + 300, 2))
    ids, scores = m.recommend_batch(sessions, n=3)
    tail_ids, tail_scores = m.recommend_batch(sessions[-400:], n=3)
    np.testing.assert_array_equal(ids[-400:], tail_ids)
    np.testing.assert_allclose(scores[-400:], tail_scores, rtol=0, atol=1e-6)


@needs_cuda
def test_three_epochs_on_movielens_match_the_cpu_run(ml100k_path):
    """Same seed, same batches and dropout masks on both devices; only the order of float
    sums differs (and atomics make the GPU's order vary), so HR@10 after 3 epochs must
    agree within noise: three standard errors of the difference of two hit rates over
    the 943 users."""
    from test_movielens import load_sequences

    from fastsasrec.metrics import ranks_from_topk, summarize

    seqs = load_sequences(ml100k_path)
    contexts, targets = [s[:-1] for s in seqs], [s[-1] for s in seqs]
    hr = {}
    for device in ("cpu", "cuda"):
        m = SASRec(iterations=3, random_state=42, device=device).fit(contexts)
        ids, _ = m.recommend_batch(contexts, n=10)
        hr[device] = summarize(ranks_from_topk(ids, targets), 10)["HR@10"]
    p = (hr["cpu"] + hr["cuda"]) / 2
    noise = 3 * np.sqrt(2 * p * (1 - p) / len(targets))
    assert hr["cpu"] > 0.03, hr  # learned something: random ranking gives 10/1682
    assert abs(hr["cuda"] - hr["cpu"]) <= noise, (hr, noise)


@needs_cuda
def test_recommend_batch_takes_and_returns_cupy_arrays():
    cp = pytest.importorskip("cupy", reason="CuPy is not installed")
    rng = np.random.default_rng(5)
    data = [rng.integers(1, 300, size=int(n)).tolist() for n in rng.integers(2, 30, size=400)]
    m = SASRec(factors=16, max_seq=12, iterations=2, device="cuda", random_state=3).fit(data)
    ids_known = m.item_ids
    for L, seen in ((7, True), (20, True), (7, False)):  # 20 > max_seq: the last 12 are read
        S = rng.choice(ids_known, size=(50, L))
        ids_np, sc_np = m.recommend_batch(S, n=6, exclude_seen=seen)
        ids_cp, sc_cp = m.recommend_batch(cp.asarray(S), n=6, exclude_seen=seen)
        assert isinstance(ids_cp, cp.ndarray) and isinstance(sc_cp, cp.ndarray)
        np.testing.assert_array_equal(cp.asnumpy(ids_cp), ids_np)
        np.testing.assert_allclose(cp.asnumpy(sc_cp), sc_np, rtol=0, atol=1e-5)
    # More than the catalogue: rows have n_items slots, as for NumPy input; the seen items
    # leave that many slots empty at the end (id -1, score -inf).
    ids_cp, sc_cp = m.recommend_batch(cp.asarray(S[:2]), n=ids_known.size + 2)
    ids_h, sc_h = cp.asnumpy(ids_cp), cp.asnumpy(sc_cp)
    assert ids_h.shape == sc_h.shape == (2, ids_known.size)
    for row, sc, s in zip(ids_h, sc_h, S[:2]):
        n_seen = len(set(s.tolist()))
        assert (row[-n_seen:] == -1).all() and np.isneginf(sc[-n_seen:]).all()
        assert (row[:-n_seen] != -1).all() and np.isfinite(sc[:-n_seen]).all()
    with pytest.raises(ValueError, match=r"sessions holds 18446744073709551615: .*64 bits"):
        m.recommend_batch(cp.asarray(np.array([[1, 2**64 - 1]], dtype=np.uint64)), n=3)
    # The resident path sizes its attention by its own sessions, not by the longest session
    # of whatever ran before it: short host sessions first, then long device ones (whose
    # rows past the short length would otherwise be skipped), compared with the host
    # answer computed afterwards.
    m40 = SASRec(factors=16, max_seq=40, iterations=1, device="cuda", random_state=3).fit(data)
    m40.recommend_batch(rng.choice(m40.item_ids, size=(3, 2)), n=2)  # one 32-row tile was enough
    S = rng.choice(m40.item_ids, size=(40, 39))
    ids_cp, sc_cp = m40.recommend_batch(cp.asarray(S), n=4)
    ids_np, sc_np = m40.recommend_batch(S, n=4)
    np.testing.assert_array_equal(cp.asnumpy(ids_cp), ids_np)
    np.testing.assert_allclose(cp.asnumpy(sc_cp), sc_np, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="not in the model's catalogue"):
        m.recommend_batch(cp.asarray([[int(ids_known.max()) + 1000]]), n=3)
    with pytest.raises(ValueError, match="2-D integer"):
        m.recommend_batch(cp.asarray([1.5, 2.5]), n=3)


def test_resident_recommend_matches_the_host_path():
    """Model.recommend_resident (sessions and outputs in the backend's memory: what CuPy
    input uses on the GPU) on the CPU backend, whose memory is the host's: the same ids
    and scores as Model.recommend, with and without exclusions, across scoring chunks."""
    rng = np.random.default_rng(8)
    data = [rng.integers(1, 90, size=int(n)).tolist() for n in rng.integers(2, 12, size=300)]
    eng = SASRec(factors=16, max_seq=8, iterations=2, random_state=1, device="cpu").fit(data)._engine
    V = eng.item_embeddings().shape[0]
    for B, L, K, seen in ((700, 6, 5, True), (3, 8, 40, False), (66_000, 2, 3, True)):
        items = rng.integers(1, V + 1, size=(B, L)).astype(np.int32)
        off = np.arange(B + 1, dtype=np.int64) * L
        ex, ex_off = (items.ravel(), off) if seen else (np.zeros(0, np.int32), np.zeros(B + 1, np.int64))
        ids, sc = eng.recommend(items.ravel(), off, K, ex, ex_off)
        out_ids, out_sc = np.zeros((B, K), np.int32), np.zeros((B, K), np.float32)
        eng.recommend_resident(items, items if seen else None, K, out_ids, out_sc)
        np.testing.assert_array_equal(out_ids, ids)
        np.testing.assert_array_equal(out_sc, sc)
    with pytest.raises(ValueError, match="session length must be in 1..8"):
        eng.recommend_resident(np.ones((1, 9), np.int32), None, 3, out_ids[:1], out_sc[:1])
    with pytest.raises(ValueError, match=r"items: id 0 at position 1 \(session 0, item 1\) is outside 1.."):
        eng.recommend_resident(np.array([[1, 0]], np.int32), None, 3, out_ids[:1], out_sc[:1])


@needs_cuda
@pytest.mark.parametrize("loss", ["sampled_softmax", "softmax"])
def test_bf16_training_step_matches_the_cpu_twin(loss):
    """precision="bf16" on the GPU (cuBLAS on bf16 operands, fp32 sums) against the CPU's
    bf16 twin (the same rounding before an fp32 GEMM): the loss and the gradients agree far
    closer than either agrees with fp32."""
    _, cpu, gpu, _, b = _pair(loss, seed=9, precision="bf16")
    args = (b["items"], b["targets"], b["pos"], b["cu"], b["negatives"])
    l_cpu = cpu.forward_backward(*args, train=True, grad=True, step=3)
    l_gpu = gpu.forward_backward(*args, train=True, grad=True, step=3)
    assert abs(l_gpu - l_cpu) <= 1e-3 * abs(l_cpu), (l_cpu, l_gpu)
    g_cpu, g_gpu = cpu.get_grads(), gpu.get_grads()
    rel = np.linalg.norm(g_gpu - g_cpu) / np.linalg.norm(g_cpu)
    assert rel <= 5e-3, rel


@needs_cuda
def test_auto_device_falls_back_to_the_cpu_for_a_model_the_gpu_cannot_run(tmp_path):
    """max_seq above the CUDA attention's 512: device="auto" fits and loads on the CPU and
    says why; device="cuda" refuses when the model is made, with the reason."""
    data = [[1, 2, 3, 4], [2, 3, 4, 5], [5, 4, 3, 2]]
    kw = dict(factors=8, n_layers=1, max_seq=1024, iterations=1, loss="softmax")
    with pytest.warns(UserWarning, match="device='auto' runs this model on the CPU: the CUDA "
                                         "attention supports max_seq up to 512, got 1024"):
        m = SASRec(device="auto", **kw).fit(data)
    assert m._engine.device == "cpu"
    with pytest.raises(ValueError, match="device 'cuda': the CUDA attention supports max_seq up to 512"):
        SASRec(device="cuda", **kw).fit(data)
    m.save(tmp_path / "long.fsr")
    with pytest.warns(UserWarning, match="runs this model on the CPU"):
        loaded = SASRec.load(tmp_path / "long.fsr", device="auto")
    assert loaded._engine.device == "cpu"
    np.testing.assert_array_equal(loaded.recommend([1, 2], n=3)[0], m.recommend([1, 2], n=3)[0])
    with pytest.warns(UserWarning, match="runs this model on the CPU"):
        assert m.to("auto")._engine.device == "cpu"
