#!/usr/bin/env python
"""Two source trees' servers side by side on one model file: the before/after check of a
change to the server (bench_serve.py trains its model in each run, which adds the
training's own variation to the comparison).

    python benchmarks/bench_serve_ab.py --before /path/to/old/python --after python --pairs 4

The model (100,000 items, from bench_serve.big_model) is made once, by the tree this
script runs from, and saved to --model (reused when it exists). Each pair runs
`fastsasrec serve --threads 1` from the two trees' `python/` folders in turn (alternating
which goes first), 1 s of warm-up, then 3 s at --rate (open loop, --conns connections) and
3 s closed loop with 32 connections, with bench_serve.py's generator on the same machine.
Prints each run and the medians. The trees must share this model file's format.
"""
import _env  # noqa: I001  (first: strips OpenBLAS variables before numpy loads)

if __name__ == "__main__":
    _env.strip_openblas_env()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

import bench_serve as bs  # noqa: E402


def run_one(tree: str, path: str, reqs: list, rate: float, conns: int) -> dict:
    port = bs.free_port()
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    cmd = [sys.executable, "-m", "fastsasrec", "serve", path, "--port", str(port), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=os.path.dirname(os.path.abspath(path)))
    bs.wait_ready(port, "/readyz", proc)
    try:
        bs.load(port, reqs, None, 1.0, 8)
        low = bs.load(port, reqs, rate, 3.0, conns)
        top = bs.load(port, reqs, None, 3.0, 32)
    finally:
        bs.stop(proc)
    return {"p50": low["p50"], "p99": low["p99"], "errors": low["errors"] + top["errors"],
            "max": top["achieved"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="the old tree's python/ folder")
    ap.add_argument("--after", required=True, help="the new tree's python/ folder")
    ap.add_argument("--model", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_serve_ab_100k.fsr"))
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--conns", type=int, default=128)
    args = ap.parse_args()
    sessions_path = args.model + ".sessions.json"
    if not (os.path.exists(args.model) and os.path.exists(sessions_path)):
        model, sessions = bs.big_model(100_000, 1)
        model.save(args.model)
        with open(sessions_path, "w") as f:
            json.dump([[int(i) for i in s] for s in sessions], f)
    with open(sessions_path) as f:
        sessions = json.load(f)
    reqs = bs.requests_for("/v1/recommend", [{"session": s, "n": 10} for s in sessions])
    got = {"before": [], "after": []}
    print(f"| pair | tree | p50 ms at {args.rate:.0f} req/s | p99 ms | maximum req/s (32 conns) | errors |")
    print("|---|---|---|---|---|---|")
    for pair in range(args.pairs):
        order = ("before", "after") if pair % 2 == 0 else ("after", "before")
        for name in order:
            r = run_one(getattr(args, name), args.model, reqs, args.rate, args.conns)
            got[name].append(r)
            print(f"| {pair + 1} | {name} | {r['p50']:.3f} | {r['p99']:.2f} | {r['max']:,.0f} | {r['errors']} |",
                  flush=True)
    for name, rows in got.items():
        print(f"{name}: median p50 {np.median([r['p50'] for r in rows]):.3f} ms, median maximum "
              f"{np.median([r['max'] for r in rows]):,.0f} req/s over {len(rows)} runs")


if __name__ == "__main__":
    main()
