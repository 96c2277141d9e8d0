"""SASRec pickles (pickle, joblib, copy.deepcopy, multiprocessing): an unfitted estimator as
its parameters; a fitted one as the model file's bytes plus the fit's record the file does
not keep. The copy answers as the original does, bit for bit, and is independent of it;
copy.copy stays shallow."""
import copy
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from fastsasrec import SASRec

from conftest import chain_sessions
from test_item_features import _model, _sessions, _table

# The small fits here carry a validation record; whether they beat the bestsellers is not the point.
pytestmark = pytest.mark.filterwarnings("ignore:the trained model is worse than recommending")


def _fitted():
    m = SASRec(factors=16, n_layers=1, max_seq=10, iterations=4, random_state=0, num_threads=1)
    return m.fit(chain_sessions(n_sessions=120), validation=chain_sessions(n_sessions=30, seed=1))


def _same_answers(a, b, sessions):
    ra = a.recommend_batch(sessions, n=8, exclude_seen=True)
    rb = b.recommend_batch(sessions, n=8, exclude_seen=True)
    np.testing.assert_array_equal(ra.ids, rb.ids)
    np.testing.assert_array_equal(ra.scores, rb.scores)
    np.testing.assert_array_equal(ra.fallback, rb.fallback)


def test_an_unfitted_model_pickles_as_its_parameters():
    m = SASRec(factors=24, dropout=0.25, loss="bce", random_state=7)
    back = pickle.loads(pickle.dumps(m))
    assert back.get_params() == m.get_params() and repr(back) == repr(m)
    assert not hasattr(back, "item_ids_")
    back.set_params(iterations=2).fit(chain_sessions(n_sessions=40))  # trains like a new one


def test_a_fitted_model_pickles_with_its_answers_and_record():
    m = _fitted()
    m.set_params(factors=32, learning_rate=2e-3)  # the next fit's, not the fitted model's
    back = pickle.loads(pickle.dumps(m))
    sessions = [[100, 101, 102], [130], [], [999], list(range(105, 117))]
    _same_answers(m, back, sessions)
    assert back.get_params() == m.get_params()
    assert back.fitted_params_ == m.fitted_params_
    np.testing.assert_array_equal(back.item_ids_, m.item_ids_)
    np.testing.assert_array_equal(back.popularity_, m.popularity_)
    np.testing.assert_array_equal(back.item_embeddings_, m.item_embeddings_)
    assert back.loss_history_ == m.loss_history_ and back.history_ == m.history_
    assert back.best_epoch_ == m.best_epoch_ > 0 and back.interrupted_ == m.interrupted_
    assert back.validation_ == m.validation_ and back.defaults_ == m.defaults_


def test_a_deep_copy_is_independent_and_a_shallow_copy_shares_the_model():
    m = _fitted()
    deep = copy.deepcopy(m)
    assert deep._state.engine is not m._state.engine
    before = m.item_embeddings_.copy()
    deep.partial_fit([[100, 101, 102, 777]], epochs=2)  # trains the copy, adds item 777
    np.testing.assert_array_equal(m.item_embeddings_, before)
    assert 777 in deep.item_ids_ and 777 not in m.item_ids_
    shallow = copy.copy(m)
    assert shallow._state is m._state


def test_item_features_new_products_and_names_travel():
    m = _model(iterations=2).fit(_sessions(), item_features=_table(extra=[(555, 1)]), item_names="title")
    assert 555 in m.item_ids_  # a new product: features, no events
    back = pickle.loads(pickle.dumps(m))
    sessions = [[100, 101], [555], [102, 103, 104], [100, 555]]
    _same_answers(m, back, sessions)
    np.testing.assert_array_equal(back.item_names_, m.item_names_)
    got, want = back.recommend([100, 101], n=4), m.recommend([100, 101], n=4)
    np.testing.assert_array_equal(got.names, want.names)


def test_a_pickle_loads_in_another_process(tmp_path):
    m = _fitted()
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(m))
    code = ("import pickle, sys, numpy as np; m = pickle.load(open(sys.argv[1], 'rb')); "
            "r = m.recommend([100, 101, 102], n=5); print(' '.join(map(str, r.ids.tolist())))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(i) for i in m.recommend([100, 101, 102], n=5).ids.tolist()]


def test_a_state_of_another_layout_is_refused_by_name():
    m = SASRec()
    with pytest.raises(ValueError, match=r"layout 99"):
        m.__setstate__({"fastsasrec_pickle": 99, "params": {}})
    with pytest.raises(ValueError, match=r"layout None"):
        m.__setstate__(["not", "a", "state"])
