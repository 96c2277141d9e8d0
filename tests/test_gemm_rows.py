"""gemm_rows (cpp/src/cpu/gemm_rows.h), the CPU's register-blocked fp32 product, computes one
definition whatever its vector width: each C(i, j) is one chain of fused multiply-adds in k
order within a depth chunk of 256, then alpha times the chain (+ beta C by one more fused
multiply-add; later chunks add theirs with beta 1). That definition is what makes the AVX-512
and the AVX2 kernels give the same bits, and a row's result independent of the rows beside it
(recommend and recommend_batch agree to the bit).

The reference here is that definition in NumPy, element-wise over C: a product of two float32
numbers is exact in float64, so fma(a, b, c) is float32(a * b + c) computed in float64, one
rounding in float64 and one to float32 (the two roundings differ from fma's one only where the
float64 sum lands on a float32 midpoint without being one, about 2^-29 of random cases). The
kernel is held to it bit for bit; its accuracy is held to the float64 product too.
"""
import numpy as np
import pytest

import fastsasrec

CORE = fastsasrec._core
if not CORE.test_ops:
    pytest.skip("fastsasrec was built without the raw ops (_core.Ops): build with "
                "-DFASTSASREC_TEST_OPS=ON", allow_module_level=True)
OPS = CORE.Ops
KERNEL = OPS.gemm_rows_kernel()
pytestmark = pytest.mark.skipif(not KERNEL, reason="this build has no gemm_rows kernel (no AVX-512 or AVX2)")
CHUNK = 256


def fma32(a, b, c):
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def reference(M, N, K, alpha, a, B, beta, C):
    """The definition, for a (M x K, as gemm_rows reads it), B (K x N), C (M x N)."""
    out = C.copy()
    for k0 in range(0, max(K, 1), CHUNK):
        acc = np.zeros((M, N), np.float32)
        for k in range(k0, min(K, k0 + CHUNK)):
            acc = fma32(a[:, k:k + 1], B[k:k + 1, :], acc)
        scaled = np.float32(alpha) * acc  # float32 * float32, rounded once
        bt = beta if k0 == 0 else 1.0
        if bt == 0.0:
            out = scaled
        else:
            out = fma32(np.float32(bt) * np.ones_like(out), out, scaled)
    return out


SHAPES = [(1, 1, 1), (6, 16, 64), (7, 17, 5), (13, 64, 64), (5, 8, 3), (12, 72, 300), (3, 9, 513),
          (19, 130, 64), (1, 200, 257), (6, 1, 40),
          # wider than a panel of B (128 KiB of a depth chunk): 1,100 columns at depth 64 in
          # panels of 512; 300 at depth 300 in panels of 128, then one of the last 44 deep
          (7, 1100, 64), (8, 300, 300)]


@pytest.mark.parametrize("M,N,K", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("trans_a", [False, True], ids=["A", "At"])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 1.0), (-1.25, 0.75)])
def test_gemm_rows_is_its_definition_bit_for_bit(M, N, K, trans_a, alpha, beta):
    rng = np.random.default_rng(M * 1000 + N * 10 + K)
    lda = K + 3 if not trans_a else M + 2
    A = rng.standard_normal((M, lda) if not trans_a else (K, lda)).astype(np.float32)
    a = A[:, :K] if not trans_a else A[:, :M].T
    sar, sak = (lda, 1) if not trans_a else (1, lda)
    ldb, ldc = N + 5, N + 1
    B = rng.standard_normal((K, ldb)).astype(np.float32)
    C = rng.standard_normal((M, ldc)).astype(np.float32)
    C[:, N:] = 7.0  # past the columns: never written
    want = reference(M, N, K, alpha, a, B[:, :N], beta, C[:, :N])
    got = C.copy()
    OPS.gemm_rows(M, N, K, alpha, A.ravel(), sar, sak, B.ravel(), ldb, beta, got.ravel(), ldc)
    np.testing.assert_array_equal(got[:, :N], want, err_msg=f"{KERNEL} kernel")
    assert (got[:, N:] == 7.0).all()
    exact = alpha * (a.astype(np.float64) @ B[:, :N].astype(np.float64)) + beta * C[:, :N].astype(np.float64)
    scale = np.abs(alpha) * (np.abs(a).astype(np.float64) @ np.abs(B[:, :N]).astype(np.float64)) \
        + abs(beta) * np.abs(C[:, :N])
    assert (np.abs(got[:, :N] - exact) <= (K + 2) * 2.0 ** -24 * scale + 1e-30).all()


def test_gemm_rows_rows_do_not_depend_on_their_neighbours():
    """Each row of C alone, and the rows in any grouping, give the same bits as all at once."""
    rng = np.random.default_rng(7)
    M, N, K = 23, 70, 64
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    whole = np.zeros((M, N), np.float32)
    OPS.gemm_rows(M, N, K, 1.0, A.ravel(), K, 1, B.ravel(), N, 0.0, whole.ravel(), N)
    for i in range(M):
        row = np.zeros((1, N), np.float32)
        OPS.gemm_rows(1, N, K, 1.0, A[i].copy(), K, 1, B.ravel(), N, 0.0, row.ravel(), N)
        np.testing.assert_array_equal(row[0], whole[i])


def test_gemm_rows_with_no_depth_scales_c():
    C = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = C.copy()
    OPS.gemm_rows(3, 4, 0, 1.0, np.zeros(1, np.float32), 1, 1, np.zeros(4, np.float32), 4, 0.5,
                  got.ravel(), 4)
    np.testing.assert_array_equal(got, np.float32(0.5) * C)
