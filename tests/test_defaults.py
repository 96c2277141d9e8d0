"""Settings chosen from the data ("auto"): each rule, explicit values winning, the
validation slice fit carves for iterations="auto", and defaults_ saying what was chosen."""
import math
import warnings

import numpy as np
import pytest

from fastsasrec import SASRec, _auto
from fastsasrec.data import flatten_sequences

# Random sequences hold nothing to learn: the model may well lose to the most popular items.
RANDOM_DATA = pytest.mark.filterwarnings("ignore:the trained model is worse")
SMALL = dict(factors=16, n_layers=1, batch_size=64, num_threads=1, device="cpu", random_state=3)


def _sequences(n_seq, n_items, lo, hi, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, n_items + 1, size=int(rng.integers(lo, hi + 1))).tolist()
            for _ in range(n_seq)]


# ----------------------------------------------------------------------------- rules
def _resolve(seqs, **given):
    params = dict(SASRec(**given).get_params())
    lengths = np.array([len(s) for s in seqs])
    n_items = len({x for s in seqs for x in s})
    return _auto.resolve(params, lengths, n_items)


def test_dropout_follows_the_events_per_item():
    rich = _sequences(1000, 100, 40, 60)       # ~50,000 events over 100 items: 500 an item
    poor = _sequences(3000, 5000, 3, 6)        # ~13,500 over 5,000: 3 an item
    middle = _sequences(3000, 100, 3, 6)       # ~13,500 over 100: 135 an item
    d = [_resolve(s)[0]["dropout"] for s in (rich, middle, poor)]
    assert d[0] == 0.2 and d[2] == 0.5 and 0.2 < d[1] < 0.5
    chosen = _resolve(poor)[1]["dropout"]
    assert chosen["value"] == 0.5 and "events per item" in chosen["why"]


def test_max_seq_follows_the_lengths():
    short = _sequences(500, 200, 2, 6)
    mid = _sequences(500, 200, 10, 25)
    long = _sequences(200, 200, 80, 150)
    very_long = _sequences(200, 200, 250, 600)
    assert _resolve(short)[0]["max_seq"] == 10
    assert _resolve(mid)[0]["max_seq"] in (20, 30)
    assert _resolve(long)[0]["max_seq"] in (140, 150)  # the 90th percentile, rounded up
    assert _resolve(very_long)[0]["max_seq"] == 200    # the cap


def test_loss_and_negatives_follow_the_catalogue():
    small = _sequences(200, 500, 3, 8)
    big = _sequences(8000, _auto.SOFTMAX_MAX_ITEMS + 5000, 3, 8)
    p, chosen = _resolve(small)
    assert p["loss"] == "softmax" and "negatives" not in chosen
    p, chosen = _resolve(big)
    assert p["loss"] == "sampled_softmax" and p["negatives"] == "mixed" and p["logq_correction"]
    assert chosen["loss"]["value"] == "sampled_softmax" and p["n_negatives"] == 1024
    assert _resolve(small, loss="gbce")[0]["n_negatives"] == 256
    assert _resolve(_sequences(50, 20, 3, 8), loss="sampled_softmax")[0]["n_negatives"] == 19
    assert _resolve(big, n_negatives=64)[0]["n_negatives"] == 64


def test_the_learning_rate_follows_the_targets_a_batch_holds():
    short = _sequences(3000, 500, 3, 6)    # ~4.5 targets a sequence: 576 a batch of 128
    long = _sequences(500, 500, 60, 100)   # max_seq 100: ~79 a sequence, ~10,100 a batch
    very_long = _sequences(500, 500, 300, 400)  # max_seq 200: 200 a sequence, 25,600 a batch
    assert _resolve(short)[0]["learning_rate"] == _auto.LR_BASE
    p, chosen = _resolve(long)
    per_seq = np.mean([min(len(s), p["max_seq"] + 1) - 1 for s in long])
    want = _auto.LR_BASE * np.sqrt(128 * per_seq / _auto.LR_TOKENS)
    assert p["learning_rate"] == pytest.approx(want, rel=0.05) and 3e-3 < want < 3.3e-3
    assert "training targets a batch" in chosen["learning_rate"]["why"]
    assert _resolve(very_long)[0]["learning_rate"] == _auto.LR_MAX  # the cap
    # the batch is what the rule reads: a quarter of the sequences a batch, half the rate
    assert _resolve(long, batch_size=32)[0]["learning_rate"] == pytest.approx(want / 2, rel=0.05)
    # a batch larger than the data holds only the data's sequences: 10 of ~79 targets
    assert _resolve(long[:10])[0]["learning_rate"] == _auto.LR_BASE


def test_explicit_values_win():
    seqs = _sequences(3000, 5000, 3, 6)
    p, chosen = _resolve(seqs, dropout=0.1, max_seq=7, loss="bce", negatives="uniform",
                         iterations=3, learning_rate=0.01)
    assert (p["dropout"], p["max_seq"], p["loss"], p["negatives"]) == (0.1, 7, "bce", "uniform")
    assert p["learning_rate"] == 0.01
    assert chosen == {}
    # logq_correction follows the negatives unless given
    p, _ = _resolve(seqs, loss="sampled_softmax", negatives="popularity")
    assert p["logq_correction"] is True
    p, _ = _resolve(seqs, loss="sampled_softmax", negatives="popularity", logq_correction=False)
    assert p["logq_correction"] is False


@pytest.mark.parametrize("name,value,match", [
    ("dropout", "Auto", "dropout must be a finite number"),
    ("max_seq", "auto ", "max_seq must be an integer"),
    ("iterations", "AUTO", "iterations must be an integer"),
    ("negatives", "in-batch", "negatives must be one of"),
    ("logq_correction", "yes", "logq_correction must be True or False"),
    ("gbce_t", 1.5, r"gbce_t must be in \[0, 1\], got 1.5"),
    ("loss", "gBCE", "loss must be one of"),
])
def test_bad_settings_name_the_argument(name, value, match):
    with pytest.raises(ValueError, match=match):
        SASRec(**{name: value})


# ----------------------------------------------------------------------------- iterations
@RANDOM_DATA
def test_auto_iterations_stop_early_on_a_carved_slice_and_say_so():
    seqs = _sequences(600, 80, 4, 12, seed=1)
    m = SASRec(**SMALL).fit(seqs)
    chosen = m.defaults_
    it = chosen["iterations"]
    plan = _auto.schedule(600, SMALL["batch_size"])
    assert 1 <= it["value"] <= it["epochs_run"] <= plan["max_epochs"]
    # the model is the kept epoch's weights trained REFIT_SHARE of its epochs more on everything
    more = max(1, math.ceil(_auto.REFIT_SHARE * it["value"]))
    assert m.best_epoch_ == len(m.loss_history_) == it["value"] + more
    assert "validation slice" in it["why"] and "500 of the 600" in it["why"]
    assert f"train {more} more epochs" in it["why"] and "on everything" in it["why"]
    assert m.validation_ is not None  # compared with the most popular items on the slice
    assert set(chosen) >= {"dropout", "max_seq", "loss", "iterations"}
    assert m.fitted_params_["iterations"] == "auto"  # as given; defaults_ has the choice


@RANDOM_DATA
def test_early_stopping_on_the_slice_watches_a_running_mean_where_epochs_are_few_steps():
    """600 sequences in batches of 64: 10 steps an epoch, so the slice's score is averaged
    over round(STEPS_SMOOTH / 10) epochs; the kept epoch ends the best run, and training
    stops a patience of epochs after it."""
    seqs = _sequences(600, 80, 4, 12, seed=1)
    m = SASRec(**SMALL).fit(seqs)
    plan = _auto.schedule(600, SMALL["batch_size"])
    w = plan["smooth"]
    assert w == round(_auto.STEPS_SMOOTH / 10) > 1
    sl = [e for e in m.history_ if e["phase"] == "slice"]
    raw = np.array([e["val_NDCG@10"] for e in sl])
    mean = np.array([raw[max(0, i - w + 1):i + 1].mean() for i in range(raw.size)])
    np.testing.assert_allclose([e["val_NDCG@10_smoothed"] for e in sl], mean, rtol=1e-12)
    kept = m.defaults_["iterations"]["value"]
    assert kept == 1 + int(np.argmax(mean))  # the first of equal means
    assert len(sl) == min(kept + plan["patience"], plan["max_epochs"])
    assert f"averaged over the last {w} epochs" in m.defaults_["iterations"]["why"]
    # where an epoch is many steps, each epoch's own score
    assert _auto.schedule(64 * 100, 64)["smooth"] == 1


def test_the_patience_floor_follows_the_events_per_item():
    """At least 5 epochs of patience where an epoch shows each item little (a sparse
    catalogue: Amazon Beauty, 16 events an item), as few as 2 where 1,280 events an item
    fit in fewer epochs (a rich log: 300 products, thousands of views each)."""
    floor = _auto.patience_floor
    assert [floor(x) for x in (0, 16, 59, 256, 319)] == [5, 5, 5, 5, 5]
    assert [floor(x) for x in (320, 426, 427, 639, 640, 3750, 1e9)] == [4, 4, 3, 3, 2, 2, 2]
    # The floor is what a long epoch gets; an epoch of few steps keeps about 150 steps.
    assert _auto.schedule(250_000, 128, 3750.0)["patience"] == 2
    assert _auto.schedule(250_000, 128)["patience"] == 5
    assert _auto.schedule(22_363, 128, 16.0)["patience"] == 5
    assert _auto.schedule(943, 128, 3750.0)["patience"] == _auto.schedule(943, 128)["patience"] == 19


@RANDOM_DATA
def test_a_rich_log_stops_two_epochs_after_its_best():
    """6,400 sequences of 5-7 items over 12 items (about 3,200 events an item) in batches
    of 64: 100 steps an epoch, so the patience is the floor, and that floor is 2."""
    rng = np.random.default_rng(3)
    seqs = [list(rng.integers(1, 13, size=int(rng.integers(5, 8)))) for _ in range(6400)]
    m = SASRec(**dict(SMALL, batch_size=64)).fit(seqs)
    per_item = sum(map(len, seqs)) / 12
    plan = _auto.schedule(6400, 64, per_item)
    assert plan["patience"] == 2 and plan["smooth"] == 1
    sl = [e for e in m.history_ if e["phase"] == "slice"]
    kept = m.defaults_["iterations"]["value"]
    assert len(sl) == min(kept + 2, plan["max_epochs"])
    assert (f"patience 2 epochs, about 150 optimizer steps and at least 2 at {per_item:,.0f} "
            "training events an item") in m.defaults_["iterations"]["why"]


@RANDOM_DATA
def test_auto_iterations_are_early_stopping_on_the_slice_exactly(monkeypatch):
    """With _auto.REFIT = "fresh", fit with iterations="auto" is the two fits a user would
    write by hand: the slice's last items held out of training, the slice as validation,
    the schedule's patience and cap; then a fresh fit on everything for the epoch that won."""
    monkeypatch.setattr(_auto, "REFIT", "fresh")
    monkeypatch.setattr(_auto, "STEPS_SMOOTH", 1)  # each epoch's own score, as fit(validation=) watches
    seqs = _sequences(600, 80, 4, 12, seed=2)
    auto = SASRec(**SMALL).fit(seqs)
    flat = flatten_sequences(seqs, "s")
    lengths = flat.lengths
    carved = _auto.carve_slice(lengths, SMALL["random_state"])
    plan = _auto.schedule(len(seqs), SMALL["batch_size"])
    chosen = {k: v["value"] for k, v in auto.defaults_.items() if k != "iterations"}
    train = [s[:-1] if i in set(carved.tolist()) else s for i, s in enumerate(seqs)]
    val = [seqs[i] for i in carved]
    by_hand = SASRec(**dict(SMALL, **chosen, iterations=plan["max_epochs"])).fit(
        train, validation=val, early_stopping_patience=plan["patience"])
    kept = auto.defaults_["iterations"]["value"]
    assert by_hand.best_epoch_ == kept
    assert len(by_hand.loss_history_) == auto.defaults_["iterations"]["epochs_run"]
    refit = SASRec(**dict(SMALL, **chosen, iterations=kept)).fit(seqs)
    np.testing.assert_array_equal(refit._engine.get_params(), auto._engine.get_params())


@RANDOM_DATA
def test_too_few_sequences_for_a_slice_train_a_fixed_number_of_epochs():
    seqs = _sequences(40, 30, 3, 6)
    m = SASRec(**SMALL).fit(seqs)
    it = m.defaults_["iterations"]
    assert it["value"] == len(m.loss_history_) == _auto.schedule(40, SMALL["batch_size"])["fixed"]
    assert "too few sequences" in it["why"]
    assert m.validation_ is None


@RANDOM_DATA
def test_validation_given_with_auto_iterations_is_used_for_early_stopping():
    seqs = _sequences(300, 50, 4, 10, seed=5)
    val = _sequences(100, 50, 4, 10, seed=6)
    m = SASRec(**SMALL).fit(seqs, validation=val)
    it = m.defaults_["iterations"]
    assert "the validation sequences given" in it["why"] and it["value"] == m.best_epoch_
    assert m.validation_ is not None


@RANDOM_DATA
def test_auto_fits_are_deterministic():
    seqs = _sequences(600, 80, 4, 12, seed=7)
    a = SASRec(**SMALL).fit(seqs)
    b = SASRec(**SMALL).fit(seqs)
    np.testing.assert_array_equal(a._engine.get_params(), b._engine.get_params())
    assert a.defaults_ == b.defaults_


def test_a_model_losing_to_most_popular_on_the_slice_warns():
    """Item 1 always comes next; a learning rate of 1e-9 cannot learn it: the carved slice
    finds the model below the most-popular ranking and fit says so."""
    rng = np.random.default_rng(4)
    seqs = [rng.integers(2, 300, size=8).tolist() + [1] for _ in range(600)]
    with pytest.warns(UserWarning, match="worse than recommending the most popular items"):
        bad = SASRec(**dict(SMALL, learning_rate=1e-9)).fit(seqs)
    assert not bad.validation_["beats_most_popular"]


@RANDOM_DATA
def test_defaults_survive_save_and_load(tmp_path):
    seqs = _sequences(200, 60, 4, 10, seed=8)
    m = SASRec(**SMALL, iterations=2).fit(seqs)
    m.save(tmp_path / "m.fsr")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = SASRec.load(tmp_path / "m.fsr", device="cpu")
    assert loaded.defaults_ == m.defaults_ and "iterations" not in m.defaults_


@RANDOM_DATA
@pytest.mark.parametrize("phase", ["slice", "refit"])
def test_an_auto_fit_resumes_from_either_phase(tmp_path, phase, monkeypatch):
    """A checkpoint copied during early stopping on the slice, or during the refit on
    everything, resumes to the weights of the uninterrupted fit."""
    import shutil

    monkeypatch.setattr(_auto, "REFIT_SHARE", 0.5)  # a refit of several epochs
    seqs = _sequences(600, 80, 4, 12, seed=9)
    ck = tmp_path / "job.ckpt"
    side = tmp_path / "copy.ckpt"
    seen = []

    def copy_once(model, epoch, logs):  # after the phase's second epoch
        seen.append(logs["phase"])
        if seen.count(phase) == 2 and logs["phase"] == phase and not side.exists():
            shutil.copy(ck, side)

    whole = SASRec(**SMALL).fit(seqs, checkpoint=ck, callbacks=[copy_once])
    assert side.exists()
    again = SASRec(**SMALL).fit(seqs, checkpoint=tmp_path / "again.ckpt", resume=side)
    np.testing.assert_array_equal(again._engine.get_params(), whole._engine.get_params())
    assert again.defaults_["iterations"] == whole.defaults_["iterations"]


@RANDOM_DATA
def test_a_warm_refit_is_the_slice_fit_then_partial_fit(monkeypatch, tmp_path):
    """The default refit (_auto.REFIT = "continue"), its decay aside: the slice's best
    weights train ceil(REFIT_SHARE x kept) more epochs on everything, exactly as partial_fit would on the
    early-stopped model whose history ends at its kept epoch, and a checkpoint copied during
    those epochs resumes to the same weights."""
    import dataclasses
    import math
    import shutil

    monkeypatch.setattr(_auto, "REFIT_SHARE", 0.5)
    monkeypatch.setattr(_auto, "STEPS_SMOOTH", 1)  # each epoch's own score, as fit(validation=) watches
    monkeypatch.setattr(_auto, "REFIT_DECAY", False)  # partial_fit's constant rate (decay: below)
    seqs = _sequences(600, 80, 4, 12, seed=2)
    ck = tmp_path / "job.ckpt"
    copies = []  # the checkpoint as early stopping fired, then after the first refit epoch

    def copy_during_the_refit(model, epoch, logs):
        if logs["phase"] == "refit" and len(copies) < 2:
            copies.append(tmp_path / f"copy{len(copies)}.ckpt")
            shutil.copy(ck, copies[-1])

    auto = SASRec(**SMALL).fit(seqs, checkpoint=ck, callbacks=[copy_during_the_refit])
    kept = auto.defaults_["iterations"]["value"]
    more = max(1, math.ceil(0.5 * kept))
    assert auto.best_epoch_ == kept + more and "more epochs" in auto.defaults_["iterations"]["why"]
    assert [e["epoch"] for e in auto.history_ if e["phase"] == "refit"] == list(range(kept + 1, kept + more + 1))
    carved = _auto.carve_slice(flatten_sequences(seqs, "s").lengths, SMALL["random_state"])
    plan = _auto.schedule(len(seqs), SMALL["batch_size"])
    chosen = {k: v["value"] for k, v in auto.defaults_.items() if k != "iterations"}
    train = [s[:-1] if i in set(carved.tolist()) else s for i, s in enumerate(seqs)]
    by_hand = SASRec(**dict(SMALL, **chosen, iterations=plan["max_epochs"])).fit(
        train, validation=[seqs[i] for i in carved], early_stopping_patience=plan["patience"])
    assert by_hand.best_epoch_ == kept
    # the kept model's lineage: epochs 1..kept (the weights early stopping restored)
    by_hand._state = dataclasses.replace(by_hand._state,
                                         loss_history=by_hand._state.loss_history[:kept])
    by_hand.partial_fit(seqs, epochs=more)
    np.testing.assert_array_equal(by_hand._engine.get_params(), auto._engine.get_params())
    assert len(copies) == min(2, more)
    for side in copies:
        again = SASRec(**SMALL).fit(seqs, checkpoint=tmp_path / "again.ckpt", resume=side)
        np.testing.assert_array_equal(again._engine.get_params(), auto._engine.get_params())
        assert again.best_epoch_ == auto.best_epoch_
        untimed = [[{k: v for k, v in e.items() if k not in ("seconds", "tokens_per_s")} for e in m.history_]
                   for m in (again, auto)]
        assert untimed[0] == untimed[1]


@RANDOM_DATA
def test_the_refit_decays_the_learning_rate_to_zero_and_resumes_with_it(monkeypatch, tmp_path):
    """Each refit epoch trains at learning_rate x (more - j + 0.5) / more (j = 1..more: a
    linear decay to zero, each epoch at its midpoint); the rate is whole again after fit
    (partial_fit trains at it), and a checkpoint copied mid-refit resumes to the same weights
    (the schedule is in the checkpoint)."""
    import shutil

    monkeypatch.setattr(_auto, "REFIT_SHARE", 3.0)  # a refit of several epochs, whatever is kept
    seqs = _sequences(600, 80, 4, 12, seed=2)
    ck, side = tmp_path / "job.ckpt", tmp_path / "copy.ckpt"
    scales = {}

    def watch(model, epoch, logs):
        scales[(logs["phase"], epoch)] = model._state.engine.lr_scale
        if logs["phase"] == "refit" and not side.exists():
            shutil.copy(ck, side)

    auto = SASRec(**SMALL).fit(seqs, checkpoint=ck, callbacks=[watch])
    kept = auto.defaults_["iterations"]["value"]
    more = auto.best_epoch_ - kept
    assert more >= 3
    refit = [scales[("refit", kept + j)] for j in range(1, more + 1)]
    np.testing.assert_allclose(refit, [(more - j + 0.5) / more for j in range(1, more + 1)], rtol=1e-6)
    assert all(v == 1.0 for (phase, _), v in scales.items() if phase == "slice")
    assert auto._state.engine.lr_scale == 1.0
    # without the decay the same fit ends elsewhere
    monkeypatch.setattr(_auto, "REFIT_DECAY", False)
    flat = SASRec(**SMALL).fit(seqs)
    assert flat.best_epoch_ == auto.best_epoch_
    assert not np.array_equal(flat._engine.get_params(), auto._engine.get_params())
    monkeypatch.setattr(_auto, "REFIT_DECAY", True)
    again = SASRec(**SMALL).fit(seqs, checkpoint=tmp_path / "again.ckpt", resume=side)
    np.testing.assert_array_equal(again._engine.get_params(), auto._engine.get_params())
