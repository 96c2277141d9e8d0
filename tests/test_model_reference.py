"""The whole engine model (fastsasrec._core.Model) against the float64 reference model
(tests/reference/model.py) on tiny configurations:

  (a) golden: the loss and every parameter gradient of one training step (dropout on,
      step 3) match the reference given the same parameters and the same dropout masks;
  (b) the reference model's own gradients pass a float64 finite-difference check;
  (c) the engine's gradients pass a float32 directional finite-difference check on the
      engine alone (the dropout masks are fixed by the step, so the loss is a fixed
      function of the parameters).
"""
import numpy as np
import pytest

import fastsasrec
from reference import model as RM

CORE = fastsasrec._core
LOSSES = ["bce", "sampled_softmax", "softmax", "gbce", "sampled_softmax_mixed",
          "sampled_softmax_popularity", "sampled_softmax_in_batch"]
# Each case's engine configuration: the loss and its sampler (the sampled softmax's
# non-uniform negatives with the logQ correction, gbce with a calibration t < 1).
LOSS_CFG = {
    "bce": dict(loss="bce"), "sampled_softmax": dict(loss="sampled_softmax"),
    "softmax": dict(loss="softmax"), "gbce": dict(loss="gbce", gbce_t=0.5, n_negatives=3),
    "sampled_softmax_mixed": dict(loss="sampled_softmax", negatives="mixed", logq_correction=True),
    "sampled_softmax_popularity": dict(loss="sampled_softmax", negatives="popularity",
                                       logq_correction=True),
    "sampled_softmax_in_batch": dict(loss="sampled_softmax", negatives="in_batch",
                                     logq_correction=False),
}
STEP = 3

GOLDEN = dict(n_items=11, factors=12, n_heads=2, n_layers=2, max_seq=6, dropout=0.3,
              n_negatives=5, seed=7)
CONFIGS = {  # name -> overrides of GOLDEN
    "golden": {},
    "ffn7-h4-l1": dict(n_heads=4, n_layers=1, ffn_factors=7, dropout=0.2, max_seq=5),  # D = 3
    "l0": dict(n_layers=0),                                  # embedding -> final norm -> loss
    "c13-h1-nodrop": dict(factors=13, n_heads=1, dropout=0.0, max_seq=4, ln_eps=1e-5),
}

# Sequences of item ids 1..11: a 2-item sequence (one packed row, T = 1 attention), a
# 1-item sequence (which build_batch refuses: fit drops such sequences before the engine
# sees them), one longer than max_seq + 1 (truncated to its most recent items), repeated
# items (the embedding scatter accumulates).
SEQUENCES = [[3, 3, 5, 1, 2, 9, 10, 4, 4], [7, 2], [6], [1, 2, 3], [11, 1, 5, 6, 7, 8], [5, 5, 5, 2]]


TRAINABLE = np.array([i for i, s in enumerate(SEQUENCES) if len(s) >= 2], np.int64)


def _flat_sequences():
    items = np.concatenate(SEQUENCES).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in SEQUENCES])]).astype(np.int64)
    return items, offsets


def _counts(cfg):
    """The trainable sequences' target counts (the popularity samplers' and logQ's)."""
    items, offsets = _flat_sequences()
    keep = np.concatenate([[0], np.cumsum([len(SEQUENCES[i]) for i in TRAINABLE])]).astype(np.int64)
    flat = np.concatenate([SEQUENCES[i] for i in TRAINABLE]).astype(np.int32)
    return RM.target_counts(flat, keep, cfg)


def _setup(config_name, loss, seed):
    """(model, cfg, batch, float32 params): the model's initial parameters plus noise (so
    biases and layernorm gains are not trivially 0 / 1), and a batch from build_batch.
    cfg carries the target counts (key _counts) the reference needs for the logQ table."""
    cfg = dict(GOLDEN, **CONFIGS[config_name], **LOSS_CFG[loss])
    model = CORE.Model(cfg)
    rng = np.random.default_rng(seed)
    params = (model.get_params() + 0.1 * rng.standard_normal(model.n_params)).astype(np.float32)
    model.set_params(params)
    counts = _counts(cfg)
    model.set_target_counts(counts)
    items, offsets = _flat_sequences()
    batch = model.build_batch(items, offsets, TRAINABLE, STEP)
    return model, dict(cfg, _counts=counts), batch, params


def _run(model, batch, train, grad, step=STEP):
    return model.forward_backward(batch["items"], batch["targets"], batch["pos"], batch["cu"],
                                  batch["negatives"], train=train, grad=grad, step=step)


# --------------------------------------------------------------------------- batches
@pytest.mark.parametrize("loss", LOSSES)
def test_build_batch_matches_reference(loss):
    cfg = dict(GOLDEN, **LOSS_CFG[loss])
    model = CORE.Model(cfg)
    items, offsets = _flat_sequences()
    counts = _counts(cfg)
    flat = np.concatenate([SEQUENCES[i] for i in TRAINABLE]).astype(np.int32)
    starts = np.concatenate([[0], np.cumsum([len(SEQUENCES[i]) for i in TRAINABLE])]).astype(np.int64)
    np.testing.assert_array_equal(model.target_counts(flat, starts), counts)
    model.set_target_counts(counts)
    seqs = np.array([4, 0, 1, 3, 5], np.int64)  # any order
    with pytest.raises(ValueError, match="sequence 2 has 1 items; a training sequence needs 2"):
        model.build_batch(items, offsets, np.array([4, 2], np.int64), 1)
    for step in (1, STEP, 1000):
        got = model.build_batch(items, offsets, seqs, step)
        ref = RM.build_batch(items, offsets, seqs, cfg, step, counts)
        for k in ("items", "targets", "pos", "cu", "negatives"):
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{loss} step {step}: {k}")
    assert np.diff(got["cu"]).min() == 1, "the 2-item sequence must give a 1-row sequence"
    assert np.diff(got["cu"]).max() == cfg["max_seq"], "the long sequence must be truncated"


# --------------------------------------------------------------------------- (a) golden
# Tolerances of the float32 engine against the float64 reference, for these tiny models
# (reductions of <= 2C = 26 terms, two layers):
#  * the mean loss: 1e-6 relative.  Every op's float32 error is <= 4 (n + 4) u ~ 7e-6 of
#    its magnitude (test_ops), but these errors are independent roundings that largely
#    average out in a mean over R rows; the observed difference is ~1e-8 relative.
#  * each gradient tensor: 3e-5 of the tensor's largest entry.  Gradients are sums over
#    rows whose small entries come from cancellation, so an entrywise relative
#    tolerance would be meaningless; the scale is the tensor's magnitude.  The backward
#    chains ~15 ops per layer, each within ~4e-6 of its magnitude; the observed worst is
#    ~2e-6, a 15x margin.  A wrong mask, scale, eps, or a missing term moves entries by
#    1e-3 or more of the tensor's scale.
LOSS_RTOL = 1e-6
GRAD_RTOL = 3e-5

GOLDEN_CASES = [(c, l, True) for c in CONFIGS for l in LOSSES] + [("golden", l, False) for l in LOSSES]


@pytest.mark.parametrize("config_name,loss,train", GOLDEN_CASES,
                         ids=[f"{c}-{l}-{'train' if t else 'eval'}" for c, l, t in GOLDEN_CASES])
def test_golden_loss_and_gradients(config_name, loss, train):
    seed = 1000 + 10 * list(CONFIGS).index(config_name) + LOSSES.index(loss)
    model, cfg, batch, _ = _setup(config_name, loss, seed)
    tensors = model.tensors()
    got_loss = _run(model, batch, train=train, grad=True)
    got = RM.unflatten(model.get_grads(), tensors)
    params = RM.unflatten(model.get_params(), tensors)
    assert [t[0] for t in tensors] == RM.tensor_names(cfg), "tensor names / order"
    shapes = RM.tensor_shapes(cfg)
    assert all(tuple(t[2]) == shapes[t[0]] for t in tensors), "tensor shapes"

    ref_loss, ref = RM.forward_backward(params, batch, cfg, STEP, train=train, grad=True)
    assert abs(got_loss - ref_loss) <= LOSS_RTOL * abs(ref_loss), (
        f"{config_name}/{loss}: loss {got_loss!r} vs reference {ref_loss!r} (seed {seed})")
    for name, _, _ in tensors:
        scale = np.abs(ref[name]).max()
        err = np.abs(got[name] - ref[name])
        i = np.unravel_index(np.argmax(err), err.shape)
        assert err.max() <= GRAD_RTOL * scale + 1e-12, (
            f"{config_name}/{loss}: gradient of {name} at {i}: engine {got[name][i]!r}, "
            f"reference {ref[name][i]!r}, |err| {err.max():.3e} > {GRAD_RTOL} x {scale:.3e} (seed {seed})")
    assert not got["item_emb"][0].any(), "gradient of the padding row"
    if loss != "softmax":  # items in no input, target or negative get exactly no gradient
        used = set(batch["items"]) | set(batch["targets"]) | set(batch["negatives"])
        unused = [i for i in range(1, cfg["n_items"] + 1) if i not in used]
        assert not got["item_emb"][unused].any(), f"gradient on untouched items {unused}"


def test_forward_only_leaves_gradients_and_matches_training_loss():
    model, cfg, batch, _ = _setup("golden", "sampled_softmax", 1100)
    train_loss = _run(model, batch, train=True, grad=True)
    grads = model.get_grads()
    assert _run(model, batch, train=True, grad=False) == train_loss, "same step, same masks"
    np.testing.assert_array_equal(model.get_grads(), grads)
    other = _run(model, batch, train=True, grad=False, step=STEP + 1)
    assert other != train_loss, "another step must draw other dropout masks"


def test_repeatable_and_independent_of_earlier_batches():
    """Same thread count, same inputs: bit-identical loss and gradients, also after a
    larger batch has grown (and dirtied) the activation arenas."""
    model, cfg, batch, params = _setup("golden", "sampled_softmax", 1200)
    loss1 = _run(model, batch, train=True, grad=True)
    grads1 = model.get_grads()
    items, offsets = _flat_sequences()
    n = len(items)
    big_offsets = np.concatenate([offsets[:-1] + k * n for k in range(5)] + [[5 * n]]).astype(np.int64)
    big = model.build_batch(np.tile(items, 5), big_offsets,
                            np.concatenate([TRAINABLE + k * len(SEQUENCES) for k in range(5)]),
                            STEP + 1)
    assert len(big["items"]) > len(batch["items"])
    _run(model, big, train=True, grad=True, step=STEP + 1)
    assert _run(model, batch, train=True, grad=True) == loss1
    np.testing.assert_array_equal(model.get_grads(), grads1)


# --------------------------------------------------------------------------- (b) reference FD
@pytest.mark.parametrize("loss", LOSSES)
def test_reference_model_finite_differences(loss):
    seed = 2000 + LOSSES.index(loss)
    model, cfg, batch, _ = _setup("golden", loss, seed)
    params = {k: np.ascontiguousarray(v) for k, v in RM.unflatten(model.get_params(), model.tensors()).items()}
    _, grads = RM.forward_backward(params, batch, cfg, STEP, train=True, grad=True)
    f = lambda p: RM.forward_backward(p, batch, cfg, STEP, train=True, grad=False)[0]  # noqa: E731
    results = RM.finite_difference_check(f, params, grads, np.random.default_rng(seed), n_coords=4, eps=1e-6)
    # float64 central differences, eps = 1e-6: truncation ~eps^2 |f'''| ~ 1e-12 and rounding
    # ~1e-16 |f| / eps ~ 3e-10; 1e-6 relative + 1e-8 absolute is well above both, and far
    # below any real error in a gradient formula.  (A ReLU kink within 1e-6 of a sampled
    # coordinate would break the check; with these fixed seeds none is.)
    for name, i, an, num in results:
        assert abs(an - num) <= 1e-6 * abs(num) + 1e-8, (
            f"{loss}: reference gradient of {name}[{i}] = {an!r}, finite difference {num!r} (seed {seed})")


# --------------------------------------------------------------------------- (c) engine FD
# Directional central differences of the float32 engine, one random unit direction per
# parameter tensor and one over all parameters.  The perturbed parameters are rounded to
# float32, so the directional derivative is compared on the perturbation actually applied:
#     L(theta + Delta/2) - L(theta - Delta/2)  vs  g . Delta,  Delta = fl(theta + eps d) - fl(theta - eps d).
# eps = 1e-3 balances the float32 evaluation error of the loss (~1e-8 |L| measured in (a),
# so <= ~3e-5 after dividing by 2 eps) against truncation (eps^2 |L'''| / 6) and against
# ReLU units crossing zero inside [-eps, eps]: at eps = 3e-3 a crossing in the bce case
# moved the quotient by 3% (0.1266 at eps 3e-3, 0.13053 at 1e-3, 0.13042 at 3e-4, against
# the gradient's 0.13048), so the step is kept below that.  Allowed: 1% of |g . Delta| / (2 eps) plus 2e-4 absolute; the
# observed worst is ~10% of that allowance.
FD32_EPS = 1e-3


def _smooth_over_the_step(ref_loss, theta64, d, tol):
    """Whether the float64 reference is differentiable along d over the float32 step: its
    central difference at FD32_EPS agrees with one at 1e-6 (a ReLU of the feed-forward
    layer whose input crosses 0 within the step breaks that, whatever the gradient)."""
    wide = (ref_loss(theta64 + FD32_EPS * d) - ref_loss(theta64 - FD32_EPS * d)) / (2 * FD32_EPS)
    narrow = (ref_loss(theta64 + 1e-6 * d) - ref_loss(theta64 - 1e-6 * d)) / 2e-6
    return abs(wide - narrow) <= tol(narrow)


@pytest.mark.parametrize("loss", LOSSES)
def test_engine_directional_finite_differences(loss):
    seed = 3000 + LOSSES.index(loss)
    model, cfg, batch, theta = _setup("golden", loss, seed)
    _run(model, batch, train=True, grad=True)
    g = model.get_grads().astype(np.float64)
    rng = np.random.default_rng(seed)
    theta64 = theta.astype(np.float64)
    tensors = model.tensors()
    ref_loss = lambda p: RM.forward_backward(RM.unflatten(p, tensors), batch, cfg, STEP,  # noqa: E731
                                             train=True, grad=False)[0]
    tol = lambda an: 1e-2 * abs(an) + 2e-4  # noqa: E731

    def direction(lo, n):
        """A random unit direction in [lo, lo + n) along which the model is smooth over
        the step (redrawn, at most 10 times, when a ReLU kink lies within it)."""
        for _ in range(10):
            d = np.zeros(model.n_params)
            d[lo: lo + n] = rng.standard_normal(n)
            d /= np.linalg.norm(d)
            if _smooth_over_the_step(ref_loss, theta64, d, tol):
                return d
        raise AssertionError(f"{loss}: no smooth direction in 10 draws (seed {seed})")

    directions = [(name, direction(off, int(np.prod(shape)))) for name, off, shape in tensors]
    directions.append(("all parameters", direction(0, model.n_params)))
    for name, d in directions:
        plus = (theta64 + FD32_EPS * d).astype(np.float32)
        minus = (theta64 - FD32_EPS * d).astype(np.float32)
        model.set_params(plus)
        lp = _run(model, batch, train=True, grad=False)
        model.set_params(minus)
        lm = _run(model, batch, train=True, grad=False)
        delta = plus.astype(np.float64) - minus.astype(np.float64)
        fd = (lp - lm) / (2 * FD32_EPS)
        an = (g @ delta) / (2 * FD32_EPS)
        assert abs(fd - an) <= tol(an), (
            f"{loss}: direction in {name}: finite difference {fd!r}, gradient {an!r} (seed {seed})")
    model.set_params(theta)


# --------------------------------------------------------------------------- inference
@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_session_states_match_reference(config_name):
    """session_states (inference: all rows through the first layers, only each session's
    last row through the last layer's queries) equals the reference model's evaluation
    forward at the last row of each session, with sessions truncated to max_seq."""
    model, cfg, _, params = _setup(config_name, "softmax", 4000)
    c = RM.full_config(cfg)
    T = c["max_seq"]
    sessions = [s for s in SEQUENCES] + [[4], [9, 9, 9]]
    items = np.concatenate(sessions).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sessions])]).astype(np.int64)
    got = model.session_states(items, offsets)
    # reference: pack the last T items of each session, right-aligned positions
    win = [s[-T:] for s in sessions]
    r_items = np.concatenate(win).astype(np.int32)
    r_pos = np.concatenate([np.arange(T - len(w), T) for w in win]).astype(np.int32)
    cu = np.concatenate([[0], np.cumsum([len(w) for w in win])]).astype(np.int32)
    P = RM.unflatten(params, model.tensors())
    h = RM.hidden_states(P, r_items, r_pos, cu, cfg)[cu[1:] - 1]
    # States are O(1) after the final norm; float32 rounding through <= 2 layers of width
    # <= 13 gave at most 6.4e-7 here, so 5e-6 leaves an 8x margin and still catches any
    # wrong row, position or skipped layer (those move states by O(0.1)).
    np.testing.assert_allclose(got, h, rtol=0, atol=5e-6, err_msg=f"{config_name}")
