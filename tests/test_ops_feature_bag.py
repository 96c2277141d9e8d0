"""The feature bag op (cpp/src/cpu/feature_bag.cpp, cuda/feature_bag.cu) on every device
against the float64 reference (tests/reference/ops.py): the fused item table
out = m * E + pool(F[each item's values]) (m the id-dropout mask, all ones when p = 0),
the gradient dF += of it and the id part's dE = m * dout (in place), on random and
awkward shapes (items with no values, a value shared by every item, a value listed twice
by one item, V1 = 1, widths off multiples of 16 and 32, enough rows to split over
threads), from poisoned outputs (=) and random prefills (+=); plus a finite-difference
check of the reference's backward.  Tolerances: tests/reference/__init__.py's ``bound``; each case's
seed is in its id."""
import numpy as np
import pytest

import fastsasrec
from reference import assert_close, bound
from reference import model as RM
from reference import ops as R

CORE = fastsasrec._core
if not CORE.test_ops:
    pytest.skip("fastsasrec was built without the raw ops (_core.Ops): build with "
                "-DFASTSASREC_TEST_OPS=ON", allow_module_level=True)
from test_ops import ops  # noqa: E402,F401 (the fixture: each device's ops, skipped where unusable)


def bags(kind, V1, NF, rng):
    """(values int32, offsets int32 (V1 + 1)): each item's feature values; item 0 has none."""
    if kind == "random":
        counts = rng.integers(0, 5, V1)
    elif kind == "sparse":  # most items without values
        counts = np.where(rng.random(V1) < 0.8, 0, rng.integers(1, 3, V1))
    elif kind == "shared":  # every item lists value NF - 1, some one more
        counts = 1 + (rng.random(V1) < 0.5)
    else:  # "repeats": an item may list a value twice
        counts = rng.integers(1, 4, V1)
    counts[0] = 0
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    values = rng.integers(0, NF, int(offsets[-1])).astype(np.int32)
    if kind == "shared":
        values[offsets[:-1][counts > 0]] = NF - 1
    if kind == "repeats":
        two = np.flatnonzero(counts >= 2)
        values[offsets[two] + 1] = values[offsets[two]]
    return values, offsets


def inverse(values, offsets, NF):
    """(inv_items, inv_offsets (NF + 1)): each value's items in ascending order."""
    items = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets)).astype(np.int32)
    order = np.argsort(values, kind="stable")
    inv_offsets = np.concatenate([[0], np.cumsum(np.bincount(values, minlength=NF))]).astype(np.int32)
    return items[order], inv_offsets


CASES = [  # (kind, V1, C, NF, seed)
    ("random", 12, 8, 5, 1), ("random", 50, 13, 30, 2), ("sparse", 40, 7, 6, 3),
    ("shared", 30, 16, 4, 4), ("repeats", 25, 33, 9, 5),
    ("random", 1, 5, 3, 6),          # V1 = 1: the padding item alone
    ("random", 2, 1, 1, 7),          # C = 1, one value
    ("random", 3000, 20, 200, 8),    # enough rows for the threads
    ("shared", 700, 65, 3, 9),       # a value shared by ~700 items: a long inverse list
]
CASE_IDS = [f"{k}-V{v}-C{c}-NF{n}-s{s}" for k, v, c, n, s in CASES]


@pytest.mark.parametrize("p", [0.0, 0.4], ids=["p0", "p0.4"])
@pytest.mark.parametrize("mean", [True, False], ids=["mean", "sum"])
@pytest.mark.parametrize("kind,V1,C,NF,seed", CASES, ids=CASE_IDS)
def test_feature_bag(ops, kind, V1, C, NF, seed, mean, p):
    rng = np.random.default_rng(seed)
    values, offsets = bags(kind, V1, NF, rng)
    inv_items, inv_offsets = inverse(values, offsets, NF)
    E, F = rng.standard_normal((V1, C)).astype(np.float32), rng.standard_normal((NF, C)).astype(np.float32)
    n_item = int(np.max(np.diff(offsets), initial=0))
    n_value = int(np.max(np.diff(inv_offsets), initial=0))
    key = R.rng_key(seed, R.dropout_stream(3, R.id_dropout_site()))
    keep = R.id_keep(key, V1, p)
    if p > 0 and V1 > 20:
        assert 0 < keep.sum() < V1, "the mask must keep some rows and drop others"

    out = np.full((V1, C), np.nan, np.float32)
    ops.feature_bag_forward(out, E, F, values, offsets, V1, C, mean, p, key)
    ref = R.feature_bag_forward(E, F, values, offsets, mean, keep)
    mag = R.feature_bag_forward(np.abs(E), np.abs(F), values, offsets, mean, keep)
    assert_close(out, ref, bound(n_item + 1, mag), "feature_bag_forward", seed)
    empty = np.diff(offsets) == 0
    np.testing.assert_array_equal(out[empty], E[empty] * keep[empty, None].astype(np.float32),
                                  err_msg=f"items without values (seed {seed})")
    # a dropped row is the pool alone: the same bits as with E = 0
    dropped = keep == 0
    zero_E = np.full((V1, C), np.nan, np.float32)
    ops.feature_bag_forward(zero_E, np.zeros_like(E), F, values, offsets, V1, C, mean, 0.0, 0)
    np.testing.assert_array_equal(out[dropped], zero_E[dropped], err_msg=f"dropped rows (seed {seed})")

    dout = rng.standard_normal((V1, C)).astype(np.float32)
    rdE, rdF = R.feature_bag_backward(dout, values, offsets, NF, mean, keep)
    tol = bound(n_value + 1, R.feature_bag_backward(np.abs(dout), values, offsets, NF, mean)[1])
    dF, dE = np.zeros((NF, C), np.float32), dout.copy()
    ops.feature_bag_backward(dF, dE, inv_items, inv_offsets, offsets, NF, V1, C, mean, p, key)
    assert_close(dF, rdF, tol, "feature_bag_backward", seed)
    np.testing.assert_array_equal(dE, rdE.astype(np.float32), err_msg=f"dE = m * dout (seed {seed})")
    prefill = rng.standard_normal((NF, C)).astype(np.float32)
    acc, dE = prefill.copy(), dout.copy()
    ops.feature_bag_backward(acc, dE, inv_items, inv_offsets, offsets, NF, V1, C, mean, p, key)
    pre = prefill.astype(np.float64)
    assert_close(acc, pre + rdF, tol + bound(0, np.abs(pre) + np.abs(rdF)),
                 "feature_bag_backward (accumulated)", seed)
    unused = np.diff(inv_offsets) == 0
    np.testing.assert_array_equal(acc[unused], prefill[unused], err_msg=f"unused values' rows (seed {seed})")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_id_dropout_mask_rate_and_key(p):
    """The mask drops about p of the rows (binomial, 5 sigma), and another step's key draws
    another mask."""
    V1, n = 20000, 20000
    k1 = R.rng_key(1, R.dropout_stream(5, R.id_dropout_site()))
    k2 = R.rng_key(1, R.dropout_stream(6, R.id_dropout_site()))
    m1, m2 = R.id_keep(k1, V1, p), R.id_keep(k2, V1, p)
    assert abs((1 - m1.mean()) - p) <= 5 * np.sqrt(p * (1 - p) / n)
    assert (m1 != m2).any()
    o = CORE.Ops("cpu", threads=1)
    E = np.ones((V1, 1), np.float32)
    out = np.zeros((V1, 1), np.float32)
    offsets = np.zeros(V1 + 1, np.int32)
    o.feature_bag_forward(out, E, np.zeros((1, 1), np.float32), np.zeros(0, np.int32), offsets,
                          V1, 1, True, p, k1)
    np.testing.assert_array_equal(out[:, 0], m1.astype(np.float32))


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("mean", [True, False], ids=["mean", "sum"])
def test_feature_bag_does_not_depend_on_threads(mean, p):
    """One writer per row, terms in list order: 1 and 2 threads give the same bits."""
    rng = np.random.default_rng(10)
    V1, C, NF = 3000, 24, 50
    values, offsets = bags("random", V1, NF, rng)
    inv_items, inv_offsets = inverse(values, offsets, NF)
    E, F = rng.standard_normal((V1, C)).astype(np.float32), rng.standard_normal((NF, C)).astype(np.float32)
    dout = rng.standard_normal((V1, C)).astype(np.float32)
    got = []
    for threads in (1, 2):
        o = CORE.Ops("cpu", threads=threads)
        out, dF, dE = np.zeros((V1, C), np.float32), np.zeros((NF, C), np.float32), dout.copy()
        o.feature_bag_forward(out, E, F, values, offsets, V1, C, mean, p, 99)
        o.feature_bag_backward(dF, dE, inv_items, inv_offsets, offsets, NF, V1, C, mean, p, 99)
        got.append((out, dF, dE))
    for a, b in zip(*got):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind,mean,seed,p", [("random", True, 11, 0.0), ("repeats", False, 12, 0.0),
                                              ("sparse", True, 13, 0.0), ("random", True, 14, 0.5),
                                              ("repeats", False, 15, 0.5)])
def test_reference_fd_feature_bag(kind, mean, seed, p):
    """The reference's backward is the derivative of its forward, id dropout's mask fixed
    (float64 central differences, as test_ops.py's checks of the other ops)."""
    rng = np.random.default_rng(seed)
    V1, C, NF = 7, 3, 4
    values, offsets = bags(kind, V1, NF, rng)
    keep = R.id_keep(R.rng_key(seed, R.id_dropout_site()), V1, p)
    if p > 0:
        assert 0 < keep.sum() < V1
    params = {"E": rng.standard_normal((V1, C)), "F": rng.standard_normal((NF, C))}
    w = rng.standard_normal((V1, C))
    f = lambda q: np.sum(w * R.feature_bag_forward(q["E"], q["F"], values, offsets, mean, keep))  # noqa: E731
    dE, dF = R.feature_bag_backward(w, values, offsets, NF, mean, keep)
    grads = {"E": dE, "F": dF}
    for name, i, an, num in RM.finite_difference_check(f, params, grads, rng, None, 1e-6):
        assert abs(an - num) <= 1e-6 * abs(num) + 1e-7 * max(1.0, abs(f(params))), (
            f"reference gradient of {name}[{i}] = {an!r}, finite difference {num!r} (seed {seed})")
