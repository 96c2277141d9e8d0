"""Item features in the engine (fastsasrec._core.Model with n_feature_values > 0): the item
table every forward, loss and score reads is T = E + pool(F[each item's feature values]),
and F is trained through the feature bag's backward.  Checked against the float64
reference model (tests/reference/model.py with cfg["_features"]), by finite differences of
the engine alone, through checkpoints, and at inference; a model without features is
exactly the model without the feature keys."""
import numpy as np
import pytest

import fastsasrec
from reference import bound
from reference import model as RM
from reference import ops as R

CORE = fastsasrec._core
NF = 6
CFG = dict(n_items=11, factors=12, n_heads=2, n_layers=2, max_seq=6, dropout=0.3,
           n_negatives=5, seed=7, batch_size=3)
SEQUENCES = [[3, 3, 5, 1, 2, 9, 10, 4, 4], [7, 2], [1, 2, 3], [11, 1, 5, 6, 7, 8], [5, 5, 5, 2],
             [8, 9, 10, 11], [2, 4, 6, 8, 10]]
# Items 0..11: item 0 (padding) and item 5 have no values, item 7 lists value 4 twice,
# value 3 is shared by many items and value 5 by none.
ITEM_VALUES = [[], [0], [1, 3], [3], [2, 3, 0], [], [3, 1], [4, 4], [2], [0, 3], [1], [3, 2, 4, 0]]
STEP = 3


def csr(lists=ITEM_VALUES):
    values = np.array([v for vs in lists for v in vs], np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(vs) for vs in lists])]).astype(np.int64)
    return values, offsets


def flat(sequences=SEQUENCES):
    items = np.concatenate(sequences).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64)
    return items, offsets


def model_with_features(pooling="mean", noise_seed=None, device="cpu", **over):
    cfg = dict(CFG, n_feature_values=NF, feature_pooling=pooling, **over)
    m = CORE.Model(cfg, device)
    m.set_item_features(*csr())
    if noise_seed is not None:  # biases and gains off their trivial 0 / 1
        rng = np.random.default_rng(noise_seed)
        m.set_params((m.get_params() + 0.1 * rng.standard_normal(m.n_params)).astype(np.float32))
    values, offsets = csr()
    return m, dict(cfg, _features=(values, offsets))


def run(m, batch, grad=True, step=STEP):
    return m.forward_backward(batch["items"], batch["targets"], batch["pos"], batch["cu"],
                              batch["negatives"], train=True, grad=grad, step=step)



def check_finite_differences(m, batch, theta, g, coords, what, eps=1e-3):
    """The engine's gradient g at each coordinate of the parameters theta against central
    differences of the float32 loss of ``batch`` (step eps, as float32 represents it)."""
    for k in coords:
        plus, minus = theta.copy(), theta.copy()
        plus[k] += np.float32(eps)
        minus[k] -= np.float32(eps)
        m.set_params(plus)
        lp = run(m, batch, grad=False)
        m.set_params(minus)
        lm = run(m, batch, grad=False)
        m.set_params(theta)
        fd = (lp - lm) / (float(plus[k]) - float(minus[k]))
        assert abs(fd - g[k]) <= 1e-2 * abs(g[k]) + 2e-4, f"{what}: coordinate {k}: fd {fd!r}, gradient {g[k]!r}"

def batch_of(m):
    items, offsets = flat()
    return m.build_batch(items, offsets, np.arange(len(SEQUENCES), dtype=np.int64), STEP)


# --------------------------------------------------------------------------- no features
def test_without_features_the_model_is_todays():
    """n_feature_values = 0 (either pooling) is the model built without the keys: the same
    layout and initialisation, and bit-identical training and scoring."""
    items, offsets = flat()
    models = [CORE.Model(dict(CFG)), CORE.Model(dict(CFG, n_feature_values=0)),
              CORE.Model(dict(CFG, n_feature_values=0, feature_pooling="sum"))]
    assert all(m.tensors() == models[0].tensors() for m in models)
    for epoch in range(2):
        losses = [m.train_epoch(items, offsets, epoch) for m in models]
        assert losses[1] == losses[0] and losses[2] == losses[0]
    for m in models[1:]:
        np.testing.assert_array_equal(m.get_params(), models[0].get_params())
        np.testing.assert_array_equal(m.optimizer_state()[1], models[0].optimizer_state()[1])
        for a, b in zip(m.recommend(items, offsets, 4, np.zeros(0, np.int32),
                                    np.zeros(len(offsets), np.int64)),
                        models[0].recommend(items, offsets, 4, np.zeros(0, np.int32),
                                            np.zeros(len(offsets), np.int64))):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="n_feature_values = 0"):
        models[1].set_item_features(*csr())


def test_the_feature_table_comes_last_and_leaves_the_rest_as_it_was():
    plain = CORE.Model(dict(CFG))
    m = CORE.Model(dict(CFG, n_feature_values=NF))
    n = plain.n_params
    assert m.tensors()[:-1] == plain.tensors()
    assert m.tensors()[-1] == ("F", n, (NF, CFG["factors"]))
    assert m.n_params == n + NF * CFG["factors"]
    np.testing.assert_array_equal(m.get_params()[:n], plain.get_params())
    # the feature table starts at zero: an item starts as its id embedding alone
    assert np.all(m.get_params()[n:] == 0)


# --------------------------------------------------------------------------- the fused table
@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_item_embeddings_are_the_fused_table(pooling):
    m, cfg = model_with_features(pooling, noise_seed=1)
    P = RM.unflatten(m.get_params(), m.tensors())
    values, offsets = cfg["_features"]
    ref = R.feature_bag_forward(P["item_emb"], P["F"], values, offsets, pooling == "mean")[1:]
    mag = R.feature_bag_forward(np.abs(P["item_emb"]), np.abs(P["F"]), values, offsets,
                                pooling == "mean")[1:]
    got = m.item_embeddings()
    np.testing.assert_array_less(np.abs(got - ref), bound(5, mag) + 1e-30)
    np.testing.assert_array_equal(got[4], P["item_emb"][5].astype(np.float32))  # no values
    # every write of the weights, and new features, rebuild it
    params = m.get_params()
    (_, off_E, _), (_, off_F, _) = m.tensors()[0], m.tensors()[-1]
    E = lambda p: p[off_E: off_E + 12 * 12].reshape(12, 12)[1:]  # noqa: E731
    params[off_F:] = 0  # F = 0: T = E
    m.set_params(params)
    np.testing.assert_array_equal(m.item_embeddings(), E(params))
    params += np.float32(1)  # F = 1, and no item with values: T = E
    m.set_params(params)
    m.set_item_features(*csr([[]] * 12))
    np.testing.assert_array_equal(m.item_embeddings(), E(params))


# --------------------------------------------------------------------------- gradients
LOSSES = {"sampled_softmax": dict(loss="sampled_softmax"), "softmax": dict(loss="softmax"),
          "bce": dict(loss="bce"), "gbce": dict(loss="gbce", gbce_t=0.5, n_negatives=3)}


@pytest.mark.emulated_gpu
@pytest.mark.parametrize("pooling", ["mean", "sum"])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_loss_and_gradients_match_the_reference(device, loss, pooling):
    """One training step (dropout on): the loss and every gradient, F's included, against
    the float64 reference with the same parameters and masks (test_model_reference's
    tolerances: 1e-6 of the loss, 3e-5 of each tensor's largest gradient)."""
    seed = 10 + list(LOSSES).index(loss)
    m, cfg = model_with_features(pooling, noise_seed=seed, device=device, **LOSSES[loss])
    batch = batch_of(m)
    got_loss = run(m, batch)
    got = RM.unflatten(m.get_grads(), m.tensors())
    ref_loss, ref = RM.forward_backward(RM.unflatten(m.get_params(), m.tensors()), batch, cfg,
                                        STEP, train=True, grad=True)
    assert abs(got_loss - ref_loss) <= 1e-6 * abs(ref_loss), (got_loss, ref_loss)
    assert set(got) == set(ref)
    for name in ref:
        scale = np.abs(ref[name]).max()
        err = np.abs(got[name] - ref[name]).max()
        assert err <= 3e-5 * scale + 1e-12, f"{loss}/{pooling}: gradient of {name}: {err:.3e} vs {scale:.3e}"
    assert np.abs(ref["F"][:5]).max() > 1e-3, "the features must receive a gradient"
    assert not got["F"][5].any(), "value 5 belongs to no item: no gradient"


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_engine_finite_differences_in_F_and_E(pooling):
    """The float32 engine alone: central differences of the training loss (the masks are
    fixed by the step) along a few single entries of F and of E, against its gradient;
    eps = 1e-3 as in test_model_reference (the loss's float32 error ~1e-8 |L|, the
    truncation eps^2 |L'''|), allowed 1% + 2e-4."""
    m, cfg = model_with_features(pooling, noise_seed=20)
    batch = batch_of(m)
    run(m, batch)
    g = m.get_grads()
    theta = m.get_params()
    off_E = m.tensors()[0][1]
    off_F = m.tensors()[-1][1]
    C = CFG["factors"]
    # F rows of values 0, 3 (shared), 4 (listed twice by item 7); E rows of items 2 and 7
    coords = [off_F + 0 * C + 1, off_F + 3 * C + 5, off_F + 4 * C + 11, off_E + 2 * C + 3,
              off_E + 7 * C + 0]
    check_finite_differences(m, batch, theta, g, coords, pooling)
    assert max(abs(g[k]) for k in coords[:3]) > 1e-3


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("id_dropout", [0.0, 0.5])
def test_checkpoint_round_trip_continues_bit_exactly(id_dropout):
    """On the CPU (a GPU's scatter-adds with atomics leave the last bits to the schedule).
    With id dropout the masks are a function of (seed, step, item): a model rebuilt from
    the weights, moments and step continues exactly as the one that went on."""
    items, offsets = flat()
    a, cfg = model_with_features("mean", id_dropout=id_dropout)
    a.train_epoch(items, offsets, 0)
    params, (m_, v_, step) = a.get_params(), a.optimizer_state()
    a.train_epoch(items, offsets, 1)
    b = CORE.Model({k: v for k, v in cfg.items() if not k.startswith("_")})
    b.set_item_features(*csr())
    b.set_params(params)
    b.set_optimizer_state(m_, v_, step)
    b.train_epoch(items, offsets, 1)
    np.testing.assert_array_equal(b.get_params(), a.get_params())
    np.testing.assert_array_equal(b.optimizer_state()[0], a.optimizer_state()[0])
    np.testing.assert_array_equal(b.optimizer_state()[1], a.optimizer_state()[1])
    np.testing.assert_array_equal(b.item_embeddings(), a.item_embeddings())


def test_weight_decay_reaches_the_feature_table():
    """F is decayed like the item embedding: with a zero gradient (value 5 is no item's)
    its row shrinks by lr * weight_decay per step."""
    items, offsets = flat()
    m, _ = model_with_features("sum", weight_decay=0.5)
    off_F, C = m.tensors()[-1][1], CFG["factors"]
    before = m.get_params()[off_F + 5 * C: off_F + 6 * C]
    m.train_epoch(items, offsets, 0)
    after = m.get_params()[off_F + 5 * C: off_F + 6 * C]
    np.testing.assert_allclose(after, before * (1 - 1e-3 * 0.5) ** m.step, rtol=1e-5)


# --------------------------------------------------------------------------- inference
@pytest.mark.emulated_gpu
def test_inference_reads_the_fused_table(device):
    """With every id embedding zero, the items differ by their features alone: the session
    states are the reference's on the fused table, and recommend ranks by h . pool(F)."""
    m, cfg = model_with_features("mean", noise_seed=30, device=device, dropout=0.0)
    params = m.get_params()
    off_E, C = m.tensors()[0][1], CFG["factors"]
    params[off_E: off_E + 12 * C] = 0
    m.set_params(params)
    sessions = [[1, 2, 3], [4], [9, 11, 7, 7]]
    items, offsets = flat(sessions)
    h = m.session_states(items, offsets)
    P = RM.unflatten(params, m.tensors())
    win = [np.array(s[-CFG["max_seq"]:]) for s in sessions]
    cu = np.concatenate([[0], np.cumsum([len(w) for w in win])]).astype(np.int32)
    pos = np.concatenate([np.arange(CFG["max_seq"] - len(w), CFG["max_seq"]) for w in win])
    ref_h = RM.hidden_states(P, np.concatenate(win), pos, cu, cfg)[cu[1:] - 1]
    np.testing.assert_allclose(h, ref_h, rtol=0, atol=5e-6)
    values, offs = cfg["_features"]
    T = R.feature_bag_forward(P["item_emb"], P["F"], values, offs, True)
    ids, scores = m.recommend(items, offsets, 11, np.zeros(0, np.int32), np.zeros(4, np.int64))
    ref_scores = h.astype(np.float64) @ T[1:].T
    np.testing.assert_allclose(scores, -np.sort(-ref_scores, axis=1), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(ref_scores, ids - 1, axis=1), scores, atol=1e-5)
    assert np.ptp(scores[:, :10], axis=1).min() > 1e-3, "items must be told apart by features"
    np.testing.assert_array_equal(scores[ids == 5], 0, "item 5 (no features, zero id) scores 0")


# --------------------------------------------------------------------------- bad input
def test_set_item_features_refuses_bad_input():
    m = CORE.Model(dict(CFG, n_feature_values=NF))
    values, offsets = csr()  # offsets 0, 0, 1, 3, 4, 7, ...: item 1 holds values[0], item 4 values[4:7]
    at = lambda a, k, x: np.where(np.arange(len(a)) == k, x, a).astype(a.dtype)  # noqa: E731
    bad = [
        (values.astype(np.int64), offsets, "^values must have dtype int32, got int64$"),
        (values, offsets.astype(np.int32), "^offsets must have dtype int64, got int32$"),
        (values, offsets[:-1], r"^offsets\[-1\] \(15\) must equal the number of values \(19\)$"),
        (values, np.concatenate([[0], offsets]), r"^offsets must have 13 entries \(items 0..11 and the end\), got 14$"),
        (values, at(offsets, 0, 1), r"^offsets\[0\] must be 0, got 1$"),
        (values, at(offsets, 3, 0), r"^offsets must be non-decreasing: offsets\[3\] = 0 < offsets\[2\] = 1$"),
        (values, at(offsets, 1, 1), r"^item 0 \(the padding\) must have no feature values, got 1$"),
        (at(values, 4, 6), offsets, r"^values: item 4 has feature value 6 \(values\[4\]\), outside 0..5"),
        (at(values, 0, -1), offsets, r"^values: item 1 has feature value -1 \(values\[0\]\), outside 0..5"),
    ]
    for v, o, msg in bad:
        with pytest.raises(ValueError, match=msg):
            m.set_item_features(v, o)
    assert not m.has_item_features
    # the last item without its last value: valid
    m.set_item_features(values[:-1], np.concatenate([offsets[:-1], [len(values) - 1]]))
    assert m.has_item_features


def test_training_or_scoring_before_set_item_features_is_refused():
    m = CORE.Model(dict(CFG, n_feature_values=NF))
    items, offsets = flat()
    for call in (lambda: m.train_epoch(items, offsets, 0), m.item_embeddings,
                 lambda: m.session_states(items, offsets),
                 lambda: m.recommend(items, offsets, 3, np.zeros(0, np.int32),
                                     np.zeros(len(offsets), np.int64))):
        with pytest.raises(ValueError, match="set_item_features must be called"):
            call()
    assert not m.has_item_features
    m.set_item_features(*csr())
    assert m.has_item_features
    m.train_epoch(items, offsets, 0)


def test_config_keys_are_checked_and_listed():
    schema = {f["name"]: f for f in CORE.config_schema()}
    assert schema["n_feature_values"]["default"] == 0 and schema["n_feature_values"]["range"] == ">= 0"
    assert schema["feature_pooling"]["choices"] == ["sum", "mean"]
    assert schema["feature_pooling"]["default"] == "mean"
    with pytest.raises(ValueError, match="^n_feature_values must be >= 0, got -1$"):
        CORE.Model(dict(CFG, n_feature_values=-1))
    with pytest.raises(ValueError, match="^feature_pooling must be one of 'sum', 'mean', got 'max'$"):
        CORE.Model(dict(CFG, feature_pooling="max"))
