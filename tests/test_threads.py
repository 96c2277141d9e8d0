"""Thread counts belong to a model: two models with different counts, trained and called
from several Python threads at once, give exactly the answers they give one call at a time,
and nothing process-wide (OpenMP's default) is read or changed."""
import threading

import numpy as np
import pytest

import fastsasrec
from conftest import chain_sessions

CORE = fastsasrec._core
CFG = dict(factors=32, n_heads=2, n_layers=2, max_seq=12, dropout=0.2, loss="sampled_softmax",
           n_negatives=8, batch_size=64, seed=7)


def _data():
    seqs = chain_sessions(n_sessions=400, n_items=30, min_len=3, max_len=14, seed=3, offset=1)
    items = np.concatenate(seqs).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    return items, offsets


def _work(model, items, offsets, epochs=2):
    """Training, then states and top-k of every sequence: everything the model computes."""
    losses = [model.train_epoch(items, offsets, e) for e in range(epochs)]
    states = model.session_states(items, offsets)
    no = np.zeros(offsets.size, np.int64)
    ids, scores = model.recommend(items, offsets, 5, np.zeros(0, np.int32), no)
    return losses, model.get_params(), states, ids, scores


def _same(a, b, what):
    la, pa, sa, ia, ca = a
    lb, pb, sb, ib, cb = b
    assert la == lb, f"{what}: losses {la} != {lb}"
    for x, y, name in ((pa, pb, "weights"), (sa, sb, "states"), (ia, ib, "ids"), (ca, cb, "scores")):
        np.testing.assert_array_equal(x, y, err_msg=f"{what}: {name}")


def test_threads_are_the_models():
    default = CORE.build_info()["omp_max_threads"]
    m = CORE.Model(dict(CFG, n_items=31), "cpu", threads=3)
    assert m.threads == 3
    m.set_threads(1)
    assert m.threads == 1
    m.set_threads(0)  # 0: all cores, OpenMP's default
    assert m.threads == default
    with pytest.raises(ValueError, match="num_threads must be >= 0, got -1"):
        m.set_threads(-1)
    with pytest.raises(ValueError, match="num_threads must be >= 0, got -2"):
        CORE.Model(dict(CFG, n_items=31), "cpu", threads=-2)
    assert CORE.build_info()["omp_max_threads"] == default, "the process default must not move"


def test_models_with_different_thread_counts_run_at_once_with_sequential_answers():
    items, offsets = _data()
    cfg = dict(CFG, n_items=int(items.max()))
    counts = (1, 2, 3)
    sequential = {n: _work(CORE.Model(cfg, "cpu", threads=n), items, offsets) for n in counts}
    # The counts matter here (the layernorms' parameter gradients are summed per thread), so
    # a call run with another model's count would show.
    assert not np.array_equal(sequential[1][1], sequential[3][1])

    # Training: one Python thread per model, all at once.
    models = {n: CORE.Model(cfg, "cpu", threads=n) for n in counts}
    results, errors = {}, []

    def train(n):
        try:
            results[n] = _work(models[n], items, offsets)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=train, args=(n,)) for n in counts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for n in counts:
        _same(results[n], sequential[n], f"model with {n} threads trained beside the others")

    # Inference: eight Python threads, each calling every model several times.
    no = np.zeros(offsets.size, np.int64)
    got, errors = [], []

    def serve(k):
        try:
            for r in range(4):
                n = counts[(k + r) % len(counts)]
                ids, scores = models[n].recommend(items, offsets, 5, np.zeros(0, np.int32), no)
                got.append((n, ids, scores, models[n].session_states(items, offsets)))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=serve, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(got) == 32
    for n, ids, scores, states in got:
        np.testing.assert_array_equal(ids, sequential[n][3], err_msg=f"{n} threads: ids")
        np.testing.assert_array_equal(scores, sequential[n][4], err_msg=f"{n} threads: scores")
        np.testing.assert_array_equal(states, sequential[n][2], err_msg=f"{n} threads: states")


def test_a_model_given_more_threads_trains_on_as_one_made_with_them():
    """The full softmax's workspace grows with the thread count (the catalogue is split over
    the threads, each with its partial dh): a model that trained at 1 thread and is then
    given 3 plans its buffers again, and its next epoch equals, bit for bit, that of a model
    made with 3 threads from the same weights, moments and step."""
    core = fastsasrec._core
    cfg = dict(n_items=700, factors=16, n_layers=1, max_seq=20, loss="softmax", batch_size=64, seed=3)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 701, rng.integers(2, 30)) for _ in range(300)]
    items = np.concatenate(seqs).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    grown = core.Model(cfg, "cpu", threads=1)
    grown.train_epoch(items, offsets, 0)
    made = core.Model(cfg, "cpu", threads=3)
    made.set_params(grown.get_params())
    made.set_optimizer_state(*grown.optimizer_state())
    grown.set_threads(3)
    grown.train_epoch(items, offsets, 1)
    made.train_epoch(items, offsets, 1)
    np.testing.assert_array_equal(grown.get_params(), made.get_params())


@pytest.mark.parametrize("env,shown,left", [
    ({}, "spin 1000 then sleep (fastsasrec's default", None),
    ({"OMP_WAIT_POLICY": "passive"}, "OMP_WAIT_POLICY=passive (yours)", "passive"),
    ({"GOMP_SPINCOUNT": "0"}, "GOMP_SPINCOUNT=0 (yours)", "0"),
])
def test_openmp_waiting_is_the_users_or_a_short_spin_that_does_not_leak(env, shown, left):
    """The engine's OpenMP loads with a short spin unless the user chose a policy; the
    variable is gone after the import (PyTorch's OpenMP, loaded later, keeps its default),
    and a user's choice is left as it was."""
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import os, fastsasrec; fastsasrec.show_config(); "
            "print('ENV', os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"OpenMP waiting: {shown}" in out.stdout, out.stdout
    env_line = out.stdout.strip().splitlines()[-1].split()
    spin, policy = (None if v == "None" else v for v in env_line[1:])
    assert spin == env.get("GOMP_SPINCOUNT") and policy == env.get("OMP_WAIT_POLICY"), env_line
    if left is None:
        assert spin is None and policy is None


def test_openmp_loaded_by_another_library_first_is_said_so():
    """When the system's libgomp is already in the process before fastsasrec loads, the
    spin cannot apply, and show_config() says whose settings hold."""
    import ctypes.util
    import os
    import subprocess
    import sys

    if not os.path.exists("/proc/self/maps") or not ctypes.util.find_library("gomp"):
        pytest.skip("needs Linux's /proc and a system libgomp")
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import ctypes; ctypes.CDLL('libgomp.so.1'); import fastsasrec; "
            "fastsasrec.show_config()")
    out = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "OpenMP waiting: libgomp's own (another library loaded it first" in out.stdout, out.stdout
