#!/usr/bin/env python
"""Training memory on a large catalogue: fastsasrec against the PyTorch reference, same
config, same device, one after the other in one process.

    python benchmarks/bench_memory.py --device cuda --items 10000000

Config: factors 64, 2 layers, max_seq 200, batch 128, sampled_softmax with 256 negatives
(the issue's figure: a 10,000,000-item catalogue must train on an 80 GB card).  The data
is a random permutation of all items cut into sessions of max_seq + 1, so every item is
in the catalogue and every batch is full length.

GPU memory is what the card reports in use (cudaMemGetInfo through torch), sampled every
few milliseconds during training by a second thread; each side's figure is its peak less
the card's use before it started.  The torch side also reports its allocator's peak
(torch.cuda.max_memory_allocated), which excludes the CUDA context.  fastsasrec trains one
epoch through the public estimator (its 10M-item id mapping included); the reference
trains `--torch-sessions` sessions (its memory does not grow after the first steps).  On
the CPU the figure is the growth of the process's peak resident memory.
"""
import _env  # noqa: I001  (first: strips OpenBLAS variables before numpy loads)

if __name__ == "__main__":
    _env.strip_openblas_env()

import argparse  # noqa: E402
import gc  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402

GiB = 1024 ** 3


class PeakGpuMemory:
    """Samples the card's memory in use (bytes) from a thread until stopped."""

    def __init__(self, torch, period=0.005):
        self.torch, self.period, self.peak = torch, period, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def used(self):
        free, total = self.torch.cuda.mem_get_info()
        return total - free

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.used())
            time.sleep(self.period)

    def __enter__(self):
        self.base = self.used()
        self.peak = self.base
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.used())


def rss_peak_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    ap.add_argument("--items", type=int, default=10_000_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--max-seq", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--negatives", type=int, default=256)
    ap.add_argument("--torch-sessions", type=int, default=2048,
                    help="sessions the reference trains on (0: skip the reference)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from fastsasrec import SASRec
    from torch_reference import TorchSASRec

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.init()
        torch.zeros(1, device="cuda")  # the context exists before the first reading
    common.print_machine_info(common.machine_info(args.threads))
    V, L = args.items, args.max_seq + 1
    rng = np.random.default_rng(0)
    perm = rng.permutation(V).astype(np.int64) + 1
    n_sess = V // L
    sessions = perm[: n_sess * L].reshape(n_sess, L)
    data = list(sessions)
    data[-1] = np.concatenate([data[-1], perm[n_sess * L:]])  # the cut's leftovers too
    cfg = dict(factors=args.factors, n_layers=2, n_heads=1, max_seq=args.max_seq,
               batch_size=args.batch_size, loss="sampled_softmax", n_negatives=args.negatives)
    rows = []

    def fit_ours():
        t0 = time.perf_counter()
        m = SASRec(**cfg, iterations=1, device=args.device, num_threads=args.threads,
                   random_state=0).fit(data)
        assert m.n_items == V, (m.n_items, V)
        return m, time.perf_counter() - t0

    if cuda:
        with PeakGpuMemory(torch) as mem:
            model, secs = fit_ours()
        ours = mem.peak - mem.base
        n_items = model.n_items
        del model
        gc.collect()
    else:
        before = rss_peak_bytes()
        model, secs = fit_ours()
        ours = rss_peak_bytes() - before
        n_items = model.n_items
        del model
        gc.collect()
    rows.append({"impl": "fastsasrec (1 epoch, estimator fit)", "items": n_items,
                 "peak GiB": ours / GiB, "seconds": secs})

    if args.torch_sessions > 0:
        seqs = sessions[: args.torch_sessions]
        ref_cfg = dict(cfg)
        ref_cfg.pop("batch_size")
        t0 = time.perf_counter()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            with PeakGpuMemory(torch) as mem:
                ref = TorchSASRec(V, **ref_cfg, batch_size=args.batch_size, dropout=0.2,
                                  device="cuda")
                ref.fit(seqs.tolist(), epochs=1)
                torch.cuda.synchronize()
            theirs = mem.peak - mem.base
            alloc = torch.cuda.max_memory_allocated() / GiB
        else:
            before = rss_peak_bytes()
            ref = TorchSASRec(V, **ref_cfg, batch_size=args.batch_size, dropout=0.2)
            ref.fit(seqs.tolist(), epochs=1)
            theirs, alloc = rss_peak_bytes() - before, float("nan")
        rows.append({"impl": f"torch reference ({args.torch_sessions} sessions)", "items": V,
                     "peak GiB": theirs / GiB, "seconds": time.perf_counter() - t0})
        print(f"torch allocator peak (excludes the CUDA context): {alloc:.2f} GiB")

    print(f"\n## Training memory: {V:,} items, factors {args.factors}, max_seq {args.max_seq}, "
          f"batch {args.batch_size}, sampled_softmax {args.negatives}, {args.device}\n")
    print(common.markdown_table(rows, formats={"peak GiB": ".2f", "seconds": ".1f", "items": ","}))
    if cuda:
        total = torch.cuda.mem_get_info()[1]
        print(f"\ncard: {torch.cuda.get_device_name()} with {total / GiB:.1f} GiB; "
              f"fastsasrec peak is {ours / total:.1%} of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
