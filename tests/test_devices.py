"""The CUDA backend against its CPU twin and the float64 reference (skipped, with the
reason, where no GPU is usable).  Tolerances are graded as in the op tests: the CUDA
error against the float64 reference may be at most twice the CPU's plus a small floor."""
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


def _pair(loss, seed=5):
    cfg = dict(GOLDEN, loss=loss)
    cpu, gpu = CORE.Model(cfg, "cpu"), CORE.Model(cfg, "cuda")
    rng = np.random.default_rng(seed)
    params = (cpu.get_params() + 0.1 * rng.standard_normal(cpu.n_params)).astype(np.float32)
    cpu.set_params(params)
    gpu.set_params(params)
    items = np.concatenate(SEQUENCES).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in SEQUENCES])]).astype(np.int64)
    batch = cpu.build_batch(items, offsets, np.arange(len(SEQUENCES), dtype=np.int64), 3)
    return cfg, cpu, gpu, params, batch


@needs_cuda
@pytest.mark.parametrize("loss", ["bce", "sampled_softmax", "softmax"])
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
    m.to("cpu")
    c, _ = m.recommend([110, 111, 112], n=5)
    np.testing.assert_array_equal(b, c)


@needs_cuda
@pytest.mark.parametrize("loss", ["sampled_softmax", "softmax"])
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
