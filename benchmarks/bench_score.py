#!/usr/bin/env python
"""Batch scoring: recommend_batch top-k for many sessions over a large catalogue, against
chunked torch matmul + topk on the same session states and item embeddings, same device.

    python benchmarks/bench_score.py --device cuda --sessions 65536 --items 1000000
    python benchmarks/bench_score.py --device cpu --sessions 4096 --items 100000 --threads 2

The model is untrained (scoring cost does not depend on the weights); both sides exclude
each session's own items and return the top k ids.  fastsasrec's time covers the whole
public call (id mapping, the forward pass, the tiled scoring and top-k); the torch side
gets the session states for free and only scores, masks and selects.
"""
import _env  # noqa: I001  (first: strips OpenBLAS variables before numpy loads)

if __name__ == "__main__":
    _env.strip_openblas_env()

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--sessions", type=int, default=4096)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--session-len", type=int, default=20)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=1024, help="sessions per torch matmul chunk")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per side (median)")
    ap.add_argument("--impl", choices=("both", "fastsasrec"), default="both",
                    help="fastsasrec: our side only (no PyTorch needed)")
    args = ap.parse_args()

    from fastsasrec import SASRec
    rng = np.random.default_rng(0)
    V = args.items
    # A vocabulary of V items: fit with 0 epochs only builds the model.
    vocab = [[i, i + 1] for i in range(1, V + 1, 2)]
    model = SASRec(factors=args.factors, max_seq=50, n_layers=2, loss="sampled_softmax",
                   n_negatives=min(256, V - 1), iterations=0, device=args.device,
                   num_threads=args.threads).fit(vocab)
    S = rng.integers(1, V + 1, size=(args.sessions, args.session_len))
    sessions = S.tolist()
    common.print_machine_info(common.machine_info(args.threads))

    def best_of(fn, reps):
        """The median wall time of `reps` calls after one untimed call (allocations, warm-up)."""
        out = fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times)), out

    t_ours, (ids, _) = best_of(lambda: model.recommend_batch(S, n=args.k), args.repeats)
    t_list, _ = best_of(lambda: model.recommend_batch(sessions, n=args.k), args.repeats)

    rows = [
        {"impl": "fastsasrec recommend_batch (array input)", "sessions/s": args.sessions / t_ours,
         "seconds": t_ours},
        {"impl": "fastsasrec recommend_batch (list input)", "sessions/s": args.sessions / t_list,
         "seconds": t_list},
    ]
    print(f"\n## Batch scoring: top-{args.k} of {V:,} items for {args.sessions:,} sessions, "
          f"factors {args.factors}, {args.device}\n")
    if args.impl == "fastsasrec":
        print(common.markdown_table(rows, formats={"sessions/s": ",.0f", "seconds": ".3f"}))
        return 0

    import torch

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    H = torch.from_numpy(model.session_embeddings(S)).to(dev)
    E = torch.from_numpy(np.ascontiguousarray(model.item_embeddings)).to(dev)
    seen = torch.from_numpy(np.searchsorted(model.item_ids, S)).to(dev)

    def torch_topk():
        out = []
        for lo in range(0, H.shape[0], args.chunk):
            s = H[lo: lo + args.chunk] @ E.T
            s.scatter_(1, seen[lo: lo + args.chunk], float("-inf"))
            out.append(torch.topk(s, args.k, dim=1).indices)
        res = torch.cat(out)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return res

    t_torch, top = best_of(torch_topk, args.repeats)
    agree = float(np.mean(model.item_ids[top.cpu().numpy()] == ids))
    rows.append({"impl": f"torch matmul+topk (chunk {args.chunk}, states given)",
                 "sessions/s": args.sessions / t_torch, "seconds": t_torch})
    print(common.markdown_table(rows, formats={"sessions/s": ",.0f", "seconds": ".3f"}))
    print(f"\nspeed-up {t_torch / t_ours:.2f}x (array input), {t_torch / t_list:.2f}x (list input); "
          f"top-{args.k} ids agree on {agree:.1%} of slots; median of {args.repeats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
