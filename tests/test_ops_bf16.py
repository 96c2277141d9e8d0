"""precision="bf16" on the CPU: the bf16 product gemm_bf16 (cpp/src/cpu/gemm_bf16.cpp, its
dispatch and fallback in gemm.cpp) on both of its paths, the AVX-512 BF16 kernel and the
fallback (round_bf16 copies, then sgemm), against a float64 product of the bf16-rounded
operands on random and awkward shapes; which path runs; the softmax losses under bf16
against the float64 reference on bf16 operands; and a model trained a few steps on each
path.

Error model: the product of two bfloat16 numbers is exact in float32, so a bf16 product
is an fp32 sum of exact terms, held to the fp32 bound ``bound(K, |alpha| |A| |B| +
|beta| |C|)`` of tests/reference (whatever the summation order: the paths differ only
there).  The losses round their ds to bf16 before the backward products: an fp32 ds and
the float64 reference's may round to neighbouring bf16 values where ds lies within its
own fp32 error of a rounding midpoint, so those elements (and only those) are allowed the
one bf16 step between the two roundings.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastsasrec
from reference import assert_close, bound
from reference import ops as R
from test_ops import (LOSS_CASES, LOSS_ID, _loss_extra, _loss_inputs, _loss_tolerances, f32, ids,
                      ops_bf16, poison, zeros)  # noqa: F401 (ops_bf16: the fixture)

CORE = fastsasrec._core
if not CORE.test_ops:
    pytest.skip("fastsasrec was built without the raw ops (_core.Ops): build with "
                "-DFASTSASREC_TEST_OPS=ON", allow_module_level=True)
OPS = CORE.Ops
NATIVE = OPS.gemm_bf16_native()
PATHS = [pytest.param(True, id="kernel", marks=pytest.mark.skipif(
             not NATIVE, reason="no AVX-512 BF16 kernel here (CPU, build or FASTSASREC_NO_AVX512BF16)")),
         pytest.param(False, id="fallback")]


def _cpu_has_avx512_bf16():
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512_bf16" in line for line in f)
    except OSError:
        return None


# ============================================================================ gemm_bf16
SIZES = (1, 3, 17, 63, 64, 65, 257)
# Every size in every position, with the shapes training uses; K = 1025 crosses the
# kernel's depth blocks (512), N = 257 its column blocks (256), M = 65 its 8-row tiles.
GEMM_SHAPES = [(m, n, k) for m, n, k in zip(SIZES, SIZES[::-1], SIZES[3:] + SIZES[:3])] + [
    (1, 1, 1), (3, 3, 3), (17, 65, 1), (257, 1, 257), (65, 257, 64), (64, 64, 1025),
    (1, 257, 1025), (300, 64, 64), (155, 1682, 64), (155, 64, 1682), (1682, 64, 155)]
# (alpha, beta, extra leading-dimension padding): C overwritten (beta 0: a NaN start must
# not leak), accumulated, scaled; leading dimensions past the widths.
GEMM_SCALARS = [(1.0, 0.0, 0), (0.5, 2.0, 3), (-1.5, 1.0, 16)]


def _gemm_case(M, N, K, ta, tb, alpha, beta, pad, seed):
    rng = np.random.default_rng(seed)
    a_rows, a_cols = (K, M) if ta else (M, K)
    b_rows, b_cols = (N, K) if tb else (K, N)
    A = rng.standard_normal((a_rows, a_cols + pad)).astype(np.float32)
    B = rng.standard_normal((b_rows, b_cols + pad)).astype(np.float32)
    C = rng.standard_normal((M, N + pad)).astype(np.float32)
    if beta == 0.0:
        C[:, :N] = np.nan  # never read
    return A, B, C


def _gemm_reference(A, B, C, M, N, K, ta, tb, alpha, beta):
    a = R.bf16(np.ascontiguousarray(A[:, : (M if ta else K)])).astype(np.float64)
    b = R.bf16(np.ascontiguousarray(B[:, : (K if tb else N)])).astype(np.float64)
    a, b = (a.T if ta else a), (b.T if tb else b)
    c = C[:, :N].astype(np.float64)
    ref = alpha * (a @ b) + (beta * c if beta != 0.0 else 0.0)
    mag = abs(alpha) * (np.abs(a) @ np.abs(b)) + (abs(beta) * np.abs(c) if beta != 0.0 else 0.0)
    return ref, bound(K, mag)


@pytest.mark.parametrize("native", PATHS)
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["NN", "NT", "TN", "TT"])
@pytest.mark.parametrize("M,N,K", GEMM_SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in GEMM_SHAPES])
def test_gemm_bf16(native, ta, tb, M, N, K):
    """C = alpha op(A) op(B) + beta C on bf16-rounded operands, against float64, for each
    alpha/beta and padded leading dimensions, on 1 and 2 threads; the padding columns of C
    are never written."""
    for i, (alpha, beta, pad) in enumerate(GEMM_SCALARS):
        seed = 1000 * M + 100 * N + K + 7 * i + 3 * ta + tb
        A, B, C0 = _gemm_case(M, N, K, ta, tb, alpha, beta, pad, seed)
        ref, tol = _gemm_reference(A, B, C0, M, N, K, ta, tb, alpha, beta)
        for threads in (1, 2):
            C = C0.copy()
            OPS.gemm_bf16(native, threads, ta, tb, M, N, K, f32(alpha), A, A.shape[1], B,
                          B.shape[1], f32(beta), C, C.shape[1])
            what = f"gemm_bf16 {'kernel' if native else 'fallback'} {threads} threads a{alpha} b{beta} pad{pad}"
            assert_close(C[:, :N], ref, tol, what, seed)
            np.testing.assert_array_equal(C[:, N:], C0[:, N:], err_msg=f"{what}: padding written")


@pytest.mark.parametrize("native", PATHS)
def test_gemm_bf16_rounds_to_nearest_even(native):
    """An identity product returns the bf16 roundings exactly: halfway cases to the even
    neighbour, both signs, just past halfway up; an odd depth (the last pair half zero)."""
    vals = [1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 1 + 2**-8 + 2**-20, -(1 + 3 * 2**-8), 0.1]
    A = np.array([vals * 3], np.float32)[:, :17]  # 1 x 17
    for ta, tb in [(False, False), (True, True)]:
        a = np.ascontiguousarray(A.T) if ta else A
        eye = np.eye(17, dtype=np.float32)
        C = poison(1, 17)
        OPS.gemm_bf16(native, 1, ta, tb, 1, 17, 17, 1.0, a, a.shape[1], eye, 17, 0.0, C, 17)
        np.testing.assert_array_equal(C, R.bf16(A))
        assert C[0, 0] == 1.0 and C[0, 1] == 1 + 2**-6 and C[0, 3] == 1 + 2**-7


def test_round_bf16_lanes_match_the_scalar_rule():
    """The 16-lane rounding (fast_math.h: round_bf16_lanes, which the sampled softmax's
    positive logit and the bf16 kernel's subnormal packs use) gives round_bf16's bits on
    random bit patterns of every class (NaN, inf, subnormals, ties) and the reference's on
    the finite ones; a length off the vector width masks the last vector."""
    rng = np.random.default_rng(11)
    bits = rng.integers(0, 2**32, 1_000_003, dtype=np.uint64).astype(np.uint32)
    bits[:12] = [0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0x00000001,
                 0x007F8000, 0x807FFFFF, 0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x00000000]
    ties = rng.integers(0, 2**16, 1000, dtype=np.uint64).astype(np.uint32) << 16 | 0x8000
    bits = np.concatenate([bits, ties])
    x = bits.view(np.float32)
    one, vec = OPS.round_bf16(x)
    np.testing.assert_array_equal(vec.view(np.uint32), one.view(np.uint32))
    finite = np.isfinite(x)
    np.testing.assert_array_equal(one[finite].view(np.uint32), R.bf16(x[finite]).view(np.uint32))
    nan = np.isnan(x)
    assert np.all(np.isnan(one[nan])) and np.all(one[np.isinf(x)] == x[np.isinf(x)])


@pytest.mark.parametrize("native", PATHS)
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["NN", "NT", "TN", "TT"])
def test_gemm_bf16_rounds_the_largest_subnormals_up(native, ta, tb):
    """A subnormal float within half a bf16 step of FLT_MIN rounds up to FLT_MIN, a normal
    bf16 that counts in the product (round_bf16's rule), in every packing of A and of B; the
    kernel's rounding instruction alone would take it as zero.  Each operand in turn holds
    such values among normal ones; the other is 2^100 times the identity, so the product
    is exact: 2^100 bf16(S)."""
    n = 40
    rng = np.random.default_rng(5)
    S = rng.standard_normal((n, n)).astype(np.float32)
    window = rng.integers(0x007F8000, 0x00800000, (n, n), dtype=np.uint32)
    window |= rng.integers(0, 2, (n, n), dtype=np.uint32) << 31  # either sign
    pick = rng.random((n, n)) < 0.25
    S[pick] = window[pick].view(np.float32)
    big = np.float32(2.0**100) * np.eye(n, dtype=np.float32)
    want = R.bf16(S) * np.float32(2.0**100)
    assert np.all(np.abs(want[pick]) == np.float32(2.0**-26))  # FLT_MIN 2^100, not zero
    for A, B in [(S, big), (big, S)]:  # C = S 2^100 I = 2^100 I S
        a = np.ascontiguousarray(A.T) if ta else A
        b = np.ascontiguousarray(B.T) if tb else B
        C = poison(n, n)
        OPS.gemm_bf16(native, 1, ta, tb, n, n, n, 1.0, a, n, b, n, 0.0, C, n)
        np.testing.assert_array_equal(C, want)


def test_gemm_bf16_is_not_sgemm():
    """The rounding is really applied: operands that bf16 changes give a result off sgemm's
    by far more than fp32's bound (and equal to the rounded operands' product)."""
    A = np.full((2, 4), 1 + 2**-9 + 2**-12, np.float32)
    B = np.ones((4, 2), np.float32)
    for native in [True, False] if NATIVE else [False]:
        C = poison(2, 2)
        OPS.gemm_bf16(native, 1, False, False, 2, 2, 4, 1.0, A, 4, B, 2, 0.0, C, 2)
        np.testing.assert_array_equal(C, 4.0)


def test_the_bf16_path_is_reported():
    """build_info says which path the bf16 products take: the kernel exactly where the CPU
    has AVX-512 BF16 (and the environment does not turn it off); the fallback otherwise,
    where asking for the kernel is a ValueError."""
    info = CORE.build_info()["bf16_gemm"]
    assert info == ("avx512bf16" if NATIVE else "sgemm")
    has = _cpu_has_avx512_bf16()
    if has is not None and not os.environ.get("FASTSASREC_NO_AVX512BF16"):
        assert NATIVE == has, f"/proc/cpuinfo avx512_bf16={has}, kernel chosen={NATIVE}"
    if not NATIVE:
        with pytest.raises(ValueError, match="AVX-512 BF16 kernel is not available"):
            OPS.gemm_bf16(True, 1, False, False, 1, 1, 1, 1.0, zeros(1, 1), 1, zeros(1, 1), 1, 0.0,
                          zeros(1, 1), 1)


def test_the_environment_turns_the_kernel_off():
    """FASTSASREC_NO_AVX512BF16=1 (read once, at the first bf16 product) selects the
    fallback in a fresh process."""
    code = ("import fastsasrec; c = fastsasrec._core; "
            "print(c.build_info()['bf16_gemm'], c.Ops.gemm_bf16_native())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, FASTSASREC_NO_AVX512BF16="1")).stdout.split()
    assert out == ["sgemm", "False"]


# ============================================================================ the losses
BF16_LOSS_CASES = [c for c in LOSS_CASES if c[0].startswith(("sampled_softmax", "softmax"))
                   and c[-1] not in (61, 66, 146)] + [
    ("softmax", 300, 64, 1682, 0, 1 / 300, 1.0, 170),          # the training shape (ML-100K)
    ("sampled_softmax", 300, 64, 1682, 256, 1 / 300, 1.0, 171),
    ("softmax", 700, 64, 600, 0, 1 / 700, 1.0, 172),           # row chunks, threaded products
]


def _ds_flip_allowance(kind, h, E, t, n, gs, seed):
    """Per candidate and row, how far the engine's bf16 ds may sit from the reference's:
    the span of the bf16 roundings of the values within ds's fp32 error (0 unless ds lies
    that close to a rounding midpoint); (R, candidates), candidates as the reference's ds."""
    R_, C = h.shape
    V = E.shape[0] - 1
    op, logq, _ = _loss_extra(kind, V, seed)
    ah, aE = np.abs(h.astype(np.float64)), np.abs(E.astype(np.float64))
    if op == "sampled_softmax":
        logits = R.sampled_softmax_logits(h, E, t, n, logq)
        mags = np.concatenate([np.sum(ah * aE[t], axis=1)[:, None], ah @ aE[n].T], axis=1)
        if logq is not None:
            mags = mags + np.abs(logq.astype(np.float64)).max()
        mags = np.where(np.isinf(logits), 0.0, mags)
        onehot = np.zeros_like(logits)
        onehot[:, 0] = 1.0
    else:
        logits = h.astype(np.float64) @ E[1:].astype(np.float64).T
        mags = ah @ aE[1:].T
        onehot = np.zeros_like(logits)
        onehot[np.arange(R_), t - 1] = 1.0
    m = mags.max(axis=1)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    ds = gs * (p - onehot)
    err = bound(C + logits.shape[1], abs(gs) * (1 + m)[:, None] * (p + onehot))
    return np.abs(R.bf16(ds + err).astype(np.float64) - R.bf16(ds - err))


@pytest.mark.parametrize("kind,R_,C,V,N,gs,scale,seed", BF16_LOSS_CASES, ids=ids(BF16_LOSS_CASES, LOSS_ID))
def test_loss_bf16(ops_bf16, kind, R_, C, V, N, gs, scale, seed):
    """precision="bf16": the softmax losses' products on bfloat16 operands (h, E; ds before
    dh and dE; the sampled loss's target terms too), fp32 sums, against the float64
    reference on the same roundings."""
    rng = np.random.default_rng(seed)
    h, E, t, n = _loss_inputs(kind, R_, C, V, N, scale, rng)
    gs = f32(gs)
    op, logq, _ = _loss_extra(kind, V, seed)
    loss, dh = poison(R_), poison(R_, C) if gs != 0 else zeros(R_, C)
    dE = zeros(V + 1, C)
    ws = poison(getattr(ops_bf16, f"loss_{op}_workspace")(R_, C, V, N))
    if op == "sampled_softmax":
        ops_bf16.loss_sampled_softmax(loss, dh, dE, h, E, t, n, logq, R_, C, V, N, gs, ws)
    else:
        ops_bf16.loss_softmax(loss, dh, dE, h, E, t, n, R_, C, V, N, gs, ws)
    hb, Eb = R.bf16(h), R.bf16(E)
    rloss, rdh, rdE = R.loss(op, h, E, t, n, gs, logq=logq, bf16=True)
    tol_loss, tol_dh, tol_dE = _loss_tolerances(kind, hb, Eb, t, n, gs, rloss, seed)
    assert_close(loss, rloss, tol_loss, f"{kind} bf16 loss", seed)
    if gs == 0:
        assert not dh.any() and not dE.any(), f"grad_scale 0 must write no gradient (seed {seed})"
        return
    flip = _ds_flip_allowance(kind, hb, Eb, t, n, gs, seed)
    ah, aE = np.abs(hb.astype(np.float64)), np.abs(Eb.astype(np.float64))
    flip_dE = np.zeros_like(aE)
    if op == "sampled_softmax":
        flip_dh = flip[:, :1] * aE[t] + flip[:, 1:] @ aE[n]
        np.add.at(flip_dE, t, flip[:, :1] * ah)
        np.add.at(flip_dE, n, flip[:, 1:].T @ ah)
    else:
        flip_dh = flip @ aE[1:]
        flip_dE[1:] = flip.T @ ah
    assert_close(dh, rdh, tol_dh + flip_dh, f"{kind} bf16 dh", seed)
    assert_close(dE, rdE, tol_dE + flip_dE, f"{kind} bf16 dE", seed)
    assert not dE[0].any(), f"row 0 (padding) of dE written (seed {seed})"


@pytest.mark.skipif(not NATIVE, reason="the fallback already ran the tests in this process")
def test_the_fallback_passes_the_bf16_loss_tests():
    """The loss tests again with FASTSASREC_NO_AVX512BF16=1 (the fallback's products)."""
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                        "-k", "test_loss_bf16 and cpu"], capture_output=True, text=True,
                       env=dict(os.environ, FASTSASREC_NO_AVX512BF16="1"),
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout


# ============================================================================ the model
_STEPS = """
import json, sys
import numpy as np
import fastsasrec
CORE = fastsasrec._core
rng = np.random.default_rng(11)
seqs = [rng.integers(1, 301, size=int(rng.integers(2, 31))).astype(np.int32) for _ in range(64)]
items = np.concatenate(seqs)
offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
out = {"path": CORE.build_info()["bf16_gemm"]}
for loss in ("softmax", "sampled_softmax"):
    for prec in ("bf16", "fp32"):
        cfg = dict(n_items=300, factors=64, n_heads=1, n_layers=2, max_seq=30, dropout=0.2,
                   n_negatives=64, seed=7, loss=loss, precision=prec, batch_size=64)
        m = CORE.Model(cfg, "cpu")
        m.set_threads(2)
        m.set_target_counts(m.target_counts(items, offsets))
        losses, grads = [], None
        for step in range(1, 4):
            b = m.build_batch(items, offsets, np.arange(len(seqs), dtype=np.int64), step)
            losses.append(m.forward_backward(b["items"], b["targets"], b["pos"], b["cu"],
                                             b["negatives"], train=True, grad=True, step=step))
            grads = m.get_grads().tolist() if grads is None else grads
            m.optimizer_step()
        out[loss + "-" + prec] = dict(losses=losses, grads=grads, params=m.get_params().tolist())
json.dump(out, sys.stdout)
"""


def _steps(no_kernel):
    env = dict(os.environ)
    env.pop("FASTSASREC_NO_AVX512BF16", None)
    if no_kernel:
        env["FASTSASREC_NO_AVX512BF16"] = "1"
    r = subprocess.run([sys.executable, "-c", _STEPS], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.skipif(not NATIVE, reason="no AVX-512 BF16 kernel here: one path only")
def test_the_model_trains_alike_on_both_paths():
    """Three bf16 training steps (forward, backward, AdamW; 2 threads) with the kernel and
    with the fallback.  The paths differ only in the order of fp32 sums, which the next bf16
    rounding turns into a one-step difference of a few operands: the first step's gradients
    differ by a small fraction of what bf16 itself changes against fp32, the losses by a
    small fraction of one bf16 step (2^-8), the weights after three steps by less than bf16
    moves them."""
    kern, fall = _steps(False), _steps(True)
    assert (kern["path"], fall["path"]) == ("avx512bf16", "sgemm")
    rel = lambda a, b: float(np.linalg.norm(np.subtract(a, b)) / np.linalg.norm(b))  # noqa: E731
    for loss in ("softmax", "sampled_softmax"):
        k, f, fp32 = kern[f"{loss}-bf16"], fall[f"{loss}-bf16"], kern[f"{loss}-fp32"]
        assert fp32 == fall[f"{loss}-fp32"], f"{loss}: fp32 must not depend on the bf16 path"
        np.testing.assert_allclose(k["losses"][0], f["losses"][0], rtol=1e-5, err_msg=loss)
        np.testing.assert_allclose(k["losses"], f["losses"], rtol=1e-4, err_msg=loss)
        g_paths, g_bf16 = rel(k["grads"], f["grads"]), rel(k["grads"], fp32["grads"])
        assert g_paths <= 0.1 * g_bf16, (loss, "gradients", g_paths, g_bf16)
        p_paths, p_bf16 = rel(k["params"], f["params"]), rel(k["params"], fp32["params"])
        assert p_paths <= 0.5 * p_bf16, (loss, "weights", p_paths, p_bf16)
