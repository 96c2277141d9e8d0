"""The CPU backend's op profile (fastsasrec._core.op_profile_start / op_profile_stop): an op
called while it is on is counted once per call, with the floating-point operations of its
matrix products (2 M N K each) exactly; nothing is counted while it is off; starting again
zeroes it.  Times are only checked to be positive: tests do not time things."""
import numpy as np
import pytest

import fastsasrec

CORE = fastsasrec._core
if not CORE.test_ops:
    pytest.skip("fastsasrec was built without the raw ops (_core.Ops): build with "
                "-C cmake.define.FASTSASREC_TEST_OPS=ON, as README's test command does",
                allow_module_level=True)


def _linear(ops, R, I, O):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((R, I)).astype(np.float32)
    W = rng.standard_normal((I, O)).astype(np.float32)
    b = np.zeros(O, np.float32)
    out = np.zeros((R, O), np.float32)
    ops.linear_forward(out, x, W, b, R, I, O, False, 0.0, 0)
    return x, W, out


@pytest.fixture
def ops():
    yield CORE.Ops("cpu")
    CORE.op_profile_stop()  # never leave it on for the next test


def by_op(rows):
    return {r["op"]: r for r in rows}


def test_counts_calls_and_product_flops(ops):
    CORE.op_profile_start()
    for _ in range(3):
        _linear(ops, 300, 64, 128)
    V, C, R = 517, 16, 40
    rng = np.random.default_rng(1)
    h = rng.standard_normal((R, C)).astype(np.float32)
    E = rng.standard_normal((V + 1, C)).astype(np.float32)
    t = rng.integers(1, V + 1, R).astype(np.int32)
    loss, dh, dE = np.zeros(R, np.float32), np.zeros((R, C), np.float32), np.zeros((V + 1, C), np.float32)
    ws = np.zeros(ops.loss_softmax_workspace(R, C, V, 0), np.float32)
    ops.loss_softmax(loss, dh, dE, h, E, t, np.zeros(1, np.int32), R, C, V, 0, 1.0, ws)
    got = by_op(CORE.op_profile_stop())
    assert got["linear_forward"]["calls"] == 3
    assert got["linear_forward"]["flops"] == 3 * 2 * 300 * 64 * 128
    # the full softmax with its gradient: the logits, dh and dE, each 2 R V C
    assert got["loss_softmax"]["calls"] == 1
    assert got["loss_softmax"]["flops"] == 3 * 2 * R * V * C
    assert got["loss_softmax_workspace"]["flops"] == 0
    assert all(r["seconds"] > 0 for r in got.values())


def test_off_counts_nothing_and_start_zeroes(ops):
    CORE.op_profile_start()
    _linear(ops, 50, 8, 8)
    assert by_op(CORE.op_profile_stop())["linear_forward"]["calls"] == 1
    _linear(ops, 50, 8, 8)  # off
    CORE.op_profile_start()
    assert CORE.op_profile_stop() == []


def test_a_fit_is_profiled_op_by_op():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 60, rng.integers(3, 20)).tolist() for _ in range(64)]
    model = fastsasrec.SASRec(factors=16, n_layers=1, max_seq=16, iterations=1, loss="softmax",
                              num_threads=1, random_state=0)
    CORE.op_profile_start()
    try:
        model.fit(seqs)
    finally:
        got = by_op(CORE.op_profile_stop())
    for op in ("embedding_forward", "linear_forward", "attention_forward", "loss_softmax",
               "attention_backward", "linear_backward", "adamw_step"):
        assert got[op]["calls"] > 0, op
    assert got["attention_forward"]["flops"] > 0
    assert got["adamw_step"]["flops"] == 0
