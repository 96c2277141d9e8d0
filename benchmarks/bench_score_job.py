#!/usr/bin/env python
"""A nightly scoring job: every user's top 10 from an event log, single-process
`fastsasrec score` against `fastsasrec.spark.recommend` on Spark local[N], same machine,
same input, same model file.

    python benchmarks/bench_score_job.py --sessions 1000000 --items 100000

The event log (user, item, ts: int64; `--events` per user, users interleaved in time order,
items uniform over the catalogue) is written once as Parquet under --workdir; the model is
untrained (scoring cost does not depend on the weights; factors 64, 2 layers, max_seq 50).
Reported:
  * engine: `recommend_batch` on the sessions already in memory (the scoring ceiling);
  * `fastsasrec score MODEL EVENTS -o RECS.parquet` as a subprocess (reading the log,
    building the sessions, scoring, writing), wall time;
  * Spark local[N]: `recommend(...)` written to Parquet, wall time from the DataFrame read
    to the write's end (the session start is reported apart); Spark's overhead is its time
    over `fastsasrec score`'s.
Both jobs' outputs are checked to hold every user, n rows each, with the same ids.
"""
import _env  # noqa: I001  (first: strips OpenBLAS variables before numpy loads)

if __name__ == "__main__":
    _env.strip_openblas_env()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402


def write_events(path: Path, n_users: int, per_user: int, n_items: int, seed: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users, dtype=np.int64), per_user)
    rng.shuffle(users)
    n = users.size
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, pa.schema([("user", pa.int64()), ("item", pa.int64()), ("ts", pa.int64())])) as w:
        for lo in range(0, n, 4_000_000):
            hi = min(n, lo + 4_000_000)
            w.write_table(pa.table({"user": users[lo:hi],
                                    "item": rng.integers(1, n_items + 1, hi - lo, dtype=np.int64),
                                    "ts": np.arange(lo, hi, dtype=np.int64)}))
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=20, help="events per user")
    ap.add_argument("--threads", type=int, default=2, help="cores of both jobs (Spark: local[N])")
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--workdir", default="/tmp/fastsasrec_score_job")
    ap.add_argument("--skip-spark", action="store_true")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    from fastsasrec import SASRec

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    info = common.machine_info(args.threads)
    common.print_machine_info(info)
    events = work / f"events_{args.sessions}x{args.events}_{args.items}.parquet"
    if not events.exists():
        print(f"[{time.strftime('%H:%M:%S')}] writing {events} ...", flush=True)
        write_events(events, args.sessions, args.events, args.items, 0)
    model_path = work / f"model_{args.items}.fsr"
    if not model_path.exists():
        vocab = [[i, i + 1] for i in range(1, args.items + 1, 2)]
        SASRec(factors=64, max_seq=50, n_layers=2, loss="sampled_softmax", n_negatives=256,
               iterations=0, verbose=0).fit(vocab).save(model_path)
    res = {"sessions": args.sessions, "items": args.items, "events": args.sessions * args.events,
           "threads": args.threads, "events_bytes": events.stat().st_size}

    # The engine alone: the sessions in memory, one recommend_batch.
    import pyarrow.parquet as pq

    tab = pq.read_table(events).to_pandas()
    tab = tab.sort_values(["user", "ts"], kind="stable")
    S = tab["item"].to_numpy().reshape(args.sessions, args.events)
    del tab
    model = SASRec.load(model_path, num_threads=args.threads)
    t0 = time.perf_counter()
    ids, _ = model.recommend_batch(S, n=args.n)
    res["engine_s"] = time.perf_counter() - t0
    del S
    print(f"engine: {res['engine_s']:.1f} s = {args.sessions / res['engine_s']:,.0f} sessions/s", flush=True)

    # fastsasrec score, a subprocess.
    out_score = work / "recs_score.parquet"
    cmd = [sys.executable, "-m", "fastsasrec", "score", str(model_path), str(events), "-o", str(out_score),
           "--user-col", "user", "--item-col", "item", "--time-col", "ts", "-n", str(args.n),
           "--threads", str(args.threads), "-q"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    res["score_s"] = time.perf_counter() - t0
    res["score_output_bytes"] = out_score.stat().st_size
    print(f"fastsasrec score: {res['score_s']:.1f} s = {args.sessions / res['score_s']:,.0f} sessions/s, "
          f"output {res['score_output_bytes'] / 1e6:.0f} MB", flush=True)
    got = pq.read_table(out_score).to_pandas()
    assert len(got) == args.sessions * args.n and got["user"].nunique() == args.sessions

    if not args.skip_spark:
        from pyspark.sql import SparkSession

        from fastsasrec.spark import recommend

        t0 = time.perf_counter()
        spark = (SparkSession.builder.master(f"local[{args.threads}]").appName("bench_score_job")
                 .config("spark.driver.memory", "8g").config("spark.sql.shuffle.partitions", str(4 * args.threads))
                 .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                 .config("spark.ui.showConsoleProgress", "false").getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
        res["spark_start_s"] = time.perf_counter() - t0
        out_spark = work / "recs_spark.parquet"
        shutil.rmtree(out_spark, ignore_errors=True)
        t0 = time.perf_counter()
        df = spark.read.parquet(str(events))
        recommend(df, str(model_path), user_col="user", item_col="item", time_col="ts", n=args.n,
                  num_threads=1).write.parquet(str(out_spark))
        res["spark_s"] = time.perf_counter() - t0
        spark.stop()
        print(f"Spark local[{args.threads}]: {res['spark_s']:.1f} s = {args.sessions / res['spark_s']:,.0f} "
              f"sessions/s (session start {res['spark_start_s']:.1f} s)", flush=True)
        theirs = pq.read_table(out_spark).to_pandas()
        assert len(theirs) == args.sessions * args.n
        a = got.sort_values(["user", "rank"])["item"].to_numpy()
        b = theirs.sort_values(["user", "rank"])["item"].to_numpy()
        res["ids_equal"] = bool(np.array_equal(a, b))
        res["spark_overhead_pct"] = 100.0 * (res["spark_s"] / res["score_s"] - 1.0)
        print(f"Spark's overhead over fastsasrec score: {res['spark_overhead_pct']:.0f}%; "
              f"ids equal: {res['ids_equal']}")
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": info, **res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
