"""The training procedure: epochs, early stopping on a slice fit holds out itself, the
refit on everything, checkpoints and resume, partial_fit's continued training, and the
progress shown while it runs.

Each function takes the estimator (its parameters, and the views that callbacks and
validation get) and returns the ``Fitted`` snapshot to publish; nothing here publishes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from fastsasrec import _auto, _core, _feature_ids, _features, _persist, _weights
from fastsasrec import metrics as _metrics
from fastsasrec._device import resolve_device
from fastsasrec._fitted import Fitted, check_catalogue, read_only
from fastsasrec._interrupts import CtrlC as _CtrlC, ctrl_c as _ctrl_c
from fastsasrec._params import engine_config, positive_int
from fastsasrec._progress import Watch
from fastsasrec._resume import _RESUME_FREE, _check_resumable, _fingerprint
from fastsasrec.data import Sequences, check_ids_compatible, flatten_sequences


def _all_finite(a: np.ndarray) -> bool:
    """Whether every value is finite (min and max propagate NaN; no array the size of a)."""
    return a.size == 0 or bool(np.isfinite(a.min()) and np.isfinite(a.max()))


@dataclasses.dataclass
class _Progress:
    """A fit's record while it runs: the loss (and logs) of each epoch done, and early
    stopping's best score, its epoch and weights, and the epochs since."""

    losses: List[float] = dataclasses.field(default_factory=list)
    history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = 0
    since_best: int = 0
    best_params: Optional[np.ndarray] = None


def _check_callbacks(callbacks: Any) -> None:
    if callbacks is not None and not all(callable(cb) for cb in callbacks):
        raise ValueError("callbacks must be a list of callables cb(model, epoch, logs)")


def _drop_short(sequences: Sequences, stacklevel: int = 4) -> Tuple[np.ndarray, np.ndarray]:
    """(flat ids, offsets) of the sequences of 2 or more items: the one place short
    sequences are dropped (the engine rejects them), with one warning giving their count."""
    n_seq = len(sequences)
    if n_seq == 0:
        raise ValueError("sequences is empty: nothing to train on")
    lengths = sequences.lengths
    short = lengths < 2
    if short.all():
        raise ValueError(
            f"every one of the {n_seq} sequences has fewer than 2 items: nothing to train on"
        )
    flat, offsets = sequences.items, sequences.offsets
    if short.any():
        warnings.warn(f"skipped {int(short.sum())} of {n_seq} sequences with fewer than 2 items",
                      stacklevel=stacklevel)
        flat = flat[np.repeat(~short, lengths)]
        offsets = np.concatenate(([0], np.cumsum(lengths[~short]))).astype(np.int64)
    return flat, offsets


def _continued_engine(state: Fitted, n_items: int) -> Tuple[Any, Dict[str, Any]]:
    """A new engine holding ``state``'s weights and optimizer state, for a catalogue of
    ``n_items`` >= its own: the new items' embedding rows (and their zero moments) are
    those a fresh model of the grown catalogue starts with (same seed)."""
    old = state.engine
    config = dict(state.config, n_items=n_items)
    engine = _core.Model(config, old.device, threads=state.params["num_threads"])
    params, (m, v, step) = old.get_params(), old.optimizer_state()
    if n_items != state.config["n_items"]:
        fresh = engine.get_params()  # the grown model's initialisation
        zeros = np.zeros_like(fresh)
        new_p, new_m, new_v = fresh.copy(), zeros, zeros.copy()
        rows = state.config["n_items"] + 1  # the padding row and the old items
        old_layout = {n: (int(o), tuple(sh)) for n, o, sh in old.tensors()}
        for name, off, shape in engine.tensors():
            o, old_shape = old_layout[name]
            n_old = math.prod(old_shape)
            if name == "item_emb":
                n_old = rows * int(shape[1])
            for dst, src in ((new_p, params), (new_m, m), (new_v, v)):
                dst[off:off + n_old] = src[o:o + n_old]
        params, m, v = new_p, new_m, new_v
    engine.set_params(params)
    engine.set_optimizer_state(m, v, step)
    return engine, config


def _catalogue(flat: np.ndarray, table: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item_ids ascending, internal ids of ``flat``, each item's count in ``flat``): the
    items of the sequences and of the features table (new products, count 0)."""
    if table is None or table.ids.size == 0:
        item_ids, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        return item_ids, (inverse.reshape(-1) + 1).astype(np.int32), counts
    item_ids = np.unique(np.concatenate((flat, table.ids)))
    internal = (np.searchsorted(item_ids, flat) + 1).astype(np.int32)
    return item_ids, internal, np.bincount(internal - 1, minlength=item_ids.size)


def _features_table(item_features: Any, item_names: Any, flat: np.ndarray, fitted: Any = None) -> Any:
    """The checked table of ``item_features``; ``fitted``: the model's features, whose time
    columns are read as times again."""
    if item_features is None:
        if item_names is not None:
            raise ValueError(f"item_names={item_names!r} names a column of item_features: "
                             "give item_features too")
        return None
    time = [c.name for c in fitted.space.columns if c.kind == "time"] if fitted is not None else ()
    if item_names is None and fitted is not None:
        item_names = _features.remembered_names(item_features, fitted)
    return _features.as_table(item_features, item_names, "str" if flat.dtype.kind == "U" else "int", time,
                              hints=fitted is None)


def _with_features(engine: Any, feats: Any) -> Any:
    """Gives a new engine the items' feature bags.  (The feature table starts at zero, so
    each column's "unknown" row, held by no fitted item, stays there.)"""
    if feats is not None:
        feats.attach(engine)
    return engine


def _cold_rows(state: Fitted) -> Optional[np.ndarray]:
    """The internal ids of a features model's new products (no training event), or None."""
    if state.features is None:
        return None
    cold = np.flatnonzero(np.asarray(state.popularity) == 0) + 1
    return cold if cold.size else None


def _finished(state: Fitted) -> Fitted:
    """A model with features: the id embeddings of the items no training sequence held
    (new products) set to zero, so that their features alone represent them (training
    only pushed those rows down, as negatives).  An interrupted fit's model too: it is
    the model the call returns."""
    cold = _cold_rows(state)
    if cold is None:
        return state
    _weights.zero_rows(state.engine, "item_emb", cold)
    return dataclasses.replace(state)  # a fresh cache: nothing computed before it


@contextlib.contextmanager
def _as_shipped(engine: Any, cold: Optional[np.ndarray]):
    """While the block runs, the engine's weights are those ``_finished`` would return (the
    new products' id rows zero), so that validation, early stopping and callbacks judge the
    model a fit returns; after it, the training's weights again, bit for bit."""
    if cold is None:
        yield
        return
    saved = engine.get_params()
    _weights.zero_rows(engine, "item_emb", cold)
    try:
        yield
    finally:
        engine.set_params(saved)


def fit(model: Any, sequences: Sequences, validation=None, early_stopping_patience=None,
         callbacks=None, checkpoint=None, checkpoint_every=1, resume=None, params=None,
         item_features=None, item_names=None):
    with _ctrl_c():
        state = _fit(model, sequences, validation, early_stopping_patience, callbacks, checkpoint,
                     checkpoint_every, resume, params, item_features, item_names)
    return _finished(state)


def _fit(model: Any, sequences: Sequences, validation=None, early_stopping_patience=None,
         callbacks=None, checkpoint=None, checkpoint_every=1, resume=None, params=None,
         item_features=None, item_names=None):
    if params is None:
        params = model.get_params()  # read once: a set_params meanwhile is for the next fit
    if early_stopping_patience is not None:
        early_stopping_patience = positive_int(early_stopping_patience, "early_stopping_patience")
        if validation is None:
            raise ValueError("early_stopping_patience needs validation= data to watch")
    _check_callbacks(callbacks)
    checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
    if checkpoint is not None:
        checkpoint = _persist._save_target(checkpoint, "checkpoint")[0]  # a bad path fails before training
    if validation is not None:
        validation = flatten_sequences(validation, "validation")
    flat, offsets = _drop_short(sequences, stacklevel=5)
    table = _features_table(item_features, item_names, flat)
    if table is not None:
        _feature_ids.check_ids(item_features, table, np.unique(flat))
    elif params.get("id_dropout"):
        warnings.warn(f"id_dropout={params['id_dropout']!r} drops items' ids to leave them to their "
                      "item features, and this fit has none: it changes nothing", stacklevel=4)
    item_ids, internal, counts = _catalogue(flat, table)
    check_catalogue(item_ids)
    if validation is not None:
        _check_validation(validation, item_ids)
    feats = _features.fitted(table, item_ids, params["feature_buckets"]) if table is not None else None
    fingerprint = _fingerprint(flat, offsets, feats) if checkpoint is not None or resume is not None else None
    lengths = np.diff(offsets)
    resolved, chosen = _auto.resolve(params, lengths, int(item_ids.size))
    start = None
    seed = None
    refit_ck = None  # a checkpoint of the refit on everything (iterations="auto")
    if resume is not None:
        ck = _persist.load_checkpoint(resume)
        _check_resumable(ck, resume, params, fingerprint, early_stopping_patience)
        config = ck["config"]
        engine = _core.Model(config, resolve_device(params["device"], config),
                             threads=params["num_threads"])
        arrays = ck["arrays"]
        engine.set_params(arrays["params"])
        if feats is not None:
            feats.attach(engine)
        engine.set_optimizer_state(arrays["m"], arrays["v"], ck["step"])
        params = dict(ck["params"], **{k: params[k] for k in _RESUME_FREE})
        es = ck["early_stopping"]
        start = _Progress(losses=list(ck["loss_history"]), history=list(ck["history"]),
                          best_score=-math.inf if es["best_score"] is None else es["best_score"],
                          best_epoch=es["best_epoch"], since_best=es["since_best"],
                          best_params=arrays.get("best_params"))
        seed = int(config["seed"])
        refit_ck = ck.get("refit")
    else:
        seed = params["random_state"]
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        config = engine_config(resolved, int(item_ids.size), seed,
                               feats.space.size if feats is not None else 0)
        engine = _with_features(_core.Model(config, resolve_device(params["device"], config),
                                            threads=params["num_threads"]), feats)
    iterations, carved, plan, patience_why = params["iterations"], None, None, ""
    full = (internal, offsets)
    if refit_ck is not None:  # the slice was done: continue the refit on everything
        iterations = int(refit_ck["epochs"])
    elif iterations == "auto":
        per_item = float(lengths.sum()) / max(1, int(item_ids.size))
        plan = _auto.schedule(int(lengths.size), int(config["batch_size"]), per_item)
        if validation is None:
            carved = _auto.carve_slice(lengths, seed)
        if validation is None and carved is None:
            iterations = plan["fixed"]
            chosen["iterations"] = {"value": iterations, "why": (
                f"too few sequences of 3 or more items ({int((lengths >= 3).sum())} < "
                f"{_auto.SLICE_MIN_USERS}) to hold a validation slice out: about "
                f"{_auto.STEPS_FIXED} optimizer steps, within 20..200 epochs")}
        else:
            iterations = plan["max_epochs"]
            if early_stopping_patience is None:
                early_stopping_patience = plan["patience"]
                floor = _auto.patience_floor(per_item)
                patience_why = (f", about {_auto.STEPS_PATIENCE} optimizer steps and at least {floor} "
                                f"at {per_item:,.0f} training events an item;")
        if carved is not None:
            # The slice's sequences, whole, are the validation data (evaluate holds
            # each one's last item out); training sees them without that item.
            validation = Sequences._of(flat, offsets).take(carved)
            drop = np.zeros(lengths.size, dtype=np.int64)
            drop[carved] = 1
            rest = Sequences._of(internal, offsets).head(drop)
            internal, offsets = rest.items, rest.offsets
    state = Fitted(engine, config, params, read_only(item_ids),
                    read_only(counts.astype(np.int64)), features=feats)
    if refit_ck is not None:
        state = train(model, state, *full, iterations, None, None, callbacks, start, checkpoint,
                      checkpoint_every, fingerprint, extra={"refit": refit_ck}, phase="refit",
                      lr_scale=_refit_decay(refit_ck))
        chosen["iterations"] = dict(refit_ck["chosen"])
        kept = refit_ck.get("trained")  # a warm refit's epochs of training in all
        if isinstance(kept, int) and not isinstance(kept, bool) and not state.interrupted:
            state = dataclasses.replace(state, best_epoch=kept)
        return dataclasses.replace(state, defaults=chosen)
    smooth = plan["smooth"] if carved is not None else 1
    state = train(model, state, internal, offsets, iterations, validation,
                  early_stopping_patience, callbacks, start, checkpoint,
                  checkpoint_every, fingerprint, phase="train" if carved is None else "slice",
                  smooth=smooth)
    if params["iterations"] == "auto" and "iterations" not in chosen:
        ran, kept = len(state.loss_history), state.best_epoch
        source = (f"a validation slice: the last items of {carved.size} of the {lengths.size} "
                  "sequences, held out of training" if carved is not None
                  else "the validation sequences given")
        stopped = bool(state.history) and state.history[-1].get("stopped") == "callback"
        if carved is None or state.interrupted or stopped:
            after = "; the best epoch's weights are kept" + ("" if not stopped else
                                                              " (a callback stopped the fit)")
        elif _auto.REFIT == "continue":
            after = (f"; then the best epoch's weights train {max(1, math.ceil(_auto.REFIT_SHARE * kept))} "
                     f"more epochs ({_auto.REFIT_SHARE:.0%} of {kept}) on everything"
                     + (", the learning rate decaying linearly to zero" if _auto.REFIT_DECAY else "")
                     + ", the held-out items included: they are each sequence's most recent "
                     "items, which the next-item task leans on most")
        else:
            after = ("; then a fresh model (same seed) is trained on everything, the held-out "
                     f"items included, for those {kept} epochs: they are each sequence's most "
                     "recent items, which the next-item task leans on most")
        chosen["iterations"] = {"value": kept, "epochs_run": ran, "why": (
            f"early stopping on {source} (NDCG@10 after each epoch"
            + (f", averaged over the last {smooth} epochs" if smooth > 1 else "")
            + f", patience {early_stopping_patience} epochs{patience_why or ','} at most "
            f"{iterations}){after}")}
        if carved is not None and not state.interrupted and not stopped and _auto.REFIT == "continue":
            # The best epoch's weights (restored) go on learning on everything: the kept
            # model's lineage is the slice's epochs 1..kept, then kept+1..kept+more.
            more = max(1, math.ceil(_auto.REFIT_SHARE * kept))
            refit = {"epochs": kept + more, "chosen": chosen["iterations"], "trained": kept + more}
            if _auto.REFIT_DECAY:
                refit["decay_from"] = kept
            state = _refit(state, lambda: train(
                model, state, *full, kept + more, None, None, callbacks,
                _Progress(losses=list(state.loss_history[:kept]), history=list(state.history)),
                checkpoint, checkpoint_every, fingerprint, extra={"refit": refit},
                phase="refit", lr_scale=_refit_decay(refit)))
        elif carved is not None and not state.interrupted and not stopped:
            refit = {"epochs": kept, "chosen": chosen["iterations"]}
            fresh = _with_features(_core.Model(config, resolve_device(params["device"], config),
                                               threads=params["num_threads"]), feats)
            again = Fitted(fresh, config, params, read_only(item_ids),
                            read_only(counts.astype(np.int64)), features=feats)
            # The refit's history follows the slice's, which its checkpoints keep too.
            state = _refit(state, lambda: train(
                model, again, *full, kept, None, None, callbacks, _Progress(history=list(state.history)),
                checkpoint, checkpoint_every, fingerprint, extra={"refit": refit}, phase="refit"))
    return dataclasses.replace(state, defaults=chosen)


def _refit(slice_state: Fitted, go: Callable[[], Fitted]) -> Fitted:
    """The refit ``go`` trains; when Ctrl-C stops it before its first epoch ends, the
    slice's kept model instead (its weights as the slice left them), interrupted: the
    slice's epochs are not lost."""
    kept = slice_state.engine.get_params()
    try:
        return dataclasses.replace(go(), validation=slice_state.validation)
    except KeyboardInterrupt:
        slice_state.engine.set_params(kept)
        warnings.warn(f"training interrupted in the refit's first epoch: the model keeps the weights "
                      f"of epoch {slice_state.best_epoch}, the held-out slice's best", stacklevel=4)
        return dataclasses.replace(slice_state, interrupted=True)


def _check_validation(validation: Sequences, item_ids: np.ndarray) -> None:
    """Refuses validation sequences whose held-out items (each one's last) the model cannot
    know: every score would be 0, and early stopping would keep epoch 1 without a word."""
    if validation.items.size and (validation.items.dtype.kind == "U") != (item_ids.dtype.kind == "U"):
        raise ValueError("validation: its item ids are " + ("strings" if validation.items.dtype.kind == "U"
                         else "integers") + " and the training sequences' are not")
    ends = validation.offsets[1:][validation.lengths >= 2] - 1
    last = validation.items[ends]
    if last.size and not np.isin(last, item_ids).any():
        raise ValueError(f"validation: none of its {last.size} held-out items (each sequence's last, "
                         f"e.g. {last[0].item()!r}) is an item of the training sequences, so every "
                         "score would be 0; give sequences of the same ids as the training ones")


def _refit_decay(refit: Dict[str, Any]) -> Optional[Callable[[int], float]]:
    """The continued refit's learning-rate schedule (epoch -> multiplier), or None."""
    kept = refit.get("decay_from")
    if not isinstance(kept, int) or isinstance(kept, bool):
        return None
    more = int(refit["epochs"]) - kept
    return lambda epoch: _auto.refit_lr_scale(epoch, kept, more)


def train(model: Any, state: Fitted, internal, offsets, total: int, validation=None,
           patience=None, callbacks=None, start: "Optional[_Progress]" = None,
           checkpoint=None, every: int = 1, fingerprint=None,
           extra: Optional[Dict[str, Any]] = None, phase: str = "train",
           verbose: Optional[int] = None, smooth: int = 1,
           lr_scale: Optional[Callable[[int], float]] = None) -> Fitted:
    """Trains ``state``'s engine, which no one else sees yet, until ``total`` epochs are
    done (``start``: those done before, and the early-stopping state; ``phase``: the
    history's and the progress line's name of this training; ``verbose``: the progress
    shown, by default the fit's parameter; ``smooth``: early stopping watches the mean of
    the phase's last ``smooth`` validation scores, logged as ``val_NDCG@10_smoothed``, and
    keeps the weights of the epoch that ends the best run of them; ``lr_scale``: epoch ->
    learning_rate's multiplier in it, 1 again after), and returns the
    snapshot to publish: the fit's record filled in, the best epoch's weights restored.
    Raises, with nothing published, when the loss or the weights are not finite, or on
    Ctrl-C before an epoch of this call is done."""
    engine, params = state.engine, state.params
    cold = _cold_rows(state)
    lengths = np.diff(offsets)
    tokens = int((np.minimum(lengths, state.config["max_seq"] + 1) - 1).clip(min=0).sum())
    run = start if start is not None else _Progress()
    first = len(run.losses)
    saved_at = -1  # the epoch count of the last checkpoint written
    # Only the main thread receives signals: elsewhere the epochs need no backup.
    check_signals = threading.current_thread() is threading.main_thread()

    def record(interrupted: bool = False) -> Fitted:  # the snapshot as of now
        return dataclasses.replace(
            state, loss_history=tuple(run.losses), history=tuple(run.history),
            best_epoch=run.best_epoch if run.best_params is not None else len(run.losses),
            interrupted=interrupted)

    def save_checkpoint() -> None:
        nonlocal saved_at
        if checkpoint is None or saved_at == len(run.losses):
            return
        _persist.save_checkpoint(checkpoint, record(), {
            "epoch": len(run.losses), "loss_history": run.losses, "history": run.history,
            "early_stopping": {"best_score": None if run.best_params is None else run.best_score,
                               "best_epoch": run.best_epoch, "since_best": run.since_best},
            "fingerprint": fingerprint, **(extra or {})}, run.best_params)
        saved_at = len(run.losses)

    watch = Watch(params["verbose"] if verbose is None else verbose, phase, total, first, patience)
    interrupted = False
    try:
        # A checkpoint written as early stopping fired resumes stopped, not one epoch on.
        done = patience is not None and run.best_params is not None and run.since_best >= patience
        while len(run.losses) < total and not done:
            epoch = len(run.losses) + 1
            if lr_scale is not None:
                engine.set_lr_scale(lr_scale(epoch))
            guard = _CtrlC.active
            if guard is not None:  # a Ctrl-C that waited since the last epoch: now
                guard.check()
                guard.in_epoch = True
            t0 = time.perf_counter()
            try:
                loss = engine.train_epoch(internal, offsets, epoch - 1, check_signals=check_signals)
            finally:
                if guard is not None:
                    guard.in_epoch = False
            dt = time.perf_counter() - t0
            if not math.isfinite(loss):
                raise RuntimeError(
                    f"training diverged at epoch {epoch}: loss is {loss}; lower learning_rate"
                )
            run.losses.append(float(loss))
            logs: Dict[str, Any] = {"phase": phase, "epoch": epoch, "loss": float(loss),
                                    "tokens_per_s": tokens / max(dt, 1e-9)}
            if validation is not None:
                with _as_shipped(engine, cold):
                    val = _metrics.evaluate(model._view(record()), validation, k=10)
                logs.update({f"val_{k}": v for k, v in val.items() if k.endswith("@10")})
                score = val["NDCG@10"]
                if smooth > 1:  # the phase's earlier scores are in the history, resumed too
                    last = [h["val_NDCG@10"] for h in run.history
                            if h.get("phase") == phase and "val_NDCG@10" in h][-(smooth - 1):]
                    score = float(np.mean(last + [score]))
                    logs["val_NDCG@10_smoothed"] = score
                if score > run.best_score:
                    run.best_score, run.best_epoch, run.since_best = score, epoch, 0
                    run.best_params = engine.get_params()
                else:
                    run.since_best += 1
            logs["seconds"] = time.perf_counter() - t0  # the epoch and its validation
            run.history.append(logs)
            watch.update(logs, (run.best_score, run.best_epoch) if validation is not None else None,
                         run.since_best)
            view = model._view(record())
            with _as_shipped(engine, cold if callbacks else None):
                stop = any(bool(cb(view, epoch, logs)) for cb in (callbacks or []))
            if stop:
                logs["stopped"] = "callback"  # and an "auto" fit does not refit after it
            if patience is not None and run.since_best >= patience:
                stop = True
            if stop or len(run.losses) == total or (epoch - first) % every == 0:
                save_checkpoint()
            if stop:
                break
    except KeyboardInterrupt:
        if len(run.losses) == first:
            raise  # no epoch of this call done: nothing to keep
        interrupted = True
        best = run.best_params is not None and run.best_epoch != len(run.losses)
        warnings.warn(
            (f"training interrupted after epoch {len(run.losses)}: the model keeps the weights of "
             f"epoch {run.best_epoch}, the best validated so far") if best else
            (f"training interrupted: the model keeps the weights of epoch {len(run.losses)}, "
             "its last completed one"),
            stacklevel=3,
        )
        save_checkpoint()
    finally:
        watch.close()
        if lr_scale is not None:
            engine.set_lr_scale(1.0)
    if run.best_params is not None and run.best_epoch != len(run.losses):
        engine.set_params(run.best_params)
    if not _all_finite(engine.get_params()):
        raise RuntimeError(
            f"training diverged: the weights after epoch {len(run.losses)} are not finite; "
            "lower learning_rate"
        )
    out = record(interrupted)
    if validation is not None and run.history and "val_NDCG@10" in run.history[-1]:
        out = dataclasses.replace(out, validation=against_popular(model, out, validation, run))
    return out

def against_popular(model: Any, state: Fitted, validation: Sequences, run: "_Progress") -> Dict[str, Any]:
    """The kept weights' validation NDCG@10 against the most-popular items' on the same
    sequences; a warning when the model loses (its recommendations would be worse than
    the popular items it answers unknown sessions with)."""
    kept = run.best_epoch if run.best_params is not None else len(run.losses)
    score = next(h["val_NDCG@10"] for h in run.history if h["epoch"] == kept) \
        if any(h["epoch"] == kept for h in run.history) else run.history[-1]["val_NDCG@10"]
    pop = _metrics.popular_baseline(model._view(state), validation, k=10)["NDCG@10"]
    if score < pop:
        warnings.warn(
            f"the trained model is worse than recommending the most popular items on the "
            f"validation sequences (NDCG@10 {score:.4f} against {pop:.4f}): its "
            "recommendations would lose to the popularity ranking; train longer, change "
            "learning_rate or dropout, or check that the sequences are in time order",
            stacklevel=5,
        )
    return {"NDCG@10": float(score), "most_popular_NDCG@10": float(pop), "epoch": int(kept),
            "beats_most_popular": bool(score >= pop)}


def partial_fit(model: Any, sequences: Any, epochs: int = 1, callbacks: Any = None,
                item_features: Any = None, item_names: Any = None) -> Fitted:
    """SASRec.partial_fit's model: the fitted one trained ``epochs`` more epochs on
    ``sequences``, new items (of the sequences, and of ``item_features``: new products)
    appended to its catalogue (see SASRec.partial_fit)."""
    flat = flatten_sequences(sequences, "sequences")
    epochs = positive_int(epochs, "epochs")
    state = model._state
    if state is None:
        params = dict(model.get_params(), iterations=epochs)
        return fit(model, flat, callbacks=callbacks, params=params, item_features=item_features,
                   item_names=item_names)
    _check_callbacks(callbacks)
    if item_features is not None and state.features is None:
        raise ValueError("item_features: this model was fitted without item features; fit it "
                         "with item_features to give them")
    # No events, and a table: its products join the catalogue, and nothing trains.
    listing = len(flat) == 0 and item_features is not None
    items, offsets = (flat.items, flat.offsets) if listing else _drop_short(flat, stacklevel=4)
    check_ids_compatible(items, state.item_ids, "sequences")
    table = _features_table(item_features, item_names, state.item_ids, state.features)
    if table is not None:
        _feature_ids.check_ids(item_features, table, np.union1d(state.item_ids, items), new_only=True)
    internal = state.encode(items)
    unknown = internal == 0
    V = int(state.item_ids.size)
    candidates = items[unknown]
    if table is not None and table.ids.size:
        candidates = np.concatenate((candidates, table.ids[state.encode(table.ids) == 0]))
    new_ids = np.unique(candidates)
    check_catalogue(new_ids)
    internal[unknown] = (V + 1 + np.searchsorted(new_ids, items[unknown])).astype(np.int32)
    n_items = V + int(new_ids.size)
    item_ids = np.concatenate((state.item_ids, new_ids)) if new_ids.size else state.item_ids
    popularity = np.bincount(internal - 1, minlength=n_items).astype(np.int64)
    popularity[:V] += state.popularity
    engine, config = _continued_engine(state, n_items)
    feats = state.features
    if feats is not None:
        feats = feats.grown(table, item_ids)
        feats.attach(engine)
        # New items start from their features alone: a zero id embedding.
        _weights.zero_rows(engine, "item_emb", np.arange(V + 1, n_items + 1))
    grown = dataclasses.replace(state, engine=engine, config=config,
                                item_ids=read_only(item_ids), popularity=read_only(popularity),
                                interrupted=False, features=feats)
    if listing:
        return _finished(grown)
    start = _Progress(losses=list(state.loss_history), history=list(state.history))
    # verbose is the estimator's now (a runtime setting, like num_threads), not the fit's.
    with _ctrl_c():
        return _finished(train(model, grown, internal, offsets, len(state.loss_history) + epochs,
                               start=start, callbacks=callbacks, verbose=model.get_params()["verbose"]))
