"""The peer server of bench_serve.py: FastAPI on uvicorn around the PyTorch reference model
(torch_reference.py), eager, under torch.inference_mode(), answering the same request as
`fastsasrec serve`'s POST /v1/recommend: {session, n, exclude, keep_seen} ->
{items, scores, model}.  What a team would write around a PyTorch SASRec by hand.

    python benchmarks/torch_server.py --items 1682 --port 8001 [--threads 1]

The weights are the reference's initialisation (latency does not depend on them); item
ids are 1..items.
"""
import argparse
import os
import sys

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as tr  # noqa: E402


class Ask(BaseModel):
    session: list[int]
    n: int = 10
    exclude: list[int] = []
    keep_seen: bool = False


def build(n_items: int, factors: int, max_seq: int) -> FastAPI:
    model = tr.TorchSASRec(n_items, factors=factors, n_layers=2, n_heads=1, max_seq=max_seq,
                           dropout=0.2, threads=None)
    net = model.net.eval()
    emb = net.item_emb.weight
    app = FastAPI()

    @app.post("/v1/recommend")
    def recommend(ask: Ask):  # a plain def: FastAPI runs it in its thread pool
        idx = [i for i in ask.session if 1 <= i <= n_items][-max_seq:]
        n = max(1, min(ask.n, n_items))
        with torch.inference_mode():
            if idx:
                x = torch.zeros(1, max_seq, dtype=torch.long)
                x[0, max_seq - len(idx):] = torch.tensor(idx)
                scores = net(x)[0, -1] @ emb.T
            else:
                scores = torch.zeros(n_items + 1)
            scores[0] = float("-inf")
            drop = ([] if ask.keep_seen else idx) + [i for i in ask.exclude if 1 <= i <= n_items]
            if drop:
                scores[drop] = float("-inf")
            top = scores.topk(n)
        return {"items": top.indices.tolist(), "scores": top.values.tolist(), "model": "torch"}

    @app.get("/healthz")
    def healthz():
        return "ok"

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, required=True)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--max-seq", type=int, default=50)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    uvicorn.run(build(args.items, args.factors, args.max_seq), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
