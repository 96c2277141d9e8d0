"""Float64 NumPy SASRec on one packed batch, built from the reference ops.

Block (as in the engine and the paper's reference code):
    q = LN1(x);  x1 = q + MHA(Q = q Wq + bq, [K | V] = x Wkv + bkv) Wo + bo
    y = LN2(x1); x  = y + drop(drop(relu(y W1 + b1)) W2 + b2)
then h = LN_f(x) and the loss scores h against the (shared) item embedding.
The embedding is x = drop(E[items] * sqrt(C) + P[pos]).  With item features
(n_feature_values > 0, the CSR in cfg["_features"]) E is the fused table E + pool(F[values])
on both sides, and F's gradient is the feature bag's backward of E's.  With id_dropout
p > 0, a training step's fused table is keep * E + pool(F[values]) (keep: ops.id_keep of
the step's stream k * 1024 + 1023), on both sides, and E's gradient is keep * dT.

Dropout masks are those of the engine: site s of step k draws stream k * 1024 + s
(s = 0 embedding; 1 + 3 l attention, 2 + 3 l FFN hidden, 3 + 3 l FFN output of layer l),
keyed by the config's seed.
"""
from __future__ import annotations

import numpy as np

from . import ops

# Defaults of the engine's Config (cpp/include/fastsasrec/config.h).
CONFIG_DEFAULTS = dict(
    factors=64, ffn_factors=0, n_heads=1, n_layers=2, max_seq=50, dropout=0.2,
    loss="sampled_softmax", n_negatives=256, ln_eps=1e-8, seed=42,
    negatives="uniform", logq_correction=False, gbce_t=0.75, n_feature_values=0,
    feature_pooling="mean", id_dropout=0.0,
)


def full_config(cfg: dict) -> dict:
    """cfg completed with the engine's defaults; float fields rounded to float32 (what the
    engine stores), ffn_factors resolved (0 means factors)."""
    c = dict(CONFIG_DEFAULTS)
    c.update(cfg)
    for k in ("dropout", "ln_eps", "id_dropout"):
        c[k] = float(np.float32(c[k]))
    if not c["ffn_factors"]:
        c["ffn_factors"] = c["factors"]
    return c


def tensor_names(cfg: dict) -> list:
    """Names of the parameter tensors of the model, in arena order."""
    L = full_config(cfg)["n_layers"]
    names = ["item_emb", "pos_emb"]
    for l in range(L):
        names += [f"layers.{l}.{n}" for n in
                  ("attn_q.weight", "attn_kv.weight", "attn_out.weight", "ffn1.weight", "ffn2.weight")]
    for l in range(L):
        names += [f"layers.{l}.{n}" for n in
                  ("ln1.weight", "ln1.bias", "attn_q.bias", "attn_kv.bias", "attn_out.bias",
                   "ln2.weight", "ln2.bias", "ffn1.bias", "ffn2.bias")]
    names += ["final_ln.weight", "final_ln.bias"]
    return names + (["F"] if full_config(cfg)["n_feature_values"] else [])


def tensor_shapes(cfg: dict) -> dict:
    """name -> shape of every parameter tensor."""
    c = full_config(cfg)
    V, C, F, T = c["n_items"], c["factors"], c["ffn_factors"], c["max_seq"]
    shapes = {"item_emb": (V + 1, C), "pos_emb": (T, C), "final_ln.weight": (C,), "final_ln.bias": (C,)}
    for l in range(c["n_layers"]):
        p = f"layers.{l}."
        shapes.update({
            p + "attn_q.weight": (C, C), p + "attn_kv.weight": (C, 2 * C), p + "attn_out.weight": (C, C),
            p + "ffn1.weight": (C, F), p + "ffn2.weight": (F, C),
            p + "ln1.weight": (C,), p + "ln1.bias": (C,), p + "attn_q.bias": (C,),
            p + "attn_kv.bias": (2 * C,), p + "attn_out.bias": (C,), p + "ln2.weight": (C,),
            p + "ln2.bias": (C,), p + "ffn1.bias": (F,), p + "ffn2.bias": (C,),
        })
    if c["n_feature_values"]:
        shapes["F"] = (c["n_feature_values"], C)
    return shapes


def id_keep(c, step, train=True):
    """The id-dropout mask (V + 1,) of training step ``step``, or None (no features, p = 0,
    or not training)."""
    if not (train and c["n_feature_values"] and c["id_dropout"] > 0):
        return None
    key = ops.rng_key(c["seed"], ops.dropout_stream(step, ops.id_dropout_site()))
    return ops.id_keep(key, c["n_items"] + 1, c["id_dropout"])


def fused(P, c, keep=None):
    """P with item_emb read as the model reads it: with item features (c["_features"] =
    (values, offsets), the CSR of items 0..V), keep * E + pool(F[each item's values])."""
    if not c["n_feature_values"]:
        return P
    values, offsets = c["_features"]
    return dict(P, item_emb=ops.feature_bag_forward(P["item_emb"], P["F"], values, offsets,
                                                    c["feature_pooling"] == "mean", keep))


def unflatten(flat, tensors) -> dict:
    """Flat arena -> {name: float64 array}; tensors = [(name, offset, shape), ...]."""
    flat = np.asarray(flat)
    return {name: flat[off: off + int(np.prod(shape))].astype(np.float64).reshape(shape)
            for name, off, shape in tensors}


# ----------------------------------------------------------------------------- batches
def target_counts(items, offsets, cfg):
    """(V + 1,) how often each item is a training target: each sequence's last
    min(n - 1, max_seq) items (the sampled softmax's popularity counts)."""
    c = full_config(cfg)
    counts = np.zeros(c["n_items"] + 1, np.int64)
    for s in range(len(offsets) - 1):
        a, b = int(offsets[s]), int(offsets[s + 1])
        n = min(b - a - 1, c["max_seq"])
        np.add.at(counts, np.asarray(items[b - n: b], np.int64), 1)
    return counts


def logq_table(counts, cfg):
    """(V + 1,) log q(item) of the sampler (popularity and in_batch: c_i / total; mixed:
    (N//2 c_i / total + (N - N//2) / V) / N; a count of 0 taken as 0.5), rounded to float32."""
    c = full_config(cfg)
    V, N = c["n_items"], c["n_negatives"]
    w = (N // 2) / N if c["negatives"] == "mixed" else 1.0
    cnt = np.where(np.asarray(counts, np.float64) > 0, counts, 0.5)
    lq = np.log(w * cnt / float(np.sum(counts[1:])) + (1 - w) / V).astype(np.float32)
    lq[0] = 0.0
    return lq


def build_batch(items, offsets, seqs, cfg, step, counts=None):
    """The packed training batch of sequences ``seqs`` (indices into offsets).

    Each sequence (of 2 or more items) contributes its most recent max_seq + 1 items: inputs are all but the last, targets all but the first, positions right-aligned
    (input t of n at T - n + t).  Negatives (stream ``step`` of the sampler key
    rng_key(seed ^ SAMPLER_SALT, step)): bce, one per row, counter r*64 + attempt, redrawn
    while inside the sequence's window (at most 64 draws); sampled_softmax, N shared
    draws of counters 0..N-1; softmax, none.  Returns a dict of int32 arrays."""
    c = full_config(cfg)
    T, V = c["max_seq"], c["n_items"]
    items = np.asarray(items)
    out = {k: [] for k in ("items", "targets", "pos")}
    cu, windows = [0], []
    for s in seqs:
        a, b = int(offsets[s]), int(offsets[s + 1])
        w = min(b - a, T + 1)
        assert w >= 2, f"sequence {s} has {w} items"
        win = items[b - w: b]
        n = w - 1
        out["items"] += list(win[:-1])
        out["targets"] += list(win[1:])
        out["pos"] += list(range(T - n, T))
        windows += [set(win.tolist())] * n
        cu.append(cu[-1] + n)
    key = ops.rng_key(c["seed"] ^ ops.SAMPLER_SALT, step)
    if c["loss"] == "bce":
        negs = []
        for r, seen in enumerate(windows):
            draws = ops.rng_int(key, r * 64 + np.arange(64), 1, V)
            fresh = [d for d in draws if d not in seen]
            negs.append(fresh[0] if fresh else draws[-1])
    elif c["loss"] == "gbce":  # N uniform draws per row, counters r N + j
        negs = list(ops.rng_int(key, np.arange(len(out["targets"]) * c["n_negatives"]), 1, V))
    elif c["loss"] == "sampled_softmax":
        N, R_ = c["n_negatives"], len(out["targets"])
        kind = c["negatives"]
        n_batch = N if kind == "in_batch" else N // 2 if kind == "mixed" else 0
        negs = []
        for j in range(N):
            if j < n_batch:  # one of the batch's targets
                negs.append(out["targets"][int(ops.rng_int(key, [j], 0, R_ - 1)[0])])
            elif kind == "popularity":  # 53 random bits against the cumulative counts
                hi, lo = (int(x) for x in ops.rng_u32(key, [2 * j, 2 * j + 1]))
                u = ((hi << 21) | (lo >> 11)) * 2.0**-53
                cdf = np.cumsum(np.asarray(counts[1:], np.float64))
                negs.append(1 + min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), V - 1))
            else:
                negs.append(int(ops.rng_int(key, [j], 1, V)[0]))
    else:
        negs = []
    res = {k: np.asarray(v, np.int32) for k, v in out.items()}
    res["cu"] = np.asarray(cu, np.int32)
    res["negatives"] = np.asarray(negs, np.int32)
    return res


def dropout_masks(cfg, step, R, train=True):
    """Dropout multipliers of every site for a batch of R rows at step ``step``:
    {'emb': (R, C), 'attn': [(R, H, T)] * L, 'ffn_hidden': [(R, F)] * L,
     'ffn_out': [(R, C)] * L}; all ones (None for attention) when not training."""
    c = full_config(cfg)
    C, F, H, T, L = c["factors"], c["ffn_factors"], c["n_heads"], c["max_seq"], c["n_layers"]
    p = c["dropout"] if train else 0.0

    def draw(site, shape):
        n = int(np.prod(shape))
        if p <= 0:
            return np.ones(shape)
        u = ops.dropout_uniform(ops.rng_key(c["seed"], ops.dropout_stream(step, site)), n)
        return ops.dropout_multiplier(u.reshape(shape), p)

    return {
        "emb": draw(0, (R, C)),
        "attn": [draw(1 + 3 * l, (R, H, T)) if p > 0 else None for l in range(L)],
        "ffn_hidden": [draw(2 + 3 * l, (R, F)) for l in range(L)],
        "ffn_out": [draw(3 + 3 * l, (R, C)) for l in range(L)],
    }


# ----------------------------------------------------------------------------- model
def _forward(P, items, pos, cu, c, masks):
    """The forward pass up to the final layernorm: (h (R, C), saved per layer, x_L)."""
    C, H, L, eps = c["factors"], c["n_heads"], c["n_layers"], c["ln_eps"]
    scale = np.sqrt(C)
    x = ops.embedding_forward(P["item_emb"], P["pos_emb"], items, pos, scale, masks["emb"])
    saved = []
    for l in range(L):
        w = lambda n: P[f"layers.{l}.{n}"]  # noqa: E731
        q, _, _ = ops.layernorm_forward(x, w("ln1.weight"), w("ln1.bias"), eps)
        Qp = ops.linear_forward(q, w("attn_q.weight"), w("attn_q.bias"))
        KV = ops.linear_forward(x, w("attn_kv.weight"), w("attn_kv.bias"))
        att, _ = ops.attention_forward(Qp, KV[:, :C], KV[:, C:], cu, H, masks["attn"][l])
        x1 = ops.residual_forward(q, ops.linear_forward(att, w("attn_out.weight"), w("attn_out.bias")))
        y, _, _ = ops.layernorm_forward(x1, w("ln2.weight"), w("ln2.bias"), eps)
        f1 = ops.linear_forward(y, w("ffn1.weight"), w("ffn1.bias"), relu=True)
        f1d = ops.dropout_forward(f1, masks["ffn_hidden"][l])
        t = ops.dropout_forward(ops.linear_forward(f1d, w("ffn2.weight"), w("ffn2.bias")), masks["ffn_out"][l])
        saved.append(dict(x=x, q=q, Qp=Qp, KV=KV, att=att, x1=x1, y=y, f1=f1, f1d=f1d))
        x = ops.residual_forward(y, t)
    h, _, _ = ops.layernorm_forward(x, P["final_ln.weight"], P["final_ln.bias"], eps)
    return h, saved, x


def hidden_states(params, items, pos, cu, cfg):
    """Evaluation-mode (no dropout) final hidden states h (R, C) of a packed batch."""
    c = full_config(cfg)
    P = fused({k: np.asarray(v, np.float64) for k, v in params.items()}, c)
    masks = dropout_masks(c, 0, len(items), train=False)
    return _forward(P, np.asarray(items), np.asarray(pos), np.asarray(cu), c, masks)[0]


def forward_backward(params, batch, cfg, step, train=True, grad=True):
    """Mean loss over the R rows of ``batch`` and, when grad, its gradient.

    params: {name: array} (shapes of tensor_shapes); batch: dict of items, targets, pos
    (R,), cu (B + 1,), negatives (R for bce, N for sampled_softmax, 0 for softmax).
    Returns (loss: float, grads: {name: float64 array} or None)."""
    c = full_config(cfg)
    C, H, L, eps = c["factors"], c["n_heads"], c["n_layers"], c["ln_eps"]
    P0 = {k: np.asarray(v, np.float64) for k, v in params.items()}
    keep = id_keep(c, step, train)
    P = fused(P0, c, keep)  # with features, item_emb is the fused table and its gradient dT
    items, pos, cu = (np.asarray(batch[k]) for k in ("items", "pos", "cu"))
    targets, negatives = np.asarray(batch["targets"]), np.asarray(batch["negatives"])
    R = len(items)
    masks = dropout_masks(c, step, R, train)
    scale = np.sqrt(C)

    # ---- forward, keeping what the backward needs
    h, saved, x = _forward(P, items, pos, cu, c, masks)
    logq = None
    if c["loss"] == "sampled_softmax" and c["negatives"] != "uniform" and c["logq_correction"]:
        logq = logq_table(c["_counts"], c)
    N = c["n_negatives"]
    beta = 1.0
    if c["loss"] == "gbce":  # alpha = N / (V - 1);  beta = alpha (t (1 - 1/alpha) + 1/alpha)
        alpha = N / max(1, c["n_items"] - 1)
        beta = float(np.float32(alpha * (np.float32(c["gbce_t"]) * (1 - 1 / alpha) + 1 / alpha)))
    per_row, dh, dE_loss = ops.loss(c["loss"], h, P["item_emb"], targets, negatives, 1.0 / R,
                                    logq=logq, beta=beta)
    mean_loss = float(np.mean(per_row))
    if not grad:
        return mean_loss, None

    # ---- backward
    G = {k: np.zeros_like(v) for k, v in P0.items()}
    dx, G["final_ln.weight"], G["final_ln.bias"] = ops.layernorm_backward(
        dh, x, P["final_ln.weight"], eps)
    for l in reversed(range(L)):
        s = saved[l]
        pre = f"layers.{l}."
        w = lambda n: P[pre + n]  # noqa: E731
        # x_out = y + drop_out(drop_hidden(relu(y W1 + b1)) W2 + b2)
        dy_res, dt = ops.residual_backward(dx)
        dt = ops.dropout_backward(dt, masks["ffn_out"][l])
        df1d, G[pre + "ffn2.weight"], G[pre + "ffn2.bias"] = ops.linear_backward(dt, s["f1d"], w("ffn2.weight"))
        df1 = ops.dropout_backward(df1d, masks["ffn_hidden"][l], relu_out=s["f1"])
        dy, G[pre + "ffn1.weight"], G[pre + "ffn1.bias"] = ops.linear_backward(df1, s["y"], w("ffn1.weight"))
        dy = dy + dy_res
        dx1, G[pre + "ln2.weight"], G[pre + "ln2.bias"] = ops.layernorm_backward(dy, s["x1"], w("ln2.weight"), eps)
        # x1 = q + att Wo + bo
        dq_res, dproj = ops.residual_backward(dx1)
        datt, G[pre + "attn_out.weight"], G[pre + "attn_out.bias"] = ops.linear_backward(
            dproj, s["att"], w("attn_out.weight"))
        dQp, dK, dV = ops.attention_backward(datt, s["Qp"], s["KV"][:, :C], s["KV"][:, C:], cu, H,
                                             masks["attn"][l])
        dq, G[pre + "attn_q.weight"], G[pre + "attn_q.bias"] = ops.linear_backward(dQp, s["q"], w("attn_q.weight"))
        dq = dq + dq_res
        dx_kv, G[pre + "attn_kv.weight"], G[pre + "attn_kv.bias"] = ops.linear_backward(
            np.concatenate([dK, dV], axis=1), s["x"], w("attn_kv.weight"))
        dx_ln, G[pre + "ln1.weight"], G[pre + "ln1.bias"] = ops.layernorm_backward(dq, s["x"], w("ln1.weight"), eps)
        dx = dx_kv + dx_ln
    dE_emb, G["pos_emb"] = ops.embedding_backward(dx, items, pos, P["item_emb"].shape[0],
                                                  P["pos_emb"].shape[0], scale, masks["emb"])
    G["item_emb"] = dE_emb + dE_loss
    if c["n_feature_values"]:
        values, offsets = c["_features"]
        G["item_emb"], G["F"] = ops.feature_bag_backward(G["item_emb"], values, offsets,
                                                         c["n_feature_values"],
                                                         c["feature_pooling"] == "mean", keep)
    return mean_loss, G


# ----------------------------------------------------------------------------- FD check
def finite_difference_check(f, params, grads, rng, n_coords=None, eps=1e-6):
    """Central-difference check of ``grads`` = d f / d params.

    f: callable(params dict) -> float; params, grads: {name: float64 array}.  For every
    tensor, n_coords coordinates drawn by ``rng`` (all when None or when the tensor is
    smaller) are perturbed by +-eps.  Returns a list of (name, flat index, analytic,
    numeric) tuples for the caller to judge."""
    out = []
    for name, p in params.items():
        flat = p.reshape(-1)
        assert np.shares_memory(flat, p), f"{name}: pass C-contiguous arrays (perturbed in place)"
        idx = np.arange(flat.size)
        if n_coords is not None and flat.size > n_coords:
            idx = rng.choice(flat.size, size=n_coords, replace=False)
        for i in idx:
            keep = flat[i]
            flat[i] = keep + eps
            fp = f(params)
            flat[i] = keep - eps
            fm = f(params)
            flat[i] = keep
            out.append((name, int(i), float(grads[name].reshape(-1)[i]), (fp - fm) / (2 * eps)))
    return out
