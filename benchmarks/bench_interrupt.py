#!/usr/bin/env python
"""How long Ctrl-C takes to stop training on MovieLens 100K: from SIGINT to the moment
control is back in the caller's hands.

    python benchmarks/bench_interrupt.py --trials 10 --threads 2
    python benchmarks/bench_interrupt.py --impl fastsasrec

Each trial starts a fresh training process (the benchmark config of common.CONFIG with
the full softmax, 1,000 epochs asked for), waits until its first epoch is done, sends
SIGINT at a random moment of a later epoch (uniform over one epoch's duration) and
records the time until the process reports that training has returned: fastsasrec's
``fit`` returns the model of its last completed epoch (the epoch under way is put back);
the PyTorch reference's loop raises KeyboardInterrupt out of whatever op was running
(its weights are then mid-epoch).  Both clocks are CLOCK_MONOTONIC, shared by the
processes of one machine.  Reports the median and the worst delay in milliseconds.

What being interruptible costs a fastsasrec epoch (a copy of the weights and AdamW's
moments at its start, and the signal check before every batch) is measured in the same
run: epochs of one model alternate between the engine's interruptible and plain loops
(`train_epoch(check_signals=True | False)`), and the medians of each are compared.
"""
import _env  # noqa: I001  (first: strips OpenBLAS variables before numpy loads)

if __name__ == "__main__":
    _env.strip_openblas_env()

import argparse  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402

CONFIG = dict(common.CONFIG, loss="softmax")


def worker(impl: str, data: str, threads: int) -> None:
    """Trains until interrupted; prints `ready <epoch seconds>` after the first epoch and
    `returned <monotonic time> <epochs kept>` once training has handed control back."""
    ds = common.load_ml100k(data)
    seen = []

    def on_sigint(sig, frame):  # when Python ran the handler: the signal was noticed
        seen.append(time.monotonic())
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    if impl == "fastsasrec":
        from fastsasrec import SASRec

        def ready(model, epoch, logs):
            if epoch == 1:
                print(f"ready {time.perf_counter() - t0:.4f}", flush=True)

        model = SASRec(**CONFIG, iterations=1000, num_threads=threads, verbose=0)
        t0 = time.perf_counter()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(ds.contexts, callbacks=[ready])
        print(f"returned {time.monotonic():.6f} {len(model.loss_history_)} {seen[0]:.6f}", flush=True)
    else:
        import torch_reference

        ref = torch_reference.TorchSASRec(ds.n_items, threads=threads, verbose=0, **CONFIG)
        t0 = time.perf_counter()
        ref.fit(ds.contexts, epochs=1)
        print(f"ready {time.perf_counter() - t0:.4f}", flush=True)
        try:
            ref.fit(ds.contexts, epochs=999)
        except KeyboardInterrupt:
            print(f"returned {time.monotonic():.6f} {len(ref.epoch_losses)} {seen[0]:.6f}", flush=True)


def _default_sigint() -> None:
    """The worker gets SIGINT's default action even when this runs where it is ignored (a
    background job), so that its Python turns SIGINT into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def trial(impl: str, data: str, threads: int, rng: np.random.Generator) -> dict:
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--worker", impl, "--data", data,
         "--threads", str(threads)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.abspath(__file__)), preexec_fn=_default_sigint)
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise SystemExit(f"{impl} worker failed: {line}{proc.stderr.read()}")
    epoch_s = float(line.split()[1])
    time.sleep(float(rng.uniform(0.0, epoch_s)))  # somewhere in epoch 2
    t_kill = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    ret = [x for x in out.splitlines() if x.startswith("returned")]
    if not ret:
        raise SystemExit(f"{impl} worker did not report its return (exit {proc.returncode}): {err}")
    _, t_ret, kept, t_seen = ret[-1].split()
    return dict(delay_ms=(float(t_ret) - t_kill) * 1e3, seen_ms=(float(t_seen) - t_kill) * 1e3,
                epoch_s=epoch_s, kept=int(kept))


def overhead(data: str, threads: int, epochs: int) -> dict:
    """Median seconds of an interruptible and of a plain engine epoch, alternating."""
    import warnings

    from fastsasrec import SASRec

    ds = common.load_ml100k(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SASRec(**CONFIG, iterations=1, num_threads=threads).fit(ds.contexts)
    state = model._state
    items = state.encode(np.concatenate([np.asarray(c) for c in ds.contexts]).astype(np.int64))
    lengths = np.array([len(c) for c in ds.contexts])
    keep = lengths >= 2
    items = items[np.repeat(keep, lengths)]
    offsets = np.concatenate(([0], np.cumsum(lengths[keep]))).astype(np.int64)
    times = {True: [], False: []}
    for e in range(2 * epochs):
        check = e % 2 == 0
        t0 = time.perf_counter()
        state.engine.train_epoch(items, offsets, e + 1, check_signals=check)
        times[check].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", choices=["fastsasrec", "torch", "both"], default="both")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=None, help="ML-100K u.data (default: ../shared/data/ml-100k)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overhead-epochs", type=int, default=20,
                    help="epochs of each kind for the cost of being interruptible (0: skip)")
    ap.add_argument("--worker", choices=["fastsasrec", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = str(common.resolve_data_path(args.data))
    if args.worker:
        worker(args.worker, data, args.threads)
        return
    impls = ["fastsasrec", "torch"] if args.impl == "both" else [args.impl]
    rng = np.random.default_rng(args.seed)
    common.print_machine_info(common.machine_info(args.threads))
    print("| impl | threads | trials | epoch (s) | Ctrl-C to return, median (ms) | worst (ms) | model kept |")
    print("|---|---|---|---|---|---|---|")
    for impl in impls:
        runs = [trial(impl, data, args.threads, rng) for _ in range(args.trials)]
        d = np.array([r["delay_ms"] for r in runs])
        kept = ("last completed epoch" if impl == "fastsasrec" else "mid-epoch weights")
        print(f"| {impl} | {args.threads} | {len(runs)} | {np.median([r['epoch_s'] for r in runs]):.2f} "
              f"| {np.median(d):.0f} | {d.max():.0f} | {kept} |", flush=True)
    if args.overhead_epochs and "fastsasrec" in impls:
        t = overhead(data, args.threads, args.overhead_epochs)
        print(f"\nfastsasrec epoch, median of {args.overhead_epochs} each (alternating): "
              f"interruptible {t[True] * 1e3:.1f} ms, plain {t[False] * 1e3:.1f} ms "
              f"({(t[True] / t[False] - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
