#!/usr/bin/env python
"""The PyTorch reference (torch_reference.py) and fastsasrec's engine, run in lockstep:
the same initial weights (the engine's, copied into the reference), the same batches of
ML-100K sequences, dropout 0 (the two draw their masks differently), full softmax, AdamW.
Prints the two losses and the largest difference of the item embeddings at some steps:
the ratios in BENCHMARKS.md compare one model and one training procedure only if these
agree.

    python benchmarks/check_reference_lockstep.py [--steps 30] [--threads 2]
"""
import _env  # noqa: I001  (first: strips OpenBLAS variables before numpy loads)

if __name__ == "__main__":
    _env.strip_openblas_env()

import argparse  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402
import torch_reference as tr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=None)
    args = ap.parse_args()
    from fastsasrec import _core

    torch.set_num_threads(args.threads)
    ds = common.load_ml100k(args.data)
    seqs = [s for s in ds.contexts if len(s) >= 2]
    V, C, T = ds.n_items, common.CONFIG["factors"], common.CONFIG["max_seq"]
    cfg = dict(n_items=V, factors=C, n_heads=1, n_layers=2, max_seq=T, dropout=0.0, loss="softmax",
               learning_rate=1e-3, weight_decay=0.0, batch_size=128, seed=42)
    eng = _core.Model(cfg, "cpu", threads=args.threads)
    flat = eng.get_params()
    where = {n: (o, tuple(s)) for n, o, s in eng.tensors()}

    def param(name):
        o, s = where[name]
        return torch.from_numpy(flat[o:o + int(np.prod(s))].reshape(s).copy())

    ref = tr.TorchSASRec(V, factors=C, n_layers=2, n_heads=1, max_seq=T, dropout=0.0, loss="softmax",
                         threads=args.threads)
    net = ref.net
    with torch.no_grad():  # the engine's linear weights are (in, out); torch's (out, in)
        net.item_emb.weight.copy_(param("item_emb"))
        net.pos_emb.weight.copy_(param("pos_emb"))
        net.ln_f.weight.copy_(param("final_ln.weight"))
        net.ln_f.bias.copy_(param("final_ln.bias"))
        for l, b in enumerate(net.blocks):
            p = lambda n: param(f"layers.{l}.{n}")  # noqa: E731
            b.ln1.weight.copy_(p("ln1.weight")); b.ln1.bias.copy_(p("ln1.bias"))  # noqa: E702
            b.ln2.weight.copy_(p("ln2.weight")); b.ln2.bias.copy_(p("ln2.bias"))  # noqa: E702
            b.wq.weight.copy_(p("attn_q.weight").T); b.wq.bias.copy_(p("attn_q.bias"))  # noqa: E702
            kv, kvb = p("attn_kv.weight"), p("attn_kv.bias")
            b.wk.weight.copy_(kv[:, :C].T); b.wk.bias.copy_(kvb[:C])  # noqa: E702
            b.wv.weight.copy_(kv[:, C:].T); b.wv.bias.copy_(kvb[C:])  # noqa: E702
            b.wo.weight.copy_(p("attn_out.weight").T); b.wo.bias.copy_(p("attn_out.bias"))  # noqa: E702
            b.w1.weight.copy_(p("ffn1.weight").T); b.w1.bias.copy_(p("ffn1.bias"))  # noqa: E702
            b.w2.weight.copy_(p("ffn2.weight").T); b.w2.bias.copy_(p("ffn2.bias"))  # noqa: E702
    items = np.concatenate([np.asarray(s, np.int32) for s in seqs])
    offsets = np.concatenate(([0], np.cumsum([len(s) for s in seqs]))).astype(np.int64)
    o, s = where["item_emb"]
    rng = np.random.default_rng(0)
    net.train()
    worst = 0.0
    print("| step | engine loss | reference loss | max abs item-embedding difference |")
    print("|---|---|---|---|")
    for step in range(1, args.steps + 1):
        idx = rng.choice(len(seqs), 128, replace=False).astype(np.int64)
        b = eng.build_batch(items, offsets, idx, step)
        le = eng.forward_backward(b["items"], b["targets"], b["pos"], b["cu"], b["negatives"],
                                  train=True, grad=True, step=step)
        eng.optimizer_step()
        win = tr.left_pad([seqs[i][-(T + 1):] for i in idx], T + 1)
        lt = ref._loss(ref.forward(ref._t(win[:, :-1])), win)
        ref.opt.zero_grad(set_to_none=True)
        lt.backward()
        ref.opt.step()
        dE = float(np.abs(eng.get_params()[o:o + int(np.prod(s))].reshape(s)
                          - net.item_emb.weight.detach().numpy()).max())
        worst = max(worst, abs(le - float(lt.detach())) / abs(le))
        if step in (1, 2, 5, 10, 20) or step == args.steps:
            print(f"| {step} | {le:.6f} | {float(lt.detach()):.6f} | {dE:.2e} |")
    print(f"\nlargest relative loss difference over {args.steps} steps: {worst:.2e}")


if __name__ == "__main__":
    main()
