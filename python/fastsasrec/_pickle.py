"""Pickling SASRec (pickle, joblib, copy.deepcopy, multiprocessing): the parameters of the
next fit and, when fitted, the model file's bytes, so that a pickle holds what ``save``
writes and is read back through ``load``'s checks; the fit's record that the file does not
keep (``history_``, ``best_epoch_``, ``interrupted_``, ``validation_``, ``fitted_params_``)
travels beside it. The engine itself (C++ or GPU memory) never pickles."""
from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any, Dict

# A pickle's layout; a later layout may read this one, never the reverse.
STATE_VERSION = 1


def state_of(model: Any) -> Dict[str, Any]:
    """What ``SASRec.__getstate__`` returns."""
    state: Dict[str, Any] = {"fastsasrec_pickle": STATE_VERSION, "params": model.get_params()}
    fitted = model._state
    if fitted is None:
        return state
    with tempfile.TemporaryDirectory(prefix="fastsasrec-pickle-") as folder:
        path = os.path.join(folder, "model.fastsasrec")
        model.save(path)
        with open(path, "rb") as f:
            state["model_file"] = f.read()
    state["record"] = {"fitted_params": dict(fitted.params), "history": fitted.history,
                       "best_epoch": fitted.best_epoch, "interrupted": fitted.interrupted,
                       "validation": fitted.validation}
    return state


def restore(model: Any, state: Any) -> None:
    """``SASRec.__setstate__``: ``model`` (made by pickle, ``__init__`` not run) becomes the
    pickled one. A fitted model is loaded on the device its parameters name ("auto" by
    default), so a model pickled on a GPU machine with ``device="cuda"`` raises there, as
    ``load`` does."""
    if not isinstance(state, dict) or state.get("fastsasrec_pickle") != STATE_VERSION:
        version = state.get("fastsasrec_pickle") if isinstance(state, dict) else None
        raise ValueError(f"not a SASRec pickle this version of fastsasrec reads (layout {version!r}, "
                         f"this version reads {STATE_VERSION})")
    params = dict(state["params"])
    type(model).__init__(model, **params)
    if "model_file" not in state:
        return
    record = state["record"]
    with tempfile.TemporaryDirectory(prefix="fastsasrec-pickle-") as folder:
        path = os.path.join(folder, "model.fastsasrec")
        with open(path, "wb") as f:
            f.write(state["model_file"])
        loaded = type(model).load(path, device=params["device"], num_threads=params["num_threads"])
    fitted = loaded._state
    kept = dict(record["fitted_params"], device=fitted.params["device"],
                num_threads=fitted.params["num_threads"])
    model._publish(dataclasses.replace(fitted, params=kept, history=tuple(record["history"]),
                                       best_epoch=int(record["best_epoch"]),
                                       interrupted=bool(record["interrupted"]),
                                       validation=record["validation"]))
