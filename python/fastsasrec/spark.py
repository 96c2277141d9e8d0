"""Batch scoring on Spark: each user's session built in Spark, scored on the executors.

    from fastsasrec.spark import recommend
    recs = recommend(events_df, "model.fsr", user_col="user_id", item_col="item_id",
                     time_col="timestamp", n=10)      # a Spark DataFrame
    recs.write.parquet("recs/")

A user's history is all their events, ordered by ``time_col`` (numbers, timestamps or
dates; text is refused, since Spark would order it as text; ties in the order Spark read
the rows).  The model reads its most recent ``max_seq`` events of items it knows (a window
in Spark, after a broadcast semi-join with the catalogue); with ``exclude_seen``, the
distinct items of the events before them are left out too, as ``recommend_batch`` does with
a whole history; ``candidates`` (rank only these) and ``denylist`` (never these) act on
every user as in ``recommend_batch``.  The partitions
are scored with ``mapInPandas`` over Arrow batches.  The model file reaches the executors
through ``SparkContext.addFile`` (or, with ``ship=False``, by a path every executor can
read) and is loaded once per Python worker process.  On an executor with GPUs, a task
takes the GPU Spark gave it (``device="auto"`` or ``"cuda"``: the task's first ``gpu``
resource address becomes ``cuda:N``).  Needs pyspark (the ``spark`` extra).
"""
from __future__ import annotations

import os
import threading
from typing import Any, Dict, Iterator, Optional, Tuple

_MODELS: Dict[Tuple[str, str, int], Any] = {}  # per Python worker: (path, device, threads)
_LOCK = threading.Lock()


def _worker_model(path: str, device: str, threads: int) -> Any:
    """The model at ``path`` on ``device``, loaded once per worker process."""
    from fastsasrec import SASRec

    key = (path, device, threads)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = SASRec.load(path, device=device, num_threads=threads)
        return model


def _task_device(device: str) -> str:
    """``device``, with "auto" / "cuda" made the GPU this Spark task was given (if any)."""
    if device not in ("auto", "cuda"):
        return device
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        gpus = ctx.resources().get("gpu") if ctx is not None else None
    except Exception:  # noqa: BLE001 - no task context: not on an executor
        gpus = None
    if gpus is not None and gpus.addresses:
        return f"cuda:{int(gpus.addresses[0])}"
    return "cpu" if device == "auto" else device


def _check_time_type(kind: Any, time_col: str) -> None:
    """Refuses a time column Spark would order otherwise than time: text ("10" before "9",
    "01-Feb" before "02-Jan"; ``fastsasrec score`` and ``from_transactions`` read text as
    numbers or dates, which Spark's schema cannot say without reading the data)."""
    from pyspark.sql import types as T

    times = tuple(getattr(T, n) for n in ("TimestampType", "TimestampNTZType", "DateType") if hasattr(T, n))
    if not isinstance(kind, (T.NumericType, *times)):
        raise ValueError(
            f"time_col={time_col!r} is a {kind.simpleString()} column of events_df, which Spark would "
            "order as text ('10' before '9'): cast it first, to numbers (F.col(...).cast('double')) "
            "or to times (F.to_timestamp(..., format)), or read the file with inferSchema=True")


def recommend(events_df: Any, model_path: str, user_col: str = "user_id", item_col: str = "item_id",
              time_col: Optional[str] = "timestamp", n: int = 10, exclude_seen: bool = True,
              num_threads: int = 1, device: str = "auto", ship: bool = True, candidates: Any = None,
              denylist: Any = None) -> Any:
    """(user_col, rank, item, score) rows for every user of the Spark DataFrame
    ``events_df``, as a Spark DataFrame (lazy: nothing runs until it is written or
    collected).

    ``num_threads``: CPU threads of each task's model (a task per core is Spark's way, so
    1 by default).  ``device``: "cpu", "cuda:N", or "auto" / "cuda" for the GPU the task
    was given (auto: the CPU when none was).  ``ship``: send the model file with
    ``SparkContext.addFile``; False reads ``model_path`` on each executor (a shared
    filesystem).  ``candidates``: rank only these item ids (the new products of a "new for
    you" e-mail, a category); ``denylist``: leave these out of every user's rows; both
    travel with the job (ids the model does not know are dropped).  Errors name the
    argument: a missing column, a bad ``n``, candidates none of which the model knows, a
    model file that does not load on the driver."""
    from pyspark.sql import SparkSession, Window
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from fastsasrec import SASRec
    from fastsasrec._params import flag, positive_int

    n = positive_int(n, "n")
    num_threads = int(num_threads)
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0, got {num_threads}")
    exclude_seen = flag(exclude_seen, "exclude_seen")
    if not isinstance(device, str):
        raise ValueError(f"device must be a string, got {device!r}")
    for arg, col in (("user_col", user_col), ("item_col", item_col), ("time_col", time_col)):
        if col is not None and col not in events_df.columns:
            raise ValueError(f"{arg}={col!r} is not a column of events_df; its columns are "
                             f"{events_df.columns}")
    if time_col is not None:
        _check_time_type(events_df.schema[time_col].dataType, time_col)
    model_path = os.path.abspath(os.fspath(model_path))
    # Loaded on the driver once: it checks the file, and gives max_seq and the catalogue.
    driver = SASRec.load(model_path, device="cpu")
    from fastsasrec.batch import pick

    chosen = pick(driver, candidates, denylist)
    T_, catalogue = driver.max_seq_, driver.item_ids_
    named = driver.item_names_ is not None  # a "name" column after "item" (item_names)
    k = min(n, catalogue.size)
    item_type = events_df.schema[item_col].dataType
    text_ids = catalogue.dtype.kind == "U"
    if isinstance(item_type, T.StringType) != text_ids or not isinstance(
            item_type, (T.StringType, T.IntegralType)):
        raise ValueError(f"item_col={item_col!r} is a {item_type.simpleString()} column of events_df, "
                         f"but this model's item ids are {'strings' if text_ids else 'integers'}: cast it "
                         f"(F.col({item_col!r}).cast({'string' if text_ids else 'long'!r}))")
    user_type = events_df.schema[user_col].dataType
    spark = SparkSession.getActiveSession() or events_df.sparkSession
    if ship:
        spark.sparkContext.addFile(model_path)
        name = os.path.basename(model_path)
    else:
        name = None

    # Each user's most recent max_seq known events in time order, and the distinct known
    # items of their events before those; a user with no known item is kept (popular items).
    import pandas as pd

    from fastsasrec.batch import new_products

    new = new_products(driver, catalogue)
    known_ids = (spark.createDataFrame(pd.DataFrame({"_fsr_item": catalogue.tolist()}))
                 .select(F.col("_fsr_item").cast(item_type).alias("_fsr_item")))
    events = (events_df.select(user_col, item_col, *([time_col] if time_col else []))
              .withColumn("_fsr_seq", F.monotonically_increasing_id()))
    known = events.join(F.broadcast(known_ids), F.col(item_col) == F.col("_fsr_item"), "left_semi")
    unread = None
    if new is not None:
        # New products are not in the model's window beside items with events (they stay
        # seen): the window is the last max_seq items it reads, as recommend_batch reads it.
        new_ids = (spark.createDataFrame(pd.DataFrame({"_fsr_item": catalogue[new].tolist()}))
                   .select(F.col("_fsr_item").cast(item_type).alias("_fsr_item"), F.lit(True).alias("_fsr_new")))
        known = (known.join(F.broadcast(new_ids), F.col(item_col) == F.col("_fsr_item"), "left")
                 .drop("_fsr_item").withColumn("_fsr_new", F.coalesce(F.col("_fsr_new"), F.lit(False))))
        reads = F.max(F.when(F.col("_fsr_new"), 0).otherwise(1)).over(Window.partitionBy(user_col))
        known = known.withColumn("_fsr_win", ~F.col("_fsr_new") | (reads == 0))
        unread = known.where(~F.col("_fsr_win")).select(user_col, item_col)
        known = known.where(F.col("_fsr_win"))
    order_cols = ([F.col(time_col).desc()] if time_col is not None else []) + [F.col("_fsr_seq").desc()]
    w = Window.partitionBy(user_col).orderBy(*order_cols)
    ranked = known.withColumn("_fsr_back", F.row_number().over(w))
    recent = (ranked.where(F.col("_fsr_back") <= T_).groupBy(user_col)
              .agg(F.sort_array(F.collect_list(F.struct(F.col("_fsr_back"), F.col(item_col))), asc=False)
                   .alias("_fsr_events"))
              .select(user_col, F.col(f"_fsr_events.{item_col}").alias("_fsr_items")))
    before = ranked.where(F.col("_fsr_back") > T_).select(user_col, item_col)
    if unread is not None:
        before = before.unionByName(unread)
    older = before.groupBy(user_col).agg(F.collect_set(F.col(item_col)).alias("_fsr_older"))
    # Every user, with whether any of their events lacks its item or time: a null is
    # refused, as fastsasrec score refuses an empty cell, never dropped in silence.
    nullable = [(arg, c) for arg, c in (("item_col", item_col), ("time_col", time_col)) if c is not None]
    sessions = (events_df.groupBy(user_col)
                .agg(*[F.max(F.col(c).isNull().cast("int")).alias(f"_fsr_null{j}")
                       for j, (_, c) in enumerate(nullable)])
                .join(recent, user_col, "left").join(older, user_col, "left"))

    schema = T.StructType([T.StructField(user_col, user_type), T.StructField("rank", T.IntegerType()),
                           T.StructField("item", item_type)]
                          + ([T.StructField("name", T.StringType())] if named else [])
                          + [T.StructField("score", T.FloatType())])

    def score(batches: Iterator[Any]) -> Iterator[Any]:
        if name is not None:
            from pyspark import SparkFiles

            path = SparkFiles.get(name)
        else:
            path = model_path
        from fastsasrec.batch import long_rows

        model = _worker_model(path, _task_device(device), num_threads)
        for pdf in batches:
            if not len(pdf):
                continue
            if pdf[user_col].isna().any():
                raise ValueError(f"events_df: column {user_col!r} (user_col) has a null value")
            for j, (arg, c) in enumerate(nullable):
                bad = (pdf[f"_fsr_null{j}"] > 0).to_numpy()
                if bad.any():
                    raise ValueError(f"events_df: column {c!r} ({arg}) has a null value in an event "
                                     f"of user {pdf[user_col].tolist()[bad.tolist().index(True)]!r}")
            sessions = [[] if x is None else list(x) for x in pdf["_fsr_items"]]
            kw = {"exclude": [[] if x is None else list(x) for x in pdf["_fsr_older"]]} if exclude_seen else {}
            got = model.recommend_batch(sessions, n=k, exclude_seen=exclude_seen, **kw, **chosen)
            yield long_rows(pdf[user_col].to_numpy(), got[0], got[1], user_col, got.names)

    return sessions.mapInPandas(score, schema=schema)
