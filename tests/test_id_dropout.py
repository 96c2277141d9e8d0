"""Id dropout in the engine (config id_dropout = p, with item features only): a training
step reads the item table T_i = m_i E_i + pool(F)_i, m_i in {0, 1} drawn per (step, item)
from the counter RNG (kept with probability 1 - p), the same on the input and the output
side, and E's gradient is m_i dT_i; inference drops nothing.  Checked against the float64
reference model (tests/reference/model.py), by finite differences of the engine alone,
through checkpoints, at inference, and p = 0 against the model without the field."""
import numpy as np
import pytest

import fastsasrec
from reference import model as RM
from reference import ops as R
from test_feature_engine import (CFG, LOSSES, NF, STEP, batch_of, check_finite_differences, flat,
                                 model_with_features, run)

CORE = fastsasrec._core
P_ID = 0.5


def dropped_items(cfg, step=STEP):
    keep = RM.id_keep(RM.full_config(cfg), step)
    return np.flatnonzero(keep == 0)


# --------------------------------------------------------------------------- the config
def test_config_range_and_the_need_for_features():
    schema = {f["name"]: f for f in CORE.config_schema()}
    assert schema["id_dropout"]["default"] == 0 and schema["id_dropout"]["range"] == "in [0, 1)"
    with pytest.raises(ValueError, match=r"^id_dropout must be in \[0, 1\), got 1$"):
        CORE.Model(dict(CFG, n_feature_values=NF, id_dropout=1.0))
    with pytest.raises(ValueError, match=r"^id_dropout must be in \[0, 1\), got -0.1$"):
        CORE.Model(dict(CFG, n_feature_values=NF, id_dropout=-0.1))
    with pytest.raises(ValueError, match=r"^id_dropout \(0.25\) needs item features, but "
                                         r"n_feature_values = 0$"):
        CORE.Model(dict(CFG, id_dropout=0.25))
    with pytest.raises(ValueError, match="needs item features"):
        CORE.check_config(dict(CFG, id_dropout=0.25))
    CORE.Model(dict(CFG, id_dropout=0.0))  # 0 without features: the model of today


def test_p0_is_the_model_without_the_field_and_p_changes_training():
    """id_dropout = 0 trains bit for bit as the featured model without the key; p > 0
    trains differently (the knob is not a no-op)."""
    items, offsets = flat()
    models = [model_with_features("mean")[0], model_with_features("mean", id_dropout=0.0)[0],
              model_with_features("mean", id_dropout=P_ID)[0]]
    for epoch in range(2):
        losses = [m.train_epoch(items, offsets, epoch) for m in models]
        assert losses[1] == losses[0]
    np.testing.assert_array_equal(models[1].get_params(), models[0].get_params())
    np.testing.assert_array_equal(models[1].optimizer_state()[0], models[0].optimizer_state()[0])
    assert not np.array_equal(models[2].get_params(), models[0].get_params())


# --------------------------------------------------------------------------- gradients
@pytest.mark.emulated_gpu
@pytest.mark.parametrize("pooling", ["mean", "sum"])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_loss_and_gradients_match_the_reference(device, loss, pooling):
    """One training step with dropout and id dropout: the loss and every gradient against
    the float64 reference with the same masks (test_feature_engine's tolerances); the rows
    the step dropped have no id gradient, and their features still learn."""
    seed = 40 + list(LOSSES).index(loss)
    m, cfg = model_with_features(pooling, noise_seed=seed, device=device, id_dropout=P_ID,
                                 **LOSSES[loss])
    drop = dropped_items(cfg)
    assert 0 < len(drop) < CFG["n_items"], drop
    batch = batch_of(m)
    got_loss = run(m, batch)
    got = RM.unflatten(m.get_grads(), m.tensors())
    params = RM.unflatten(m.get_params(), m.tensors())
    ref_loss, ref = RM.forward_backward(params, batch, cfg, STEP, train=True, grad=True)
    assert abs(got_loss - ref_loss) <= 1e-6 * abs(ref_loss), (got_loss, ref_loss)
    for name in ref:
        scale = np.abs(ref[name]).max()
        err = np.abs(got[name] - ref[name]).max()
        assert err <= 3e-5 * scale + 1e-12, f"{loss}/{pooling}: gradient of {name}: {err:.3e} vs {scale:.3e}"
    assert not got["item_emb"][drop].any(), "a dropped item has no id gradient"
    kept = np.setdiff1d(np.arange(1, CFG["n_items"] + 1), drop)
    assert np.abs(got["item_emb"][kept]).max() > 1e-3
    # the reference without the mask differs: the engine applied it
    plain = dict(cfg, id_dropout=0.0)
    other_loss, _ = RM.forward_backward(params, batch, plain, STEP, train=True, grad=False)
    assert abs(other_loss - ref_loss) > 1e-4 * abs(ref_loss)


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_engine_finite_differences_with_id_dropout(pooling):
    """The float32 engine alone, p > 0 (the masks fixed by the step): central differences
    along entries of F, of a kept item's E and of a dropped item's E (no effect, gradient
    0), against its gradient; test_feature_engine's eps and allowance (noise seed 51: no
    coordinate within eps of a ReLU's kink, where a difference is not a derivative)."""
    m, cfg = model_with_features(pooling, noise_seed=51, id_dropout=P_ID)
    drop = dropped_items(cfg)
    kept = [i for i in range(1, CFG["n_items"] + 1) if i not in drop]
    batch = batch_of(m)
    run(m, batch)
    g = m.get_grads()
    theta = m.get_params()
    off_E, off_F, C = m.tensors()[0][1], m.tensors()[-1][1], CFG["factors"]
    coords = [off_F + 0 * C + 1, off_F + 3 * C + 5, off_E + kept[0] * C + 3,
              off_E + kept[-1] * C + 0, off_E + drop[0] * C + 2]
    check_finite_differences(m, batch, theta, g, coords, pooling)
    assert g[coords[-1]] == 0
    assert max(abs(g[k]) for k in coords[:4]) > 1e-3


# The checkpoint round trip with id dropout: test_feature_engine.py (parametrized).


# --------------------------------------------------------------------------- inference
def test_inference_and_evaluation_drop_nothing():
    """After a training step with p > 0 the item table scoring reads is E + pool(F) (no
    mask, no rescaling), and a forward with train=False is the unmasked reference's."""
    items, offsets = flat()
    m, cfg = model_with_features("mean", noise_seed=60, id_dropout=0.9)
    m.train_epoch(items, offsets, 0)
    P = RM.unflatten(m.get_params(), m.tensors())
    values, offs = cfg["_features"]
    T = R.feature_bag_forward(P["item_emb"], P["F"], values, offs, True)
    np.testing.assert_allclose(m.item_embeddings(), T[1:], rtol=0, atol=1e-6)
    batch = batch_of(m)
    got = run(m, batch, grad=False)  # train=True: masked
    assert np.abs(m.item_embeddings() - T[1:]).max() <= 1e-6, "a training forward must not leave its mask"
    ref_train, _ = RM.forward_backward(P, batch, cfg, STEP, train=True, grad=False)
    assert abs(got - ref_train) <= 1e-6 * abs(ref_train)
    evaluated = m.forward_backward(batch["items"], batch["targets"], batch["pos"], batch["cu"],
                                   batch["negatives"], train=False, grad=False, step=STEP)
    ref_eval, _ = RM.forward_backward(P, batch, cfg, STEP, train=False, grad=False)
    assert abs(evaluated - ref_eval) <= 1e-6 * abs(ref_eval)
    assert abs(ref_eval - ref_train) > 1e-4 * abs(ref_eval)
