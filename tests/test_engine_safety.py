"""The engine in a long-lived process: an allocation that fails is a MemoryError (never an
exception inside an OpenMP region, which would end the process), entry points that take
raw addresses refuse host models, and a device that cannot run a config says so when the
model is made, not at its first op.  Each case that could crash runs in its own process."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastsasrec

CORE = fastsasrec._core
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_limited(code, limit_bytes=1 << 30, timeout=120):
    """Runs code in a fresh interpreter whose address space is limited: (returncode, output)."""
    prelude = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, ({limit_bytes}, {limit_bytes}))
        import numpy as np
        import fastsasrec
        core = fastsasrec._core
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(fastsasrec.__file__)), env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env,
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return p.returncode, p.stdout + p.stderr


@pytest.mark.parametrize("layers", [2, 1])
def test_attention_scratch_that_does_not_fit_is_a_memory_error(layers):
    # A 16,384-item session: each thread's score tile is 16,384^2 floats (1 GiB), more than
    # the process may map.  layers=2: the full attention of the first layer; layers=1:
    # only the last row's attention, whose tile is small, so the call succeeds.
    rc, out = run_limited(f"""
        m = core.Model(dict(n_items=50, factors=8, n_heads=2, n_layers={layers}, max_seq=16384,
                            loss="softmax"), "cpu", threads=2)
        items = (np.arange(16384) % 50 + 1).astype(np.int32)
        try:
            h = m.session_states(items, np.array([0, items.size], np.int64))
            print("states", h.shape)
        except MemoryError as e:
            print("MemoryError:", e)
        # The model stays usable for what fits.
        print("after", m.session_states(items[:100], np.array([0, 100], np.int64)).shape)
    """)
    assert rc == 0, f"the process died (status {rc}):\n{out}"
    if layers == 2:
        assert "MemoryError: attention_forward: could not allocate" in out, out
    else:
        assert "states (1, 8)" in out, out
    assert "after (1, 8)" in out, out


def test_training_scratch_that_does_not_fit_is_a_memory_error():
    rc, out = run_limited("""
        m = core.Model(dict(n_items=50, factors=8, n_heads=2, n_layers=1, max_seq=16384,
                            loss="softmax", batch_size=1), "cpu", threads=2)
        items = (np.arange(16385) % 50 + 1).astype(np.int32)
        try:
            m.train_epoch(items, np.array([0, items.size], np.int64), 0)
            print("trained")
        except MemoryError as e:
            print("MemoryError:", e)
    """)
    assert rc == 0, f"the process died (status {rc}):\n{out}"
    assert "MemoryError: attention_" in out, out


class FakeGPUArray:
    """An object that claims to be a GPU array at any address."""

    def __init__(self, ptr, shape, typestr="<i4", strides=None, readonly=False):
        self.__cuda_array_interface__ = dict(shape=shape, typestr=typestr, strides=strides,
                                             data=(ptr, readonly), version=3)


def test_recommend_resident_takes_no_address_on_trust():
    """A CPU model takes numpy arrays only (no raw address reaches it), a GPU model arrays
    whose type, shape, layout and memory are checked; ids outside 1..V are refused where
    they are, before they index anything."""
    m = CORE.Model(dict(n_items=20, factors=8, n_layers=1, max_seq=5, loss="softmax"), "cpu")
    out_i, out_s = np.zeros((1, 3), np.int32), np.zeros((1, 3), np.float32)
    with pytest.raises(ValueError, match="items must be a numpy array of int32, got int"):
        m.recommend_resident(16, None, 3, out_i, out_s)
    with pytest.raises(ValueError, match="items must be a numpy array"):
        m.recommend_resident(FakeGPUArray(16, (1, 2)), None, 3, out_i, out_s)
    for bad, where in (([[1, 21]], "id 21 at position 1"), ([[3, 4], [0, 1]], "id 0 at position 2"),
                       ([[-5, 2]], "id -5 at position 0")):
        items = np.array(bad, np.int32)
        with pytest.raises(ValueError, match=f"items: {where} .* is outside 1..20"):
            m.recommend_resident(items, None, 3, np.zeros((len(bad), 3), np.int32),
                                 np.zeros((len(bad), 3), np.float32))
    with pytest.raises(ValueError, match=r"out_ids and out_scores must have shape \(1, 4\)"):
        m.recommend_resident(np.ones((1, 2), np.int32), None, 4, out_i, out_s)
    ro = np.zeros((1, 3), np.int32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out_ids must be writeable"):
        m.recommend_resident(np.ones((1, 2), np.int32), None, 3, ro, out_s)


@pytest.mark.skipif(not CORE.backend_available("cuda")[0], reason="no usable CUDA device")
def test_recommend_resident_on_a_gpu_checks_every_array():
    m = CORE.Model(dict(n_items=20, factors=8, n_layers=1, max_seq=5, loss="softmax"), "cuda")
    host = np.ones((1, 2), np.int32)
    with pytest.raises(ValueError, match="items must be a GPU array"):
        m.recommend_resident(host, None, 3, host, host)
    outs = (FakeGPUArray(0, (1, 3)), FakeGPUArray(0, (1, 3), "<f4"))
    with pytest.raises(ValueError, match="items must hold int32"):
        m.recommend_resident(FakeGPUArray(16, (1, 2), "<i8"), None, 3, *outs)
    with pytest.raises(ValueError, match="C-contiguous"):
        m.recommend_resident(FakeGPUArray(16, (2, 2), strides=(4, 8)), None, 3, *outs)
    if os.environ.get("FASTSASREC_EMULATED_GPU") != "1":  # the emulator's memory is the host's
        with pytest.raises(ValueError, match="items: address .* (is not CUDA memory|is host memory)"):
            m.recommend_resident(FakeGPUArray(host.ctypes.data, (1, 2)), None, 3, *outs)


def test_devices_say_which_configs_they_cannot_run():
    cfg = dict(n_items=20, factors=512, n_heads=2, n_layers=1, max_seq=1024, loss="softmax")
    assert CORE.device_unsupported("cpu", cfg) == ""
    ok, why = CORE.backend_available("cuda")
    if not ok:
        pytest.skip(f"cuda backend not usable: {why}")
    assert "max_seq up to 512, got 1024" in CORE.device_unsupported("cuda", cfg)
    assert "heads up to 128 wide" in CORE.device_unsupported("cuda", dict(cfg, max_seq=50))
    assert CORE.device_unsupported("cuda", dict(cfg, max_seq=50, n_heads=4)) == ""
    with pytest.raises(ValueError, match="device 'cuda': the CUDA attention supports max_seq up to 512"):
        CORE.Model(cfg, "cuda")


def test_the_engine_takes_arrays_of_an_equal_dtype():
    """A dtype equal to int64 but another object (an unpickled array's, np.longlong's) is
    int64 to the engine; found by tests/test_fuzz.py."""
    import pickle

    m = CORE.Model(dict(n_items=5, factors=8, n_layers=1, max_seq=5, loss="softmax"), "cpu")
    items, offsets = np.array([1, 2], np.int32), np.array([0, 2], np.int64)
    want = m.session_states(items, offsets)
    for i, o in [(pickle.loads(pickle.dumps(items)), offsets),
                 (items, pickle.loads(pickle.dumps(offsets))),
                 (items, offsets.astype(np.longlong))]:
        np.testing.assert_array_equal(m.session_states(i, o), want)
