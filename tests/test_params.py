"""Parameters: one table of types and defaults, ranges checked by the engine, and the
thread count as a property of the model (never of the process)."""
import inspect

import numpy as np

import fastsasrec
from fastsasrec import SASRec
from fastsasrec._params import DEFAULTS

SMALL = dict(factors=8, n_layers=1, max_seq=5, n_negatives=2, iterations=1, device="cpu")
SEQS = [[1, 2, 3, 4], [2, 3, 4, 5], [5, 4, 3]]


def test_defaults_are_the_constructors():
    sig = inspect.signature(SASRec.__init__).parameters
    assert {k: v.default for k, v in sig.items() if k != "self"} == DEFAULTS
    assert SASRec().get_params() == DEFAULTS
    assert repr(SASRec()) == "SASRec()"


def test_values_are_converted():
    m = SASRec(factors=np.int64(16), dropout=np.float32(0.25), learning_rate=1, random_state=np.uint8(3))
    assert type(m.factors) is int and type(m.dropout) is float and type(m.learning_rate) is float
    assert type(m.random_state) is int
    assert SASRec(random_state=None).random_state is None


def test_threads_belong_to_the_model():
    m = SASRec(num_threads=2, **SMALL).fit(SEQS)
    assert m._engine.threads == 2
    other = SASRec(num_threads=1, **SMALL).fit(SEQS)
    assert other._engine.threads == 1 and m._engine.threads == 2
    m.set_params(num_threads=1)  # a runtime setting: applies to the fitted engine at once
    assert m.num_threads == 1 and m._engine.threads == 1
    m.set_params(num_threads=0)  # all cores
    assert m._engine.threads >= 1
    m.set_params(num_threads=2)
    assert m.to("cpu")._engine.threads == 2


def test_threads_are_not_taken_from_a_file(tmp_path):
    m = SASRec(num_threads=2, **SMALL).fit(SEQS)
    m.save(tmp_path / "m.fsr")
    loaded = SASRec.load(tmp_path / "m.fsr", device="cpu")
    assert loaded.num_threads == 0 and loaded._engine.threads == fastsasrec._core.build_info()["omp_max_threads"]
    loaded = SASRec.load(tmp_path / "m.fsr", device="cpu", num_threads=3)
    assert loaded.num_threads == 3 and loaded._engine.threads == 3


def test_the_package_never_sets_process_threads():
    import pathlib

    src = pathlib.Path(fastsasrec.__file__).parent
    for path in src.glob("*.py"):
        text = path.read_text()
        assert "_core.ops" not in text and "set_num_threads" not in text, path.name
