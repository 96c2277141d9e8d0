"""fastsasrec.ray.Recommender on a local Ray: Dataset.map_batches with the model loaded
once per actor, the same ids as recommend_batch on the same sessions, scores within 1e-6."""
import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytest.importorskip("ray.data", reason="the ray extra (ray[data]) is not installed")

from fastsasrec import SASRec  # noqa: E402
from fastsasrec.ray import Recommender, sessions_frame  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.fixture(scope="module")
def local_ray():
    # Logical CPUs: two actors hold one each, and the read and repartition tasks need more.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def _events(n_users=80, n_items=40, seed=3):
    rng = np.random.default_rng(seed)
    rows = [(f"u{u}", int(rng.integers(1, n_items + 1)), t) for u in range(n_users)
            for t in range(int(rng.integers(2, 20)))]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).sample(frac=1.0, random_state=seed)


def test_map_batches_equals_recommend_batch(local_ray, tmp_path):
    ev = _events()
    frame = sessions_frame(ev)
    m = SASRec(factors=16, n_layers=1, max_seq=8, iterations=2, num_threads=1, device="cpu").fit(
        frame["items"].tolist())
    path = tmp_path / "m.fsr"
    m.save(path)
    ds = ray.data.from_pandas(frame).repartition(3)
    got = ds.map_batches(Recommender, fn_constructor_kwargs={"model_path": str(path), "n": 4},
                         batch_format="pandas", concurrency=2, num_cpus=1, batch_size=16).to_pandas()
    got = got.sort_values(["user_id", "rank"]).reset_index(drop=True)
    frame = frame.sort_values("user_id").reset_index(drop=True)
    ids, scores = m.recommend_batch(frame["items"].tolist(), n=4)
    assert got["user_id"].tolist() == list(np.repeat(frame["user_id"].to_numpy(), 4))
    np.testing.assert_array_equal(got["item"].to_numpy(), ids.ravel())
    np.testing.assert_allclose(got["score"].to_numpy(), scores.ravel(), rtol=0, atol=1e-6)


def test_a_missing_column_is_named(tmp_path):
    ev = _events(n_users=10)
    frame = sessions_frame(ev)
    m = SASRec(factors=8, n_layers=1, iterations=1, device="cpu").fit(frame["items"].tolist())
    m.save(tmp_path / "m.fsr")
    r = Recommender(str(tmp_path / "m.fsr"), n=3, device="cpu")
    with pytest.raises(ValueError, match="the batch has no column 'items'"):
        r(frame.rename(columns={"items": "basket"}))
    out = r(frame)
    assert list(out.columns) == ["user_id", "rank", "item", "score"] and len(out) == 3 * len(frame)
    # A cell that holds no list (a null from a join, NaN from pandas) is named, not a TypeError.
    for cell in (None, float("nan")):
        broken = frame.copy()
        broken.at[broken.index[2], "items"] = cell
        with pytest.raises(ValueError, match=r"column 'items' \(items_col\), row 2 of the batch"):
            r(broken)
