"""New products in the batch paths: recommend_frame, score_file (a file in any order, in
small chunks, and sorted by user) and Spark read a history as recommend_batch does. The
model's window is the last max_seq items it reads, so a new product beside items with
events neither takes a place in it nor pushes an older item out, and a window that would
hold new products alone holds the user's items with events instead; the new products stay
seen. Unknown ids and null cells are never lost in silence."""
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from fastsasrec.batch import recommend_frame, score_file
from test_item_features import _model, _sessions, _table

NEW = [999, 998]  # in the table, in no session: categories 2 and 3
HISTORIES = {
    "a": [200, 201, 202, 203, 204, 205, 999],     # a new product after max_seq items with events
    "b": [300] + [998] * 5 + [999] * 3,            # new products fill the last max_seq events
    "c": [999, 998],                               # new products alone: their look-alikes
    "d": [100, 999, 101, 998, 102, 103, 104, 105, 106],
    "e": [5555, 999],                              # an unknown id and a new product
    "f": [200, 201],                               # no new product at all
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    m = _model(max_seq=4).fit(_sessions(), item_features=_table(extra=[(999, 2), (998, 3)]),
                              item_names="title")
    path = tmp_path_factory.mktemp("batch") / "m.fsr"
    m.save(path)
    return m, str(path)


def _events():
    rows = [(u, i, t) for u, items in HISTORIES.items() for t, i in enumerate(items)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)  # a file in any order


def _expected(m, **kw):
    got = m.recommend_batch(list(HISTORIES.values()), n=5, **kw)
    return {u: [int(i) for i in got.ids[k] if i != -1] for k, u in enumerate(HISTORIES)}


def _by_user(frame, col="user_id"):
    return {u: g.sort_values("rank")["item"].astype(int).tolist() for u, g in frame.groupby(col)}


@pytest.mark.parametrize("kw", [{}, {"exclude_seen": False}, {"candidates": [999, 998, 203, 204, 100]}])
def test_recommend_frame_reads_histories_as_recommend_batch(model, kw):
    m, _ = model
    got = recommend_frame(m, _events(), time_col="timestamp", n=5, **kw)
    assert _by_user(got) == _expected(m, **kw)


@pytest.mark.parametrize("mode", [{"chunk_rows": 3}, {"chunk_rows": 1_000_000}, {"sorted_by_user": True}])
def test_score_file_reads_histories_as_recommend_batch(model, tmp_path, mode):
    m, path = model
    ev = _events()
    if mode.get("sorted_by_user"):
        ev = ev.sort_values(["user_id", "timestamp"])
    ev.to_csv(tmp_path / "ev.csv", index=False)
    score_file(m, path, str(tmp_path / "ev.csv"), str(tmp_path / "out.csv"), n=5, **mode)
    got = pd.read_csv(tmp_path / "out.csv", dtype={"user_id": str})
    assert _by_user(got) == _expected(m)


def _java_ok():
    return shutil.which("java") is not None or "JAVA_HOME" in os.environ


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning",
                            "ignore:The copy keyword is deprecated")
def test_spark_reads_histories_as_recommend_batch_and_refuses_nulls(model):
    pytest.importorskip("pyspark", reason="the spark extra (pyspark) is not installed")
    if not _java_ok():
        pytest.skip("Spark needs Java (java on PATH or JAVA_HOME)")
    from pyspark.sql import SparkSession
    from pyspark.sql import types as T

    from fastsasrec.spark import recommend

    m, path = model
    spark = (SparkSession.builder.master("local[2]").appName("fastsasrec-new-products")
             .config("spark.sql.shuffle.partitions", "2").config("spark.ui.enabled", "false")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true").getOrCreate())
    try:
        df = spark.createDataFrame(_events())
        got = recommend(df, path, n=5, num_threads=1).toPandas()
        assert _by_user(got) == _expected(m)
        schema = T.StructType([T.StructField("user_id", T.StringType()), T.StructField("item_id", T.LongType()),
                               T.StructField("timestamp", T.LongType())])
        for rows, match in (([("u1", 200, 1), (None, 201, 2)], "column 'user_id' \\(user_col\\) has a null"),
                            ([("u1", 200, 1), ("u2", None, 2)], "column 'item_id' \\(item_col\\) has a null "
                                                                "value in an event of user 'u2'"),
                            ([("u1", 200, 1), ("u1", 201, None)], "column 'timestamp' \\(time_col\\)")):
            with pytest.raises(Exception, match=match):
                recommend(spark.createDataFrame(rows, schema), path, n=2, num_threads=1).toPandas()
        with pytest.raises(ValueError, match="item_col='item_id' is a string column of events_df, but "
                                             "this model's item ids are integers"):
            recommend(df.withColumn("item_id", df.item_id.cast("string")), path, n=2)
    finally:
        spark.stop()
