"""Float64 NumPy reference of the engine (ops.py: every op; model.py: the whole model),
and the comparison helper the tests share.

Error model used by the tests.  The engine computes in float32 (unit roundoff
u = 2^-24); the reference in float64 (its own error is ~1e-16 relative, negligible).  A
sum of n float32 products carries an error of at most gamma_n * sum |terms| with
gamma_n = n u / (1 - n u), whatever the summation order (BLAS blocking, FMA, threads).
So a tolerance is written as ``bound(n, magnitude)``: a small safety factor times
(n + a few) u times the *magnitude* of the quantity, i.e. the same expression evaluated
on absolute values.  This is tight where the result is large, and correctly loose where a
small result comes out of cancellation; it never depends on how the engine happens to
order its sums.
"""
from __future__ import annotations

import numpy as np

U32 = 2.0 ** -24  # float32 unit roundoff


def bound(n, magnitude, safety=4.0):
    """safety * (n + 4) * u32 * magnitude: the error allowance of an n-term float32
    reduction whose absolute terms sum to ``magnitude`` (array or scalar).  The +4
    covers the few extra roundings each op does around its reductions."""
    return safety * (np.asarray(n, np.float64) + 4) * U32 * np.asarray(magnitude, np.float64)


def assert_close(actual, expected, tol, what, seed=None):
    """Elementwise |actual - expected| <= tol (tol broadcastable to the arrays).

    Infinite entries must match exactly.  The message names ``what``, the seed, the worst
    element (index, actual, expected, allowance) and the worst error / allowance ratio."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{what} (seed {seed}): shape {a.shape} != reference {e.shape}"
    tol = np.broadcast_to(np.asarray(tol, np.float64), e.shape)
    inf = np.isinf(e) | np.isinf(a)
    if inf.any():
        assert np.array_equal(a[inf], e[inf]), f"{what} (seed {seed}): infinities differ"
    fin = ~inf
    assert np.all(np.isfinite(a[fin])), f"{what} (seed {seed}): NaN in the engine's result"
    err = np.where(fin, np.abs(a - e), 0.0)
    bad = err > tol
    if bad.any():
        ratio = np.where(fin, err / np.maximum(tol, 1e-300), 0.0)
        i = np.unravel_index(np.argmax(ratio), e.shape)
        raise AssertionError(
            f"{what} (seed {seed}): {int(bad.sum())} of {e.size} elements outside tolerance; "
            f"worst at {tuple(int(k) for k in i)}: engine {a[i]!r}, reference {e[i]!r}, "
            f"|err| {err[i]:.3e} > allowed {tol[i]:.3e} ({ratio[i]:.1f}x)")


def max_ratio(actual, expected, tol):
    """max |actual - expected| / tol over finite entries (for reporting margins); inf
    where a nonzero error meets a zero allowance."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    tol = np.broadcast_to(np.asarray(tol, np.float64), e.shape)
    fin = np.isfinite(a) & np.isfinite(e)
    err = np.abs(a - e)[fin]
    t = tol[fin]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(err == 0, 0.0, err / t)
    return float(np.max(r, initial=0.0))
