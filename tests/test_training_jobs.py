"""What a training job that runs for hours needs: Ctrl-C between batches, checkpoints that
resume to the same weights, and continued training on new events that grows the catalogue.

Interrupts are tested at the engine (a stop asked before every batch: the boundary, not a
time) and end to end in a subprocess that receives a real SIGINT; whatever moment the
signal lands, the model must be exactly the model of its completed epochs.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

from fastsasrec import SASRec, _core, _persist
from fastsasrec.cli import main

P = dict(iterations=4, random_state=3, batch_size=32, max_seq=10, factors=16, n_layers=1,
         num_threads=2)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sessions(n=300, items=60, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, items, size=rng.integers(2, 15)).tolist() for _ in range(n)]


@pytest.fixture(scope="module")
def seqs():
    return sessions()


@pytest.fixture(scope="module")
def straight(seqs):
    """The uninterrupted fit every resumed or continued one must equal, bit for bit."""
    return SASRec(**P).fit(seqs)


def default_sigint():
    """SIGINT's default action in a child, even when the tests run where it is ignored (a
    background job), so that the child's Python turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def weights(model):
    return model._engine.get_params()


# ----------------------------------------------------------------------------- the engine
def engine_and_data(seqs, device="cpu"):
    model = SASRec(**dict(P, iterations=1, device=device)).fit(seqs)
    engine = model._state.engine
    items = model._state.encode(np.concatenate([np.asarray(s) for s in seqs]))
    offsets = np.concatenate(([0], np.cumsum([len(s) for s in seqs]))).astype(np.int64)
    return engine, items, offsets


def test_stop_is_asked_before_every_batch(seqs):
    engine, items, offsets = engine_and_data(seqs)
    calls = []
    loss = engine.train_epoch(items, offsets, 1, stop=lambda: calls.append(engine.step) or False)
    n_batches = -(-len(seqs) // P["batch_size"])
    assert isinstance(loss, float)
    # One question per batch, each before that batch's optimizer step.
    first = calls[0]
    assert calls == list(range(first, first + n_batches))


@pytest.mark.emulated_gpu
@pytest.mark.parametrize("device,at", [("cpu", 1), ("cpu", 2), ("cpu", 5), ("cuda", 3)])
def test_a_stopped_epoch_keeps_nothing(seqs, device, at):
    if device == "cuda" and not _core.backend_available("cuda")[0]:
        pytest.skip("cuda backend not usable: " + _core.backend_available("cuda")[1])
    engine, items, offsets = engine_and_data(seqs, device)
    before = engine.get_params(), engine.optimizer_state()
    calls = []

    def stop():
        calls.append(1)
        return len(calls) == at

    assert engine.train_epoch(items, offsets, 1, stop=stop) is None
    assert len(calls) == at  # no batch ran after the stop was asked
    m, v, step = engine.optimizer_state()
    assert step == before[1][2]
    np.testing.assert_array_equal(engine.get_params(), before[0])
    np.testing.assert_array_equal(m, before[1][0])
    np.testing.assert_array_equal(v, before[1][1])


def test_an_exception_between_batches_puts_the_epoch_back(seqs):
    engine, items, offsets = engine_and_data(seqs)
    before = engine.get_params(), engine.step
    calls = []

    def stop():
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        engine.train_epoch(items, offsets, 1, stop=stop)
    assert engine.step == before[1]
    np.testing.assert_array_equal(engine.get_params(), before[0])
    # ... and the engine trains on as if the epoch had never started.
    engine.train_epoch(items, offsets, 1)


def test_stop_must_be_callable(seqs):
    engine, items, offsets = engine_and_data(seqs)
    with pytest.raises(ValueError, match="stop must be None or a callable"):
        engine.train_epoch(items, offsets, 1, stop=3)


def test_optimizer_state_round_trip_and_checks(seqs):
    engine, _, _ = engine_and_data(seqs)
    m, v, step = engine.optimizer_state()
    assert step > 0 and m.shape == v.shape == (engine.n_params,) and (v >= 0).all()
    engine.set_optimizer_state(m * 0, v * 0, 7)
    assert engine.step == 7
    with pytest.raises(ValueError, match="must have"):
        engine.set_optimizer_state(m[:-1], v, 1)
    bad = v.copy()
    bad[3] = -1
    with pytest.raises(ValueError, match="entry 3"):
        engine.set_optimizer_state(m, bad, 1)


# ----------------------------------------------------------------------------- Ctrl-C, for real
WORKER = textwrap.dedent("""
    import json, os, signal, sys, threading, time, warnings
    import numpy as np
    from fastsasrec import SASRec
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 400, size=rng.integers(2, 60)).tolist() for _ in range(3000)]
    params = dict(random_state=1, batch_size=16, max_seq=50, factors=32, n_layers=2, num_threads=1)

    def later(m, epoch, logs):  # SIGINT a moment into the next epoch
        if epoch == 1:
            threading.Timer(float(sys.argv[1]), os.kill, (os.getpid(), signal.SIGINT)).start()

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        model = SASRec(iterations=1000, **params).fit(seqs, callbacks=[later])
    k = len(model.loss_history_)
    again = SASRec(iterations=k, **params).fit(seqs)
    print(json.dumps(dict(epochs=k, interrupted=model.interrupted_,
                          warned=[str(x.message) for x in w],
                          same=bool(np.array_equal(model._engine.get_params(), again._engine.get_params())),
                          losses=model.loss_history_ == again.loss_history_)))
""")


@pytest.mark.parametrize("delay", [0.05, 0.4])
def test_ctrl_c_keeps_the_last_completed_epoch(delay):
    import json

    out = subprocess.run([sys.executable, "-c", WORKER, str(delay)], capture_output=True,
                         text=True, timeout=300, preexec_fn=default_sigint)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["interrupted"] and r["epochs"] >= 1
    assert r["same"] and r["losses"]  # exactly the model of its completed epochs
    assert any(f"weights of epoch {r['epochs']}" in m for m in r["warned"])


def test_ctrl_c_before_the_first_epoch_ends_raises_and_changes_nothing(seqs, straight):
    model = SASRec(**P).fit(seqs)
    state = model._state

    def interrupt():
        raise KeyboardInterrupt

    # The engine's signal check is Python's; a KeyboardInterrupt from the first epoch's
    # batches is played by a stop that raises (what PyErr_CheckSignals does on SIGINT).
    original = _core.Model.train_epoch

    def train_epoch(self, items, offsets, epoch, check_signals=False, stop=None):
        return original(self, items, offsets, epoch, stop=interrupt)

    try:
        _core.Model.train_epoch = train_epoch
        with pytest.raises(KeyboardInterrupt):
            model.fit(seqs)
    finally:
        _core.Model.train_epoch = original
    assert model._state is state


# ----------------------------------------------------------------------------- checkpoints
def stop_at(epoch):
    return lambda model, e, logs: e == epoch


def test_resume_gives_the_same_weights_bit_for_bit(seqs, straight, tmp_path):
    ck = tmp_path / "job.ckpt"
    first = SASRec(**P).fit(seqs, checkpoint=ck, callbacks=[stop_at(2)])
    assert len(first.loss_history_) == 2 and ck.exists()
    resumed = SASRec(**P).fit(seqs, resume=ck)
    np.testing.assert_array_equal(weights(resumed), weights(straight))
    assert resumed.loss_history_ == straight.loss_history_
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3, 4]
    # The checkpoint holds what a model needs to go on: the optimizer too.
    with zipfile.ZipFile(ck) as z:
        assert {"m.npy", "v.npy", "params.npy"} <= set(z.namelist())


def test_resume_from_every_epoch_of_a_checkpointed_run(seqs, straight, tmp_path):
    for stop in (1, 3):
        ck = tmp_path / f"every{stop}.ckpt"
        SASRec(**P).fit(seqs, checkpoint=ck, checkpoint_every=1, callbacks=[stop_at(stop)])
        assert _persist.load_checkpoint(ck)["epoch"] == stop
        resumed = SASRec(**dict(P, verbose=0, num_threads=2)).fit(seqs, resume=ck)
        np.testing.assert_array_equal(weights(resumed), weights(straight))


def test_checkpoint_every_n_epochs_and_at_the_end(seqs, tmp_path):
    ck = tmp_path / "n.ckpt"
    seen = []

    def watch(model, epoch, logs):
        seen.append(_persist.load_checkpoint(ck)["epoch"] if ck.exists() else 0)

    SASRec(**dict(P, iterations=5)).fit(seqs, checkpoint=ck, checkpoint_every=2, callbacks=[watch])
    # A callback runs before the epoch's checkpoint: it sees the one before.
    assert seen == [0, 0, 2, 2, 4]
    assert _persist.load_checkpoint(ck)["epoch"] == 5  # the last epoch is always written


def test_resume_carries_early_stopping(seqs, tmp_path):
    val = sessions(60, seed=9)
    kw = dict(validation=val, early_stopping_patience=2)
    straight = SASRec(**dict(P, iterations=8)).fit(seqs, **kw)
    ck = tmp_path / "es.ckpt"
    SASRec(**dict(P, iterations=8)).fit(seqs, checkpoint=ck, callbacks=[stop_at(3)], **kw)
    saved = _persist.load_checkpoint(ck)
    assert saved["early_stopping"]["best_score"] is not None
    resumed = SASRec(**dict(P, iterations=8)).fit(seqs, resume=ck, **kw)
    assert resumed.best_epoch_ == straight.best_epoch_
    assert resumed.loss_history_ == straight.loss_history_
    np.testing.assert_array_equal(weights(resumed), weights(straight))


def test_resume_refuses_other_data_or_parameters(seqs, tmp_path):
    ck = tmp_path / "r.ckpt"
    SASRec(**P).fit(seqs, checkpoint=ck, callbacks=[stop_at(1)])
    with pytest.raises(ValueError, match=r"other training data \(300 sequences.*these are 299"):
        SASRec(**P).fit(seqs[:-1], resume=ck)
    swapped = seqs[1:] + seqs[:1]
    with pytest.raises(ValueError, match="other training data"):
        SASRec(**P).fit(swapped, resume=ck)
    with pytest.raises(ValueError, match=r"other parameters: learning_rate=0.01 \(checkpoint: .auto.\)"):
        SASRec(**dict(P, learning_rate=0.01)).fit(seqs, resume=ck)
    # More epochs, other threads: allowed.
    SASRec(**dict(P, iterations=5, num_threads=1)).fit(seqs, resume=ck)


def test_resume_needs_a_checkpoint_file(seqs, straight, tmp_path):
    model_file = tmp_path / "m.fsr"
    straight.save(model_file)
    with pytest.raises(ValueError, match="it is a model file"):
        SASRec(**P).fit(seqs, resume=model_file)
    with pytest.raises(FileNotFoundError):
        SASRec(**P).fit(seqs, resume=tmp_path / "none.ckpt")
    ck = tmp_path / "c.ckpt"
    SASRec(**P).fit(seqs, checkpoint=ck, callbacks=[stop_at(1)])
    with pytest.raises(ValueError, match="it is a training checkpoint"):
        SASRec.load(ck)
    data = bytearray(ck.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.ckpt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad.ckpt"):
        SASRec(**P).fit(seqs, resume=tmp_path / "bad.ckpt")


def test_a_bad_checkpoint_path_fails_before_training(seqs, tmp_path):
    with pytest.raises(IsADirectoryError):
        SASRec(**P).fit(seqs, checkpoint=tmp_path)
    with pytest.raises(FileNotFoundError):
        SASRec(**P).fit(seqs, checkpoint=tmp_path / "no" / "such" / "ck")
    with pytest.raises(ValueError, match="checkpoint_every"):
        SASRec(**P).fit(seqs, checkpoint=tmp_path / "c", checkpoint_every=0)
    with pytest.raises(ValueError, match="checkpoint must name a file to save to .*got ''"):
        SASRec(**P).fit(seqs, checkpoint="")


# ----------------------------------------------------------------------------- partial_fit
def test_partial_fit_continues_exactly_like_more_epochs(seqs, straight):
    model = SASRec(**dict(P, iterations=2)).fit(seqs).partial_fit(seqs, epochs=2)
    np.testing.assert_array_equal(weights(model), weights(straight))
    assert model.loss_history_ == straight.loss_history_
    assert model.n_items == straight.n_items


def test_partial_fit_grows_the_catalogue(seqs, straight):
    model = SASRec(**P).fit(seqs)
    old_ids = model.item_ids.copy()
    V = old_ids.size
    new = [[1002, 1000, 5, 1001], [1000, 1001, 7], [1001, 1002]] * 20
    grown_state = None

    def keep(m, e, logs):
        nonlocal grown_state
        grown_state = m._state

    model.partial_fit(new, epochs=1, callbacks=[keep])
    assert model.n_items == V + 3
    np.testing.assert_array_equal(model.item_ids[:V], old_ids)  # old ids keep their rows
    np.testing.assert_array_equal(model.item_ids[V:], [1000, 1001, 1002])  # new ones after
    assert model.item_embeddings.shape == (V + 3, P["factors"])
    pop = dict(zip(model.item_ids.tolist(), model._popularity.tolist()))
    assert pop[1000] == 40 and pop[1001] == 60
    assert pop[5] == straight._popularity[list(old_ids).index(5)] + 20
    # The lookup does not assume a sorted catalogue: the new ids are found, old ones too.
    internal = model._state.encode(np.array([1000, 1001, 1002, 5, 999], dtype=np.int64))
    np.testing.assert_array_equal(internal, [V + 1, V + 2, V + 3, list(old_ids).index(5) + 1, 0])
    ids, _ = model.recommend([1000, 1001], n=model.n_items)
    assert 1000 not in ids and 1001 not in ids and 1002 in ids
    assert model.recommend_batch([[1000], [5]], n=3)[0].shape == (2, 3)
    assert len(model.loss_history_) == 5 and grown_state is not None


def test_new_rows_start_as_a_fit_of_the_grown_catalogue_would(seqs):
    from fastsasrec._training import _continued_engine

    model = SASRec(**P).fit(seqs)
    state = model._state
    V, C = state.config["n_items"], state.config["factors"]
    engine, config = _continued_engine(state, V + 5)
    fresh = _core.Model(config, "cpu")  # same seed: the grown model's initialisation
    E_new = engine.item_embeddings()
    np.testing.assert_array_equal(E_new[:V], state.engine.item_embeddings())
    np.testing.assert_array_equal(E_new[V:], fresh.item_embeddings()[V:])
    m, v, step = engine.optimizer_state()
    m0, v0, step0 = state.engine.optimizer_state()
    assert step == step0
    off = next(int(o) for n, o, _ in engine.tensors() if n == "item_emb")
    np.testing.assert_array_equal(m[off + (V + 1) * C: off + (V + 6) * C], 0)
    np.testing.assert_array_equal(m[:off + (V + 1) * C], m0[:off + (V + 1) * C])


def test_a_grown_catalogue_saves_and_loads(seqs, tmp_path):
    model = SASRec(**P).fit(seqs).partial_fit([[0, 3, 1001]] * 10, epochs=1)
    assert model.item_ids[-2:].tolist() == [0, 1001]  # 0 after the old ids: not ascending
    p = tmp_path / "grown.fsr"
    model.save(p)
    again = SASRec.load(p)
    np.testing.assert_array_equal(again.item_ids, model.item_ids)
    np.testing.assert_array_equal(again.recommend([0, 3], n=5)[0], model.recommend([0, 3], n=5)[0])
    with zipfile.ZipFile(p) as z:
        import json
        assert json.loads(z.read("fastsasrec.json"))["format_version"] == 2
    # A file of an ascending catalogue stays version 1 (older readers read it).
    SASRec(**P).fit(seqs).save(tmp_path / "plain.fsr")
    with zipfile.ZipFile(tmp_path / "plain.fsr") as z:
        import json
        assert json.loads(z.read("fastsasrec.json"))["format_version"] == 1


def test_partial_fit_with_string_ids_and_on_an_unfitted_model():
    base = [["a", "b", "c"], ["b", "c", "d"]] * 30
    model = SASRec(**P).partial_fit(base, epochs=2)  # unfitted: a fit of 2 epochs
    assert len(model.loss_history_) == 2
    model.partial_fit([["zz", "a", "yy"]] * 10)
    assert model.item_ids.tolist() == ["a", "b", "c", "d", "yy", "zz"]
    assert "zz" in model.recommend(["yy"], n=6)[0]
    with pytest.raises(ValueError, match="item ids are strings, got int64"):
        model.partial_fit([[1, 2, 3]])
    with pytest.raises(ValueError, match="reserved"):
        model.partial_fit([["a", ""]])
    with pytest.raises(ValueError, match="epochs"):
        model.partial_fit(base, epochs=0)


def test_a_failed_partial_fit_keeps_the_model(seqs):
    model = SASRec(**P).fit(seqs)
    state = model._state
    model.set_params(learning_rate=1e9)  # the next fit's; partial_fit keeps the fitted one
    model.partial_fit(seqs, epochs=1)
    assert model._state is not state
    state = model._state

    def boom(m, e, logs):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        model.partial_fit([[7000, 1, 2]] * 5, callbacks=[boom])
    assert model._state is state and 7000 not in model.item_ids


# ----------------------------------------------------------------------------- the CLI
def write_events(path, seqs, offset=0):
    import pandas as pd

    rows = [(u + offset, item, t) for u, s in enumerate(seqs) for t, item in enumerate(s)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)


def test_cli_train_checkpoint_and_resume(seqs, tmp_path, capsys):
    events = tmp_path / "events.csv"
    write_events(events, seqs)
    ck, out = tmp_path / "job.ckpt", tmp_path / "model.fsr"
    base = ["train", str(events), "-o", str(out), "--factors", "16", "--layers", "1",
            "--max-seq", "10", "--batch-size", "32", "--seed", "3", "--threads", "2"]
    assert main(base + ["--epochs", "2", "--checkpoint", str(ck)]) == 0
    assert _persist.load_checkpoint(ck)["epoch"] == 2
    assert main(base + ["--epochs", "3", "--checkpoint", str(ck), "--resume"]) == 0
    assert _persist.load_checkpoint(ck)["epoch"] == 3
    resumed = SASRec.load(out)
    assert main(base + ["--epochs", "3"]) == 0
    np.testing.assert_array_equal(weights(SASRec.load(out)), weights(resumed))
    assert main(base + ["--resume"]) == 2
    assert "--resume and --checkpoint-every go with --checkpoint" in capsys.readouterr().err
    assert main(base + ["--checkpoint", str(out)]) == 2


def test_cli_update_folds_in_new_events_and_items(seqs, tmp_path, capsys):
    events, today = tmp_path / "events.csv", tmp_path / "today.csv"
    write_events(events, seqs)
    write_events(today, [[1000, 3, 1001], [1001, 1000, 4]] * 10, offset=10**6)
    model = tmp_path / "m.fsr"
    assert main(["train", str(events), "-o", str(model), "--epochs", "1", "--factors", "16",
                 "--max-seq", "10", "--threads", "2"]) == 0
    before = SASRec.load(model)
    assert main(["update", str(model), str(today), "-o", str(model), "--epochs", "2"]) == 0
    assert "2 new items" in capsys.readouterr().out
    after = SASRec.load(model)
    assert after.n_items == before.n_items + 2
    assert len(after.loss_history_) == 3
    assert main(["update", str(model), str(today), "-o", str(model), "--epochs", "0"]) == 2
    assert main(["update", str(tmp_path / "none.fsr"), str(today), "-o", str(model)]) == 2


CLI_INTERRUPT = textwrap.dedent("""
    import sys
    from fastsasrec.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("keep", [False, True])
def test_cli_ctrl_c_exits_130_and_writes_no_model_unless_asked(tmp_path, keep):
    events = tmp_path / "events.csv"
    write_events(events, sessions(3000, items=400, seed=1))
    out, ck = tmp_path / "model.fsr", tmp_path / "job.ckpt"
    if keep:
        out.write_bytes(b"yesterday's model")
    args = ["train", str(events), "-o", str(out), "--epochs", "1000", "--factors", "32",
            "--max-seq", "50", "--batch-size", "16", "--threads", "1", "--checkpoint", str(ck)]
    if keep:
        args.append("--keep-partial")
    proc = subprocess.Popen([sys.executable, "-c", CLI_INTERRUPT] + args, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 240
    while not ck.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)  # the first epoch's checkpoint: training is under way
    assert ck.exists(), proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    epochs = _persist.load_checkpoint(ck)["epoch"]
    if keep:
        saved = SASRec.load(out)
        assert saved.n_items > 0 and len(saved.loss_history_) == epochs
        assert f"saved the model of epoch {epochs}" in err
    else:
        assert not out.exists()
        assert "not written" in err


# ----------------------------------------------------------------------------- checkpoint files
@pytest.fixture(scope="module")
def checkpoint_file(seqs, tmp_path_factory):
    ck = tmp_path_factory.mktemp("ck") / "job.ckpt"
    val = sessions(40, seed=5)
    SASRec(**P).fit(seqs, checkpoint=ck, callbacks=[stop_at(2)], validation=val,
                    early_stopping_patience=3)
    return ck


def npy(a):
    import io

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def field(key, value):
    return lambda meta: meta.__setitem__(key, value)


@pytest.mark.parametrize("edit,replace,message", [
    (field("epoch", 3), None, "epoch 3 but 2 epochs in loss_history"),
    (field("step", -1), None, "invalid step -1"),
    (field("step", "7"), None, "invalid step '7'"),
    (field("history", {"a": 1}), None, "history must be a list of objects"),
    (field("early_stopping", {"best_score": 0.1}), None, "invalid early_stopping state"),
    (field("early_stopping", {"best_score": None, "best_epoch": 1, "since_best": 0}), None,
     "early_stopping and best_params disagree"),
    (field("fingerprint", None), None, "invalid fingerprint"),
    (field("has_best_params", "yes"), None, "invalid has_best_params"),
    (field("has_best_params", False), None, "unexpected zip member 'best_params.npy'"),
    (field("format_version", 99), None, "written by a newer fastsasrec"),
    (lambda meta: meta.pop("sha256"), None, "invalid sha256 field"),
    (None, "v_negative", "second moments v hold a negative value"),
    (None, "m_nan", "optimizer moments m are NaN or infinite"),
    (None, "m_short", r"m.npy has shape \(\d+,\), the header says"),
])
def test_a_damaged_checkpoint_is_refused_by_name(checkpoint_file, tmp_path, edit, replace, message):
    from test_persist import members, rewrite

    data = members(checkpoint_file)
    arrays = {}
    if replace is not None:
        m = np.load(__import__("io").BytesIO(data["m.npy"]))
        v = np.load(__import__("io").BytesIO(data["v.npy"]))
        if replace == "v_negative":
            v[5] = -1.0
            arrays["v.npy"] = npy(v)
        elif replace == "m_nan":
            m[7] = np.nan
            arrays["m.npy"] = npy(m)
        else:
            arrays["m.npy"] = npy(m[:-3])
    bad = rewrite(checkpoint_file, tmp_path / "bad.ckpt", edit=edit, replace=arrays)
    with pytest.raises(ValueError, match=message):
        _persist.load_checkpoint(bad)


def test_a_checkpoint_member_missing_or_altered(checkpoint_file, tmp_path):
    from test_persist import members

    data = members(checkpoint_file)
    with zipfile.ZipFile(tmp_path / "nom.ckpt", "w") as z:
        for name, b in data.items():
            if name != "m.npy":
                z.writestr(name, b)
    with pytest.raises(ValueError, match="missing m.npy"):
        _persist.load_checkpoint(tmp_path / "nom.ckpt")
    flipped = bytearray(data["v.npy"])
    flipped[-2] ^= 0x10
    from test_persist import rewrite

    bad = rewrite(checkpoint_file, tmp_path / "sum.ckpt", replace={"v.npy": bytes(flipped)}, resum=False)
    with pytest.raises(ValueError, match="v.npy checksum mismatch"):
        _persist.load_checkpoint(bad)
    saved = _persist.load_checkpoint(checkpoint_file)  # the undamaged file reads back whole
    assert saved["epoch"] == 2 and saved["early_stopping"]["best_score"] is not None
    assert saved["arrays"]["best_params"].shape == saved["arrays"]["params"].shape


# ----------------------------------------------------------------------------- most popular
def test_a_model_worse_than_most_popular_does_not_leave_fit_silently():
    """Data where one item follows everything and a model that cannot learn (a learning
    rate of 1e-9): validation finds it below the most-popular ranking, and fit says so."""
    rng = np.random.default_rng(4)
    seqs = [rng.integers(2, 300, size=8).tolist() + [1] for _ in range(400)]  # item 1: always next
    val = [rng.integers(2, 300, size=6).tolist() + [1] for _ in range(100)]
    with pytest.warns(UserWarning, match="worse than recommending the most popular items"):
        bad = SASRec(**dict(P, iterations=1, learning_rate=1e-9)).fit(seqs, validation=val)
    v = bad.validation_
    assert not v["beats_most_popular"] and v["NDCG@10"] < v["most_popular_NDCG@10"] == 1.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        good = SASRec(**dict(P, iterations=6, learning_rate=0.01)).fit(seqs, validation=val)
    assert good.validation_["beats_most_popular"]
    assert SASRec(**P).fit(seqs).validation_ is None


# ----------------------------------------------------------------------------- Ctrl-C at the edges
EDGE_WORKER = textwrap.dedent("""
    import json, os, signal, sys, warnings
    import numpy as np
    from fastsasrec import SASRec
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 80, size=rng.integers(2, 20)).tolist() for _ in range(600)]
    P = dict(random_state=2, factors=16, n_layers=1, num_threads=1, verbose=0)
    case = sys.argv[1]
    plain = SASRec(**P).fit(seqs)  # "auto": early stopping on a slice, then the refit
    n_slice = sum(h["phase"] == "slice" for h in plain.history_)
    out = {}
    if case == "refit":  # Ctrl-C as the slice ends: it reaches the refit's first epoch
        def cb(model, epoch, logs):
            if logs["phase"] == "slice" and epoch == n_slice:
                os.kill(os.getpid(), signal.SIGINT)
        model = SASRec(**P)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            model.fit(seqs, callbacks=[cb])
        out = dict(interrupted=model.interrupted_, best=model.best_epoch_, kept=plain.defaults_["iterations"]["value"],
                   epochs=len(model.loss_history_), n_slice=n_slice, warned=[str(x.message) for x in w])
    elif case == "validation":  # Ctrl-C while an epoch is validated, then resume
        ck = sys.argv[2]
        k = plain.defaults_["iterations"]["value"]
        import fastsasrec.metrics as metrics
        evaluate, calls = metrics.evaluate, []
        def interrupted_evaluate(*a, **kw):  # SIGINT in the middle of epoch k's validation
            calls.append(1)
            if len(calls) == k:
                os.kill(os.getpid(), signal.SIGINT)
            return evaluate(*a, **kw)
        model = SASRec(**P)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metrics.evaluate = interrupted_evaluate
            model.fit(seqs, checkpoint=ck)
            metrics.evaluate = evaluate
            again = SASRec(**P).fit(seqs, checkpoint=ck, resume=ck)
        out = dict(interrupted=model.interrupted_, losses=len(model.loss_history_), history=len(model.history_),
                   same=bool(np.array_equal(again.item_embeddings_, plain.item_embeddings_)))
    elif case == "callback":  # a callback that stops the slice: no refit follows
        model = SASRec(**P).fit(seqs, callbacks=[lambda m, e, logs: e == 3])
        out = dict(phases=sorted({h["phase"] for h in model.history_}), epochs=len(model.loss_history_),
                   stopped=model.history_[-1].get("stopped"))
    print(json.dumps(out))
""")


def _edge(case, *args):
    import json

    got = subprocess.run([sys.executable, "-c", EDGE_WORKER, case, *args], capture_output=True, text=True,
                         timeout=600, preexec_fn=default_sigint)
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout.strip().splitlines()[-1])


def test_ctrl_c_as_the_slice_ends_keeps_the_slice_model():
    r = _edge("refit")
    assert r["interrupted"] and r["epochs"] == r["n_slice"] and r["best"] == r["kept"]
    assert any(f"the model keeps the weights of epoch {r['kept']}, the held-out slice's best" in m
               for m in r["warned"])


def test_ctrl_c_during_an_epochs_validation_keeps_the_epoch_whole(tmp_path):
    r = _edge("validation", str(tmp_path / "ck.ckpt"))
    assert r["interrupted"] and r["losses"] == r["history"]
    assert r["same"]  # the resumed fit is the uninterrupted one, bit for bit


def test_a_callback_that_stops_the_slice_stops_the_fit():
    r = _edge("callback")
    assert r == {"phases": ["slice"], "epochs": 3, "stopped": "callback"}


def test_validation_the_model_cannot_know_is_refused(seqs):
    shifted = [[i + 1000 for i in s] for s in seqs[:50]]  # raw ids against encoded ones, say
    with pytest.raises(ValueError, match=r"validation: none of its 50 held-out items .* is an item of "
                                         r"the training sequences"):
        SASRec(**P).fit(seqs, validation=shifted)
    with pytest.raises(ValueError, match="validation: its item ids are strings and the training sequences' are not"):
        SASRec(**P).fit(seqs, validation=[[str(i) for i in s] for s in seqs[:50]])
