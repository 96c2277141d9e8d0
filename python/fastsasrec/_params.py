"""SASRec's hyper-parameters: their types and defaults, and the one place they are checked.

Python checks types and converts (integers, finite numbers, choice strings, the seed);
the ranges are the engine's: ``_core.check_config`` raises ValueError with C++'s messages,
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

LOSSES = ("auto", "sampled_softmax", "softmax", "bce", "gbce")
NEGATIVES = ("auto", "uniform", "popularity", "in_batch", "mixed")
PRECISIONS = ("fp32", "bf16")

# name -> (kind, default), in the constructor's order.  kind: "int", "float", "choice",
# "device", "seed" or "flag" (True, False or None); "int" and "float" parameters whose
# default is "auto" also take "auto" (chosen from the data by fit: _auto.py).
PARAMS: Dict[str, tuple] = {
    "factors": ("int", 64),
    "n_layers": ("int", 2),
    "n_heads": ("int", 1),
    "max_seq": ("int", "auto"),
    "dropout": ("float", "auto"),
    "loss": ("choice", "auto"),
    "negatives": ("choice", "auto"),
    "logq_correction": ("flag", None),
    "n_negatives": ("int", "auto"),
    "gbce_t": ("float", 0.75),
    "learning_rate": ("float", 1e-3),
    "weight_decay": ("float", 0.0),
    "batch_size": ("int", 128),
    "iterations": ("int", "auto"),
    "device": ("device", "auto"),
    "random_state": ("seed", 42),
    "verbose": ("int", 0),
    "num_threads": ("int", 0),
    "precision": ("choice", "fp32"),
}
DEFAULTS: Dict[str, Any] = {name: default for name, (_, default) in PARAMS.items()}
_CHOICES = {"loss": LOSSES, "negatives": NEGATIVES, "precision": PRECISIONS}
AUTO = {name for name, (_, default) in PARAMS.items() if default == "auto"}
# What the engine's range check sees for "auto" before the data is known.
_AUTO_PLACEHOLDER = {"max_seq": 50, "dropout": 0.3, "loss": "softmax", "negatives": "uniform",
                     "n_negatives": 256}
_PYTHON_ONLY_MIN = {"iterations": 0, "verbose": 0}  # the engine never sees these


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


def engine_config(params: Dict[str, Any], n_items: int, seed: int) -> Dict[str, Any]:
    """The engine's configuration for a fit of ``params`` (no "auto" left but iterations)
    on n_items items.  The sampler's keys are written only for the losses that read them,
    so that other models' files stay as older versions wrote them."""
    cfg = dict(
        n_items=n_items, factors=params["factors"], n_heads=params["n_heads"],
        n_layers=params["n_layers"], max_seq=params["max_seq"], dropout=params["dropout"],
        loss=params["loss"], n_negatives=params["n_negatives"],
        learning_rate=params["learning_rate"], weight_decay=params["weight_decay"],
        batch_size=params["batch_size"], seed=seed, precision=params["precision"],
    )
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
    cfg = {k: v for k, v in out.items() if k in ("factors", "n_heads", "n_layers", "max_seq",
                                                 "dropout", "loss", "negatives", "n_negatives",
                                                 "gbce_t", "learning_rate", "weight_decay",
                                                 "batch_size", "precision", "num_threads")}
    cfg.update({k: v for k, v in _AUTO_PLACEHOLDER.items() if cfg.get(k) == "auto"})
    if out["random_state"] is not None:
        cfg["seed"] = out["random_state"]
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
