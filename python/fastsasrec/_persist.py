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
is built, each member is read with a bound, and every failure is a ValueError that names
the file and the cause (or the OSError of opening it: missing, not permitted).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import numbers
import os
import stat
import struct
import tempfile
import threading
import zipfile
import zlib
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from fastsasrec import _core
from fastsasrec._device import resolve_device

FORMAT_NAME = "fastsasrec"
# 1: the catalogue ascending; 2: in internal order, unique (a catalogue partial_fit grew).
# A file is written as version 1 whenever its catalogue is ascending, so older readers
# read it.
FORMAT_VERSION = 2
CHECKPOINT_NAME = "fastsasrec-checkpoint"
CHECKPOINT_VERSION = 1
HEADER = "fastsasrec.json"
_ARRAYS = ("params", "item_ids", "popularity")
_OPTIMIZER = ("m", "v")  # a checkpoint's; and "best_params" with an early-stopping best

_MAX_MEMBERS = 64               # beyond this the zip is not ours, whatever its names
_MAX_HEADER_BYTES = 16 << 20    # the JSON header (loss history included)
_MAX_NPY_PREFIX = 64 << 10      # an .npy member's magic, version and header dict
_MAX_RATIO = 100                # uncompressed / compressed bytes of a member ...
_RATIO_FREE_BYTES = 1 << 20     # ... once it is larger than this
_CHUNK = 1 << 20

try:
    import lzma
    _LZMA_ERRORS: tuple = (lzma.LZMAError,)
except ImportError:  # pragma: no cover - Python built without lzma
    _LZMA_ERRORS = ()
_STREAM_ERRORS = (EOFError, NotImplementedError, RuntimeError, KeyError, OverflowError, zlib.error,
                  struct.error) + _LZMA_ERRORS

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
_umask_lock = threading.Lock()


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux),
    else by setting and restoring it under a lock (restrictively meanwhile, so that a file
    another thread creates in that instant is never more open than it should be)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    """Makes a rename in ``directory`` durable where the system allows it (some file
    systems and Windows cannot open or sync a folder: then nothing is done)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _npy_bytes(arr: np.ndarray) -> memoryview:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getbuffer()  # no copy of the (possibly large) weights


def _save_target(path: "os.PathLike[str] | str") -> Tuple[str, str, str]:
    """(path, the file to replace, its folder) after the checks a save makes first."""
    path = os.fspath(path)
    target = os.path.realpath(path) if os.path.islink(path) else path
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"cannot save to {path!r}: it is a folder; give a file name")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ValueError(f"cannot save to {path!r}: it is {_kind(st.st_mode)}, not a regular file")
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save to {path!r}: the folder {directory!r} does not exist")
    return path, target, directory


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


def _write(path: str, target: str, directory: str, meta: Dict[str, Any],
           arrays: Dict[str, np.ndarray]) -> None:
    """The archive of ``meta`` (plus each array's SHA-256) and ``arrays`` written to a
    temporary file in ``directory``, fsynced, given the umask's permissions and renamed
    over ``target``; the folder is fsynced after.  On any failure the temporary file is
    removed and ``target`` is untouched."""
    members = {name + ".npy": _npy_bytes(a) for name, a in arrays.items()}
    meta = dict(meta, sha256={name: hashlib.sha256(data).hexdigest() for name, data in members.items()})
    header = json.dumps(meta, indent=1)
    mode = 0o666 & ~_umask()
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fastsasrec-", suffix=".tmp", dir=directory)
    except OSError as e:
        raise type(e)(e.errno, f"cannot save to {path!r}: cannot create a file in {directory!r} "
                               f"({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
                z.writestr(HEADER, header)
                for name, data in members.items():
                    z.writestr(name, data)
            f.flush()
            os.chmod(tmp, mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def _model_meta(state: Any, tensors: List[Tuple[str, int, Tuple[int, ...]]]) -> Dict[str, Any]:
    """The header fields a model file and a checkpoint share (``state``: a _Fitted)."""
    from fastsasrec import __version__
    from fastsasrec.data import is_ascending

    item_ids = state.item_ids
    return {
        "library_version": __version__,
        "params": dict(state.params),
        "n_items": int(item_ids.size),
        "engine_config": dict(state.config),
        "tensors": [[n, o, list(s)] for n, o, s in tensors],
        "item_id_kind": "str" if item_ids.dtype.kind == "U" else "int",
        "item_ids_ascending": is_ascending(item_ids),
        "loss_history": list(state.loss_history),
        **({"defaults": state.defaults} if state.defaults else {}),
    }


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, read a MiB at a time (the model's tag in what it
    serves and scores)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    meta = {"format": FORMAT_NAME, "format_version": 1 if meta["item_ids_ascending"] else 2, **meta}
    _write(path, target, directory, meta, {
        "params": flat,
        "item_ids": state.item_ids,
        "popularity": np.asarray(state.popularity, dtype=np.int64),
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
    meta = {"format": CHECKPOINT_NAME, "format_version": CHECKPOINT_VERSION,
            **_model_meta(state, tensors), "step": int(step), **progress,
            "has_best_params": best_params is not None}
    arrays = {"params": flat, "item_ids": state.item_ids,
              "popularity": np.asarray(state.popularity, dtype=np.int64), "m": m, "v": v}
    if best_params is not None:
        arrays["best_params"] = np.asarray(best_params, dtype=np.float32)
    _write(path, target, directory, meta, arrays)


# ----------------------------------------------------------------------------- load
class _Bounded:
    """A member's stream read with a cap on the bytes taken, hashing what it gives."""

    def __init__(self, raw: Any, limit: int):
        self.raw, self.limit, self.count = raw, limit, 0
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self.limit - self.count:
            n = self.limit - self.count + 1  # one byte over the cap says the cap was passed
        data = self.raw.read(n)
        self.count += len(data)
        if self.count > self.limit:
            raise _TooLong()
        self.sha.update(data)
        return data


class _TooLong(Exception):
    pass


def _open_regular(path: str):
    """A binary file object of ``path`` if it is a regular file: a FIFO, a device, a
    socket or a folder is refused (ValueError naming it) without blocking on it."""
    st = os.stat(path)  # FileNotFoundError, PermissionError: the caller's to see
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"path {path!r} is {_kind(st.st_mode)}, not a fastsasrec model file")
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NONBLOCK", 0)  # should a FIFO be put there since the stat
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)  # what was opened, should the path have changed since the stat
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"path {path!r} is {_kind(st.st_mode)}, not a fastsasrec model file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _member(z: zipfile.ZipFile, name: str, file_len: int, path: str) -> zipfile.ZipInfo:
    """The zip entry ``name`` after the checks that bound what reading it takes."""
    info = z.getinfo(name)
    if info.flag_bits & 0x1:
        raise ValueError(f"path {path!r}: {name} is encrypted")
    if info.header_offset + info.compress_size > file_len:
        raise ValueError(f"path {path!r}: {name} claims {info.compress_size} bytes beyond the end "
                         "of the file (truncated or corrupted)")
    if info.file_size > max(_RATIO_FREE_BYTES, _MAX_RATIO * info.compress_size):
        raise ValueError(f"path {path!r}: {name} would decompress {info.compress_size} bytes to "
                         f"{info.file_size}, more than {_MAX_RATIO} times: refused")
    return info


def _check_sizes(info: zipfile.ZipInfo, nbytes: int, what: str, path: str) -> None:
    """The member's size in the zip directory against the ``nbytes`` of data its header
    implies (plus an .npy prefix of 10 to _MAX_NPY_PREFIX bytes)."""
    if not nbytes + 10 <= info.file_size <= nbytes + _MAX_NPY_PREFIX:
        raise ValueError(f"path {path!r}: {info.filename} holds {info.file_size} bytes, but {what} "
                         f"take {nbytes} bytes (plus the .npy header)")


def _read_npy(z: zipfile.ZipFile, info: zipfile.ZipInfo, n: int, kinds: str, path: str,
              itemsize: Optional[int] = None) -> Tuple[np.ndarray, str]:
    """(a 1-d array of n entries, its member's SHA-256) read from an .npy member whose
    header is checked (dtype kind in ``kinds``, its item size, shape (n,), the member's
    size) before its data is allocated and read."""
    name = info.filename
    with z.open(info) as raw:
        src = _Bounded(raw, _MAX_NPY_PREFIX)
        try:
            version = np.lib.format.read_magic(src)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(src)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(src)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except _TooLong:
            raise ValueError(f"path {path!r}: {name} has an .npy header longer than {_MAX_NPY_PREFIX} "
                             "bytes") from None
        except (ValueError, SyntaxError, TypeError, KeyError) as e:
            raise ValueError(f"path {path!r}: {name} is not a valid .npy array ({e})") from None
        if dtype.kind not in kinds or dtype.hasobject or dtype.fields is not None \
                or (itemsize is not None and dtype.itemsize != itemsize):
            raise ValueError(f"path {path!r}: {name} holds {dtype} values, not the expected type")
        if shape != (n,):
            raise ValueError(f"path {path!r}: {name} has shape {shape}, the header says ({n},)")
        prefix = src.count
        nbytes = n * dtype.itemsize
        if info.file_size != prefix + nbytes:
            raise ValueError(f"path {path!r}: {name} holds {info.file_size} bytes, {n} {dtype} values "
                             f"need {prefix + nbytes}")
        out = np.empty(n, dtype=dtype)
        view = memoryview(out.view(np.uint8)) if nbytes else memoryview(b"")
        src.limit = prefix + nbytes
        pos = 0
        try:
            while pos < nbytes:
                chunk = src.read(min(_CHUNK, nbytes - pos))
                if not chunk:
                    raise ValueError(f"path {path!r}: {name} ends early (truncated)")
                view[pos:pos + len(chunk)] = chunk
                pos += len(chunk)
            if src.read(1):
                raise _TooLong()
        except _TooLong:
            raise ValueError(f"path {path!r}: {name} holds more than {info.file_size} bytes") from None
    if dtype.byteorder not in ("=", "|"):  # written on a machine of the other byte order
        native = f"U{dtype.itemsize // 4}" if dtype.kind == "U" else f"{dtype.kind}{dtype.itemsize}"
        out = out.astype(native)
    return out, src.sha.hexdigest()


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
        infos = z.infolist()
        if len(infos) > _MAX_MEMBERS:
            raise ValueError(f"path {path!r} is not a fastsasrec {what} ({len(infos)} zip members)")
        names = [i.filename for i in infos]
        if HEADER not in names:
            raise ValueError(f"path {path!r} is not a fastsasrec {what} (no {HEADER})")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"path {path!r}: zip member {dup!r} appears more than once")
        info = _member(z, HEADER, file_len, path)
        if info.file_size > _MAX_HEADER_BYTES:
            raise ValueError(f"path {path!r}: {HEADER} is {info.file_size} bytes, more than the "
                             f"{_MAX_HEADER_BYTES} a {what} header takes")
        with z.open(info) as raw:
            src = _Bounded(raw, info.file_size)
            try:
                text = src.read(info.file_size)
                src.read(1)
            except _TooLong:
                raise ValueError(f"path {path!r}: {HEADER} holds more than {info.file_size} bytes") from None
        meta = json.loads(text.decode("utf-8"))
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
        members = {name: _member(z, name + ".npy", file_len, path) for name in arrays_in}
        floats = [name for name in arrays_in if name not in ("item_ids", "popularity")]
        for name in floats:
            _check_sizes(members[name], 4 * n_params,
                         f"the {n_params} float32 {'weights' if name.endswith('params') else 'moments'} "
                         "of the header's engine_config", path)
        _check_sizes(members["popularity"], 8 * n_items, f"the popularity of {n_items} items", path)
        if kind == "int":
            _check_sizes(members["item_ids"], 8 * n_items, f"{n_items} int64 item ids", path)
        arrays, sums = {}, {}
        for name in floats:
            arrays[name], sums[name] = _read_npy(z, members[name], n_params, "f", path, 4)
        arrays["item_ids"], sums["item_ids"] = _read_npy(
            z, members["item_ids"], n_items, "i" if kind == "int" else "U", path,
            8 if kind == "int" else None)
        arrays["popularity"], sums["popularity"] = _read_npy(z, members["popularity"], n_items, "i",
                                                             path, 8)
    if digests is not None:
        for name in arrays_in:
            if digests[name + ".npy"].lower() != sums[name]:
                raise ValueError(f"path {path!r}: {name}.npy checksum mismatch (SHA-256): the file is "
                                 "corrupted or was altered")
    return meta, config, arrays


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
    if not os.path.exists(path):
        raise FileNotFoundError(f"path {path!r} does not exist")
    f, file_len = _open_regular(path)
    with f:
        try:
            meta, config, arrays = _read(f, file_len, path, checkpoint)
        except zipfile.BadZipFile as e:
            text = str(e)
            if text.startswith("Bad CRC-32"):
                raise ValueError(f"path {path!r}: checksum mismatch (CRC-32) in {text.split()[-1]}: "
                                 "the file is corrupted") from None
            raise ValueError(f"path {path!r} is not a valid fastsasrec {what} file (truncated or "
                             f"corrupted: {e})") from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ValueError(f"path {path!r}: corrupted {what} header ({e})") from None
        except _STREAM_ERRORS as e:  # a corrupted compressed stream or zip structure
            raise ValueError(f"path {path!r} is not a valid fastsasrec {what} file ({type(e).__name__}: "
                             f"{e})") from None
        except OSError as e:  # a seek to a corrupted offset, bz2's bad stream, the disk's own
            raise ValueError(f"path {path!r}: could not read the {what} ({e})") from None
    _check_arrays(arrays, path, ascending_optional=checkpoint or meta["format_version"] >= 2)
    return meta, config, arrays


def _params_of(meta: Dict[str, Any], path: str) -> Dict[str, Any]:
    params = meta.get("params")
    if not isinstance(params, dict):
        raise ValueError(f"path {path!r}: params must be an object")
    return dict(params)


def load(cls: Any, path: "os.PathLike[str] | str", device: str = "auto",
         num_threads: Optional[int] = None) -> Any:
    """A ``cls`` model read from a file written by ``save``, on ``device``, running with
    ``num_threads`` (None: 0, all cores; the thread count a file was saved with is never
    taken from it).  Raises FileNotFoundError, ValueError for anything wrong with the file
    (not a regular file, not a model, truncated, corrupted, inconsistent, written by a
    newer version, unreadable)."""
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
    engine.set_params(arrays["params"])
    model._set_fitted(engine, config, arrays["item_ids"], arrays["popularity"].astype(np.int64))
    model.loss_history_ = loss_history
    if "defaults" in meta:
        model._set_defaults(_defaults(meta, path))
    return model


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
                                  and isinstance(refit.get("chosen"), dict)):
        raise ValueError(f"path {path!r}: invalid refit {refit!r}")
    return dict(params=_params_of(meta, path), config=config, arrays=arrays,
                step=_int_field(meta, "step", path), epoch=epoch, loss_history=loss_history,
                history=history, early_stopping=es, fingerprint=fingerprint, refit=refit)
