"""fastsasrec.spark.recommend on a real Spark in local[2] mode: sessions built in Spark,
scored by mapInPandas, the same ids as recommend_batch on each user's whole history with
the same threads, scores within 1e-6."""
import os

import numpy as np
import pandas as pd
import pytest

pyspark = pytest.importorskip("pyspark", reason="the spark extra (pyspark) is not installed")

from fastsasrec import SASRec  # noqa: E402
from fastsasrec.spark import recommend  # noqa: E402


def _java_ok():
    import shutil
    return shutil.which("java") is not None or "JAVA_HOME" in os.environ


pytestmark = [pytest.mark.skipif(not _java_ok(), reason="Spark needs Java (java on PATH or JAVA_HOME)"),
              # pyspark's own notices about the pandas version it runs with
              pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    s = (SparkSession.builder.master("local[2]").appName("fastsasrec-test")
         .config("spark.sql.shuffle.partitions", "4").config("spark.ui.enabled", "false")
         .config("spark.sql.execution.arrow.pyspark.enabled", "true").getOrCreate())
    yield s
    s.stop()


def _events(n_users=120, n_items=50, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        t = int(rng.integers(0, 10_000))
        for _ in range(int(rng.integers(2, 25))):
            t += int(rng.integers(1, 50))  # distinct times within a user
            rows.append((f"u{u}", int(rng.integers(1, n_items + 1)), t))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    ev = _events()
    seqs = [g.sort_values("timestamp")["item_id"].tolist() for _, g in ev.groupby("user_id")]
    m = SASRec(factors=16, n_layers=1, max_seq=8, iterations=3, num_threads=1, device="cpu").fit(seqs)
    path = tmp_path_factory.mktemp("spark") / "m.fsr"
    m.save(path)
    return ev, str(path)


def test_spark_scores_equal_recommend_batch(spark, model_file):
    ev, path = model_file
    sdf = spark.createDataFrame(ev).repartition(3)
    got = recommend(sdf, path, user_col="user_id", item_col="item_id", time_col="timestamp", n=5,
                    num_threads=1).toPandas().sort_values(["user_id", "rank"]).reset_index(drop=True)
    m = SASRec.load(path, device="cpu", num_threads=1)
    users, sessions = [], []
    for u, g in ev.groupby("user_id", sort=True):
        users.append(u)
        sessions.append(g.sort_values("timestamp")["item_id"].tolist())  # the whole history
    ids, scores = m.recommend_batch(sessions, n=5)
    assert got["user_id"].tolist() == list(np.repeat(users, 5))
    assert got["rank"].tolist() == [1, 2, 3, 4, 5] * len(users)
    np.testing.assert_array_equal(got["item"].to_numpy(), ids.ravel())
    np.testing.assert_allclose(got["score"].to_numpy(), scores.ravel(), rtol=0, atol=1e-6)


def test_bad_arguments_name_themselves(spark, model_file):
    ev, path = model_file
    sdf = spark.createDataFrame(ev)
    with pytest.raises(ValueError, match="item_col='sku' is not a column of events_df"):
        recommend(sdf, path, item_col="sku")
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        recommend(sdf, path, n=0)
    from pyspark.sql import functions as F

    text = sdf.withColumn("timestamp", F.col("timestamp").cast("string"))
    with pytest.raises(ValueError, match=r"time_col='timestamp' is a string column of events_df, which "
                       r"Spark would order as text \('10' before '9'\): cast it first"):
        recommend(text, path)
    recommend(text.withColumn("timestamp", F.col("timestamp").cast("double")), path)  # cast: accepted
    with pytest.raises((ValueError, FileNotFoundError)):
        recommend(sdf, path + ".missing")
