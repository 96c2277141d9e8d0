"""The model file: a zip of a JSON header (``fastsasrec.json``) and ``.npy`` arrays, no pickle.

The header holds the format name and version, the parameters, the engine's configuration
and tensor layout; the arrays are the flat weights, the item ids and their popularity.
The zip's CRC covers the arrays.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from fastsasrec import _core
from fastsasrec._device import resolve_device

FORMAT_NAME = "fastsasrec"
FORMAT_VERSION = 1
_ARRAYS = ("params", "item_ids", "popularity")


def save(model: Any, path: "os.PathLike[str] | str") -> None:
    """Writes a fitted model to ``path`` through a temporary file and a rename, so a crash
    never leaves a half-written model."""
    from fastsasrec import __version__

    path = os.fspath(path)
    engine, item_ids = model._engine, model._item_ids
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "params": model.get_params(),
        "n_items": int(item_ids.size),
        "engine_config": dict(model._config),
        "tensors": [[n, int(o), list(s)] for n, o, s in engine.tensors()],
        "item_id_kind": "str" if item_ids.dtype.kind == "U" else "int",
        "loss_history": model.loss_history_,
    }
    arrays = {"params": engine.get_params(), "item_ids": item_ids, "popularity": model._popularity}
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastsasrec-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            z.writestr("fastsasrec.json", json.dumps(meta, indent=1))
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
                z.writestr(name + ".npy", buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read(path: str):
    """(header, arrays) of a model file, or ValueError saying what is wrong with it."""
    try:
        with zipfile.ZipFile(path, "r") as z:
            names = set(z.namelist())
            if "fastsasrec.json" not in names:
                raise ValueError(f"path {path!r} is not a fastsasrec model (no fastsasrec.json)")
            meta = json.loads(z.read("fastsasrec.json").decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
                raise ValueError(f"path {path!r} is not a fastsasrec model (format {meta.get('format')!r})"
                                 if isinstance(meta, dict) else f"path {path!r} is not a fastsasrec model")
            version = meta.get("format_version")
            if not isinstance(version, int) or version < 1:
                raise ValueError(f"path {path!r}: invalid format_version {version!r}")
            if version > FORMAT_VERSION:
                raise ValueError(
                    f"path {path!r} was written by a newer fastsasrec (format version {version}; "
                    f"this version reads up to {FORMAT_VERSION}): upgrade fastsasrec"
                )
            arrays = {}
            for name in _ARRAYS:
                if name + ".npy" not in names:
                    raise ValueError(f"path {path!r} is missing {name}.npy: the file is incomplete")
                arrays[name] = np.lib.format.read_array(io.BytesIO(z.read(name + ".npy")), allow_pickle=False)
    except zipfile.BadZipFile as e:
        raise ValueError(f"path {path!r} is not a valid fastsasrec model file (truncated or corrupted: {e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"path {path!r}: corrupted model header ({e})") from None
    except (EOFError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"path {path!r}: could not read the model ({e})") from None
    return meta, arrays


def load(cls: Any, path: "os.PathLike[str] | str", device: str = "auto") -> Any:
    """A ``cls`` model read from a file written by ``save``, on ``device``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path {path!r} does not exist")
    meta, arrays = _read(path)
    params = dict(meta["params"])
    params["device"] = device
    params["verbose"] = 0 if "verbose" not in params else params["verbose"]
    try:
        model = cls(**params)
    except TypeError as e:
        raise ValueError(f"path {path!r}: unexpected parameters in the model file ({e})") from None
    config = dict(meta["engine_config"])
    n_items = int(meta["n_items"])
    item_ids, pop, flat = arrays["item_ids"], arrays["popularity"], arrays["params"]
    if item_ids.shape != (n_items,) or pop.shape != (n_items,):
        raise ValueError(f"path {path!r}: item ids do not match n_items={n_items}")
    if flat.dtype != np.float32 or flat.ndim != 1:
        raise ValueError(f"path {path!r}: weights must be a 1-d float32 array, got {flat.dtype} {flat.shape}")
    engine = _core.Model(config, resolve_device(device), threads=model.num_threads)
    if flat.size != engine.n_params:
        raise ValueError(f"path {path!r}: {flat.size} weights stored, the model needs {engine.n_params}")
    engine.set_params(flat)
    model._set_fitted(engine, config, item_ids, pop.astype(np.int64))
    model.loss_history_ = list(meta.get("loss_history", []))
    return model
