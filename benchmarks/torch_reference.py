"""The reference port: a plain PyTorch SASRec with the model and training procedure
that fastsasrec implements, used as the baseline of the benchmarks.

Model (C = factors, T = max_seq, H = heads, L = layers, V = items; ids 1..V, 0 = padding):

    x = dropout(E[in] * sqrt(C) + P[pos]) * mask            E: (V+1, C), P: (T, C)
    L times:
        q = LN1(x)
        a = CausalMHA(query=q, key=x, value=x) Wo + bo      keys at padding masked out
        x = q + a
        y = LN2(x)
        x = (y + dropout(dropout(relu(y W1 + b1)) W2 + b2)) * mask
    h = LN_f(x);  score(i) = h . E[i]

Sequences are left-padded: the last input item sits at position T-1.
Losses (averaged over the positions whose input and target are both real items): "bce" (one negative per position,
not in the sequence window), "sampled_softmax" (N uniform negatives shared by the
batch, a negative equal to the target is masked out), "softmax" (full catalogue).
Optimizer: AdamW(betas=(0.9, 0.98), eps=1e-8), weight decay on 2-D weights only.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-8
LOSSES = ("bce", "sampled_softmax", "softmax")


class Block(nn.Module):
    def __init__(self, c: int, n_heads: int, dropout: float):
        super().__init__()
        if c % n_heads:
            raise ValueError(f"factors={c} is not divisible by n_heads={n_heads}")
        self.h, self.p = n_heads, dropout
        self.ln1 = nn.LayerNorm(c, eps=LN_EPS)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(c, c) for _ in range(4))
        self.ln2 = nn.LayerNorm(c, eps=LN_EPS)
        self.w1 = nn.Linear(c, c)  # C_ff = C
        self.w2 = nn.Linear(c, c)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, H, T, D)
        b, n, c = t.shape
        return t.view(b, n, self.h, c // self.h).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.ln1(x)
        att = F.scaled_dot_product_attention(
            self._heads(self.wq(q)),
            self._heads(self.wk(x)),  # keys and values come from x, not from LN1(x)
            self._heads(self.wv(x)),
            attn_mask=attn_mask,  # (B, 1, T, T) bool, True = may attend
            dropout_p=self.p if self.training else 0.0,
        )  # scale 1/sqrt(C/H)
        x = q + self.wo(att.transpose(1, 2).reshape(b, n, c))
        y = self.ln2(x)
        f = F.dropout(F.relu(self.w1(y)), self.p, self.training)
        x = y + F.dropout(self.w2(f), self.p, self.training)
        return x * mask


class SASRecNet(nn.Module):
    def __init__(self, n_items: int, factors: int, n_layers: int, n_heads: int, max_seq: int, dropout: float):
        super().__init__()
        self.c, self.t, self.p = factors, max_seq, dropout
        self.item_emb = nn.Embedding(n_items + 1, factors, padding_idx=0)
        self.pos_emb = nn.Embedding(max_seq, factors)
        self.blocks = nn.ModuleList(Block(factors, n_heads, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(factors, eps=LN_EPS)
        self.register_buffer("causal", torch.ones(max_seq, max_seq, dtype=torch.bool).tril(), persistent=False)
        self.register_buffer("eye", torch.eye(max_seq, dtype=torch.bool), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.xavier_normal_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:  # LayerNorm gains
                nn.init.ones_(p)
        self.item_emb.weight[0].zero_()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs (B, T) left-padded internal ids -> h (B, T, C) after the final LayerNorm."""
        real = inputs != 0  # (B, T)
        mask = real.unsqueeze(-1).to(torch.float32)
        x = self.item_emb(inputs) * math.sqrt(self.c) + self.pos_emb.weight
        x = F.dropout(x, self.p, self.training) * mask
        # causal, padding keys masked out; a padding query may attend to itself only
        attn_mask = (self.causal & (real[:, None, :] | self.eye)).unsqueeze(1)
        for blk in self.blocks:
            x = blk(x, attn_mask, mask)
        return self.ln_f(x)


def left_pad(seqs: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """Last `length` items of each sequence, left-padded with 0 to (B, length)."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = list(s)[-length:]
        if s:
            out[i, length - len(s) :] = s
    return out


class TorchSASRec:
    """fit(train_seqs) on lists of internal ids 1..n_items; score_last(contexts) -> (B, V+1)."""

    def __init__(
        self,
        n_items: int,
        factors: int = 64,
        n_layers: int = 2,
        n_heads: int = 1,
        max_seq: int = 50,
        dropout: float = 0.2,
        loss: str = "bce",
        n_negatives: int = 256,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 128,
        random_state: int = 42,
        threads: int | None = None,
        verbose: int = 0,
        device: str = "cpu",
        compile: bool = False,
        autocast_bf16: bool = False,
    ):
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}; expected one of {LOSSES}")
        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(random_state)
        self.n_items, self.max_seq, self.loss = n_items, max_seq, loss
        self.n_negatives, self.batch_size, self.verbose = n_negatives, batch_size, verbose
        self.rng = np.random.default_rng(random_state)
        self.device = torch.device(device)
        self.net = SASRecNet(n_items, factors, n_layers, n_heads, max_seq, dropout).to(self.device)
        # torch.compile'd forward for the GPU comparison (the same module, compiled once)
        self.forward = torch.compile(self.net) if compile else self.net
        decay = [p for p in self.net.parameters() if p.dim() == 2]  # weights and embeddings
        no_decay = [p for p in self.net.parameters() if p.dim() != 2]  # biases, LayerNorm
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=learning_rate,
            betas=(0.9, 0.98),
            eps=1e-8,
        )
        self.epoch_losses: list[float] = []
        self.epoch_times: list[float] = []
        # PyTorch's own bf16: autocast over the forward and the loss (fp32 master weights)
        self.autocast_bf16 = autocast_bf16

    # ------------------------------------------------------------------ training

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device, non_blocking=True)

    def _windows(self, train_seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """(S, T+1): each sequence's last T+1 items w[0..n], left-padded with 0."""
        seqs = [s for s in train_seqs if len(s) >= 2]
        return left_pad(seqs, self.max_seq + 1)

    def _bce_negatives(self, win: np.ndarray, real: np.ndarray) -> np.ndarray:
        """One uniform negative per position, redrawn while it is in the sequence's window."""
        neg = self.rng.integers(1, self.n_items + 1, size=real.shape)
        bad = real & (neg[:, :, None] == win[:, None, :]).any(-1)
        while bad.any():
            neg[bad] = self.rng.integers(1, self.n_items + 1, size=int(bad.sum()))
            bad = real & (neg[:, :, None] == win[:, None, :]).any(-1)
        return neg

    def _loss(self, h: torch.Tensor, win: np.ndarray) -> torch.Tensor:
        tgt_np = win[:, 1:]
        # A training position has a real input and a real target, as the paper's sampler
        # builds them: in a window shorter than max_seq + 1 the first item's position has
        # a padding input, and predicting it from nothing is not part of the model.
        real_np = (tgt_np != 0) & (win[:, :-1] != 0)
        real = self._t(real_np)
        hr = h[real]  # (M, C) real target positions only
        tgt = self._t(tgt_np)[real]  # (M,)
        emb = self.net.item_emb.weight
        if self.loss == "softmax":
            return F.cross_entropy(hr @ emb[1:].T, tgt - 1)
        s_pos = (hr * emb[tgt]).sum(-1)
        if self.loss == "bce":
            neg = self._t(self._bce_negatives(win, real_np))[real]
            s_neg = (hr * emb[neg]).sum(-1)
            return (F.softplus(-s_pos) + F.softplus(s_neg)).mean()
        negs = self._t(self.rng.integers(1, self.n_items + 1, size=self.n_negatives))
        s_neg = (hr @ emb[negs].T).masked_fill(negs[None, :] == tgt[:, None], float("-inf"))
        logits = torch.cat([s_pos[:, None], s_neg], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(tgt), dtype=torch.long, device=self.device))

    def fit(self, train_seqs: Sequence[Sequence[int]], epochs: int) -> "TorchSASRec":
        windows = self._windows(train_seqs)
        self.net.train()
        for ep in range(epochs):
            t0 = time.perf_counter()
            order = self.rng.permutation(len(windows))
            total, nb = 0.0, 0
            for s in range(0, len(order), self.batch_size):
                win = windows[order[s : s + self.batch_size]]
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
                    h = self.forward(self._t(win[:, :-1]))
                    loss = self._loss(h, win)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                total += float(loss.detach())
                nb += 1
            self.epoch_losses.append(total / max(nb, 1))  # (reading the loss synchronises)
            self.epoch_times.append(time.perf_counter() - t0)
            if self.verbose:
                print(f"  epoch {ep + 1}/{epochs}  loss {self.epoch_losses[-1]:.4f}", flush=True)
        return self

    # ------------------------------------------------------------------ inference

    @torch.inference_mode()
    def score_last(self, contexts: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, V+1) scores h_last . E^T from each context's last max_seq items (eval mode)."""
        self.net.eval()
        h = self.net(self._t(left_pad(contexts, self.max_seq)))[:, -1]
        return h @ self.net.item_emb.weight.T

    @torch.inference_mode()
    def topk(self, contexts: Sequence[Sequence[int]], k: int = 10) -> np.ndarray:
        """(B, k) internal ids, best first, padding and each context's items excluded."""
        scores = self.score_last(contexts)
        scores[:, 0] = float("-inf")
        for b, c in enumerate(contexts):
            if len(c):
                scores[b, torch.as_tensor(c, device=self.device)] = float("-inf")
        return scores.topk(k, dim=1).indices.cpu().numpy()

    @property
    def item_embeddings(self) -> np.ndarray:
        return self.net.item_emb.weight.detach()[1:].numpy().copy()
