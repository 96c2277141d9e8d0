"""A zip of a JSON header and ``.npy`` arrays, no pickle: written atomically, read with bounds.

Writing: the header records each array member's SHA-256; the archive goes to a temporary
file in the target's folder, fsynced, given the umask's permissions and renamed over the
target, and the folder is fsynced after, so a crash never leaves half a file.

Reading trusts nothing: only a regular file is opened (a FIFO or a device is refused
without blocking on it), the zip's directory is bounded (members, duplicates, sizes past
the end of the file, decompression ratios) before a member is read, each member is read
through a cap on its bytes and hashed as it is read, and an ``.npy`` member's header is
checked against the caller's expectation before its data is allocated.  Every failure
is a ValueError that names the file and the cause.  What the header must hold, and which
members and sizes it implies, is the caller's schema (``_persist``).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import struct
import tempfile
import threading
import zipfile
import zlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

MAX_MEMBERS = 64               # beyond this the zip is not ours, whatever its names
MAX_HEADER_BYTES = 16 << 20    # the JSON header (loss history included)
MAX_NPY_PREFIX = 64 << 10      # an .npy member's magic, version and header dict
MAX_RATIO = 100                # uncompressed / compressed bytes of a member ...
RATIO_FREE_BYTES = 1 << 20     # ... once it is larger than this
CHUNK = 1 << 20

try:
    import lzma
    _LZMA_ERRORS: tuple = (lzma.LZMAError,)
except ImportError:  # pragma: no cover - Python built without lzma
    _LZMA_ERRORS = ()
STREAM_ERRORS = (EOFError, NotImplementedError, RuntimeError, KeyError, OverflowError, zlib.error,
                 struct.error) + _LZMA_ERRORS


def kind_of(mode: int) -> str:
    """What a file of stat mode ``mode`` is, in words (for one that is not a regular file)."""
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


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, read a MiB at a time (the model's tag in what it
    serves and scores)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- write
_umask_lock = threading.Lock()


def umask() -> int:
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


def fsync_dir(directory: str) -> None:
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


def npy_bytes(arr: np.ndarray) -> memoryview:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getbuffer()  # no copy of the (possibly large) weights


def save_target(path: "os.PathLike[str] | str", name: str = "path") -> Tuple[str, str, str]:
    """(path, the file to replace, its folder) after the checks a save makes first: a
    symbolic link at ``path`` stays a link (its target is replaced); an empty or bytes
    path, a folder, a FIFO, a device or a missing folder is refused (``name``: the
    argument, in the error)."""
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise ValueError(f"{name} must name a file to save to (a non-empty str or path), got {path!r}")
    target = os.path.realpath(path) if os.path.islink(path) else path
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"cannot save to {path!r}: it is a folder; give a file name")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ValueError(f"cannot save to {path!r}: it is {kind_of(st.st_mode)}, not a regular file")
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save to {path!r}: the folder {directory!r} does not exist")
    return path, target, directory


@contextlib.contextmanager
def replacing(path: str, target: str, directory: str) -> Iterator[Any]:
    """A binary file to write that, once the block ends, is fsynced, given the umask's
    permissions and renamed over ``target`` (the folder fsynced after); if the block
    fails, the temporary file is removed and ``target`` is untouched.  ``path`` names the
    destination in errors."""
    mode = 0o666 & ~umask()
    try:
        # Named after the file it becomes: one a killed process left says whose it was.
        fd, tmp = tempfile.mkstemp(prefix=f".fastsasrec-{os.path.basename(target)[:100]}-", suffix=".tmp",
                                   dir=directory)
    except OSError as e:
        raise type(e)(e.errno, f"cannot save to {path!r}: cannot create a file in {directory!r} "
                               f"({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
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
    fsync_dir(directory)


def write(path: str, target: str, directory: str, header: str, meta: Dict[str, Any],
          arrays: Dict[str, np.ndarray]) -> None:
    """The archive of ``meta`` (plus each array's SHA-256) as the member ``header`` and
    ``arrays`` as ``<name>.npy``, written through ``replacing``: a crash never leaves a
    half-written file at ``target``."""
    members = {name + ".npy": npy_bytes(a) for name, a in arrays.items()}
    meta = dict(meta, sha256={name: hashlib.sha256(data).hexdigest() for name, data in members.items()})
    text = json.dumps(meta, indent=1)
    with replacing(path, target, directory) as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            z.writestr(header, text)
            for name, data in members.items():
                z.writestr(name, data)


def write_bytes(path: "os.PathLike[str] | str", data: bytes) -> None:
    """``data`` to ``path`` the way ``write`` saves a model (through ``replacing``)."""
    path = os.fspath(path)
    with replacing(path, path, os.path.dirname(os.path.abspath(path))) as f:
        f.write(data)


# ----------------------------------------------------------------------------- read
class Bounded:
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
            raise TooLong()
        self.sha.update(data)
        return data


class TooLong(Exception):
    pass


def open_regular(path: str):
    """(a binary file object, its size) of ``path`` if it is a regular file: a missing
    path is a FileNotFoundError; a FIFO, a device, a socket or a folder is refused
    (ValueError naming it) without blocking on it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"path {path!r} does not exist")
    st = os.stat(path)  # PermissionError: the caller's to see
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"path {path!r} is {kind_of(st.st_mode)}, not a fastsasrec model file")
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NONBLOCK", 0)  # should a FIFO be put there since the stat
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)  # what was opened, should the path have changed since the stat
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"path {path!r} is {kind_of(st.st_mode)}, not a fastsasrec model file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def read_errors(path: str, what: str) -> Iterator[None]:
    """Turns what a damaged zip raises while it is read (a bad CRC, a truncated or
    corrupted structure or stream, an undecodable header, a failed seek) into a
    ValueError naming the file and the cause."""
    try:
        yield
    except zipfile.BadZipFile as e:
        text = str(e)
        if text.startswith("Bad CRC-32"):
            raise ValueError(f"path {path!r}: checksum mismatch (CRC-32) in {text.split()[-1]}: "
                             "the file is corrupted") from None
        raise ValueError(f"path {path!r} is not a valid fastsasrec {what} file (truncated or "
                         f"corrupted: {e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"path {path!r}: corrupted {what} header ({e})") from None
    except STREAM_ERRORS as e:  # a corrupted compressed stream or zip structure
        raise ValueError(f"path {path!r} is not a valid fastsasrec {what} file ({type(e).__name__}: "
                         f"{e})") from None
    except OSError as e:  # a seek to a corrupted offset, bz2's bad stream, the disk's own
        raise ValueError(f"path {path!r}: could not read the {what} ({e})") from None


def member_names(z: zipfile.ZipFile, header: str, path: str, what: str) -> List[str]:
    """The zip's member names: at most MAX_MEMBERS, ``header`` among them, none twice."""
    infos = z.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ValueError(f"path {path!r} is not a fastsasrec {what} ({len(infos)} zip members)")
    names = [i.filename for i in infos]
    if header not in names:
        raise ValueError(f"path {path!r} is not a fastsasrec {what} (no {header})")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"path {path!r}: zip member {dup!r} appears more than once")
    return names


def member(z: zipfile.ZipFile, name: str, file_len: int, path: str) -> zipfile.ZipInfo:
    """The zip entry ``name`` after the checks that bound what reading it takes."""
    info = z.getinfo(name)
    if info.flag_bits & 0x1:
        raise ValueError(f"path {path!r}: {name} is encrypted")
    if info.header_offset + info.compress_size > file_len:
        raise ValueError(f"path {path!r}: {name} claims {info.compress_size} bytes beyond the end "
                         "of the file (truncated or corrupted)")
    if info.file_size > max(RATIO_FREE_BYTES, MAX_RATIO * info.compress_size):
        raise ValueError(f"path {path!r}: {name} would decompress {info.compress_size} bytes to "
                         f"{info.file_size}, more than {MAX_RATIO} times: refused")
    return info


def read_json(z: zipfile.ZipFile, name: str, file_len: int, path: str, what: str) -> Any:
    """The JSON value of member ``name``, at most MAX_HEADER_BYTES, read with a bound."""
    info = member(z, name, file_len, path)
    if info.file_size > MAX_HEADER_BYTES:
        raise ValueError(f"path {path!r}: {name} is {info.file_size} bytes, more than the "
                         f"{MAX_HEADER_BYTES} a {what} header takes")
    with z.open(info) as raw:
        src = Bounded(raw, info.file_size)
        try:
            text = src.read(info.file_size)
            src.read(1)
        except TooLong:
            raise ValueError(f"path {path!r}: {name} holds more than {info.file_size} bytes") from None
    return json.loads(text.decode("utf-8"))


def check_sizes(info: zipfile.ZipInfo, nbytes: int, what: str, path: str) -> None:
    """The member's size in the zip directory against the ``nbytes`` of data its header
    implies (plus an .npy prefix of 10 to MAX_NPY_PREFIX bytes)."""
    if not nbytes + 10 <= info.file_size <= nbytes + MAX_NPY_PREFIX:
        raise ValueError(f"path {path!r}: {info.filename} holds {info.file_size} bytes, but {what} "
                         f"take {nbytes} bytes (plus the .npy header)")


def read_npy(z: zipfile.ZipFile, info: zipfile.ZipInfo, n: int, kinds: str, path: str,
             itemsize: Optional[int] = None) -> Tuple[np.ndarray, str]:
    """(a 1-d array of n entries, its member's SHA-256) read from an .npy member whose
    header is checked (dtype kind in ``kinds``, its item size, shape (n,), the member's
    size) before its data is allocated and read."""
    name = info.filename
    with z.open(info) as raw:
        src = Bounded(raw, MAX_NPY_PREFIX)
        try:
            version = np.lib.format.read_magic(src)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(src)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(src)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except TooLong:
            raise ValueError(f"path {path!r}: {name} has an .npy header longer than {MAX_NPY_PREFIX} "
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
                chunk = src.read(min(CHUNK, nbytes - pos))
                if not chunk:
                    raise ValueError(f"path {path!r}: {name} ends early (truncated)")
                view[pos:pos + len(chunk)] = chunk
                pos += len(chunk)
            if src.read(1):
                raise TooLong()
        except TooLong:
            raise ValueError(f"path {path!r}: {name} holds more than {info.file_size} bytes") from None
    if dtype.byteorder not in ("=", "|"):  # written on a machine of the other byte order
        native = f"U{dtype.itemsize // 4}" if dtype.kind == "U" else f"{dtype.kind}{dtype.itemsize}"
        out = out.astype(native)
    return out, src.sha.hexdigest()
