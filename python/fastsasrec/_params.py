"""SASRec's hyper-parameters: their types and defaults, and the one place they are checked.

Python checks types and converts (integers, finite numbers, choice strings, the seed);
the types and choices of the parameters that are engine fields come from the engine's
table (``_core.config_schema()``, cpp/include/fastsasrec/config.def), and the ranges are
the engine's: ``_core.check_config`` raises ValueError with C++'s messages,
which name the parameter and the value.  Only the parameters the engine never sees
(``iterations``, ``verbose``) have their ranges here.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Optional

import numpy as np

from fastsasrec import _core
from fastsasrec._device import resolve_device

# The engine's config fields, from its own table (cpp/include/fastsasrec/config.def):
# name -> {name, type, default, min, max, range, choices, doc}, in the table's order.
ENGINE: Dict[str, Dict[str, Any]] = {f["name"]: f for f in _core.config_schema()}

LOSSES = ("auto",) + tuple(ENGINE["loss"]["choices"])
NEGATIVES = ("auto",) + tuple(ENGINE["negatives"]["choices"])
PRECISIONS = tuple(ENGINE["precision"]["choices"])

# The estimator's parameters in the constructor's order, with their defaults.  A parameter
# named as an engine field takes its kind from the engine's type; the others' kinds are
# _OWN_KINDS.  kind: "int", "float", "choice", "device", "seed" or "flag" (True, False or
# None); "int" and "float" parameters whose default is "auto" also take "auto" (chosen
# from the data by fit: _auto.py).
DEFAULTS: Dict[str, Any] = {
    "factors": 64, "n_layers": 2, "n_heads": 1, "max_seq": "auto", "dropout": "auto",
    "loss": "auto", "negatives": "auto", "logq_correction": None, "n_negatives": "auto",
    "gbce_t": 0.75, "learning_rate": "auto", "weight_decay": 0.0, "batch_size": 128,
    "iterations": "auto", "device": "auto", "random_state": 42, "verbose": 0, "num_threads": 0,
    "precision": "fp32", "feature_pooling": "mean", "feature_buckets": 10, "id_dropout": 0.0,
}
_OWN_KINDS = {"iterations": "int", "device": "device", "random_state": "seed", "verbose": "int",
              "num_threads": "int", "feature_buckets": "int"}
_ENGINE_KINDS = {"int": "int", "float": "float", "str": "choice", "bool": "flag", "uint64": "seed"}
# name -> (kind, default)
PARAMS: Dict[str, tuple] = {
    name: (_OWN_KINDS[name] if name in _OWN_KINDS else _ENGINE_KINDS[ENGINE[name]["type"]], default)
    for name, default in DEFAULTS.items()
}
AUTO = {name for name, (_, default) in PARAMS.items() if default == "auto"}
_CHOICES = {name: (("auto",) if name in AUTO else ()) + tuple(ENGINE[name]["choices"])
            for name, (kind, _) in PARAMS.items() if kind == "choice"}
# What the engine's range check sees for "auto" before the data is known.
_AUTO_PLACEHOLDER = {"max_seq": 50, "dropout": 0.3, "loss": "softmax", "negatives": "uniform",
                     "n_negatives": 256, "learning_rate": 1e-3}
_PYTHON_ONLY_MIN = {"iterations": 0, "verbose": 0, "feature_buckets": 1}  # the engine never sees these
_PYTHON_ONLY_MAX = {"feature_buckets": 1000}


def convert(name: str, value: Any) -> Any:
    """The value as the type the parameter takes, or ValueError naming both."""
    kind = PARAMS[name][0]
    if name in AUTO and isinstance(value, str) and value == "auto":
        return value
    if kind == "flag":
        return None if value is None else flag(value, name)
    if kind == "choice":
        if not isinstance(value, str) or value not in _CHOICES[name]:
            raise ValueError(f"{name} must be one of {_CHOICES[name]}, got {value!r}")
        return value
    if kind == "device":
        resolve_device(value)  # raises with the reason
        return value
    if kind == "seed":
        if value is None:
            return None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
                or not 0 <= value < 2**63:
            raise ValueError(f"random_state must be an integer in [0, 2**63) or None, got {value!r}")
        return int(value)
    if kind == "int":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            auto = ' (or "auto")' if name in AUTO else ""
            raise ValueError(f"{name} must be an integer, got {value!r}{auto}")
        value = int(value)
        if name in _PYTHON_ONLY_MIN:
            if value < _PYTHON_ONLY_MIN[name]:
                raise ValueError(f"{name} must be >= {_PYTHON_ONLY_MIN[name]}, got {value!r}")
            if value > _PYTHON_ONLY_MAX.get(name, value):
                raise ValueError(f"{name} must be <= {_PYTHON_ONLY_MAX[name]}, got {value!r}")
        elif not -2**31 <= value < 2**31:  # the engine's int: a type, not a range
            raise ValueError(f"{name} must be a 32-bit integer, got {value!r}")
        return value
    try:  # float() of an integer beyond the float range raises OverflowError
        number = None if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            else float(value)
    except OverflowError:
        number = None
    if number is None or not math.isfinite(number):
        auto = ' (or "auto")' if name in AUTO else ""
        raise ValueError(f"{name} must be a finite number, got {value!r}{auto}")
    return number


# The engine's fields a fit writes only for the losses that read them (engine_config), and
# only for a model with item features.
_LOSS_ONLY = ("negatives", "logq_correction", "gbce_t")
_FEATURES_ONLY = ("feature_pooling", "id_dropout")
# The estimator's parameters that only a model with item features records.
FEATURE_PARAMS = ("feature_pooling", "feature_buckets", "id_dropout")


def engine_config(params: Dict[str, Any], n_items: int, seed: int,
                  n_feature_values: int = 0) -> Dict[str, Any]:
    """The engine's configuration for a fit of ``params`` (no "auto" left but iterations)
    on n_items items (and a feature-value table of n_feature_values rows).  The sampler's
    keys are written only for the losses that read them, and the features' only with
    features (id_dropout only when it is not 0), so that other models' files stay as older
    versions wrote them."""
    given = {"n_items": n_items, "seed": seed}
    if n_feature_values:
        given.update(n_feature_values=n_feature_values, feature_pooling=params["feature_pooling"])
        if params["id_dropout"]:
            given.update(id_dropout=params["id_dropout"])
    cfg = {name: given[name] if name in given else params[name] for name in ENGINE
           if name in given or (name in params and name not in _LOSS_ONLY + _FEATURES_ONLY)}
    if params["loss"] == "sampled_softmax" and params["negatives"] != "uniform":
        cfg["negatives"] = params["negatives"]
        cfg["logq_correction"] = bool(params["logq_correction"])
    if params["loss"] == "gbce":
        cfg["gbce_t"] = params["gbce_t"]
    return cfg


def checked(params: Dict[str, Any], given: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``params`` updated with ``given`` (each converted), after the engine has checked the
    ranges of the whole set; raises ValueError for an unknown name or a bad value."""
    out = dict(params)
    for name, value in (given if given is not None else params).items():
        if name not in PARAMS:
            raise ValueError(f"unknown parameter {name!r}; valid: {sorted(PARAMS)}")
        out[name] = convert(name, value)
    # Without a catalogue, "auto" is checked as the loss with no catalogue checks.
    cfg = {k: v for k, v in out.items() if (k in ENGINE and v is not None) or k == "num_threads"}
    cfg.update({k: v for k, v in _AUTO_PLACEHOLDER.items() if cfg.get(k) == "auto"})
    if out["random_state"] is not None:
        cfg["seed"] = out["random_state"]
    if cfg.get("id_dropout"):  # its range checked as a model with features would check it
        cfg["n_feature_values"] = 1
    _core.check_config(cfg)
    return out


def flag(value: Any, name: str) -> bool:
    """value as a bool (True/False, a NumPy bool, or the integers 0 and 1), or ValueError
    naming it: a string such as "no" would otherwise count as true."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {value!r}")


def seed_or_none(value: Any, name: str) -> Optional[int]:
    """value as a seed (an int >= 0) or None, or ValueError naming it."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
    return int(value)


def positive_int(value: Any, name: str) -> int:
    """value as an int >= 1, or ValueError naming it (n, k, n_negatives, patience)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
