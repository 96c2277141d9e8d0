"""The model file: a zip of a JSON header (``fastsasrec.json``) and ``.npy`` arrays, no pickle.

The header holds the format name and version, the parameters, the engine's configuration
and tensor layout, and the SHA-256 of each array member; the arrays are the flat weights,
the item ids and their popularity.  The zip's CRC covers the arrays too.

A checkpoint (``fit(checkpoint=...)``) is the same kind of archive under the format name
``fastsasrec-checkpoint``: the model's arrays plus AdamW's moments (``m``, ``v``) and, with
early stopping, the best epoch's weights (``best_params``); its header adds the step, the
epochs done, the fit's record, the early-stopping state and the data's fingerprint.

Reading trusts nothing in the file: every size is checked against what the header implies
(and the header against the engine's ranges) before anything is allocated or the engine
is built, each member is read with a bound (``_archive``, the zip reading and the atomic
write; this module is the schema), and every failure is a ValueError that names the file
and the cause (or the OSError of opening it: missing, not permitted).
"""
from __future__ import annotations

import math
import numbers
import os
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from fastsasrec import _archive, _core, _features
from fastsasrec._archive import file_sha256  # noqa: F401  (the model's tag: batch, serve)
from fastsasrec._archive import save_target as _save_target  # estimator: a checkpoint's path
from fastsasrec._device import resolve_device
from fastsasrec._params import FEATURE_PARAMS

FORMAT_NAME = "fastsasrec"
# 1: the catalogue ascending; 2: in internal order, unique (a catalogue partial_fit grew).
# 3: item features (their vocabularies in the header; each item's values and the display
# names as arrays).  4: a feature column of times (kind "time").  5: the display names'
# column ("names_column", which partial_fit reads as names again).  A file is written as
# the lowest version that can hold it (1 whenever its catalogue is ascending and it has no
# features), so older readers read it, and a reader too old for it says so.
FORMAT_VERSION = 5
CHECKPOINT_NAME = "fastsasrec-checkpoint"
CHECKPOINT_VERSION = 4  # 2: item features, as in a model file; 3: a time column; 4: names_column
_TIME_SINCE = {FORMAT_NAME: 4, CHECKPOINT_NAME: 3}  # the first version with time columns
_NAMES_COLUMN_SINCE = {FORMAT_NAME: 5, CHECKPOINT_NAME: 4}  # ... with the names' column
_MAX_NAME = 1000  # characters of a column name a header may hold
HEADER = "fastsasrec.json"
_ARRAYS = ("params", "item_ids", "popularity")
_OPTIMIZER = ("m", "v")  # a checkpoint's; and "best_params" with an early-stopping best
_FEATURE_ARRAYS = ("feature_values", "feature_offsets")  # and "item_names" with names

# The engine's configuration keys and their types ("int", "float", "bool", "uint64" or
# "str"), from the engine's own table (cpp/include/fastsasrec/config.def).
_CONFIG_TYPES = {f["name"]: f["type"] for f in _core.config_schema()}

def layout(config: Dict[str, Any]) -> Tuple[List[Tuple[str, int, Tuple[int, ...]]], int]:
    """([(name, offset, shape)], n_params) of the engine's flat weights for ``config``,
    from the engine's own parameter table (cpp/src/model_parts.h) without allocating the
    model, so that a file's sizes are checked before the engine allocates them."""
    tensors, n_params = _core.param_layout(config)
    return [(str(n), int(o), tuple(int(x) for x in shape)) for n, o, shape in tensors], int(n_params)


# ----------------------------------------------------------------------------- save
def _check_finite(flat: np.ndarray, tensors: List[Tuple[str, int, Tuple[int, ...]]], path: str,
                  what: str = "weights") -> None:
    finite = np.isfinite(flat)
    if not finite.all():
        bad = int(flat.size - np.count_nonzero(finite))
        first = int(np.argmin(finite))
        where = next((n for n, o, s in tensors if o <= first < o + math.prod(s)), "?")
        raise ValueError(f"cannot save to {path!r}: {bad} of the model's {flat.size} {what} are NaN "
                         f"or infinite (the first in {where}); the training diverged: try a lower "
                         "learning_rate")


def _model_meta(state: Any, tensors: List[Tuple[str, int, Tuple[int, ...]]]) -> Dict[str, Any]:
    """The header fields a model file and a checkpoint share (``state``: a _Fitted)."""
    from fastsasrec import __version__
    from fastsasrec.data import is_ascending

    item_ids = state.item_ids
    params = dict(state.params)
    feats = state.features
    if feats is None:  # as a model without features was written before they existed
        for name in FEATURE_PARAMS:
            params.pop(name, None)
    return {
        "library_version": __version__,
        "params": params,
        "n_items": int(item_ids.size),
        "engine_config": dict(state.config),
        "tensors": [[n, o, list(s)] for n, o, s in tensors],
        "item_id_kind": "str" if item_ids.dtype.kind == "U" else "int",
        "item_ids_ascending": is_ascending(item_ids),
        "loss_history": list(state.loss_history),
        **({"defaults": state.defaults} if state.defaults else {}),
        **({"features": {"columns": feats.space.to_json(), "n_entries": int(feats.values.size),
                         "has_names": feats.names is not None,
                         **({"names_column": feats.names_column} if _names_column(state) else {})}}
           if feats is not None else {}),
    }


def _feature_arrays(state: Any) -> Dict[str, np.ndarray]:
    feats = state.features
    if feats is None:
        return {}
    out = {"feature_values": np.asarray(feats.values, dtype=np.int32),
           "feature_offsets": np.asarray(feats.offsets, dtype=np.int64)}
    if feats.names is not None:
        out["item_names"] = feats.names
    return out


def _has_time(state: Any) -> bool:
    """Whether the model's features have a time column (a file of _TIME_SINCE or later)."""
    f = state.features
    return f is not None and any(c.kind == "time" for c in f.space.columns)


def _names_column(state: Any) -> bool:
    """Whether the model's names came from a column whose name a file records (a file of
    _NAMES_COLUMN_SINCE or later): a string of 1.._MAX_NAME characters."""
    f = state.features
    col = f.names_column if f is not None and f.names is not None else None
    return isinstance(col, str) and 0 < len(col) <= _MAX_NAME


def _version(state: Any, fmt: str, base: int) -> int:
    """The lowest version of ``fmt`` that holds ``state``'s features (``base`` with them)."""
    if _names_column(state):
        return _NAMES_COLUMN_SINCE[fmt]
    return _TIME_SINCE[fmt] if _has_time(state) else base


def save(model: Any, path: "os.PathLike[str] | str") -> None:
    """Writes a fitted model to ``path`` through a temporary file in the same folder,
    fsynced and renamed over it, so a crash never leaves a half-written model; the file
    gets the permissions the umask gives a new file, and a symbolic link at ``path`` stays
    a link (its target is replaced).  Raises ValueError (non-finite weights, ``path`` not
    a regular file) or OSError, leaving any existing file untouched."""
    path, target, directory = _save_target(path)
    state = model._fitted()
    tensors = [(n, int(o), tuple(int(x) for x in s)) for n, o, s in state.engine.tensors()]
    flat = np.asarray(state.engine.get_params(), dtype=np.float32)
    _check_finite(flat, tensors, path)
    meta = _model_meta(state, tensors)
    version = _version(state, FORMAT_NAME, 3) if state.features is not None \
        else 1 if meta["item_ids_ascending"] else 2
    meta = {"format": FORMAT_NAME, "format_version": version, **meta}
    _archive.write(path, target, directory, HEADER, meta, {
        "params": flat,
        "item_ids": state.item_ids,
        "popularity": np.asarray(state.popularity, dtype=np.int64),
        **_feature_arrays(state),
    })


def save_checkpoint(path: "os.PathLike[str] | str", state: Any, progress: Dict[str, Any],
                    best_params: Optional[np.ndarray]) -> None:
    """Writes a training checkpoint of ``state`` (a _Fitted whose engine is being trained):
    its weights, AdamW's moments and step, the catalogue and popularity, and ``progress``
    (epoch, history, early-stopping state, fingerprint: JSON values), plus the best epoch's
    weights when early stopping holds them.  Atomic like ``save``."""
    path, target, directory = _save_target(path)
    engine = state.engine
    tensors = [(n, int(o), tuple(int(x) for x in s)) for n, o, s in engine.tensors()]
    flat = np.asarray(engine.get_params(), dtype=np.float32)
    _check_finite(flat, tensors, path)
    m, v, step = engine.optimizer_state()
    meta = {"format": CHECKPOINT_NAME, "format_version": _version(state, CHECKPOINT_NAME, 2),
            **_model_meta(state, tensors), "step": int(step), **progress,
            "has_best_params": best_params is not None}
    arrays = {"params": flat, "item_ids": state.item_ids,
              "popularity": np.asarray(state.popularity, dtype=np.int64), "m": m, "v": v,
              **_feature_arrays(state)}
    if best_params is not None:
        arrays["best_params"] = np.asarray(best_params, dtype=np.float32)
    _archive.write(path, target, directory, HEADER, meta, arrays)


# ----------------------------------------------------------------------------- load
def _is_number(x: Any) -> bool:
    """A JSON number that converts to a float (not a bool, not an integer too large)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return False
    try:
        float(x)
    except OverflowError:
        return False
    return True


def _check_config(config: Any, n_items: int, path: str) -> Dict[str, Any]:
    """The engine's configuration from the header, its keys, types and ranges checked."""
    if not isinstance(config, dict):
        raise ValueError(f"path {path!r}: engine_config must be an object, got {type(config).__name__}")
    for key, value in config.items():
        kind = _CONFIG_TYPES.get(key)
        if kind in ("int", "uint64"):
            lo, hi = (0, 2**64) if kind == "uint64" else (-2**31, 2**31)
            ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value < hi
        elif kind == "float":
            ok = _is_number(value) and math.isfinite(value)
        elif kind == "str":
            ok = isinstance(value, str)
        elif kind == "bool":
            ok = isinstance(value, bool)
        else:
            raise ValueError(f"path {path!r}: unknown engine_config key {key!r}")
        if not ok:
            raise ValueError(f"path {path!r}: engine_config {key} = {value!r} has the wrong type")
    for key in ("n_items", "factors", "n_layers", "max_seq"):
        if key not in config:
            raise ValueError(f"path {path!r}: engine_config has no {key}")
    if config["n_items"] != n_items:
        raise ValueError(f"path {path!r}: engine_config n_items={config['n_items']} differs from "
                         f"n_items={n_items}")
    try:
        _core.check_config(config)
    except (ValueError, RuntimeError, TypeError) as e:
        raise ValueError(f"path {path!r}: invalid engine_config: {e}") from None
    return dict(config)


def _check_tensors(saved: Any, config: Dict[str, Any], path: str) -> int:
    """n_params of ``config``, after checking that the header's tensor list is exactly the
    layout the configuration implies (names, shapes, contiguous offsets in order)."""
    expected, n_params = layout(config)
    if not isinstance(saved, list) or len(saved) != len(expected):
        count = len(saved) if isinstance(saved, list) else type(saved).__name__
        raise ValueError(f"path {path!r}: the header lists {count} tensors, its engine_config "
                         f"implies {len(expected)}")
    for entry, (name, off, shape) in zip(saved, expected):
        ok = (isinstance(entry, list) and len(entry) == 3 and entry[0] == name and entry[1] == off
              and isinstance(entry[2], list) and tuple(entry[2]) == shape)
        if not ok:
            raise ValueError(f"path {path!r}: tensor {entry!r} of the header does not follow from its "
                             f"engine_config (expected {[name, off, list(shape)]})")
    return n_params


def _read(f: Any, file_len: int, path: str, checkpoint: bool = False):
    """(header, config, arrays) of an open model file (or checkpoint), or ValueError
    saying what is wrong."""
    what = "checkpoint" if checkpoint else "model"
    fmt, max_version = (CHECKPOINT_NAME, CHECKPOINT_VERSION) if checkpoint else (FORMAT_NAME, FORMAT_VERSION)
    with zipfile.ZipFile(f, "r") as z:
        names = _archive.member_names(z, HEADER, path, what)
        meta = _archive.read_json(z, HEADER, file_len, path, what)
        if not isinstance(meta, dict) or meta.get("format") != fmt:
            got = meta.get("format") if isinstance(meta, dict) else None
            hint = ""
            if got == FORMAT_NAME and checkpoint:
                hint = ": it is a model file (SASRec.load reads it; resume= takes a checkpoint)"
            elif got == CHECKPOINT_NAME and not checkpoint:
                hint = ": it is a training checkpoint (fit(..., resume=path) continues from it)"
            raise ValueError(f"path {path!r} is not a fastsasrec {what} (format {got!r}){hint}")
        version = meta.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"path {path!r}: invalid format_version {version!r}")
        if version > max_version:
            raise ValueError(
                f"path {path!r} was written by a newer fastsasrec (format version {version}; "
                f"this version reads up to {max_version}): upgrade fastsasrec"
            )
        arrays_in = _ARRAYS
        if checkpoint:
            has_best = meta.get("has_best_params")
            if not isinstance(has_best, bool):
                raise ValueError(f"path {path!r}: invalid has_best_params {has_best!r}")
            arrays_in = _ARRAYS + _OPTIMIZER + (("best_params",) if has_best else ())
        space, n_entries, has_names, names_column = _features_header(meta, version, path)
        if space is not None:
            arrays_in = arrays_in + _FEATURE_ARRAYS + (("item_names",) if has_names else ())
        expected = (HEADER,) + tuple(name + ".npy" for name in arrays_in)
        for name in expected:
            if name not in names:
                raise ValueError(f"path {path!r} is missing {name}: the file is incomplete")
        extra = [n for n in names if n not in expected]
        if extra:
            raise ValueError(f"path {path!r}: unexpected zip member {extra[0]!r}")

        n_items = meta.get("n_items")
        if not isinstance(n_items, int) or isinstance(n_items, bool) or not 1 <= n_items < 2**31:
            raise ValueError(f"path {path!r}: invalid n_items {n_items!r}")
        config = _check_config(meta.get("engine_config"), n_items, path)
        n_params = _check_tensors(meta.get("tensors"), config, path)
        n_values = int(config.get("n_feature_values", 0))
        if (space.size if space is not None else 0) != n_values:
            raise ValueError(f"path {path!r}: engine_config n_feature_values={n_values} but the "
                             f"header's feature columns have {space.size if space else 0} values")
        kind = meta.get("item_id_kind", "int")
        if kind not in ("int", "str"):
            raise ValueError(f"path {path!r}: invalid item_id_kind {kind!r}")
        digests = meta.get("sha256")
        if (digests is None and checkpoint) or digests is not None and not (
                isinstance(digests, dict)
                and all(isinstance(digests.get(n + ".npy"), str) for n in arrays_in)):
            raise ValueError(f"path {path!r}: invalid sha256 field in the header")

        # Every member's size from the zip directory against what the header implies,
        # before any array is allocated.
        members = {name: _archive.member(z, name + ".npy", file_len, path) for name in arrays_in}
        floats = [name for name in arrays_in if name not in ("item_ids", "popularity", "item_names")
                  + _FEATURE_ARRAYS]
        for name in floats:
            _archive.check_sizes(members[name], 4 * n_params,
                         f"the {n_params} float32 {'weights' if name.endswith('params') else 'moments'} "
                         "of the header's engine_config", path)
        _archive.check_sizes(members["popularity"], 8 * n_items, f"the popularity of {n_items} items", path)
        if kind == "int":
            _archive.check_sizes(members["item_ids"], 8 * n_items, f"{n_items} int64 item ids", path)
        arrays, sums = {}, {}
        for name in floats:
            arrays[name], sums[name] = _archive.read_npy(z, members[name], n_params, "f", path, 4)
        arrays["item_ids"], sums["item_ids"] = _archive.read_npy(
            z, members["item_ids"], n_items, "i" if kind == "int" else "U", path,
            8 if kind == "int" else None)
        arrays["popularity"], sums["popularity"] = _archive.read_npy(z, members["popularity"], n_items, "i",
                                                             path, 8)
        if space is not None:
            _archive.check_sizes(members["feature_offsets"], 8 * (n_items + 2),
                                 f"the feature offsets of {n_items} items", path)
            _archive.check_sizes(members["feature_values"], 4 * n_entries,
                                 f"{n_entries} int32 feature values", path)
            arrays["feature_offsets"], sums["feature_offsets"] = _archive.read_npy(
                z, members["feature_offsets"], n_items + 2, "i", path, 8)
            arrays["feature_values"], sums["feature_values"] = _archive.read_npy(
                z, members["feature_values"], n_entries, "i", path, 4)
            _features.check_csr(arrays["feature_values"], arrays["feature_offsets"], n_items,
                                space.size, f"path {path!r}")
            if has_names:
                arrays["item_names"], sums["item_names"] = _archive.read_npy(
                    z, members["item_names"], n_items, "U", path)
            arrays["features"] = _features.ModelFeatures(
                space, arrays["feature_values"], arrays["feature_offsets"], arrays.get("item_names"),
                names_column)
    if digests is not None:
        for name in arrays_in:
            if digests[name + ".npy"].lower() != sums[name]:
                raise ValueError(f"path {path!r}: {name}.npy checksum mismatch (SHA-256): the file is "
                                 "corrupted or was altered")
    return meta, config, arrays


def _features_header(meta: Dict[str, Any], version: int, path: str):
    """(space, entries, has_names, names_column) of the header's item features; (None, 0,
    False, None) without."""
    f = meta.get("features")
    if f is None:
        return None, 0, False, None
    fmt = meta.get("format")
    if version < 3 and fmt == FORMAT_NAME or version < 2 and fmt == CHECKPOINT_NAME:
        raise ValueError(f"path {path!r}: item features in a file of format version {version}")
    base = {"columns", "n_entries", "has_names"}
    ok = (isinstance(f, dict) and (set(f) == base or set(f) == base | {"names_column"})
          and isinstance(f["n_entries"], int) and not isinstance(f["n_entries"], bool)
          and 0 <= f["n_entries"] < 2**31 and isinstance(f["has_names"], bool))
    if not ok:
        raise ValueError(f"path {path!r}: invalid features field in the header")
    names_column = f.get("names_column")
    if "names_column" in f:
        if version < _NAMES_COLUMN_SINCE[fmt]:
            raise ValueError(f"path {path!r}: a names_column in a file of format version {version}")
        if not (isinstance(names_column, str) and 0 < len(names_column) <= _MAX_NAME and f["has_names"]):
            raise ValueError(f"path {path!r}: invalid features.names_column in the header")
    space = _features.FeatureSpace.from_json(f["columns"], f"path {path!r}")
    if any(c.kind == "time" for c in space.columns) and version < _TIME_SINCE[fmt]:
        raise ValueError(f"path {path!r}: a time feature column in a file of format version {version}")
    return space, f["n_entries"], f["has_names"], names_column


def _check_arrays(arrays: Dict[str, np.ndarray], path: str, ascending_optional: bool) -> None:
    """The arrays' values: finite weights (and moments, v >= 0), unique item ids (ascending
    unless ``ascending_optional``: version 2 and checkpoints), popularity >= 0."""
    flat, ids, pop = arrays["params"], arrays["item_ids"], arrays["popularity"]
    for name in ("params", "best_params", "m", "v"):
        if name in arrays:
            finite = np.isfinite(arrays[name])
            if not finite.all():
                what = "weights" if name.endswith("params") else f"optimizer moments {name}"
                raise ValueError(f"path {path!r}: {arrays[name].size - np.count_nonzero(finite)} of "
                                 f"the {what} are NaN or infinite")
    if "v" in arrays and arrays["v"].size and float(arrays["v"].min()) < 0:
        raise ValueError(f"path {path!r}: the optimizer's second moments v hold a negative value")
    if ids.size > 1 and not (ids[1:] > ids[:-1]).all():
        uniq, counts = np.unique(ids, return_counts=True)
        if uniq.size != ids.size:
            dup = uniq[np.argmax(counts > 1)]
            raise ValueError(f"path {path!r}: item id {dup.item()!r} appears more than once")
        if not ascending_optional:
            raise ValueError(f"path {path!r}: the item ids are not in ascending order")
    if pop.size and int(pop.min()) < 0:
        raise ValueError(f"path {path!r}: negative popularity {int(pop.min())} for item "
                         f"{ids[int(np.argmin(pop))].item()!r}")
    # Counts of training interactions: their int64 total (the popular items' shares divide
    # by it) must not wrap around.  The float sum is within a part in 2**20 of the true one.
    if pop.size and float(pop.sum(dtype=np.float64)) >= 2.0**62:
        raise ValueError(f"path {path!r}: the popularity counts sum to more than 2**62 "
                         "interactions")


def _loss_history(meta: Dict[str, Any], path: str) -> List[float]:
    hist = meta.get("loss_history", [])
    if not isinstance(hist, list) or not all(_is_number(x) for x in hist):
        raise ValueError(f"path {path!r}: loss_history must be a list of numbers")
    return [float(x) for x in hist]


def _read_file(path: str, checkpoint: bool = False):
    """(header, config, arrays) of the file at ``path``, every failure a ValueError (or
    FileNotFoundError) naming the file and the cause."""
    what = "checkpoint" if checkpoint else "model"
    f, file_len = _archive.open_regular(path)
    with f, _archive.read_errors(path, what):
        meta, config, arrays = _read(f, file_len, path, checkpoint)
    _check_arrays(arrays, path, ascending_optional=checkpoint or meta["format_version"] >= 2)
    return meta, config, arrays


def _params_of(meta: Dict[str, Any], path: str) -> Dict[str, Any]:
    """The header's parameters; those of item features at their defaults in a file of a
    model without features (which leaves them out, as files before features did), and
    id_dropout 0 in a file of a model with features written before it existed (which
    trained without it)."""
    from fastsasrec._params import DEFAULTS

    params = meta.get("params")
    if not isinstance(params, dict):
        raise ValueError(f"path {path!r}: params must be an object")
    before = {name: DEFAULTS[name] for name in FEATURE_PARAMS}
    if meta.get("features") is not None:
        before["id_dropout"] = 0.0
    return {**before, **params}


def load(cls: Any, path: "os.PathLike[str] | str", device: str = "auto",
         num_threads: Optional[int] = None) -> Any:
    """A ``cls`` model read from a file written by ``save``, on ``device``, running with
    ``num_threads`` (None: 0, all cores; the thread count a file was saved with is never
    taken from it).  Raises FileNotFoundError, ValueError for anything wrong with the file
    (not a regular file, not a model, truncated, corrupted, inconsistent, written by a
    newer version, unreadable, weights whose forward pass is not finite)."""
    path = os.fspath(path)
    resolve_device(device)  # the caller's mistake, said before the file's
    meta, config, arrays = _read_file(path)
    loss_history = _loss_history(meta, path)
    params = _params_of(meta, path)
    params["device"] = device
    params["num_threads"] = 0
    params.setdefault("verbose", 0)
    try:
        model = cls(**params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"path {path!r}: invalid parameters in the model file ({e})") from None
    if num_threads is not None:
        model.set_params(num_threads=num_threads)
    engine = _core.Model(config, resolve_device(device, config), threads=model.num_threads)
    engine.set_params(arrays.pop("params"))  # freed before the probe copies the item table
    feats = arrays.get("features")
    if feats is not None:
        feats.attach(engine)
    _check_forward(engine, config, path)
    model._set_fitted(engine, config, arrays["item_ids"], arrays["popularity"].astype(np.int64),
                      loss_history, _defaults(meta, path) if "defaults" in meta else None,
                      features=feats)
    return model


def _check_forward(engine: Any, config: Dict[str, Any], path: str) -> None:
    """Refuses weights that are finite but whose forward pass is not (a file re-signed
    after its weights were changed, say to 3e38 each: every score NaN, so nothing would
    be recommended): the hidden states of two probe sessions (the first item; the first
    max_seq items) and their scores against every item must be finite."""
    n = min(int(config["n_items"]), int(config["max_seq"]))
    items = np.concatenate([[1], np.arange(1, n + 1)]).astype(np.int32)
    h = engine.session_states(items, np.array([0, 1, 1 + n], dtype=np.int64))
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(h).all() and np.isfinite(h @ engine.item_embeddings().T).all()
    if not finite:
        raise ValueError(f"path {path!r}: the weights give a non-finite forward pass (NaN or "
                         "infinite hidden states or scores for a probe session): the file is "
                         "corrupted or was altered, or its training diverged")


def _defaults(meta: Dict[str, Any], path: str) -> Dict[str, Dict[str, Any]]:
    """The header's record of the settings "auto" chose: {name: {"value", "why", ...}}."""
    d = meta["defaults"]
    ok = isinstance(d, dict) and all(
        isinstance(k, str) and isinstance(v, dict) and "value" in v and isinstance(v.get("why"), str)
        for k, v in d.items())
    if not ok:
        raise ValueError(f"path {path!r}: invalid defaults {d!r}")
    return d


def _int_field(meta: Dict[str, Any], key: str, path: str, lo: int = 0) -> int:
    x = meta.get(key)
    if not isinstance(x, int) or isinstance(x, bool) or not lo <= x < 2**62:
        raise ValueError(f"path {path!r}: invalid {key} {x!r}")
    return x


def _valid_decay(refit: Dict[str, Any]) -> bool:
    """A refit's decay_from, where present: the kept epoch count it decays after."""
    if "decay_from" not in refit:
        return True
    d = refit["decay_from"]
    return isinstance(d, int) and not isinstance(d, bool) and 0 <= d < refit["epochs"]


def load_checkpoint(path: "os.PathLike[str] | str") -> Dict[str, Any]:
    """What a checkpoint holds, checked: ``params`` (the fit's), ``config``, ``arrays``
    (params, m, v, item_ids, popularity, best_params when saved), ``step``, ``epoch``,
    ``loss_history``, ``history``, ``early_stopping``, ``fingerprint`` and ``refit`` (None,
    or the epochs and choice of an iterations="auto" fit's refit on everything, whose
    epochs the checkpoint counts).  Raises like ``load``."""
    path = os.fspath(path)
    meta, config, arrays = _read_file(path, checkpoint=True)
    loss_history = _loss_history(meta, path)
    epoch = _int_field(meta, "epoch", path)
    if epoch != len(loss_history):
        raise ValueError(f"path {path!r}: epoch {epoch} but {len(loss_history)} epochs in loss_history")
    history = meta.get("history")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ValueError(f"path {path!r}: history must be a list of objects")
    es = meta.get("early_stopping")
    ok = (isinstance(es, dict) and set(es) == {"best_score", "best_epoch", "since_best"}
          and (es["best_score"] is None or _is_number(es["best_score"]))
          and all(isinstance(es[k], int) and not isinstance(es[k], bool) and 0 <= es[k] <= epoch
                  for k in ("best_epoch", "since_best")))
    if not ok:
        raise ValueError(f"path {path!r}: invalid early_stopping state {es!r}")
    if (es["best_score"] is not None) != ("best_params" in arrays):
        raise ValueError(f"path {path!r}: early_stopping and best_params disagree")
    fingerprint = meta.get("fingerprint")
    if not isinstance(fingerprint, dict) or not isinstance(fingerprint.get("sha256"), str):
        raise ValueError(f"path {path!r}: invalid fingerprint {fingerprint!r}")
    refit = meta.get("refit")
    if refit is not None and not (isinstance(refit, dict) and isinstance(refit.get("epochs"), int)
                                  and not isinstance(refit["epochs"], bool) and refit["epochs"] >= 1
                                  and isinstance(refit.get("chosen"), dict)
                                  and _valid_decay(refit)):
        raise ValueError(f"path {path!r}: invalid refit {refit!r}")
    return dict(params=_params_of(meta, path), config=config, arrays=arrays,
                step=_int_field(meta, "step", path), epoch=epoch, loss_history=loss_history,
                history=history, early_stopping=es, fingerprint=fingerprint, refit=refit)
