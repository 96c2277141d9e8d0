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


def test_recommend_resident_refuses_a_host_model():
    m = CORE.Model(dict(n_items=20, factors=8, n_layers=1, max_seq=5, loss="softmax"), "cpu")
    with pytest.raises(ValueError, match="recommend_resident takes addresses in device memory; "
                                         "this model is on 'cpu'"):
        m.recommend_resident(16, 1, 1, 0, 0, 1, 16, 16)


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
