#!/usr/bin/env python
"""How OpenMP's waiting policy moves training throughput, on a quiet machine and beside
other work: the engine's default (a short spin, GOMP_SPINCOUNT=1000, set by fastsasrec
only while its engine loads) against passive waiting, a longer spin and libgomp's own
default (300,000 spins, about 3 ms).

    python benchmarks/bench_omp_wait.py                       # bce, 8 epochs, 3 rounds
    python benchmarks/bench_omp_wait.py --rounds 2 --loads 0,2 --policies passive,1000

Each cell is one fit of the bench_train configuration (ML-100K, factors 64, 2 layers,
max_seq 50, batch 128) in a fresh process, so that libgomp reads the policy when it
loads; policies are interleaved within a round.  "load 1" and "load 2" run one or two
busy-looping processes beside the fit for the length of that cell (bounded by
--timeout), as a laptop or a shared CI runner would.  A fit that does not finish within
--timeout is reported as such.  Reports tokens/s per cell and the median per policy.
"""
import _env  # noqa: I001  (first: strips OpenBLAS variables before numpy loads)

if __name__ == "__main__":
    _env.strip_openblas_env()

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import common  # noqa: E402

HERE = Path(__file__).resolve().parent

# One fit, run in a child process: prints its tokens/s.
CHILD = r"""
import sys, time
sys.path.insert(0, {here!r})
import common
from fastsasrec import SASRec
ds = common.load_ml100k({data!r})
tok = common.tokens_per_epoch(ds.contexts, common.CONFIG["max_seq"])
model = SASRec(**dict(common.CONFIG, loss={loss!r}), iterations={epochs}, device="cpu",
               verbose=0, num_threads={threads})
seqs = ds.to_original(ds.contexts)
t0 = time.perf_counter()
model.fit(seqs)
print(tok * {epochs} / (time.perf_counter() - t0))
"""

BUSY = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass\n"


def policy_env(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "passive"
    elif policy == "libgomp-default":
        env["GOMP_SPINCOUNT"] = "300000"
    elif policy != "fastsasrec-default":
        env["GOMP_SPINCOUNT"] = str(int(policy))
    return env


def one_fit(policy: str, load: int, args) -> float | None:
    code = CHILD.format(here=str(HERE), data=args.data, loss=args.loss, epochs=args.epochs,
                        threads=args.threads)
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY.format(s=args.timeout)])
            for _ in range(load)]
    try:
        out = subprocess.run([sys.executable, "-c", code], env=policy_env(policy),
                             capture_output=True, text=True, timeout=args.timeout)
        if out.returncode != 0:
            raise SystemExit(f"the fit failed ({policy}, load {load}):\n{out.stderr}")
        return float(out.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return None
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loss", default="bce")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loads", default="0,1,2", help="busy processes beside the fit, comma-separated")
    ap.add_argument("--policies", default="fastsasrec-default,passive,3000,libgomp-default",
                    help="fastsasrec-default (GOMP_SPINCOUNT=1000), passive, libgomp-default "
                         "(300000 spins) or a spin count")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a cell may take")
    ap.add_argument("--data", default=None, help="ml-100k folder (default: ../shared/data/ml-100k)")
    args = ap.parse_args(argv)
    args.data = str(common.resolve_data_path(args.data))
    common.print_machine_info(common.machine_info(args.threads))
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    loads = [int(x) for x in args.loads.split(",") if x.strip()]
    print(f"\nML-100K, {args.loss}, {args.epochs} epochs, {args.threads} threads, "
          f"{args.rounds} rounds; busy processes beside the fit: {loads}\n", flush=True)
    rows = []
    for load in loads:
        cells = {p: [] for p in policies}
        for r in range(args.rounds):
            for p in policies:
                v = one_fit(p, load, args)
                cells[p].append(v)
                print(f"  load {load} round {r} {p}: "
                      f"{'timed out' if v is None else f'{v:,.0f} tokens/s'}", flush=True)
        for p in policies:
            done = [v for v in cells[p] if v is not None]
            rows.append({"busy processes": load, "policy": p,
                         "tokens/s, each round": " / ".join("timeout" if v is None else f"{v / 1e3:.0f}k"
                                                            for v in cells[p]),
                         "median": f"{statistics.median(done) / 1e3:.0f}k" if done else "—"})
    print()
    print(common.markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
