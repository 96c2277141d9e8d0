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
    import fastsasrec  # noqa: F401

# FASTSASREC_EMULATED_GPU=1: device="cuda" runs the CUDA kernels on the CPU emulator
# (scripts/emulated_gpu_tests.sh), thousands of times slower than a GPU.  The behavioural
# suites then run on "cuda" only their tests marked emulated_gpu (a handful of small fits
# through fit, recommend, recommend_batch, evaluate and save/load), with fewer epochs
# (``epochs``); the rest of their "cuda" tests are skipped, saying so.
EMULATED_GPU = os.environ.get("FASTSASREC_EMULATED_GPU") == "1"
CUDA_OK, CUDA_WHY = fastsasrec._core.backend_available("cuda")


@pytest.fixture(scope="module", params=[
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_OK, reason=f"cuda backend not usable: {CUDA_WHY}")),
])
def device(request):
    """The device a test's models run on: every test that takes it runs once per device,
    the "cuda" run skipped, with the reason, where the backend is not usable (and on the
    emulator unless the test is marked emulated_gpu).  Module-scoped, so that a module's
    shared trained model is fitted once per device."""
    return request.param


def epochs(device, n):
    """n training epochs, or 2 for "cuda" on the emulator: its subset checks contracts
    (shapes, order, exclusions, round trips) that hold for any weights."""
    return 2 if EMULATED_GPU and device == "cuda" else n


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "emulated_gpu: also run on device='cuda' under FASTSASREC_EMULATED_GPU=1 "
                   "(one of the few fast tests the CUDA emulator runs from the behavioural suites)")


def pytest_collection_modifyitems(config, items):
    if not EMULATED_GPU:
        return
    skip = pytest.mark.skip(reason="FASTSASREC_EMULATED_GPU=1: on the CUDA emulator only the tests "
                                   "marked emulated_gpu run on device='cuda' (a GPU run covers the rest)")
    for item in items:
        callspec = getattr(item, "callspec", None)
        if (callspec is not None and callspec.params.get("device") == "cuda"
                and item.get_closest_marker("emulated_gpu") is None):
            item.add_marker(skip)


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


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """tests/test_fuzz.py's figures: cases, crashes, hangs and wrong results per property."""
    table = getattr(config, "fastsasrec_fuzz_tally", None)
    if table is not None:
        terminalreporter.write_sep("-", "fuzz")
        terminalreporter.write_line(table())
