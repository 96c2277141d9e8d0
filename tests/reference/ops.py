"""Float64 NumPy oracle of every engine op, forward and backward.

Written from the mathematics stated in ``cpp/src/cpu/ops.h`` (dense masked matrices,
whole-array reductions), not from the engine's loops: attention is a block-diagonal
causal mask over all packed rows, the losses are dense logit matrices, scatters are
``np.add.at``.  Inputs are converted to float64; integer arrays are used as indices.

Conventions shared with the engine:
  * item ids are 1..V; row 0 of the item embedding E (shape (V + 1, C)) is padding;
  * sequences are packed: sequence s owns rows cu[s] .. cu[s + 1] - 1;
  * dropout multipliers are ``keep / (1 - p)`` with ``keep = uniform >= p``, where the
    uniforms come from the counter-based generator below (same bits as the engine's).
"""
from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------- RNG
# SplitMix64-style counter generator, reimplemented on Python ints / uint64 arrays.
_MASK64 = (1 << 64) - 1
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_GOLDEN = 0x9E3779B97F4A7C15
_STREAM_SALT = 0x632BE59BD9B4E019
SAMPLER_SALT = 0xA5A5F00DCAFEBEEF
STREAMS_PER_STEP = 1024


def _mix64_int(z: int) -> int:
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _mix64_arr(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer on a uint64 array (wrapping arithmetic)."""
    z = z.astype(np.uint64, copy=True)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def rng_key(seed: int, stream: int) -> int:
    """Key of stream ``stream`` under ``seed`` (a 64-bit int)."""
    return _mix64_int(((seed & _MASK64) * _GOLDEN + _mix64_int(stream + _STREAM_SALT)) & _MASK64)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer on a uint32 array (wrapping arithmetic)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def rng_u32(key: int, counters) -> np.ndarray:
    """uint64 array holding the 32-bit draws of ``counters`` (any shape) in stream ``key``:
    fmix32(fmix32(lo ^ k0) ^ (k1 + hi * 0x9E3779B9)), lo/hi the counter's 32-bit halves,
    k0/k1 the key's."""
    c = np.asarray(counters, dtype=np.uint64)
    lo = (c & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    hi = (c >> np.uint64(32)).astype(np.uint32)
    k0 = np.uint32(key & 0xFFFFFFFF)
    k1 = np.uint32((key >> 32) & 0xFFFFFFFF)
    with np.errstate(over="ignore"):
        h = _fmix32(_fmix32(lo ^ k0) ^ (k1 + hi * np.uint32(0x9E3779B9)))
    return h.astype(np.uint64)


def uniform(key: int, n: int) -> np.ndarray:
    """float32 uniforms in [0, 1) (24 random bits) of counters 0..n-1: shape (n,)."""
    u32 = rng_u32(key, np.arange(n, dtype=np.uint64))
    return ((u32 >> np.uint64(8)).astype(np.float64) / 16777216.0).astype(np.float32)


def dropout_uniform(key: int, n: int, start: int = 0) -> np.ndarray:
    """float32 dropout uniforms in [0, 1) of counters start..start+n-1: shape (n,).  16 bits
    each, two to a 32-bit draw: counter e takes the low half of draw e // 2 when e is even,
    the high half when it is odd; the uniform is that half / 2^16 (exact in float32)."""
    e = np.uint64(start) + np.arange(n, dtype=np.uint64)
    u32 = rng_u32(key, e >> np.uint64(1))
    half = (u32 >> ((e & np.uint64(1)) * np.uint64(16))) & np.uint64(0xFFFF)
    return (half.astype(np.float64) / 65536.0).astype(np.float32)


def rng_int(key: int, counters, lo: int, hi: int) -> np.ndarray:
    """Integers in [lo, hi] by multiply-shift of the 32-bit draws: shape of ``counters``."""
    span = np.uint64(hi - lo + 1)
    return (lo + ((rng_u32(key, counters) * span) >> np.uint64(32)).astype(np.int64))


def dropout_stream(step: int, site: int) -> int:
    """Stream id of dropout site ``site`` at training step ``step``."""
    return step * STREAMS_PER_STEP + site


# ----------------------------------------------------------------------------- dropout
def dropout_multiplier(u: np.ndarray, p: float) -> np.ndarray:
    """Multipliers keep / (1 - p) (float64, shape of ``u``); keep = u >= p in float32, u
    from dropout_uniform.

    ``p`` is the float32 rate the engine sees; p == 0 gives all ones."""
    p32 = np.float32(p)
    if p32 <= 0:
        return np.ones(np.shape(u))
    keep = np.asarray(u, dtype=np.float32) >= p32
    return keep / (1.0 - float(p32))


def dropout_forward(x, mult):
    """out = x * mult (any shape; ``mult`` from dropout_multiplier)."""
    return np.asarray(x, np.float64) * mult


def dropout_backward(dout, mult, relu_out=None):
    """din = dout * mult, times (relu_out > 0) when the ReLU output is given."""
    d = np.asarray(dout, np.float64) * mult
    if relu_out is not None:
        d = np.where(np.asarray(relu_out) > 0, d, 0.0)
    return d


# ----------------------------------------------------------------------------- residual
def residual_forward(a, b):
    """out(n) = a + b."""
    return np.asarray(a, np.float64) + np.asarray(b, np.float64)


def residual_backward(dout):
    """(da, db) = (dout, dout): the gradient reaches both summands unchanged."""
    d = np.asarray(dout, np.float64)
    return d.copy(), d.copy()


# ----------------------------------------------------------------------------- layernorm + residual
def layernorm_residual_forward(a, b, g, beta, eps, mult=None):
    """sum(R, C) = a + b * mult (``mult`` from dropout_multiplier; None: no dropout), then
    layernorm_forward(sum, g, beta, eps).  Returns (sum, out, mean, rstd)."""
    s = residual_forward(a, b if mult is None else dropout_forward(b, mult))
    return (s,) + layernorm_forward(s, g, beta, eps)


def layernorm_residual_backward(dsum, dout, a, b, g, beta, eps, mult=None):
    """(da, db, dg, dbeta) of layernorm_residual_forward, for the gradients dsum reaching
    the sum directly and dout reaching the norm's output: d(sum) = dsum + dLN/dsum goes to
    a unchanged and to b through the dropout."""
    s = layernorm_residual_forward(a, b, g, beta, eps, mult)[0]
    ds, dg, dbeta = layernorm_backward(dout, s, g, eps)
    ds = ds + np.asarray(dsum, np.float64)
    da, db = residual_backward(ds)
    return da, (db if mult is None else dropout_backward(db, mult)), dg, dbeta


# ----------------------------------------------------------------------------- embedding
def embedding_forward(E, P, items, pos, scale, mult=None):
    """x(R, C) = (E[items] * scale + P[pos]) * mult.

    E (V + 1, C), P (T, C), items (R,) in 1..V, pos (R,) in 0..T-1, mult (R, C) or None."""
    x = np.asarray(E, np.float64)[items] * float(scale) + np.asarray(P, np.float64)[pos]
    return x if mult is None else x * mult


def embedding_backward(dx, items, pos, n_rows_E, n_rows_P, scale, mult=None):
    """(dE (n_rows_E, C), dP (n_rows_P, C)): g = dx * mult scattered by items / pos.

    dE[i] = scale * sum of g over the rows holding item i; dP[t] = sum over position t."""
    g = np.asarray(dx, np.float64)
    if mult is not None:
        g = g * mult
    C = g.shape[1]
    dE = np.zeros((n_rows_E, C))
    dP = np.zeros((n_rows_P, C))
    np.add.at(dE, np.asarray(items), float(scale) * g)
    np.add.at(dP, np.asarray(pos), g)
    return dE, dP


# ----------------------------------------------------------------------------- feature bag
def _bag_weights(offsets, mean):
    """Per item: 1 / n_i (mean) or 1 (sum), n_i its number of values (0 values: 1)."""
    n = np.diff(np.asarray(offsets, np.int64))
    return 1.0 / np.maximum(n, 1) if mean else np.ones(len(n))


def id_dropout_site() -> int:
    """The id dropout's site: the last stream of a step (above every layer's)."""
    return STREAMS_PER_STEP - 1


def id_keep(key: int, n_rows: int, p: float) -> np.ndarray:
    """The id-dropout mask m (n_rows,) of 0.0 / 1.0: row i keeps its id embedding when its
    draw (counter i) is >= p in float32; no rescaling.  p == 0 gives all ones."""
    p32 = np.float32(p)
    if p32 <= 0:
        return np.ones(n_rows)
    return (dropout_uniform(key, n_rows) >= p32).astype(np.float64)


def feature_bag_forward(E, F, values, offsets, mean, keep=None):
    """out(V1, C) = keep * E + pool(F[values[offsets[i]:offsets[i + 1]]]) per item i, the
    pool the sum or (mean) the mean; an item with no values keeps keep[i] E[i].  keep: the
    id-dropout mask (id_keep), None for all ones."""
    out = np.array(E, np.float64)
    if keep is not None:
        out *= np.asarray(keep, np.float64)[:, None]
    F = np.asarray(F, np.float64)
    w = _bag_weights(offsets, mean)
    for i in range(len(offsets) - 1):
        vs = np.asarray(values[offsets[i]:offsets[i + 1]])
        if vs.size:
            out[i] += F[vs].sum(axis=0) * w[i]
    return out


def feature_bag_backward(dout, values, offsets, n_values, mean, keep=None):
    """(dE (V1, C), dF (n_values, C)): dE = keep * dout; each item's dout row (times 1 / n_i
    for the mean) added to each of its values' rows of dF (read from the items' lists, not
    from an inverse)."""
    dout = np.asarray(dout, np.float64)
    dF = np.zeros((n_values, dout.shape[1]))
    w = _bag_weights(offsets, mean)
    for i in range(len(offsets) - 1):
        vs = np.asarray(values[offsets[i]:offsets[i + 1]])
        np.add.at(dF, vs, dout[i] * w[i])
    dE = dout.copy() if keep is None else dout * np.asarray(keep, np.float64)[:, None]
    return dE, dF


def layernorm_forward(x, g, b, eps):
    """out(R, C) = (x - mean) / sqrt(var + eps) * g + b (biased variance over C).

    Returns (out (R, C), mean (R,), rstd (R,))."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=1)
    var = ((x - mean[:, None]) ** 2).mean(axis=1)
    rstd = 1.0 / np.sqrt(var + float(eps))
    out = (x - mean[:, None]) * rstd[:, None] * np.asarray(g, np.float64) + np.asarray(b, np.float64)
    return out, mean, rstd


def layernorm_backward(dout, x, g, eps):
    """(dx (R, C), dg (C,), db (C,)) of layernorm_forward, by the chain rule through
    mean and variance (not the folded closed form):
        dxhat = dout * g
        dvar  = sum_c dxhat * (x - mean) * (-1/2) (var + eps)^(-3/2)
        dmean = -sum_c dxhat * rstd + dvar * mean_c(-2 (x - mean))
        dx    = dxhat * rstd + dvar * 2 (x - mean) / C + dmean / C
    """
    x = np.asarray(x, np.float64)
    dout = np.asarray(dout, np.float64)
    g = np.asarray(g, np.float64)
    C = x.shape[1]
    mean = x.mean(axis=1, keepdims=True)
    xc = x - mean
    var = (xc ** 2).mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + float(eps))
    xhat = xc * rstd
    dxhat = dout * g
    dvar = np.sum(dxhat * xc, axis=1, keepdims=True) * (-0.5) * rstd ** 3
    dmean = -np.sum(dxhat, axis=1, keepdims=True) * rstd + dvar * np.mean(-2.0 * xc, axis=1, keepdims=True)
    dx = dxhat * rstd + dvar * 2.0 * xc / C + dmean / C
    dg = np.sum(dout * xhat, axis=0)
    db = np.sum(dout, axis=0)
    return dx, dg, db


# ----------------------------------------------------------------------------- linear
def linear_forward(x, W, b, relu=False, mult=None):
    """out(R, O) = x(R, I) W(I, O) + b(O), then max(., 0) when relu, then times the
    dropout multipliers ``mult`` (R, O) when given."""
    out = np.asarray(x, np.float64) @ np.asarray(W, np.float64) + np.asarray(b, np.float64)
    out = np.maximum(out, 0.0) if relu else out
    return out if mult is None else dropout_forward(out, mult)


def linear_backward(dout, x, W):
    """(dx (R, I), dW (I, O), db (O,)) of the affine map (the ReLU's backward is separate:
    dropout_backward with relu_out, or relu_backward)."""
    dout = np.asarray(dout, np.float64)
    return dout @ np.asarray(W, np.float64).T, np.asarray(x, np.float64).T @ dout, dout.sum(axis=0)


def bf16(x):
    """float32 x rounded to the nearest bfloat16 (ties to even), as float32: what
    precision="bf16" does to the operands of the linear layers' and the softmax losses'
    products."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


_to_bf16 = bf16  # (the name the loss functions reach past their bf16 flag)


def relu_backward(dout, relu_out):
    """dpre = dout * (relu_out > 0)."""
    return np.where(np.asarray(relu_out) > 0, np.asarray(dout, np.float64), 0.0)


# ----------------------------------------------------------------------------- attention
def sequence_of_rows(cu):
    """(seq (R,), start (R,)): the sequence of each packed row and that sequence's first row."""
    cu = np.asarray(cu, np.int64)
    seq = np.repeat(np.arange(len(cu) - 1), np.diff(cu))
    return seq, cu[seq]


def attention_dropout(u, R, H, T, p):
    """Attention dropout multipliers (R, H, T) from the uniforms of counters 0..R*H*T-1:
    entry [i, h, k] is the multiplier of query row i, head h, key row start(i) + k."""
    return dropout_multiplier(np.asarray(u)[: R * H * T].reshape(R, H, T), p)


def attention_weights(Q, K, cu, H, drop=None):
    """(P, M, lse): the softmax probabilities P (H, R, R) of every query row over every key
    row (zero outside the row's causal window), the dropout multipliers M (H, R, R) laid
    out the same way (ones in the window without dropout), and lse (R, H)."""
    _, _, _, P, M, lse, _ = _attention_dense(Q, K, K, cu, H, drop)
    return P, M, lse


def _attention_dense(Q, K, V, cu, H, drop):
    Q, K, V = (np.asarray(a, np.float64) for a in (Q, K, V))
    R, C = Q.shape
    D = C // H
    seq, start = sequence_of_rows(cu)
    rows = np.arange(R)
    allowed = (seq[:, None] == seq[None, :]) & (rows[None, :] <= rows[:, None])  # (R, R)
    Qh = Q.reshape(R, H, D).transpose(1, 0, 2)  # (H, R, D)
    Kh = K.reshape(R, H, D).transpose(1, 0, 2)
    Vh = V.reshape(R, H, D).transpose(1, 0, 2)
    S = np.where(allowed, Qh @ Kh.transpose(0, 2, 1) / np.sqrt(D), -np.inf)  # (H, R, R)
    smax = S.max(axis=2, keepdims=True)
    lse = smax + np.log(np.exp(S - smax).sum(axis=2, keepdims=True))  # (H, R, 1)
    P = np.exp(S - lse)
    if drop is None:
        M = allowed[None].astype(np.float64).repeat(H, axis=0)
    else:
        T = drop.shape[2]
        rel = np.clip(rows[None, :] - start[:, None], 0, T - 1)  # key offset in its sequence
        M = np.where(allowed, drop[rows[:, None], :, rel].transpose(2, 0, 1), 0.0)
    return Qh, Kh, Vh, P, M, lse[..., 0].T, D


def attention_forward(Q, K, V, cu, H, drop=None):
    """Causal multi-head self-attention over packed sequences.

    Q, K, V (R, C) with head h in columns h*D..(h+1)*D-1 (D = C / H); cu (B + 1,) row
    offsets; row i attends to the rows of its own sequence up to i.  drop: None or the
    (R, H, T) multipliers of attention_dropout, applied to the probabilities.
    Returns (O (R, C), lse (R, H)), lse = logsumexp of the scaled scores of each row."""
    Qh, Kh, Vh, P, M, lse, D = _attention_dense(Q, K, V, cu, H, drop)
    R = Qh.shape[1]
    O = (P * M) @ Vh  # (H, R, D)
    return O.transpose(1, 0, 2).reshape(R, -1), lse


def attention_backward(dO, Q, K, V, cu, H, drop=None):
    """(dQ, dK, dV), each (R, C), of attention_forward for the upstream gradient dO (R, C):
        Pd = P * M;  dV = Pd^T dO;  dP = (dO V^T) * M;
        dS = P * (dP - rowsum(P * dP));  dQ = dS K / sqrt(D);  dK = dS^T Q / sqrt(D)."""
    Qh, Kh, Vh, P, M, _, D = _attention_dense(Q, K, V, cu, H, drop)
    R = Qh.shape[1]
    dOh = np.asarray(dO, np.float64).reshape(R, H, D).transpose(1, 0, 2)
    dV = (P * M).transpose(0, 2, 1) @ dOh
    dP = (dOh @ Vh.transpose(0, 2, 1)) * M
    dS = P * (dP - np.sum(P * dP, axis=2, keepdims=True))
    dQ = dS @ Kh / np.sqrt(D)
    dK = dS.transpose(0, 2, 1) @ Qh / np.sqrt(D)
    back = lambda a: a.transpose(1, 0, 2).reshape(R, -1)  # noqa: E731
    return back(dQ), back(dK), back(dV)


# ----------------------------------------------------------------------------- losses
def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _logsumexp(a, axis):
    m = np.max(a, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))).squeeze(axis)


def loss_bce(h, E, targets, negatives, grad_scale):
    """Binary cross-entropy with one negative per row.

    h (R, C), E (V + 1, C), targets (R,), negatives (R,).
    loss(R) = softplus(-h.E[tgt]) + softplus(h.E[neg]);  returns (loss, dh (R, C),
    dE (V + 1, C)) with dh, dE the gradients of grad_scale * sum(loss)."""
    h = np.asarray(h, np.float64)
    E = np.asarray(E, np.float64)
    t, n = np.asarray(targets), np.asarray(negatives)
    sp = np.sum(h * E[t], axis=1)
    sn = np.sum(h * E[n], axis=1)
    loss = _softplus(-sp) + _softplus(sn)
    a = -float(grad_scale) * _sigmoid(-sp)  # d/dsp
    b = float(grad_scale) * _sigmoid(sn)    # d/dsn
    dh = a[:, None] * E[t] + b[:, None] * E[n]
    dE = np.zeros_like(E)
    np.add.at(dE, t, a[:, None] * h)
    np.add.at(dE, n, b[:, None] * h)
    return loss, dh, dE


def sampled_softmax_logits(h, E, targets, negatives, logq=None):
    """(R, 1 + N) logits [h.E[tgt], h.E[neg_1..N]], each less logq[item] when logq (V + 1
    floats) is given, and -inf where neg_j == tgt_r."""
    h = np.asarray(h, np.float64)
    E = np.asarray(E, np.float64)
    t, n = np.asarray(targets), np.asarray(negatives)
    logits = np.concatenate([np.sum(h * E[t], axis=1)[:, None], h @ E[n].T], axis=1)
    if logq is not None:
        lq = np.asarray(logq, np.float64)
        logits -= np.concatenate([lq[t][:, None], np.broadcast_to(lq[n][None, :], (len(t), len(n)))],
                                 axis=1)
    logits[:, 1:] = np.where(n[None, :] == t[:, None], -np.inf, logits[:, 1:])
    return logits


def loss_sampled_softmax(h, E, targets, negatives, grad_scale, logq=None, bf16=False):
    """Sampled softmax with N negatives shared by all rows, logQ-corrected when logq is
    given (Yi et al., RecSys 2019).

    h (R, C), E (V + 1, C), targets (R,), negatives (N,), logq None or (V + 1,).  Logits of
    row r: [h.E[tgt] - logq[tgt], h.E[neg_j] - logq[neg_j]], a negative equal to the row's
    target removed (-inf).  loss(R) = logsumexp(logits) - logits[0];  returns (loss,
    dh (R, C), dE (V + 1, C)), the gradients of grad_scale * sum(loss) (the correction is a
    constant of each logit, so the gradients' form is the plain sampled softmax's).
    bf16: every product's operands rounded to bfloat16 (h, E, and ds before dh and dE)."""
    h, E = _operands(bf16, h, E)
    t, n = np.asarray(targets), np.asarray(negatives)
    Et, En = E[t], E[n]
    logits = sampled_softmax_logits(h, E, t, n, logq)
    lz = _logsumexp(logits, axis=1)
    loss = lz - logits[:, 0]
    ds = np.exp(logits - lz[:, None])
    ds[:, 0] -= 1.0
    ds *= float(grad_scale)
    (ds,) = _operands(bf16, ds)
    dh = ds[:, :1] * Et + ds[:, 1:] @ En
    dE = np.zeros_like(E)
    np.add.at(dE, t, ds[:, :1] * h)
    np.add.at(dE, n, ds[:, 1:].T @ h)
    return loss, dh, dE


def loss_gbce(h, E, targets, negatives, beta, grad_scale):
    """gBCE (Petrov & Macdonald, RecSys 2023) with N negatives per row.

    h (R, C), E (V + 1, C), targets (R,), negatives (R, N): row r's own negatives; one equal
    to the row's target does not count.  With s_pos = h.E[tgt] and s_j = h.E[neg_j]:
    loss(R) = (beta softplus(-s_pos) + sum_j softplus(s_j)) / (1 + N);  returns (loss,
    dh (R, C), dE (V + 1, C)), the gradients of grad_scale * sum(loss)."""
    h = np.asarray(h, np.float64)
    E = np.asarray(E, np.float64)
    t = np.asarray(targets)
    R_ = len(t)
    n = np.asarray(negatives).reshape(R_, -1)
    N = n.shape[1]
    counts = (n != t[:, None]).astype(np.float64)
    sp = np.sum(h * E[t], axis=1)
    sn = np.einsum("rc,rjc->rj", h, E[n])
    loss = (float(beta) * _softplus(-sp) + np.sum(counts * _softplus(sn), axis=1)) / (1 + N)
    g = float(grad_scale) / (1 + N)
    a = -g * float(beta) * _sigmoid(-sp)   # d/ds_pos
    b = g * _sigmoid(sn) * counts          # d/ds_j
    dh = a[:, None] * E[t] + np.einsum("rj,rjc->rc", b, E[n])
    dE = np.zeros_like(E)
    np.add.at(dE, t, a[:, None] * h)
    np.add.at(dE, n.ravel(), (b[:, :, None] * h[:, None, :]).reshape(-1, h.shape[1]))
    return loss, dh, dE


def loss_softmax(h, E, targets, grad_scale, bf16=False):
    """Full softmax cross-entropy over items 1..V.

    h (R, C), E (V + 1, C), targets (R,) in 1..V.
    loss(R) = logsumexp_i h.E[i] - h.E[tgt];  returns (loss, dh (R, C), dE (V + 1, C)),
    the gradients of grad_scale * sum(loss) (row 0 of dE is zero).
    bf16: every product's operands rounded to bfloat16 (h, E, and ds before dh and dE)."""
    h, E = _operands(bf16, h, E)
    t = np.asarray(targets)
    R = h.shape[0]
    logits = h @ E[1:].T  # (R, V)
    lz = _logsumexp(logits, axis=1)
    loss = lz - logits[np.arange(R), t - 1]
    ds = np.exp(logits - lz[:, None])
    ds[np.arange(R), t - 1] -= 1.0
    ds *= float(grad_scale)
    (ds,) = _operands(bf16, ds)
    dE = np.zeros_like(E)
    dE[1:] = ds.T @ h
    return loss, ds @ E[1:], dE


def _operands(bf16, *xs):
    """The arrays as float64 products read them: themselves, or (bf16) each rounded to
    float32 and then to bfloat16."""
    return tuple(np.asarray(_to_bf16(x) if bf16 else x, np.float64) for x in xs)


def loss(kind, h, E, targets, negatives, grad_scale, logq=None, beta=1.0, bf16=False):
    """Dispatch on kind in {'bce', 'sampled_softmax', 'softmax', 'gbce'}: (loss, dh, dE);
    bf16 (the softmax losses): their products on bfloat16 operands."""
    if kind == "bce":
        return loss_bce(h, E, targets, negatives, grad_scale)
    if kind == "sampled_softmax":
        return loss_sampled_softmax(h, E, targets, negatives, grad_scale, logq, bf16)
    if kind == "gbce":
        return loss_gbce(h, E, targets, negatives, beta, grad_scale)
    if kind == "softmax":
        return loss_softmax(h, E, targets, grad_scale, bf16)
    raise ValueError(kind)


# ----------------------------------------------------------------------------- AdamW
def adamw_step(params, grads, m, v, n_decay, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW step (torch.optim.AdamW semantics) on flat arrays of length n.

    The first n_decay entries are decayed: w <- w (1 - lr wd); then with t = step (1-based)
        m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
        w <- w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    Returns (params, m, v) as new float64 arrays."""
    w = np.asarray(params, np.float64).copy()
    g = np.asarray(grads, np.float64)
    m = float(beta1) * np.asarray(m, np.float64) + (1.0 - float(beta1)) * g
    v = float(beta2) * np.asarray(v, np.float64) + (1.0 - float(beta2)) * g * g
    decay = np.arange(w.size) < n_decay
    w = np.where(decay, w * (1.0 - float(lr) * float(weight_decay)), w)
    m_hat = m / (1.0 - float(beta1) ** step)
    v_hat = v / (1.0 - float(beta2) ** step)
    w = w - float(lr) * m_hat / (np.sqrt(v_hat) + float(eps))
    return w, m, v


# ----------------------------------------------------------------------------- top-k
def topk(h, E, exclusions, K):
    """Top-K items 1..V of each row's scores h(B, C) . E[1:]^T, best first.

    exclusions: a list of B iterables of item ids never returned for that row.  Ties go to
    the lower id.  Returns (ids (B, K) int64, scores (B, K) float64); slots beyond the
    items left get id 0 and score -inf."""
    h = np.asarray(h, np.float64)
    E = np.asarray(E, np.float64)
    B, V = h.shape[0], E.shape[0] - 1
    scores = h @ E[1:].T
    ids = np.zeros((B, K), np.int64)
    out = np.full((B, K), -np.inf)
    item_ids = np.arange(1, V + 1)
    for b in range(B):
        ok = np.ones(V, bool)
        ex = np.asarray(list(exclusions[b]), np.int64)
        ok[ex[(ex >= 1) & (ex <= V)] - 1] = False
        cand, s = item_ids[ok], scores[b, ok]
        order = np.lexsort((cand, -s))[:K]  # primary: score descending; then id ascending
        ids[b, : len(order)] = cand[order]
        out[b, : len(order)] = s[order]
    return ids, out


def find_outside(ids, lo, hi):
    """The first index whose id lies outside lo..hi, or len(ids) (an integer op: no
    backward)."""
    bad = np.flatnonzero((ids < lo) | (ids > hi))
    return int(bad[0]) if bad.size else int(ids.size)
