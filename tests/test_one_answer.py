"""One answer on every batch path: recommend_batch on each user's whole history,
``fastsasrec score``, recommend_frame, Spark (local mode) and Ray give the same ids for the
same model, histories and options (candidates and a denylist among them).  The log has a user whose history is longer than
max_seq with an early item that must stay excluded, a user with an item the model does not
know, and one with no known item at all."""
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from fastsasrec import SASRec, batch
from fastsasrec.cli import main

MAX_SEQ = 5
CAND = [2, 5, 9, 11, 13, 17, 999]  # 999: not in the catalogue, dropped
DENY = [5, 3, 998]
OPTIONS = [dict(n=5, exclude_seen=False), dict(n=None, exclude_seen=True),  # None: the whole catalogue
           # Six known candidates less the denied 5 and each user's own: rows with empty slots.
           dict(n=4, exclude_seen=True, candidates=CAND, denylist=DENY)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(model, model path, events, users, histories in time order)."""
    rng = np.random.default_rng(7)
    histories = {f"u{u}": [int(x) for x in rng.integers(1, 31, size=int(rng.integers(2, 16)))]
                 for u in range(40)}
    m = SASRec(factors=8, n_layers=1, max_seq=MAX_SEQ, iterations=2, num_threads=1, device="cpu",
               random_state=0).fit(list(histories.values()))
    histories["long"] = [7] + [x for x in range(1, 31) if x != 7][:12]  # 7 long before the window
    histories["unknown"] = [3, 999, 4]
    histories["cold"] = [998, 999]
    rows = [(u, item, 1000 * k + t) for k, (u, h) in enumerate(histories.items()) for t, item in enumerate(h)]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    events = events.sample(frac=1.0, random_state=3).reset_index(drop=True)
    d = tmp_path_factory.mktemp("one")
    m.save(d / "m.fsr")
    users = sorted(histories)
    return m, str(d / "m.fsr"), events, users, [histories[u] for u in users]


def _want(world, n, exclude_seen, **chosen):
    m, _, _, users, histories = world
    ids, _ = m.recommend_batch(histories, n=n or m.n_items, exclude_seen=exclude_seen, **chosen)
    return ids


def _as_matrix(frame, users, k, user_col="user_id"):
    frame = frame.sort_values([user_col, "rank"])
    got = {u: g["item"].tolist() for u, g in frame.groupby(user_col)}
    assert sorted(got) == users
    return [got[u] + [-1] * (k - len(got[u])) for u in users]


@pytest.mark.parametrize("option", OPTIONS)
def test_recommend_frame_and_score(world, tmp_path, option):
    m, path, events, users, histories = world
    option = dict(option)
    n, exclude_seen = option.pop("n"), option.pop("exclude_seen")
    want = _want(world, n, exclude_seen, **option)
    k = want.shape[1]
    if exclude_seen and not option:  # the early item of the long history stays out, though the model reads 5
        assert 7 not in want[users.index("long")].tolist()
    if option:  # the candidates less the denylist, and rows cut short by it
        assert set(want.ravel().tolist()) == {-1, 2, 9, 11, 13, 17}
    frame = batch.recommend_frame(m, events, "user_id", "item_id", "timestamp", n=k,
                                  exclude_seen=exclude_seen, **option)
    np.testing.assert_array_equal(_as_matrix(frame, users, k), want)
    chosen = []
    if option:
        (tmp_path / "deny.txt").write_text("\n".join(map(str, DENY)) + "\n")
        chosen = ["--candidates", ",".join(map(str, CAND)), "--denylist", "@" + str(tmp_path / "deny.txt")]
    events.to_csv(tmp_path / "ev.csv", index=False)
    for extra in ([], ["--sorted-by-user"]):
        src = tmp_path / "ev.csv"
        if extra:
            events.sort_values(["user_id", "timestamp"]).to_csv(tmp_path / "sorted.csv", index=False)
            src = tmp_path / "sorted.csv"
        seen = [] if exclude_seen else ["--no-exclude-seen"]
        code = main(["score", path, str(src), "-o", str(tmp_path / "r.csv"), "-n", str(k), "--chunk-rows", "7",
                     "--threads", "1"] + seen + extra + chosen)
        assert code == 0
        got = pd.read_csv(tmp_path / "r.csv", dtype={"user_id": str})
        np.testing.assert_array_equal(_as_matrix(got, users, k), want)


def _java_ok():
    return shutil.which("java") is not None or "JAVA_HOME" in os.environ


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_spark(world):
    pytest.importorskip("pyspark", reason="the spark extra (pyspark) is not installed")
    if not _java_ok():
        pytest.skip("Spark needs Java (java on PATH or JAVA_HOME)")
    from pyspark.sql import SparkSession

    from fastsasrec.spark import recommend

    m, path, events, users, _ = world
    spark = (SparkSession.builder.master("local[2]").appName("fastsasrec-one-answer")
             .config("spark.sql.shuffle.partitions", "3").config("spark.ui.enabled", "false")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true").getOrCreate())
    try:
        sdf = spark.createDataFrame(events).repartition(3)
        for option in OPTIONS:
            option = dict(option)
            want = _want(world, **option)
            option.pop("n")
            got = recommend(sdf, path, n=want.shape[1], num_threads=1, **option).toPandas()
            np.testing.assert_array_equal(_as_matrix(got, users, want.shape[1]), want)
    finally:
        spark.stop()


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_ray(world):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    pytest.importorskip("ray.data", reason="the ray extra (ray[data]) is not installed")
    from fastsasrec.ray import Recommender, sessions_frame

    m, path, events, users, _ = world
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        frame = sessions_frame(events)
        for option in OPTIONS:
            want = _want(world, **option)
            kw = dict(option, model_path=path, n=want.shape[1])
            got = ray.data.from_pandas(frame).map_batches(
                Recommender, fn_constructor_kwargs=kw, batch_format="pandas", concurrency=1, num_cpus=1,
                batch_size=16).to_pandas()
            np.testing.assert_array_equal(_as_matrix(got, users, want.shape[1]), want)
    finally:
        ray.shutdown()


@pytest.mark.parametrize("written", ["numbers", "dates"])
def test_times_as_text_give_the_same_answer(world, tmp_path, written):
    # A frame fresh from pd.read_csv holds its times as text; as numbers of several
    # lengths, "10000" sorts before "9" as text, so a path that ordered text would differ.
    m, path, events, users, _ = world
    want = _want(world, 5, True)
    t = events["timestamp"]
    text = events.assign(timestamp=t.astype(str) if written == "numbers" else
                         (pd.Timestamp("2024-01-01") + pd.to_timedelta(t, unit="h")).dt.strftime("%d-%b-%Y %H:%M"))
    as_text = np.argsort(text["timestamp"].to_numpy(dtype=str), kind="stable")
    assert (as_text != np.argsort(t.to_numpy(), kind="stable")).any()  # text order is not time order
    frame = batch.recommend_frame(m, text, "user_id", "item_id", "timestamp", n=5)
    np.testing.assert_array_equal(_as_matrix(frame, users, 5), want)
    from fastsasrec._event_table import transactions_to_sequences

    for got, ref in zip(transactions_to_sequences(text, "user_id", "item_id", "timestamp"),
                        transactions_to_sequences(events, "user_id", "item_id", "timestamp")):
        np.testing.assert_array_equal(got, ref)
    text.to_csv(tmp_path / "ev.csv", index=False)
    assert main(["score", path, str(tmp_path / "ev.csv"), "-o", str(tmp_path / "r.csv"), "-n", "5",
                 "--threads", "1"]) == 0
    got = pd.read_csv(tmp_path / "r.csv", dtype={"user_id": str})
    np.testing.assert_array_equal(_as_matrix(got, users, 5), want)
    # A cell that does not read is named with its row, on the Python path as on the CLI's.
    bad = text.assign(timestamp=text["timestamp"].where(text.index != 4, "soon"))
    with pytest.raises(ValueError, match=r"column 'timestamp' \(timestamp_col\).* row 4 is 'soon'"):
        batch.recommend_frame(m, bad, "user_id", "item_id", "timestamp", n=5)
