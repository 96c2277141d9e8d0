"""Every op of the engine, on every device (fastsasrec._core.Ops("cpu"), Ops("cuda")),
against the float64 reference (tests/reference/ops.py), forward and backward, on random
and awkward shapes; the accumulating outputs (accumulate=True, the "+=" gradients) from
random prefills; plus a finite-difference check of the reference's own backward passes.
A device that is not usable here is skipped with the reason.

The ops are called as cpp/include/fastsasrec/ops.def lists them: every argument in order,
outputs first as arrays the op writes into (the binding copies them to the backend and
back).  An output the op overwrites starts poisoned (``poison``), so an element it forgets
fails; an output it accumulates into starts from zeros, or from random values in the
accumulate tests.

Each case carries a fixed seed in its id (``s<seed>``); failures repeat the seed.
Tolerances follow the error model of tests/reference/__init__.py: ``bound(n, mag)``
= 4 (n + 4) u32 mag, with n the length of the op's reductions and mag the op evaluated
on absolute values (plus, for the nonlinear ops, the conditioning factor stated there).
"""
import numpy as np
import pytest

import fastsasrec
from reference import U32, assert_close, bound
from reference import model as RM
from reference import ops as R

CORE = fastsasrec._core
if not CORE.test_ops:
    pytest.skip("fastsasrec was built without the raw ops (_core.Ops): build with "
                "-C cmake.define.FASTSASREC_TEST_OPS=ON, as README's test command does",
                allow_module_level=True)
_OPS = {}  # one Ops per device, made on first use


@pytest.fixture(params=["cpu", "cuda"])
def ops(request):
    """The ops of one device's backend; skipped, with the reason, where it is not usable.
    Every device is held to the same tolerances: they bound the float32 error of any
    summation order (threads, atomics, tiles)."""
    device = request.param
    ok, why = CORE.backend_available(device)
    if not ok:
        pytest.skip(f"{device} backend not usable: {why}")
    if device not in _OPS:
        _OPS[device] = CORE.Ops(device)
    return _OPS[device]


def normal(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def f32(x):
    """A Python float rounded to float32 (what the engine receives)."""
    return float(np.float32(x))


def ids(cases, fmt):
    return [fmt(*c) for c in cases]


def poison(*shape, dtype=np.float32):
    """An output the op must overwrite, filled with what no op writes (NaN floats, -1
    ints): an element the op forgets fails the comparison instead of passing on leftovers."""
    dtype = np.dtype(dtype)
    return np.full(shape, np.nan if dtype.kind == "f" else -1, dtype)


def zeros(*shape):
    """An output the op accumulates into ("+="), from zero."""
    return np.zeros(shape, np.float32)


def longest(cu):
    """n_max of the attention ops: the longest sequence of cu (at least 1)."""
    return max(1, int(np.max(np.diff(cu), initial=1)))


def assert_accumulated(got, prefill, plain, ref, tol, what, seed):
    """An accumulated output: prefill + the op's value, held to the value's tolerance plus
    the rounding of the addition, both against the float64 reference (prefill + ref) and
    against prefill + the op's own result from zero (or with accumulate=False)."""
    pre = np.asarray(prefill, np.float64)
    tol = tol + bound(0, np.abs(pre) + np.abs(ref))
    assert_close(got, pre + ref, tol, what + " (accumulated)", seed)
    assert_close(got, pre + np.asarray(plain, np.float64), tol,
                 what + " (accumulated, against prefill + the result from zero)", seed)


# ============================================================================ RNG
# rng_key and uniform are host helpers, the same on every Ops; the devices' own draws are
# checked bit for bit through the dropout masks below.
@pytest.mark.parametrize("seed,stream", [(0, 0), (42, 3 * 1024 + 5), (2**64 - 1, 2**64 - 1),
                                         (123456789, 7), (42 ^ R.SAMPLER_SALT, 11)])
def test_rng_matches_reference(seed, stream):
    key = CORE.Ops.rng_key(seed, stream)
    assert key == R.rng_key(seed, stream), f"rng_key({seed}, {stream})"
    for n in (0, 1, 4097):
        np.testing.assert_array_equal(CORE.Ops.uniform(key, n), R.uniform(key, n),
                                      err_msg=f"uniform(key of ({seed}, {stream}), {n})")
        np.testing.assert_array_equal(CORE.Ops.dropout_uniform(key, n), R.dropout_uniform(key, n),
                                      err_msg=f"dropout_uniform(key of ({seed}, {stream}), {n})")


# Counters from any start (odd ones take a draw's high half first), and across the 2^33 at
# which a draw's counter (e // 2) carries into its high 32 bits.
@pytest.mark.parametrize("start,n", [(0, 1), (1, 31), (7, 100), (2**33 - 40, 90), (2**33 - 41, 90),
                                     (2**40 + 3, 64), (2**64 - 70, 69)])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.99999])
def test_cpu_dropout_masks_match_reference(start, n, p):
    key = CORE.Ops.rng_key(5, 17)
    got = CORE.Ops.dropout_keep_scales(key, p, start, n)
    want = R.dropout_multiplier(R.dropout_uniform(key, n, start), p)
    np.testing.assert_array_equal(got != 0, want != 0, err_msg=f"keep mask from counter {start}")
    np.testing.assert_array_equal(got[got != 0], np.float32(1 / (1 - np.float32(p))))


def test_dropout_uniform_statistics():
    u = CORE.Ops.dropout_uniform(CORE.Ops.rng_key(7, 0), 200_000).astype(np.float64)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert np.all(u * 2**16 == np.round(u * 2**16)), "dropout uniforms carry 16 bits"
    for lo, hi in ((u[0::2], "even counters"), (u[1::2], "odd counters")):
        frac = np.mean(lo < 0.3)  # each half of a draw on its own
        assert abs(frac - 0.3) < 6 * np.sqrt(0.3 * 0.7 / lo.size), (hi, frac)
    # neighbours (the two halves of one draw) uncorrelated
    c = np.corrcoef(u[0::2], u[1::2])[0, 1]
    assert abs(c) < 6 / np.sqrt(u.size / 2), c


@pytest.mark.parametrize("n", [1, 15, 16, 17, 25, 50, 1682])
def test_fast_exp_rows_match_elementwise(n):
    # exp_sum_inplace (16 lanes at a time, the row's end masked, on AVX-512) gives fast_exp's
    # bits on every element, and its sum is the float64 sum to float32 rounding.
    rng = np.random.default_rng(n)
    x = rng.normal(0.0, 4.0, n).astype(np.float32)
    if n >= 16:  # the range's edges and specials, inside a row
        x[:8] = [0.0, -0.0, -87.4, -87.3, 88.3, 88.4, -np.inf, -1e-30]
    m = np.float32(x[np.isfinite(x)].max() if n >= 16 else 0.5)
    one, row, total = CORE.Ops.fast_exp(x, m)
    np.testing.assert_array_equal(row.view(np.int32), one.view(np.int32))
    ref = np.exp((x - m).astype(np.float64))  # the difference is rounded to float32 first
    np.testing.assert_allclose(one, ref, rtol=1.5e-7, atol=1e-37)  # fast_exp: about 1 ulp
    assert total == pytest.approx(ref.sum(), rel=n * 1.2e-7)


@pytest.mark.parametrize("n", [8, 9, 16, 31])
def test_fast_exp_rows_keep_nan_and_infinities(n):
    # The vector forms (AVX-512, AVX2) select NaN, +inf and 0 as fast_exp does, at every lane.
    x = np.full(n, 0.25, np.float32)
    x[0], x[3], x[n - 1] = np.nan, np.inf, -np.inf
    x[n // 2] = 100.0
    one, row, _ = CORE.Ops.fast_exp(x, np.float32(0.0))
    np.testing.assert_array_equal(row.view(np.int32), one.view(np.int32))
    assert np.isnan(one[0]) and one[3] == np.inf and one[n - 1] == 0.0 and one[n // 2] == np.inf


def test_uniform_statistics():
    u = CORE.Ops.uniform(CORE.Ops.rng_key(7, 0), 200_000).astype(np.float64)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert np.all(u * 2**24 == np.round(u * 2**24)), "uniforms must carry exactly 24 bits"
    # Fraction below 0.3 (the dropout rate used below): 6 binomial standard deviations.
    frac = np.mean(u < 0.3)
    assert abs(frac - 0.3) < 6 * np.sqrt(0.3 * 0.7 / u.size), frac
    assert abs(u.mean() - 0.5) < 6 * np.sqrt(1 / 12 / u.size), u.mean()


# ============================================================================ dropout
DROPOUT_CASES = [  # (n, p, with relu_out, seed)
    (1, 0.3, False, 1), (7, 0.0, False, 2), (1000, 0.3, False, 3), (1000, 0.3, True, 4),
    (20000, 0.3, True, 5),  # large enough to be split over threads
    (1000, 0.9, False, 6), (999, 0.0, True, 7),
    (33, 0.3, True, 111), (257, 0.5, False, 112),  # sizes off the GPU's 32-lane multiples
]


@pytest.mark.parametrize("n,p,relu,seed", DROPOUT_CASES,
                         ids=ids(DROPOUT_CASES, lambda n, p, r, s: f"n{n}-p{p}-relu{int(r)}-s{s}"))
def test_dropout(ops, n, p, relu, seed):
    rng = np.random.default_rng(seed)
    key = R.rng_key(seed, 99)
    x = normal(rng, n)
    x[x == 0] = 1.0  # no exact zeros, so a zero output means "dropped"
    mult = R.dropout_multiplier(R.dropout_uniform(key, n), p)
    out = poison(n)
    ops.dropout_forward(out, x, n, p, key)
    ref = R.dropout_forward(x, mult)
    np.testing.assert_array_equal(out == 0, mult == 0, err_msg=f"dropout mask (seed {seed})")
    # out = x * fl(1 / fl(1 - p)): three roundings, <= 3u relative; bound(0) is 16u.
    assert_close(out, ref, bound(0, np.abs(ref)), "dropout_forward", seed)

    dout = normal(rng, n)
    relu_out = None
    if relu:  # a ReLU output with exact zeros, and negatives to check the strict "> 0"
        relu_out = np.maximum(normal(rng, n), 0).astype(np.float32)
        relu_out[::7] = -1.0
    din = poison(n)
    ops.dropout_backward(din, dout, relu_out, n, p, key)
    ref = R.dropout_backward(dout, mult, relu_out)
    assert_close(din, ref, bound(0, np.abs(ref)), "dropout_backward", seed)
    np.testing.assert_array_equal(din == 0, (ref == 0) | (dout == 0), err_msg=f"seed {seed}")


def test_dropout_keeps_at_threshold(ops):
    """keep is uniform >= p: a draw equal to p is kept (p chosen among the draws)."""
    key = R.rng_key(3, 4)
    u = ops.dropout_uniform(key, 64)
    k = int(np.argmin(np.abs(u - 0.5)))
    p = float(u[k])  # exactly representable: the engine compares the same float32 values
    out = poison(64)
    ops.dropout_forward(out, np.ones(64, np.float32), 64, p, key)
    assert out[k] != 0, f"element {k} with uniform == p = {p!r} was dropped"
    np.testing.assert_array_equal(out != 0, u >= np.float32(p))
    din = poison(64)
    ops.dropout_backward(din, np.ones(64, np.float32), None, 64, p, key)
    np.testing.assert_array_equal(din != 0, u >= np.float32(p))


# ============================================================================ residual + layernorm
RESLN_CASES = [  # (R, C, p, seed)
    (1, 1, 0.0, 31), (1, 7, 0.3, 32), (33, 64, 0.3, 33), (257, 65, 0.0, 34),
    (1000, 20, 0.3, 35),  # R*C >= 16384: rows split over threads
    (9, 130, 0.5, 36), (5, 300, 0.3, 37),
]


@pytest.mark.parametrize("R_,C,p,seed", RESLN_CASES,
                         ids=ids(RESLN_CASES, lambda r, c, p, s: f"R{r}-C{c}-p{p}-s{s}"))
def test_layernorm_residual(ops, R_, C, p, seed):
    rng = np.random.default_rng(seed)
    a, b = normal(rng, R_, C, scale=2.0), normal(rng, R_, C)
    b[b == 0] = 1.0  # no exact zeros, so the mask shows in the sum
    g, beta = normal(rng, C), normal(rng, C)
    eps, key = f32(1e-5), R.rng_key(seed, 7)
    mult = R.dropout_multiplier(R.dropout_uniform(key, R_ * C).reshape(R_, C), p)
    s, out, mean, rstd = poison(R_, C), poison(R_, C), poison(R_), poison(R_)
    ops.layernorm_residual_forward(s, out, mean, rstd, a, b, p, key, g, beta, R_, C, eps)
    rs_ = R.layernorm_residual_forward(a, b, g, beta, eps, mult)[0]
    # The sum: the dropout's mask bit for bit (a dropped b leaves a exactly), and within
    # the rounding of b * keep / (1 - p) and one addition elsewhere.
    dropped = mult == 0
    np.testing.assert_array_equal(s[dropped], a[dropped], err_msg=f"dropout mask (seed {seed})")
    assert_close(s, rs_, bound(0, np.abs(a) + np.abs(b) * mult), "layernorm_residual sum", seed)
    # The norm of the engine's own sum: exactly what layernorm_forward gives for it (the
    # fused pass normalises as the plain one does), and within test_layernorm's bounds of
    # the float64 norm of that sum.
    lo, lmean, lrstd = poison(R_, C), poison(R_), poison(R_)
    ops.layernorm_forward(lo, lmean, lrstd, s, g, beta, R_, C, eps)
    for got, want, what in ((out, lo, "out"), (mean, lmean, "mean"), (rstd, lrstd, "rstd")):
        np.testing.assert_array_equal(got, want, err_msg=f"{what} differs from layernorm_forward (seed {seed})")
    ref, rmean, rrstd = R.layernorm_forward(s, g, beta, eps)
    cond = np.abs(s).max(axis=1) * rrstd
    assert_close(out, ref, bound(C, (1.0 + cond)[:, None] * np.abs(g) + np.abs(beta)),
                 "layernorm_residual out", seed)
    assert_close(rstd, rrstd, bound(C, rrstd * (1.0 + cond)), "layernorm_residual rstd", seed)


# ============================================================================ embedding
EMB_CASES = [  # (R, C, V, T, p, seed)
    (1, 1, 1, 1, 0.0, 11), (1, 13, 5, 3, 0.3, 12),
    (9, 13, 4, 6, 0.3, 13),     # few items, many repeats: the scatter accumulates
    (37, 20, 50, 40, 0.0, 14),
    (300, 20, 30, 50, 0.3, 15),  # R*C >= 4096: the backward splits columns over threads
    (33, 65, 20, 40, 0.3, 115), (257, 7, 300, 50, 0.3, 116),  # widths off multiples of 32
    (1, 130, 3, 1, 0.0, 117),
]


@pytest.mark.parametrize("R_,C,V,T,p,seed", EMB_CASES,
                         ids=ids(EMB_CASES, lambda r, c, v, t, p, s: f"R{r}-C{c}-V{v}-T{t}-p{p}-s{s}"))
def test_embedding(ops, R_, C, V, T, p, seed):
    rng = np.random.default_rng(seed)
    E, P = normal(rng, V + 1, C), normal(rng, T, C)
    items = rng.integers(1, V + 1, R_).astype(np.int32)
    pos = rng.integers(0, T, R_).astype(np.int32)
    scale = f32(np.sqrt(C))
    key = R.rng_key(seed, 0)
    mult = R.dropout_multiplier(R.dropout_uniform(key, R_ * C).reshape(R_, C), p)

    x = poison(R_, C)
    ops.embedding_forward(x, items, pos, E, P, R_, C, scale, p, key)
    ref = R.embedding_forward(E, P, items, pos, scale, mult)
    mag = R.embedding_forward(np.abs(E), np.abs(P), items, pos, scale, mult)
    # Elementwise: one multiply-add and the dropout scaling (<= 5 roundings).
    assert_close(x, ref, bound(0, mag), "embedding_forward", seed)

    dx = normal(rng, R_, C)
    dE, dP = zeros(V + 1, C), zeros(T, C)
    ops.embedding_backward(dE, dP, dx, items, pos, R_, C, scale, p, key)
    rdE, rdP = R.embedding_backward(dx, items, pos, V + 1, T, scale, mult)
    mE, mP = R.embedding_backward(np.abs(dx), items, pos, V + 1, T, scale, mult)
    # Each row of dE / dP sums at most R scattered terms.
    assert_close(dE, rdE, bound(R_, mE), "embedding_backward dE", seed)
    assert_close(dP, rdP, bound(R_, mP), "embedding_backward dP", seed)
    assert not dE[0].any(), f"row 0 (padding) of dE written (seed {seed})"


# Repeats (the scatter accumulates), threaded columns, widths off the GPU's multiples of 32.
EMB_ACC_CASES = [c for c in EMB_CASES if c[-1] in (13, 15, 115, 116)]


@pytest.mark.parametrize("R_,C,V,T,p,seed", EMB_ACC_CASES,
                         ids=ids(EMB_ACC_CASES, lambda r, c, v, t, p, s: f"R{r}-C{c}-V{v}-T{t}-p{p}-s{s}"))
def test_embedding_backward_accumulates(ops, R_, C, V, T, p, seed):
    """dE +=, dP += into the model's gradient arena: from random prefills, each is the
    prefill plus the gradient from zero, and row 0 of dE (padding) keeps its prefill."""
    rng = np.random.default_rng(seed)
    items = rng.integers(1, V + 1, R_).astype(np.int32)
    pos = rng.integers(0, T, R_).astype(np.int32)
    scale = f32(np.sqrt(C))
    key = R.rng_key(seed, 0)
    mult = R.dropout_multiplier(R.dropout_uniform(key, R_ * C).reshape(R_, C), p)
    dx = normal(rng, R_, C)
    plain = zeros(V + 1, C), zeros(T, C)
    ops.embedding_backward(*plain, dx, items, pos, R_, C, scale, p, key)
    prefill = normal(rng, V + 1, C), normal(rng, T, C)
    dE, dP = (a.copy() for a in prefill)
    ops.embedding_backward(dE, dP, dx, items, pos, R_, C, scale, p, key)
    rdE, rdP = R.embedding_backward(dx, items, pos, V + 1, T, scale, mult)
    mE, mP = R.embedding_backward(np.abs(dx), items, pos, V + 1, T, scale, mult)
    assert_accumulated(dE, prefill[0], plain[0], rdE, bound(R_, mE), "embedding_backward dE", seed)
    assert_accumulated(dP, prefill[1], plain[1], rdP, bound(R_, mP), "embedding_backward dP", seed)
    np.testing.assert_array_equal(dE[0], prefill[0][0], err_msg=f"row 0 (padding) of dE written (seed {seed})")


# ============================================================================ layernorm
LN_CASES = [  # (R, C, eps, input std, offset, seed)
    (1, 1, 1e-8, 1.0, 0.0, 21),    # C = 1: x - mean = 0, out = b, din = 0
    (1, 2, 1e-5, 1.0, 0.0, 22), (6, 13, 1e-8, 1.0, 0.0, 23), (33, 20, 1e-5, 1.5, 3.0, 24),
    (5, 64, 1e-8, 0.7, 0.0, 25),
    (1000, 20, 1e-8, 1.0, 0.0, 26),  # R*C >= 16384: rows split over threads, dg/db per thread
    (4, 16, 1e-8, 1.0, 30.0, 27),    # inputs far from zero mean
    (5, 12, 1e-5, 0.003, 0.0, 28),   # variance ~ eps: eps placement matters
    (257, 130, 1e-5, 1.0, 0.0, 118),  # rows past a 256-row GPU block, C past 128
    (33, 7, 1e-8, 1.0, 0.0, 119), (513, 65, 1e-5, 2.0, 1.0, 120), (33, 1, 1e-5, 1.0, 0.0, 121),
    # the GPU's fused backward holds a row in registers up to C = 256, and not beyond
    (70, 256, 1e-5, 1.0, 0.0, 130), (9, 300, 1e-5, 1.0, 0.0, 131),
]


@pytest.mark.parametrize("R_,C,eps,std,offset,seed", LN_CASES,
                         ids=ids(LN_CASES, lambda r, c, e, sd, o, s: f"R{r}-C{c}-eps{e}-std{sd}-off{o}-s{s}"))
def test_layernorm(ops, R_, C, eps, std, offset, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((R_, C)) * std + offset).astype(np.float32)
    g, b = normal(rng, C), normal(rng, C)
    eps = f32(eps)
    out, mean, rstd = poison(R_, C), poison(R_), poison(R_)
    ops.layernorm_forward(out, mean, rstd, x, g, b, R_, C, eps)
    ref, rmean, rrstd = R.layernorm_forward(x, g, b, eps)
    # Conditioning: centring loses |x| / std of the row's digits; cond = max|x| * rstd
    # multiplies the rounding of the mean (and of every quantity derived from x - mean).
    cond = np.abs(x).max(axis=1) * rrstd
    amp = (1.0 + cond)[:, None]
    assert_close(mean, rmean, bound(C, np.abs(x).mean(axis=1)), "layernorm mean", seed)
    assert_close(rstd, rrstd, bound(C, rrstd * (1.0 + cond)), "layernorm rstd", seed)
    assert_close(out, ref, bound(C, amp * np.abs(g) + np.abs(b)), "layernorm_forward", seed)

    dout = normal(rng, R_, C)
    din, dg, db = poison(R_, C), zeros(C), zeros(C)
    ops.layernorm_backward(din, dg, db, dout, x, mean, rstd, g, R_, C, False)
    rdin, rdg, rdb = R.layernorm_backward(dout, x, g, eps)
    tol_din, tol_dg, tol_db = _layernorm_backward_tolerances(x, g, dout, rmean, rrstd)
    assert_close(din, rdin, tol_din, "layernorm_backward din", seed)
    assert_close(dg, rdg, tol_dg, "layernorm_backward dg", seed)
    assert_close(db, rdb, tol_db, "layernorm_backward db", seed)


def _layernorm_backward_tolerances(x, g, dout, rmean, rrstd):
    """Error allowances of layernorm_backward's (din, dg, db), from the reference's mean
    and rstd of x."""
    R_, C = x.shape
    # Conditioning: centring loses |x| / std of the row's digits; cond = max|x| * rstd
    # multiplies the rounding of the mean (and of every quantity derived from x - mean).
    cond = np.abs(x).max(axis=1) * rrstd
    amp = (1.0 + cond)[:, None]
    xhat = (x - rmean[:, None]) * rrstd[:, None]
    gh = np.abs(dout * g)
    # din = rstd (gh - mean(gh) - xhat mean(gh xhat)): every term is at most
    # rstd max|gh| (1 + max|xhat|), each carrying the centring error amplified by cond.
    mag_din = (rrstd * gh.max(axis=1) * (1.0 + np.abs(xhat).max(axis=1)))[:, None] * amp
    # dg = sum_r dout xhat: R-term sums of terms whose xhat carries the centring error.
    return (bound(C, mag_din), bound(R_ + C, np.sum(np.abs(dout) * (np.abs(xhat) + amp), axis=0)),
            bound(R_, np.abs(dout).sum(axis=0)))


# Small, threaded (per-thread dg/db), past a GPU block, and both sides of the GPU's
# in-register rows (C <= 256).
LN_ACC_CASES = [c for c in LN_CASES if c[-1] in (23, 24, 26, 118, 130, 131)]


@pytest.mark.parametrize("R_,C,eps,std,offset,seed", LN_ACC_CASES,
                         ids=ids(LN_ACC_CASES, lambda r, c, e, sd, o, s: f"R{r}-C{c}-eps{e}-std{sd}-off{o}-s{s}"))
def test_layernorm_backward_accumulates(ops, R_, C, eps, std, offset, seed):
    """accumulate=True (din += the input gradient, as the model's layers add into a
    gradient that already holds the residual's): from random prefills of din, dg and db,
    each is the prefill plus the accumulate=False result."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((R_, C)) * std + offset).astype(np.float32)
    g, b = normal(rng, C), normal(rng, C)
    eps = f32(eps)
    out, mean, rstd = poison(R_, C), poison(R_), poison(R_)
    ops.layernorm_forward(out, mean, rstd, x, g, b, R_, C, eps)
    _, rmean, rrstd = R.layernorm_forward(x, g, b, eps)
    dout = normal(rng, R_, C)
    plain = poison(R_, C), zeros(C), zeros(C)
    ops.layernorm_backward(*plain, dout, x, mean, rstd, g, R_, C, False)
    prefill = normal(rng, R_, C), normal(rng, C), normal(rng, C)
    got = tuple(a.copy() for a in prefill)
    ops.layernorm_backward(*got, dout, x, mean, rstd, g, R_, C, True)
    refs = R.layernorm_backward(dout, x, g, eps)
    tols = _layernorm_backward_tolerances(x, g, dout, rmean, rrstd)
    for name, a, pre, pl, ref, tol in zip(("din", "dg", "db"), got, prefill, plain, refs, tols):
        assert_accumulated(a, pre, pl, ref, tol, f"layernorm_backward {name}", seed)


@pytest.fixture(params=["cpu", "cuda"])
def ops_bf16(request):
    """Like ops, with precision="bf16" (the linear layers' product operands in bfloat16)."""
    device = request.param
    ok, why = CORE.backend_available(device)
    if not ok:
        pytest.skip(f"{device} backend not usable: {why}")
    key = (device, "bf16")
    if key not in _OPS:
        _OPS[key] = CORE.Ops(device, "bf16")
    return _OPS[key]


# ============================================================================ linear
LIN_CASES = [  # (R, I, O, relu, dropout p of the output, seed)
    (1, 1, 5, False, 0.0, 31), (1, 13, 20, True, 0.3, 32), (7, 20, 13, False, 0.0, 33),
    (64, 13, 20, True, 0.3, 34), (3, 20, 40, False, 0.5, 36),
    (1000, 13, 20, True, 0.3, 35),  # threaded gemm and threaded bias column sums
    (33, 65, 7, True, 0.0, 122), (257, 130, 33, False, 0.3, 123),  # past 256-row bias chunks
    (1, 7, 130, True, 0.0, 124), (513, 1, 65, False, 0.3, 125),
]
LIN_IDS = ids(LIN_CASES, lambda r, i, o, re, p, s: f"R{r}-I{i}-O{o}-relu{int(re)}-p{p}-s{s}")


def _linear_dropout(R_, O, p, seed):
    """The output dropout's key and multipliers (R, O) of a linear case."""
    key = R.rng_key(seed, 5)
    return key, R.dropout_multiplier(R.dropout_uniform(key, R_ * O).reshape(R_, O), p)


@pytest.mark.parametrize("R_,I,O,relu,p,seed", LIN_CASES, ids=LIN_IDS)
def test_linear(ops, R_, I, O, relu, p, seed):
    rng = np.random.default_rng(seed)
    x, W, b = normal(rng, R_, I), normal(rng, I, O), normal(rng, O)
    key, mult = _linear_dropout(R_, O, p, seed)
    out = poison(R_, O)
    ops.linear_forward(out, x, W, b, R_, I, O, relu, p, key)
    ref = R.linear_forward(x, W, b, relu, mult)
    # Rigorous: |fl(x.w + b) - (x.w + b)| <= gamma_{I+1} (|x| |W| + |b|); ReLU is 1-Lipschitz;
    # the dropout scales by keep / (1 - p) with one more rounding.
    mag = (np.abs(x) @ np.abs(W) + np.abs(b)) * mult
    assert_close(out, ref, bound(I, mag), "linear_forward", seed)
    np.testing.assert_array_equal(out[mult == 0], 0, err_msg=f"dropped outputs (seed {seed})")

    dout = normal(rng, R_, O)
    din, dW, db = poison(R_, I), zeros(I, O), zeros(O)
    ops.linear_backward(din, dW, db, dout, x, W, R_, I, O, False)
    rdin, rdW, rdb = R.linear_backward(dout, x, W)
    assert_close(din, rdin, bound(O, np.abs(dout) @ np.abs(W).T), "linear_backward din", seed)
    assert_close(dW, rdW, bound(R_, np.abs(x).T @ np.abs(dout)), "linear_backward dW", seed)
    assert_close(db, rdb, bound(R_, np.abs(dout).sum(axis=0)), "linear_backward db", seed)


@pytest.mark.parametrize("R_,I,O,relu,p,seed", LIN_CASES, ids=LIN_IDS)
def test_linear_bf16(ops_bf16, R_, I, O, relu, p, seed):
    """precision="bf16": each product's operands rounded to bfloat16, then summed in fp32.
    The product of two bfloat16 numbers is exact in float32, so the reference on the
    rounded operands is held to the same float32 bound as the fp32 op; the bias and db
    stay fp32."""
    rng = np.random.default_rng(seed)
    x, W, b = normal(rng, R_, I), normal(rng, I, O), normal(rng, O)
    xb, Wb = R.bf16(x), R.bf16(W)
    key, mult = _linear_dropout(R_, O, p, seed)
    out = poison(R_, O)
    ops_bf16.linear_forward(out, x, W, b, R_, I, O, relu, p, key)
    ref = R.linear_forward(xb, Wb, b, relu, mult)
    assert_close(out, ref, bound(I, (np.abs(xb) @ np.abs(Wb) + np.abs(b)) * mult),
                 "linear_forward bf16", seed)
    np.testing.assert_array_equal(out[mult == 0], 0, err_msg=f"dropped outputs (seed {seed})")

    dout = normal(rng, R_, O)
    db_ = R.bf16(dout)
    din, dW, db = poison(R_, I), zeros(I, O), zeros(O)
    ops_bf16.linear_backward(din, dW, db, dout, x, W, R_, I, O, False)
    rdin, rdW, _ = R.linear_backward(db_, xb, Wb)
    assert_close(din, rdin, bound(O, np.abs(db_) @ np.abs(Wb).T), "linear_backward din bf16", seed)
    assert_close(dW, rdW, bound(R_, np.abs(xb).T @ np.abs(db_)), "linear_backward dW bf16", seed)
    rdb = np.asarray(dout, np.float64).sum(axis=0)
    assert_close(db, rdb, bound(R_, np.abs(dout).sum(axis=0)), "linear_backward db bf16", seed)


def test_bf16_rounds_to_nearest_even(ops_bf16):
    """Halfway cases go to the even bfloat16: 1 + 2^-8 -> 1, 1 + 3 * 2^-8 -> 1 + 2^-6,
    and the same below zero; an identity product returns the rounded inputs exactly."""
    x = np.array([[1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 1 + 2**-8 + 2**-20]], np.float32)
    out = poison(1, 4)
    ops_bf16.linear_forward(out, x, np.eye(4, dtype=np.float32), np.zeros(4, np.float32), 1, 4, 4,
                            False, 0.0, 0)
    np.testing.assert_array_equal(out, [[1.0, 1 + 2**-6, -1.0, 1 + 2**-7]])
    np.testing.assert_array_equal(R.bf16(x), out)


# Single row, threaded gemm and bias sums, past 256-row bias chunks, I = 1.
LIN_ACC_CASES = [c for c in LIN_CASES if c[-1] in (32, 33, 35, 123, 125)]
LIN_ACC_IDS = ids(LIN_ACC_CASES, lambda r, i, o, re, p, s: f"R{r}-I{i}-O{o}-s{s}")


def _linear_backward_accumulates(ops, R_, I, O, seed, bf16):
    rng = np.random.default_rng(seed)
    x, W, dout = normal(rng, R_, I), normal(rng, I, O), normal(rng, R_, O)
    plain = poison(R_, I), zeros(I, O), zeros(O)
    ops.linear_backward(*plain, dout, x, W, R_, I, O, False)
    prefill = normal(rng, R_, I), normal(rng, I, O), normal(rng, O)
    got = tuple(a.copy() for a in prefill)
    ops.linear_backward(*got, dout, x, W, R_, I, O, True)
    # The products' operands in bfloat16 under bf16 (the prefill is not an operand); db fp32.
    xr, Wr, dr = (R.bf16(x), R.bf16(W), R.bf16(dout)) if bf16 else (x, W, dout)
    rdin, rdW, _ = R.linear_backward(dr, xr, Wr)
    rdb = np.asarray(dout, np.float64).sum(axis=0)
    tols = (bound(O, np.abs(dr) @ np.abs(Wr).T), bound(R_, np.abs(xr).T @ np.abs(dr)),
            bound(R_, np.abs(dout).sum(axis=0)))
    what = "linear_backward" + (" bf16" if bf16 else "")
    for name, a, pre, pl, ref, tol in zip(("din", "dW", "db"), got, prefill, plain, (rdin, rdW, rdb), tols):
        assert_accumulated(a, pre, pl, ref, tol, f"{what} {name}", seed)
    # A null din (the ops.def contract: skipped): dW and db accumulate as before.
    dW, db = prefill[1].copy(), prefill[2].copy()
    ops.linear_backward(None, dW, db, dout, x, W, R_, I, O, True)
    for name, a, pre, pl, ref, tol in zip(("dW", "db"), (dW, db), prefill[1:], plain[1:], (rdW, rdb), tols[1:]):
        assert_accumulated(a, pre, pl, ref, tol, f"{what} {name} (din null)", seed)


@pytest.mark.parametrize("R_,I,O,relu,p,seed", LIN_ACC_CASES, ids=LIN_ACC_IDS)
def test_linear_backward_accumulates(ops, R_, I, O, relu, p, seed):
    """accumulate=True (din += dout W^T, as the model adds the projections' input gradients
    into one): from random prefills of din, dW and db, each is the prefill plus the
    accumulate=False result; and a null din is skipped."""
    _linear_backward_accumulates(ops, R_, I, O, seed, bf16=False)


@pytest.mark.parametrize("R_,I,O,relu,p,seed", LIN_ACC_CASES, ids=LIN_ACC_IDS)
def test_linear_backward_accumulates_bf16(ops_bf16, R_, I, O, relu, p, seed):
    """The same under precision="bf16": the prefill is added in fp32, never rounded."""
    _linear_backward_accumulates(ops_bf16, R_, I, O, seed, bf16=True)


# ============================================================================ attention
ATT_CASES = [  # (sequence lengths, C, H, T, p, seed)
    ([1], 4, 1, 1, 0.0, 41),               # one row, T = 1
    ([1], 20, 4, 3, 0.3, 42),              # T larger than the sequence
    ([1, 1, 1], 13, 1, 1, 0.3, 43),        # only length-1 sequences, C = 13
    ([3], 2, 2, 3, 0.3, 44),               # head dim 1
    ([5, 1, 7, 2], 20, 4, 7, 0.3, 45),     # D = 5, odd lengths
    ([5, 1, 7, 2], 20, 2, 9, 0.0, 46),
    ([6, 6, 6], 12, 2, 6, 0.3, 47),
    ([7, 3], 8, 2, 7, 0.9, 48),            # most probabilities dropped
    ([33], 13, 1, 40, 0.3, 49),
    ([50] * 8 + [1] * 5, 16, 4, 50, 0.3, 50),  # 52 (sequence, head) tasks over threads
    ([512], 128, 1, 512, 0.3, 126),        # T = 512, D = 128: the CUDA kernels' limits
    ([257, 33, 1, 130], 130, 2, 300, 0.3, 127),  # D = 65; lengths across 32-row tiles
    ([129, 65, 7], 256, 2, 129, 0.0, 128),  # D = 128 without dropout (also inference)
    ([100, 1, 33], 33, 1, 512, 0.0, 129),  # D = 33, T far above the longest sequence
    ([50, 50, 50, 17, 3], 64, 1, 50, 0.2, 130),  # the training shape: D = 64, n = 50
    ([70, 9, 4], 48, 2, 70, 0.3, 131),     # D = 24 (two 16-lane chunks, one partial)
]


def _attention_tolerances(Q, K, V, dO, cu, H, T, drop):
    """Error allowances of (O, lse, dQ, dK, dV) from the magnitudes of the computation.

    Scores carry an absolute error up to D u sigma (sigma = max |q| . |k| / sqrt(D) of
    the row), which becomes a relative error of the probabilities, as do the n-term
    normalisation (n <= T) and exponentials.  rel(h, i) collects these per (head, row)."""
    Rn, C = Q.shape
    D = C // H
    P, M, _ = R.attention_weights(Q, K, cu, H, drop)
    allowed = M != 0 if drop is None else R.attention_weights(Q, K, cu, H, None)[1] != 0
    split = lambda a: np.abs(np.asarray(a, np.float64)).reshape(Rn, H, D).transpose(1, 0, 2)  # noqa: E731
    aQ, aK, aV, adO = split(Q), split(K), split(V), split(dO)
    sigma = np.where(allowed, aQ @ aK.transpose(0, 2, 1) / np.sqrt(D), 0).max(axis=2, keepdims=True)
    rel = 4 * U32 * ((D + 4) * (1 + sigma) + T)  # (H, R, 1)
    back = lambda a: a.transpose(1, 0, 2).reshape(Rn, -1)  # noqa: E731
    Pd = P * M
    tol_O = back(rel * (Pd @ aV))
    tol_lse = rel[..., 0].T
    A = (adO @ aV.transpose(0, 2, 1)) * M            # magnitude of dP
    mag_dS = P * (A + np.sum(P * A, axis=2, keepdims=True))
    tol_dQ = back(rel * (mag_dS @ aK) / np.sqrt(D))
    tol_dK = back((rel * mag_dS).transpose(0, 2, 1) @ aQ / np.sqrt(D))
    tol_dV = back((rel * Pd).transpose(0, 2, 1) @ adO)
    return tol_O, tol_lse, tol_dQ, tol_dK, tol_dV


def _saved(ops, keep, Rn, H, T, p):
    """attention_forward's `saved` for the backward: None (recomputed from lse), or the
    workspace the backend asks for, poisoned (the backward may read only what the forward
    wrote).  A backend that keeps nothing (0 floats) has no second path to test."""
    if not keep:
        return None
    n = ops.attention_saved_workspace(Rn, H, T, p)
    if n == 0:
        pytest.skip("this backend keeps no attention probabilities (its backward recomputes them)")
    return poison(n)


@pytest.mark.parametrize("keep", [False, True], ids=["recomputed", "saved"])
@pytest.mark.parametrize("lens,C,H,T,p,seed", ATT_CASES,
                         ids=ids(ATT_CASES, lambda l, c, h, t, p, s:
                                 f"lens{'-'.join(map(str, l)) if len(l) < 6 else len(l)}-C{c}-H{h}-T{t}-p{p}-s{s}"))
def test_attention(ops, lens, C, H, T, p, seed, keep):
    """The forward and the backward against the float64 reference, the backward both
    recomputing the probabilities from lse and reading those its forward saved."""
    rng = np.random.default_rng(seed)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    Rn = int(cu[-1])
    Q, K, V = normal(rng, Rn, C), normal(rng, Rn, C), normal(rng, Rn, C)
    key = R.rng_key(seed, 1)
    drop = R.attention_dropout(R.dropout_uniform(key, Rn * H * T), Rn, H, T, p) if p > 0 else None

    B, D, n_max = len(lens), C // H, longest(cu)
    O, lse = poison(Rn, C), poison(Rn, H)
    saved = _saved(ops, keep, Rn, H, T, p)
    ops.attention_forward(O, lse, Q, C, K, V, C, cu, B, H, D, T, n_max, p, key, saved)
    rO, rlse = R.attention_forward(Q, K, V, cu, H, drop)
    dO = normal(rng, Rn, C)
    tol_O, tol_lse, tol_dQ, tol_dK, tol_dV = _attention_tolerances(Q, K, V, dO, cu, H, T, drop)
    assert_close(O, rO, tol_O, "attention_forward O", seed)
    assert_close(lse, rlse, tol_lse, "attention_forward lse", seed)

    dQ, dK, dV = poison(Rn, C), poison(Rn, C), poison(Rn, C)
    ops.attention_backward(dQ, dK, dV, dO, O, Q, C, K, V, C, lse, cu, B, H, D, T, n_max, p, key, saved)
    rdQ, rdK, rdV = R.attention_backward(dO, Q, K, V, cu, H, drop)
    assert_close(dQ, rdQ, tol_dQ, "attention_backward dQ", seed)
    assert_close(dK, rdK, tol_dK, "attention_backward dK", seed)
    assert_close(dV, rdV, tol_dV, "attention_backward dV", seed)


@pytest.mark.parametrize("lens,C,H,T,p,seed", [c for c in ATT_CASES if c[4] == 0],
                         ids=lambda v: None)
def test_attention_last_forward(ops, lens, C, H, T, p, seed):
    """Inference attention (one query per sequence: its last row, no dropout) equals the
    last rows of the full causal attention."""
    rng = np.random.default_rng(seed)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    Rn = int(cu[-1])
    Q, K, V = normal(rng, Rn, C), normal(rng, Rn, C), normal(rng, Rn, C)
    last = cu[1:] - 1
    B = len(lens)
    O = poison(B, C)
    ops.attention_last_forward(O, np.ascontiguousarray(Q[last]), C, K, V, C, cu, B, H, C // H)
    rO, _ = R.attention_forward(Q, K, V, cu, H, None)
    tol_O = _attention_tolerances(Q, K, V, normal(rng, Rn, C), cu, H, T, None)[0]
    assert_close(O, rO[last], tol_O[last], "attention_last_forward O", seed)


def test_gather_rows(ops):
    rng = np.random.default_rng(61)
    x = normal(rng, 7, 5)
    rows = np.array([6, 0, 3, 3], np.int32)
    out = poison(4, 5)
    ops.gather_rows(out, x, rows, 4, 5)
    np.testing.assert_array_equal(out, x[rows])


@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 100_003, 2_000_000])
def test_find_outside(ops, n):
    """The first id outside lo..hi, or n: none bad, one bad at the start, the middle or the
    end, many bad (the smallest index wins over every thread's own), the bounds themselves."""
    rng = np.random.default_rng(n)
    lo, hi = 1, 5000
    ids = rng.integers(lo, hi + 1, size=n).astype(np.int32)
    cases = [ids]
    for where in ({0}, {n // 2}, {n - 1}, set(rng.integers(0, max(n, 1), size=50).tolist())):
        if n:
            bad = ids.copy()
            for e in where:
                bad[e] = rng.choice([lo - 1, hi + 1, -2**31, 2**31 - 1])
            cases.append(bad)
    if n:
        edge = ids.copy()
        edge[0], edge[-1] = lo, hi
        cases.append(edge)
    for case in cases:
        first = np.full(1, -7, np.int64)
        ops.find_outside(first, case, case.size, lo, hi)
        assert first[0] == R.find_outside(case, lo, hi)


def test_sgemm_path_passes_the_product_tests():
    """With AVX-512 or AVX2 the CPU's fp32 products (the linear layers, attention, the
    softmax losses) run in gemm_rows's register-blocked kernels; the tests of those ops
    again with FASTSASREC_NO_AVX512=1 (read once per process), where each is an sgemm."""
    import os
    import subprocess
    import sys

    if CORE.build_info()["fp32_kernels"] == "sgemm":
        pytest.skip("this process already runs the sgemm path (no register-blocked kernels here)")
    env = dict(os.environ, FASTSASREC_NO_AVX512="1")
    info = subprocess.run([sys.executable, "-c", "import fastsasrec; "
                           "print(fastsasrec._core.build_info()['fp32_kernels'])"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert info.stdout.split() == ["sgemm"], info.stdout + info.stderr
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                        "-k", "(attention or linear or loss) and cpu and not sgemm_path"],
                       capture_output=True, text=True, env=env, timeout=900,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout


@pytest.mark.parametrize("keep", [False, True], ids=["recomputed", "saved"])
def test_attention_rows_see_only_their_sequence(ops, keep):
    """Changing one sequence's keys and values leaves the other sequences' outputs and
    gradients bit-identical (no leakage across the packed boundary).  Exact on every
    device: each output row has one owner (a CPU task, a CUDA warp), no atomics."""
    rng = np.random.default_rng(51)
    cu = np.array([0, 4, 5, 9], np.int32)
    Q, K, V, dO = (normal(rng, 9, 8) for _ in range(4))
    key = R.rng_key(51, 1)
    n_max = longest(cu)

    def forward(K, V):  # 3 sequences, H = 2 heads of D = 4, T = 4
        O, lse = poison(9, 8), poison(9, 2)
        saved = _saved(ops, keep, 9, 2, 4, 0.3)
        ops.attention_forward(O, lse, Q, 8, K, V, 8, cu, 3, 2, 4, 4, n_max, 0.3, key, saved)
        return O, lse, saved

    def backward(K, V, O, lse, saved):
        dQ, dK, dV = poison(9, 8), poison(9, 8), poison(9, 8)
        ops.attention_backward(dQ, dK, dV, dO, O, Q, 8, K, V, 8, lse, cu, 3, 2, 4, 4, n_max, 0.3, key,
                               saved)
        return dQ, dK, dV

    O1, l1, s1 = forward(K, V)
    K2, V2 = K.copy(), V.copy()
    K2[4], V2[4] = 5.0, -5.0  # sequence 1 is row 4
    O2, l2, s2 = forward(K2, V2)
    rows = np.r_[0:4, 5:9]
    np.testing.assert_array_equal(O1[rows], O2[rows])
    np.testing.assert_array_equal(l1[rows], l2[rows])
    g1 = backward(K, V, O1, l1, s1)
    g2 = backward(K2, V2, O2, l2, s2)
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(a[rows], b[rows])


# ============================================================================ losses
LOSS_CASES = [  # (kind, R, C, V, N, grad_scale, logit scale, seed)
    ("bce", 1, 13, 11, 0, 1.0, 1.0, 51),
    ("bce", 9, 13, 11, 0, 1 / 9, 1.0, 52),       # some negatives equal their row's target
    ("bce", 40, 20, 50, 0, 0.0, 1.0, 53),        # forward only
    ("bce", 1000, 20, 30, 0, 1e-3, 1.0, 54),     # threaded scatter into dE
    ("bce", 16, 8, 10, 0, 0.5, 8.0, 55),         # large logits (saturated sigmoids)
    ("sampled_softmax", 1, 13, 11, 1, 1.0, 1.0, 56),   # the only negative is the target
    ("sampled_softmax", 9, 13, 11, 5, 1 / 9, 1.0, 57),  # negatives hold targets, repeats
    ("sampled_softmax", 30, 20, 50, 30, 1.0, 1.0, 58),
    ("sampled_softmax", 6, 20, 40, 10, 1.0, 10.0, 59),  # large logits
    ("sampled_softmax", 7, 5, 9, 8, 0.0, 1.0, 60),      # forward only
    ("sampled_softmax", 1100, 8, 60, 4000, 1 / 1100, 1.0, 61),  # > 2^22 logits: 2 chunks
    ("softmax", 1, 13, 1, 0, 1.0, 1.0, 62),      # one item: loss 0, gradient 0
    ("softmax", 9, 13, 11, 0, 1 / 9, 1.0, 63),
    ("softmax", 40, 20, 200, 0, 1.0, 5.0, 64),   # large logits
    ("softmax", 12, 7, 30, 0, 0.0, 1.0, 65),     # forward only
    ("softmax", 600, 4, 28000, 0, 1 / 600, 1.0, 66),  # > 2^24 logits: 2 chunks
    # shapes off the GPU tiles (32 or 64 rows, 64 items, 32 columns of C)
    ("bce", 257, 65, 1000, 0, 1 / 257, 1.0, 130), ("bce", 33, 1, 7, 0, 1.0, 1.0, 131),
    ("sampled_softmax", 33, 130, 300, 65, 1 / 33, 1.0, 132),
    ("sampled_softmax", 257, 7, 100, 130, 1 / 257, 1.0, 133),
    ("softmax", 33, 65, 1000, 0, 1 / 33, 1.0, 134), ("softmax", 257, 7, 129, 0, 1 / 257, 1.0, 135),
    ("softmax", 1, 130, 65, 0, 1.0, 1.0, 136),
    # the GPU's tiled path: 64 rows x 64 candidates, C up to 128 (wider C: the chunked one)
    ("sampled_softmax", 65, 128, 300, 64, 1 / 65, 1.0, 137),
    ("softmax", 129, 128, 130, 0, 1 / 129, 1.0, 138),
    # the sampled softmax with the logQ correction (a random log-probability table)
    ("sampled_softmax_logq", 1, 13, 11, 1, 1.0, 1.0, 140),
    ("sampled_softmax_logq", 9, 13, 11, 5, 1 / 9, 1.0, 141),   # targets among negatives, repeats
    ("sampled_softmax_logq", 30, 20, 50, 30, 1.0, 5.0, 142),
    ("sampled_softmax_logq", 7, 5, 9, 8, 0.0, 1.0, 143),       # forward only
    ("sampled_softmax_logq", 65, 128, 300, 64, 1 / 65, 1.0, 144),   # the GPU's tiled path
    ("sampled_softmax_logq", 33, 130, 300, 65, 1 / 33, 1.0, 145),   # its chunked path
    ("sampled_softmax_logq", 1100, 8, 60, 4000, 1 / 1100, 1.0, 146),  # 2 CPU chunks
    # gbce: N negatives per row (beta from the case's seed parity: 1 or a calibrated 0.3)
    ("gbce", 1, 13, 11, 1, 1.0, 1.0, 150),       # the only negative is the target
    ("gbce", 9, 13, 11, 5, 1 / 9, 1.0, 151),     # negatives hold targets, repeats
    ("gbce", 40, 20, 50, 16, 0.0, 1.0, 152),     # forward only
    ("gbce", 300, 20, 30, 40, 1e-3, 1.0, 153),   # threaded scatter into dE
    ("gbce", 16, 8, 10, 7, 0.5, 8.0, 154),       # large logits (saturated sigmoids)
    ("gbce", 33, 130, 300, 65, 1 / 33, 1.0, 155), ("gbce", 257, 7, 100, 3, 1 / 257, 1.0, 156),
    ("gbce", 5, 1, 7, 256, 1.0, 1.0, 157),
]
LOSS_ID = lambda k, r, c, v, n, g, sc, s: f"{k}-R{r}-C{c}-V{v}-N{n}-gs{g:.3g}-x{sc}-s{s}"  # noqa: E731


def _loss_inputs(kind, R_, C, V, N, scale, rng):
    h = normal(rng, R_, C, scale=scale / np.sqrt(C))
    E = normal(rng, V + 1, C)
    targets = rng.integers(1, V + 1, R_).astype(np.int32)
    if kind == "bce":
        negatives = rng.integers(1, V + 1, R_).astype(np.int32)
        negatives[::3] = targets[::3]
    elif kind == "gbce":
        negatives = rng.integers(1, V + 1, (R_, N)).astype(np.int32)
        negatives[::3, 0] = targets[::3]  # targets among a row's negatives
        if N > 2:
            negatives[:, 2] = negatives[:, 1]  # a repeated negative
        negatives = negatives.ravel()
    elif kind.startswith("sampled_softmax"):
        negatives = rng.integers(1, V + 1, N).astype(np.int32)
        negatives[: min(N, 3)] = targets[: min(N, 3)]  # targets among the negatives
        if N > 4:
            negatives[4] = negatives[3]  # a repeated negative
    else:
        negatives = np.zeros(0, np.int32)
    return h, E, targets, negatives


def _loss_extra(kind, V, seed):
    """(op kind, logq, beta) of a case: the logq table is drawn from the seed (log-
    probabilities of a random distribution over items 1..V, row 0 unused)."""
    if kind == "sampled_softmax_logq":
        rng = np.random.default_rng(seed + 1000)
        q = rng.gamma(0.5, size=V + 1)
        logq = np.log(q / q[1:].sum()).astype(np.float32)
        logq[0] = 0.0
        return "sampled_softmax", logq, 1.0
    if kind == "gbce":
        return "gbce", None, 1.0 if seed % 2 == 0 else 0.3
    return kind, None, 1.0


def _ref_loss(kind, h, E, t, n, gs, seed):
    op, logq, beta = _loss_extra(kind, E.shape[0] - 1, seed)
    return R.loss(op, h, E, t, n, gs, logq=logq, beta=beta)


def _softmax_probs(logits):
    lz = np.max(logits, axis=1, keepdims=True)
    e = np.exp(logits - lz)
    return e / e.sum(axis=1, keepdims=True)


def _loss(ops, kind, h, E, t, n, gs, dE, seed):
    """loss, dh of loss_<kind> on the engine, accumulating into dE (in place).  dh is
    written only with a gradient (grad_scale != 0): poisoned then, zeros otherwise."""
    R_, C = h.shape
    V = E.shape[0] - 1
    op, logq, beta = _loss_extra(kind, V, seed)
    N = len(n) // R_ if op == "gbce" else len(n)
    loss = poison(R_)
    dh = poison(R_, C) if gs != 0 else zeros(R_, C)
    # Workspace arrives with whatever the arena held last: NaN here, so an op that reads
    # workspace it has not written fails.
    ws = poison(getattr(ops, f"loss_{op}_workspace")(R_, C, V, N))
    if op == "sampled_softmax":
        ops.loss_sampled_softmax(loss, dh, dE, h, E, t, n, logq, R_, C, V, N, gs, ws)
    elif op == "gbce":
        ops.loss_gbce(loss, dh, dE, h, E, t, n, R_, C, V, N, f32(beta), gs, ws)
    elif op == "bce":
        ops.loss_bce(loss, dh, dE, h, E, t, n, R_, C, V, N, gs, ws)
    elif op == "softmax":
        ops.loss_softmax(loss, dh, dE, h, E, t, n, R_, C, V, N, gs, ws)
    else:
        raise ValueError(op)
    return loss, dh


def _loss_tolerances(kind, h, E, t, n, gs, rloss, seed):
    """Error allowances of (loss, dh, dE) from the magnitudes of the computation."""
    R_, C = h.shape
    V = E.shape[0] - 1
    ah, aE = np.abs(h.astype(np.float64)), np.abs(E.astype(np.float64))
    kind, logq, beta = _loss_extra(kind, V, seed)
    if kind == "gbce":
        nn = n.reshape(R_, -1)
        N = nn.shape[1]
        mp = np.sum(ah * aE[t], axis=1)
        mn = np.einsum("rc,rjc->rj", ah, aE[nn])
        # Each logit off by up to C u m; the loss sums 1 + N softplus terms (1-Lipschitz).
        tol_loss = bound(C + N, (beta * mp + mn.sum(axis=1)) / (1 + N) + np.abs(rloss))
        g = abs(gs) / (1 + N)
        wp = g * beta * (1 + mp)
        wn = g * (1 + mn)
        tol_dh = bound(C + N, wp[:, None] * aE[t] + np.einsum("rj,rjc->rc", wn, aE[nn]))
        mag_dE = np.zeros_like(aE)
        np.add.at(mag_dE, t, wp[:, None] * ah)
        np.add.at(mag_dE, nn.ravel(), (wn[:, :, None] * ah[:, None, :]).reshape(-1, C))
        tol_dE = bound(C + R_ * N, mag_dE)
        return tol_loss, tol_dh, tol_dE
    if kind == "bce":
        mp, mn = np.sum(ah * aE[t], axis=1), np.sum(ah * aE[n], axis=1)
        # softplus is 1-Lipschitz: the loss inherits the two logits' errors.
        tol_loss = bound(C, mp + mn + np.abs(rloss))
        w = abs(gs) * (1 + np.maximum(mp, mn))  # sigmoid' <= 1/4: logit errors pass on damped
        tol_dh = bound(C, w[:, None] * (aE[t] + aE[n]))
        mag_dE = np.zeros_like(aE)
        np.add.at(mag_dE, t, w[:, None] * ah)
        np.add.at(mag_dE, n, w[:, None] * ah)
        tol_dE = bound(C + R_, mag_dE)
    else:
        if kind == "sampled_softmax":
            signed = R.sampled_softmax_logits(h, E, t, n, logq)
            mags = np.concatenate([np.sum(ah * aE[t], axis=1)[:, None], ah @ aE[n].T], axis=1)
            if logq is not None:  # the correction's subtraction rounds at the logit's size
                alq = np.abs(logq.astype(np.float64))
                mags = mags + np.concatenate([alq[t][:, None],
                                              np.broadcast_to(alq[n][None, :], (R_, len(n)))], axis=1)
            mags = np.where(np.isinf(signed), 0.0, mags)
            M = 1 + len(n)
        else:
            signed = h.astype(np.float64) @ E[1:].astype(np.float64).T
            mags = ah @ aE[1:].T
            M = V
        m = mags.max(axis=1)  # largest |logit| magnitude of the row
        # Each logit is off by up to C u m; the log-sum-exp adds an M-term sum.
        n_red = C + M
        tol_loss = bound(n_red, 1 + 2 * m + np.abs(rloss))
        A = _softmax_probs(signed)
        if kind == "sampled_softmax":
            A[:, 0] += 1.0  # |p - onehot| <= p + onehot
        else:
            A[np.arange(R_), t - 1] += 1.0
        A *= abs(gs) * (1 + m)[:, None]  # relative error of each probability ~ (C + M) u m
        if kind == "sampled_softmax":
            mag_dh = A[:, :1] * aE[t] + A[:, 1:] @ aE[n]
            mag_dE = np.zeros_like(aE)
            np.add.at(mag_dE, t, A[:, :1] * ah)
            np.add.at(mag_dE, n, A[:, 1:].T @ ah)
        else:
            mag_dh = A @ aE[1:]
            mag_dE = np.zeros_like(aE)
            mag_dE[1:] = A.T @ ah
        tol_dh = bound(n_red, mag_dh)
        tol_dE = bound(n_red + R_, mag_dE)
    return tol_loss, tol_dh, tol_dE


@pytest.mark.parametrize("kind,R_,C,V,N,gs,scale,seed", LOSS_CASES, ids=ids(LOSS_CASES, LOSS_ID))
def test_loss(ops, kind, R_, C, V, N, gs, scale, seed):
    _check_loss(ops, kind, R_, C, V, N, gs, scale, seed)


def _check_loss(ops, kind, R_, C, V, N, gs, scale, seed, what=""):
    """One loss case against the float64 reference: loss, dh and dE within their error
    bounds, no gradient written with grad_scale 0, row 0 (padding) of dE untouched."""
    rng = np.random.default_rng(seed)
    h, E, t, n = _loss_inputs(kind, R_, C, V, N, scale, rng)
    gs = f32(gs)
    dE = zeros(V + 1, C)
    loss, dh = _loss(ops, kind, h, E, t, n, gs, dE, seed)
    rloss, rdh, rdE = _ref_loss(kind, h, E, t, n, gs, seed)
    tol_loss, tol_dh, tol_dE = _loss_tolerances(kind, h, E, t, n, gs, rloss, seed)

    assert_close(loss, rloss, tol_loss, f"{kind} loss{what}", seed)
    assert_close(dh, rdh, tol_dh, f"{kind} dh{what}", seed)
    assert_close(dE, rdE, tol_dE, f"{kind} dE{what}", seed)
    if gs == 0:
        assert not dh.any() and not dE.any(), f"grad_scale 0 must write no gradient (seed {seed})"
    assert not dE[0].any(), f"row 0 (padding) of dE written (seed {seed})"


# The CPU's softmax losses split their candidates over the threads (the full softmax the
# catalogue, the sampled one its N negatives: each thread a slice, the row maxima and sums
# combined across threads, dh summed from per-thread partials): every thread count, uneven
# slices, several chunks, with and without a gradient, with the logQ correction.
THREAD_LOSS_CASES = [  # (kind, R, C, V, N, grad_scale, seed)
    ("softmax", 300, 32, 517, 0, 1 / 300, 70),    # one chunk, slices of 172-173 items at 3 threads
    ("softmax", 200, 16, 9001, 0, 1 / 200, 71),   # several chunks of 32 rows
    ("softmax", 77, 24, 1000, 0, 0.0, 72),        # forward only
    ("sampled_softmax", 300, 32, 900, 517, 1 / 300, 73),  # negatives hold targets, repeats
    ("sampled_softmax", 1100, 8, 60, 4000, 1 / 1100, 74),  # 17 chunks
    ("sampled_softmax", 90, 24, 400, 300, 0.0, 75),         # forward only
    ("sampled_softmax_logq", 300, 32, 900, 517, 1 / 300, 76),
]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("kind,R_,C,V,N,gs,seed", THREAD_LOSS_CASES,
                         ids=ids(THREAD_LOSS_CASES,
                                 lambda k, r, c, v, n, g, s: f"{k}-R{r}-C{c}-V{v}-N{n}-gs{g:.3g}-s{s}"))
def test_softmax_losses_any_thread_count(kind, R_, C, V, N, gs, seed, threads):
    if not CORE.backend_available("cpu")[0]:
        pytest.skip("cpu backend not usable")
    _check_loss(CORE.Ops("cpu", threads=threads), kind, R_, C, V, N, gs, 1.0, seed,
                f" ({threads} threads)")


# Every kind: single and threaded scatters, the GPU's tiled paths, a forward only; not the
# multi-chunk giants.
LOSS_ACC_CASES = [c for c in LOSS_CASES if c[-1] in (52, 54, 57, 58, 63, 65, 130, 137, 138,
                                                            141, 144, 151, 152, 153, 155)]


@pytest.mark.parametrize("kind,R_,C,V,N,gs,scale,seed", LOSS_ACC_CASES,
                         ids=ids(LOSS_ACC_CASES, LOSS_ID))
def test_loss_accumulates_into_dE(ops, kind, R_, C, V, N, gs, scale, seed):
    """dE +=: the model passes its gradient arena.  From a random prefill, dE is the
    prefill plus the gradient (row 0, padding, untouched; with grad_scale 0, all of dE),
    and the loss and dh are those of the reference as from zero."""
    rng = np.random.default_rng(seed)
    h, E, t, n = _loss_inputs(kind, R_, C, V, N, scale, rng)
    gs = f32(gs)
    plain = zeros(V + 1, C)
    _loss(ops, kind, h, E, t, n, gs, plain, seed)
    prefill = normal(rng, V + 1, C)
    dE = prefill.copy()
    loss, dh = _loss(ops, kind, h, E, t, n, gs, dE, seed)
    rloss, rdh, rdE = _ref_loss(kind, h, E, t, n, gs, seed)
    tol_loss, tol_dh, tol_dE = _loss_tolerances(kind, h, E, t, n, gs, rloss, seed)
    assert_close(loss, rloss, tol_loss, f"{kind} loss", seed)
    assert_close(dh, rdh, tol_dh, f"{kind} dh", seed)
    assert_accumulated(dE, prefill, plain, rdE, tol_dE, f"{kind} dE", seed)
    np.testing.assert_array_equal(dE[0], prefill[0], err_msg=f"row 0 (padding) of dE written (seed {seed})")
    if gs == 0:
        np.testing.assert_array_equal(dE, prefill, err_msg=f"grad_scale 0 must write no gradient (seed {seed})")


# ============================================================================ AdamW
ADAM_CASES = [  # (n, n_decay, step, weight_decay, seed)
    (1, 0, 1, 0.0, 71), (1, 1, 1, 0.1, 72), (37, 20, 2, 0.1, 73), (1000, 1000, 1000, 0.01, 74),
    (20000, 7000, 3, 0.05, 75),  # threaded
    (257, 130, 5, 0.1, 137), (33, 33, 1, 0.0, 138),
]


@pytest.mark.parametrize("n,n_decay,step,wd,seed", ADAM_CASES,
                         ids=ids(ADAM_CASES, lambda n, d, st, w, s: f"n{n}-decay{d}-step{st}-wd{w}-s{s}"))
def test_adamw(ops, n, n_decay, step, wd, seed):
    rng = np.random.default_rng(seed)
    lr, b1, b2, eps, wd = (f32(v) for v in (1e-3, 0.9, 0.98, 1e-8, wd))
    w, g = normal(rng, n), normal(rng, n, scale=0.1)
    m = normal(rng, n, scale=0.01)
    v = (normal(rng, n, scale=0.01) ** 2).astype(np.float32)
    if n > 3:  # a coordinate with no history and no gradient: v = 0, the update is 0
        g[2] = m[2] = v[2] = 0.0
    pw, pm, pv = w, m, v
    for k in range(step, step + 3):  # three consecutive steps, each from the engine's state
        ew, em, ev = pw.copy(), pm.copy(), pv.copy()  # updated in place
        ops.adamw_step(ew, g, em, ev, n, n_decay, lr, b1, b2, eps, wd, k)
        rw, rm, rv = R.adamw_step(pw, g, pm, pv, n_decay, lr, b1, b2, eps, wd, k)
        # Elementwise formulas of a few roundings each; the update's magnitude is that of
        # the reference update (|m_hat| / (sqrt(v_hat) + eps) <= ~1 / sqrt(1 - b2)).
        upd = np.abs(rw - pw.astype(np.float64))
        assert_close(em, rm, bound(0, b1 * np.abs(pm) + (1 - b1) * np.abs(g)), f"adamw m (step {k})", seed)
        assert_close(ev, rv, bound(0, rv), f"adamw v (step {k})", seed)
        assert_close(ew, rw, bound(0, np.abs(pw) + upd), f"adamw params (step {k})", seed)
        if n > 3:  # no gradient, no history: m, v stay 0, and only the decay moves w
            assert em[2] == 0 and ev[2] == 0, f"seed {seed}"
            if n_decay <= 2 or wd == 0:
                assert ew[2] == pw[2], f"undecayed parameter moved without a gradient (seed {seed})"
        pw, pm, pv = ew, em, ev


# ============================================================================ top-k
def _exclusions(mode, B, V, rng):
    lists = []
    for b in range(B):
        if mode == "none":
            ex = []
        elif mode == "some":
            ex = list(rng.choice(np.arange(1, V + 1), size=min(V, 5), replace=False))
        elif mode == "almost_all":  # leave b % 4 items (0..3)
            ex = list(rng.permutation(np.arange(1, V + 1))[: V - (b % 4)])
        elif mode == "all":
            ex = list(range(1, V + 1))
        elif mode == "dups":
            ex = list(rng.integers(1, V + 1, size=2 * V // 3))  # with repeats
        elif mode == "tiles":  # around the 4096-item tile boundaries
            ex = [1, 4095, 4096, 4097, 8192, 8193, V] + list(rng.integers(1, V + 1, 20))
        lists.append([int(e) for e in ex])
    off = np.concatenate([[0], np.cumsum([len(e) for e in lists])]).astype(np.int64)
    flat = np.array([e for l in lists for e in l], np.int32)
    return lists, flat, off


TOPK_CASES = [  # (B, C, V, K, exclusion mode, integer-valued data, seed)
    (1, 13, 11, 1, "none", False, 81),       # K = 1
    (3, 13, 11, 11, "none", False, 82),      # K = V
    (5, 8, 30, 30, "some", False, 83),       # K = V with exclusions: padded slots
    (8, 8, 30, 5, "almost_all", False, 84),  # 0..3 items left of 30
    (6, 5, 40, 7, "some", True, 85),         # many exact ties: lower id first
    (40, 8, 9000, 10, "tiles", False, 86),   # 3 item tiles, 2 row blocks
    (3, 4, 20, 20, "all", True, 87),         # nothing left: all slots (0, -inf)
    (2, 4, 15, 15, "dups", True, 88),        # repeated exclusions
    (33, 3, 50, 50, "none", True, 89),       # ties, K = V, second row block
    (2, 4, 5, 8, "some", True, 90),          # K > V (the op allows it): padded slots
    (3, 65, 1000, 130, "some", False, 139),  # K > 128: two passes of the GPU's 128-long lists
    (17, 7, 300, 257, "some", True, 140),    # K > 256, exact ties, 17 rows (two row blocks)
    (6, 33, 200, 130, "almost_all", False, 141),  # fewer than K left, K > 128: padded slots
    (33, 130, 777, 1, "some", False, 142),   # K = 1, C = 130, V off the 64-item tiles
    (2, 1, 129, 129, "dups", True, 143),     # C = 1: ties everywhere, K = V > 128
]


def score_table(ops, E, C, V):
    """The backend's scoring table of E (None where the backend has none)."""
    n = ops.score_table_size(C, V)
    if n == 0:
        return None
    table = poison(n)
    ops.score_table_pack(table, E, C, V)
    return table


@pytest.mark.parametrize("B,C,V,K,mode,integer,seed", TOPK_CASES,
                         ids=ids(TOPK_CASES, lambda b, c, v, k, m, i, s: f"B{b}-C{c}-V{v}-K{k}-{m}-int{int(i)}-s{s}"))
def test_topk(ops, B, C, V, K, mode, integer, seed):
    rng = np.random.default_rng(seed)
    if integer:  # small integers: every score is exact in float32, ties are exact
        h = rng.integers(-2, 3, (B, C)).astype(np.float32)
        E = rng.integers(-2, 3, (V + 1, C)).astype(np.float32)
    else:
        h, E = normal(rng, B, C), normal(rng, V + 1, C)
    lists, flat, off = _exclusions(mode, B, V, rng)
    table = score_table(ops, E, C, V)
    got_ids, got_sc = poison(B, K, dtype=np.int32), poison(B, K)
    ws = poison(ops.topk_workspace(B, C, V, K))  # never read before it is written
    ops.topk(got_ids, got_sc, h, E, table, 0, flat, off, B, C, V, K, ws)
    # Every way of scoring (fp32 only, the int8 screen, no table given) gives the same ids
    # and scores, bit for bit.
    for screen, tab in ((1, table), (2, table), (0, None)):
        ids2, sc2 = poison(B, K, dtype=np.int32), poison(B, K)
        ops.topk(ids2, sc2, h, E, tab, screen, flat, off, B, C, V, K, ws)
        np.testing.assert_array_equal(ids2, got_ids, err_msg=f"topk ids, screen {screen}")
        np.testing.assert_array_equal(sc2, got_sc, err_msg=f"topk scores, screen {screen}")
    ref_ids, ref_sc = R.topk(h, E, lists, K)
    if integer:
        np.testing.assert_array_equal(got_ids, ref_ids, err_msg=f"topk ids (seed {seed})")
        np.testing.assert_array_equal(got_sc, ref_sc, err_msg=f"topk scores (seed {seed})")
        return
    all_scores = h.astype(np.float64) @ E[1:].astype(np.float64).T
    tol = bound(C, np.abs(h).astype(np.float64) @ np.abs(E[1:]).astype(np.float64).T)  # (B, V)
    for b in range(B):
        left = V - len(set(lists[b]))
        k_real = min(K, left)
        gi, gs = got_ids[b], got_sc[b]
        msg = f"topk row {b} (seed {seed})"
        assert np.all(gi[k_real:] == 0) and np.all(np.isneginf(gs[k_real:])), msg + ": padding"
        sel = gi[:k_real]
        assert len(set(sel.tolist())) == k_real and sel.min(initial=1) >= 1 and sel.max(initial=1) <= V, msg
        assert not set(sel.tolist()) & set(lists[b]), msg + ": returned an excluded item"
        # Scores are those of the returned items.
        assert_close(gs[:k_real], all_scores[b, sel - 1], tol[b, sel - 1], msg + " scores", seed)
        # Best first on the engine's own scores, ties by lower id.
        for k in range(k_real - 1):
            assert gs[k] > gs[k + 1] or (gs[k] == gs[k + 1] and sel[k] < sel[k + 1]), msg + ": order"
        # Optimal up to rounding: the k-th best reference score is matched within tolerance.
        ref_best = ref_sc[b, :k_real]
        got_ref = np.sort(all_scores[b, sel - 1])[::-1]
        assert np.all(np.abs(got_ref - ref_best) <= 2 * tol[b].max()), msg + ": not the top-k"
        # Where the reference has no near-ties, the ids are exactly the reference's.
        s = np.concatenate([ref_best, [ref_sc[b, k_real]] if k_real < min(K, left) else []])
        if np.all(np.abs(np.diff(s)) > 4 * tol[b].max()):
            np.testing.assert_array_equal(sel, ref_ids[b, :k_real], err_msg=msg)


def _screen_case(kind, rng):
    """(h, E) of one adversarial kind for the int8 screen's exactness."""
    B, C, V = 5, 64, 3001
    h = normal(rng, B, C)
    E = normal(rng, V + 1, C)
    if kind == "near_ties":  # one base row plus perturbations at float32's last bits
        base = normal(rng, 1, C)
        E = (base + rng.standard_normal((V + 1, C)).astype(np.float32) * 1e-6).astype(np.float32)
    elif kind == "duplicates":  # exact ties everywhere: the lower id wins
        E = np.repeat(normal(rng, 40, C), (V + 1) // 40 + 1, axis=0)[: V + 1].copy()
    elif kind == "spiky":  # one large value a row: its int8 codes lose the small ones
        E[np.arange(V + 1), rng.integers(0, C, V + 1)] = 1e3
    elif kind == "scales":  # rows from 1e-30 to 1e30, zero rows among them
        E *= (10.0 ** rng.integers(-30, 31, (V + 1, 1))).astype(np.float32)
        E[rng.integers(0, V + 1, 50)] = 0
    elif kind == "integers":  # every score exact, ties exact
        h = rng.integers(-3, 4, (B, C)).astype(np.float32)
        E = rng.integers(-3, 4, (V + 1, C)).astype(np.float32)
    elif kind == "zero_h":  # every score 0: all tie
        h[:] = 0
    elif kind == "sparse_h":  # H dominated by one coordinate
        h[:] = 1e-6
        h[:, 3] = 50
    return h, np.ascontiguousarray(E, np.float32)


@pytest.mark.parametrize("kind", ["random", "near_ties", "duplicates", "spiky", "scales", "integers",
                                  "zero_h", "sparse_h"])
@pytest.mark.parametrize("threads", [1, 2])
def test_topk_screen_is_exact(kind, threads):
    """The int8 screen (its candidates from proven bounds, re-scored in fp32) returns the
    fp32 top-k's ids and scores bit for bit, at any thread count, with exclusions (the
    best items of the first session among them), for K = 1, 10 and 700."""
    if not CORE.backend_available("cpu")[0]:
        pytest.skip("cpu backend not usable")
    ops = CORE.Ops("cpu", threads=threads)
    rng = np.random.default_rng(abs(hash(kind)) % 2**32)
    h, E = _screen_case(kind, rng)
    B, C, V = h.shape[0], h.shape[1], E.shape[0] - 1
    table = score_table(ops, E, C, V)
    best = np.argsort(-(h[0].astype(np.float64) @ E[1:].T.astype(np.float64)), kind="stable")[:20] + 1
    lists = [best.tolist(), [], list(range(1, V + 1, 7)), [1, 2, 3], []]
    off = np.concatenate([[0], np.cumsum([len(l) for l in lists])]).astype(np.int64)
    flat = np.array([e for l in lists for e in l], np.int32)
    for K in (1, 10, 700):
        got = {}
        for screen in (1, 2):
            ids, sc = poison(B, K, dtype=np.int32), poison(B, K)
            ops.topk(ids, sc, h, E, table, screen, flat, off, B, C, V, K, None)
            got[screen] = ids, sc
        np.testing.assert_array_equal(got[2][0], got[1][0], err_msg=f"{kind} K={K}: ids")
        np.testing.assert_array_equal(got[2][1], got[1][1], err_msg=f"{kind} K={K}: scores")
        # And they are the top-k: no excluded item, best first, ties by the lower id.
        for b in range(B):
            i, s = got[1][0][b], got[1][1][b]
            assert not set(i.tolist()) & set(lists[b]), f"{kind}: returned an excluded item"
            assert all(s[k] > s[k + 1] or (s[k] == s[k + 1] and i[k] < i[k + 1]) for k in range(K - 1))


# ============================================================================ the reference's own backward
FD_EPS = 1e-6  # central differences in float64: truncation ~eps^2, rounding ~1e-16 / eps


def _fd_assert(results, what, seed, scale=1.0):
    # Error of a central difference in float64 with eps = 1e-6: truncation eps^2 f''' / 6
    # (~1e-11 here) plus rounding ~1e-16 |f| / eps (~1e-10 |f|): 1e-6 relative with an
    # absolute floor of 1e-7 * scale is three orders above both.
    for name, i, an, num in results:
        assert abs(an - num) <= 1e-6 * abs(num) + 1e-7 * scale, (
            f"{what}: reference gradient of {name}[{i}] = {an!r}, finite difference {num!r} (seed {seed})")


def _check(f, params, grads, what, seed):
    params = {k: np.ascontiguousarray(v, np.float64) for k, v in params.items()}
    _fd_assert(RM.finite_difference_check(f, params, grads, np.random.default_rng(seed), None, FD_EPS),
               what, seed, scale=max(1.0, abs(f(params))))


def test_reference_fd_embedding():
    seed = 91
    rng = np.random.default_rng(seed)
    E, P = rng.standard_normal((6, 5)), rng.standard_normal((4, 5))
    items, pos = np.array([1, 3, 3, 5, 2]), np.array([0, 3, 1, 3, 2])
    mult = R.dropout_multiplier(R.dropout_uniform(R.rng_key(seed, 0), 25).reshape(5, 5), 0.3)
    w = rng.standard_normal((5, 5))
    f = lambda q: np.sum(w * R.embedding_forward(q["E"], q["P"], items, pos, 2.5, mult))  # noqa: E731
    dE, dP = R.embedding_backward(w, items, pos, 6, 4, 2.5, mult)
    _check(f, {"E": E, "P": P}, {"E": dE, "P": dP}, "embedding", seed)


@pytest.mark.parametrize("C,seed", [(2, 92), (7, 93)])
def test_reference_fd_layernorm(C, seed):
    rng = np.random.default_rng(seed)
    x, g, b = rng.standard_normal((3, C)) + 0.5, rng.standard_normal(C), rng.standard_normal(C)
    w = rng.standard_normal((3, C))
    f = lambda q: np.sum(w * R.layernorm_forward(q["x"], q["g"], q["b"], 1e-5)[0])  # noqa: E731
    dx, dg, db = R.layernorm_backward(w, x, g, 1e-5)
    _check(f, {"x": x, "g": g, "b": b}, {"x": dx, "g": dg, "b": db}, "layernorm", seed)


@pytest.mark.parametrize("relu,p,seed", [(False, 0.0, 94), (True, 0.0, 95), (True, 0.3, 103)])
def test_reference_fd_linear(relu, p, seed):
    rng = np.random.default_rng(seed)
    x, W, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 5)), rng.standard_normal(5)
    w = rng.standard_normal((4, 5))
    mult = R.dropout_multiplier(R.dropout_uniform(R.rng_key(seed, 0), 20).reshape(4, 5), p) if p else None
    f = lambda q: np.sum(w * R.linear_forward(q["x"], q["W"], q["b"], relu, mult))  # noqa: E731
    # The backward through the output dropout, with the dropped output as the ReLU's mask
    # (as the engine's model does: it keeps only that output).
    out = R.linear_forward(x, W, b, relu, mult)
    dout = R.dropout_backward(w, np.ones_like(w) if mult is None else mult, out if relu else None)
    dx, dW, db = R.linear_backward(dout, x, W)
    _check(f, {"x": x, "W": W, "b": b}, {"x": dx, "W": dW, "b": db}, f"linear relu={relu} p={p}", seed)


def test_reference_fd_dropout_residual():
    seed = 96
    rng = np.random.default_rng(seed)
    x, y, w = rng.standard_normal(9), rng.standard_normal(9), rng.standard_normal(9)
    relu_out = np.maximum(rng.standard_normal(9), 0)
    mult = R.dropout_multiplier(R.dropout_uniform(R.rng_key(seed, 0), 9), 0.3)
    # out = dropout(x) masked by a fixed ReLU pattern, plus y (residual)
    f = lambda q: np.sum(w * R.residual_forward(  # noqa: E731
        np.where(relu_out > 0, R.dropout_forward(q["x"], mult), 0.0), q["y"]))
    dx_res, dy = R.residual_backward(w)
    _check(f, {"x": x, "y": y}, {"x": R.dropout_backward(dx_res, mult, relu_out), "y": dy},
           "dropout+residual", seed)


def test_reference_fd_layernorm_residual():
    seed = 102
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((3, 6)), rng.standard_normal((3, 6))
    g, beta = rng.standard_normal(6), rng.standard_normal(6)
    w1, w2 = rng.standard_normal((3, 6)), rng.standard_normal((3, 6))
    mult = R.dropout_multiplier(R.dropout_uniform(R.rng_key(seed, 0), 18).reshape(3, 6), 0.3)

    def f(q):  # the sum feeds on (w1) as well as the norm (w2), as a layer's output does
        s, out, _, _ = R.layernorm_residual_forward(q["a"], q["b"], q["g"], q["beta"], 1e-5, mult)
        return np.sum(w1 * s) + np.sum(w2 * out)

    da, db, dg, dbeta = R.layernorm_residual_backward(w1, w2, a, b, g, beta, 1e-5, mult)
    _check(f, {"a": a, "b": b, "g": g, "beta": beta}, {"a": da, "b": db, "g": dg, "beta": dbeta},
           "residual+layernorm", seed)


@pytest.mark.parametrize("lens,H,p,seed", [([1, 3, 2], 2, 0.3, 97), ([4], 1, 0.0, 98)])
def test_reference_fd_attention(lens, H, p, seed):
    rng = np.random.default_rng(seed)
    cu = np.concatenate([[0], np.cumsum(lens)])
    Rn, C, T = int(cu[-1]), 2 * H + 2 * (H == 1), 5
    Q, K, V, w = (rng.standard_normal((Rn, C)) for _ in range(4))
    drop = R.attention_dropout(R.dropout_uniform(R.rng_key(seed, 1), Rn * H * T), Rn, H, T, p) if p else None
    f = lambda q: np.sum(w * R.attention_forward(q["Q"], q["K"], q["V"], cu, H, drop)[0])  # noqa: E731
    dQ, dK, dV = R.attention_backward(w, Q, K, V, cu, H, drop)
    _check(f, {"Q": Q, "K": K, "V": V}, {"Q": dQ, "K": dK, "V": dV}, "attention", seed)


@pytest.mark.parametrize("kind,seed", [("bce", 99), ("sampled_softmax", 100), ("softmax", 101),
                                       ("sampled_softmax_logq", 102), ("gbce", 103), ("gbce", 104)])
def test_reference_fd_losses(kind, seed):
    rng = np.random.default_rng(seed)
    h, E = rng.standard_normal((4, 3)), rng.standard_normal((7, 3))
    t = np.array([1, 6, 2, 6])
    n = {"bce": np.array([6, 3, 3, 5]), "softmax": None,
         "gbce": np.array([6, 3, 3, 1, 6, 6, 5, 2, 4, 4, 1, 6])}.get(kind, np.array([6, 3, 3, 5, 1]))
    gs = 0.7
    f = lambda q: gs * np.sum(_ref_loss(kind, q["h"], q["E"], t, n, gs, seed)[0])  # noqa: E731
    _, dh, dE = _ref_loss(kind, h, E, t, n, gs, seed)
    _check(f, {"h": h, "E": E}, {"h": dh, "E": dE}, kind, seed)
