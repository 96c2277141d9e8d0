import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The data is never shipped: read it from beside the checkout, or from FASTSASREC_ML100K.
ML100K = os.environ.get("FASTSASREC_ML100K") or os.path.join(os.path.dirname(ROOT), "shared", "data", "ml-100k")

try:  # an installed fastsasrec wins; a development tree with a built _core also works
    import fastsasrec  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, os.path.join(ROOT, "python"))


def chain_sessions(n_sessions=300, n_items=40, min_len=3, max_len=15, seed=0, offset=100):
    """Sessions that walk a cycle: item k is always followed by item k + 1 (mod n_items).

    The next item is fully predictable, so a trained model must find it."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_sessions):
        start = int(rng.integers(0, n_items))
        length = int(rng.integers(min_len, max_len + 1))
        out.append([offset + (start + k) % n_items for k in range(length)])
    return out


@pytest.fixture(scope="session")
def chain_data():
    return chain_sessions()


@pytest.fixture(scope="session")
def ml100k_path():
    if not os.path.exists(os.path.join(ML100K, "u.data")):
        pytest.skip(f"MovieLens 100K not found at {ML100K} (tests that need it are skipped)")
    return ML100K
