"""The one reader of event logs (.csv, also compressed, and .parquet): the command line,
``batch.score_file`` and ``fastsasrec score`` read every file through it.

CSV id columns are read as text, never typed by pandas chunk by chunk: "007", "NA" and
"null" are ids as written, and an empty cell is a missing value (an error naming the row).
User ids keep their text, and are written out as they were read.  Item ids follow ``items``:

- ``"text"`` (a model whose item ids are strings): kept as text;
- ``"int"`` (a model whose item ids are integers): parsed as integers, and a form that is
  not canonical integer text (digits with no sign, space or leading zero: "007", "+7",
  " 7") is refused, naming it, since it would merge with another id;
- ``None`` (``train``): integers when every value of the file is canonical integer text
  ("0" is one), text otherwise.

Parquet columns keep their declared types (a text item column follows the same rules for
``"int"``).  Times may be numbers, datetimes or date strings: in a CSV, the first rows
read decide numbers or dates for the whole file.  A control character in any id is refused.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import warnings
from typing import Any, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from fastsasrec._event_table import _utc_naive, text_times
from fastsasrec.data import _CONTROL_WHY, _first_control

CSV = (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz")
PARQUET = (".parquet", ".pq")
FLAGS = ("--user-col", "--item-col", "--time-col")
_CANONICAL = r"0|[1-9][0-9]{0,18}"  # canonical integer text of at most 19 digits


class Chunk(NamedTuple):
    """Rows ``row .. row + len(users) - 1`` of an event log (0 is the first data row)."""
    row: int
    users: np.ndarray
    items: np.ndarray
    times: Optional[np.ndarray]


def is_parquet(path: str) -> bool:
    return path.lower().endswith(PARQUET)


def check_file(path: str, what: str = "EVENTS") -> None:
    """ValueError unless ``path`` is a non-empty .csv or .parquet file."""
    if not os.path.exists(path):
        raise ValueError(f"{what} file {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a folder, not a .csv or .parquet file")
    if not path.lower().endswith(PARQUET + CSV):
        raise ValueError(f"{what} must be a .csv or .parquet file, got {path!r}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} file {path!r} is empty")


def count_rows(path: str) -> int:
    """Rows of a .parquet (from its footer); 0 (unknown) for a .csv."""
    if is_parquet(path):
        try:
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        except Exception:  # noqa: BLE001 - the reader says what is wrong with it
            return 0
    return 0


@contextlib.contextmanager
def _reading(path: str, what: str) -> Iterator[None]:
    """Turns what keeps a file from being read into one ValueError naming it."""
    import pandas as pd

    try:
        yield
    except ImportError:
        raise ValueError(f"reading the .parquet file {what} {path!r} needs pyarrow: "
                         "pip install pyarrow") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{what} file {path!r} is empty") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:  # pyarrow's: ValueErrors
        raise ValueError(f"could not read {what} file {path!r}: {e}") from None


def _raw(path: str, cols: List[Tuple[Any, str]], chunk_rows: Optional[int], what: str) -> Iterator[Any]:
    """pandas frames of the named columns, ids of a CSV as text; ValueError naming a
    missing column (with the ones present) or what kept the file from being read."""
    import pandas as pd

    with _reading(path, what):
        if is_parquet(path):
            import pyarrow.parquet as pq

            f = pq.ParquetFile(path)
            present = list(f.schema_arrow.names)
        else:
            present = [str(c) for c in pd.read_csv(path, nrows=0).columns]
    missing = [(c, flag) for c, flag in cols if c is not None and c not in present]
    if missing:
        names = ", ".join(f"{c!r} ({flag})" for c, flag in missing)
        raise ValueError(f"{what} file {path!r} has no column {names}; its columns are: "
                         f"{', '.join(present) if present else '(none)'}")
    names = list(dict.fromkeys(c for c, _ in cols if c is not None))
    with _reading(path, what):
        if is_parquet(path):
            if chunk_rows is None:
                frames = iter([f.read(columns=names).to_pandas()])
            else:
                frames = (b.to_pandas() for b in f.iter_batches(batch_size=chunk_rows, columns=names))
        else:
            text = {c: str for c in names}
            frames = pd.read_csv(path, usecols=names, dtype=text, keep_default_na=False, na_values=[""],
                                 chunksize=chunk_rows)
            frames = iter([frames]) if chunk_rows is None else frames
    while True:
        with _reading(path, what):
            frame = next(frames, None)
        if frame is None:
            return
        yield frame


def _missing(col: Any, name: str, flag: str, row: int) -> None:
    bad = col.isna().to_numpy()
    if bad.any():
        raise ValueError(f"column {name!r} ({flag}) has a missing value at row {row + int(np.argmax(bad))}")


def _text(values: np.ndarray, name: str, flag: str, row: int) -> np.ndarray:
    """Text ids as a str array; ValueError naming a control character's row and value."""
    strs = values.tolist()
    i = _first_control(strs)
    if i >= 0:
        raise ValueError(f"column {name!r} ({flag}) at row {row + i} is {strs[i]!r}: {_CONTROL_WHY}")
    return values.astype(str)


def _is_text(col: Any) -> bool:
    import pandas as pd

    return col.dtype == object or isinstance(col.dtype, pd.StringDtype)


def users_of(col: Any, name: str, flag: str, row: int) -> np.ndarray:
    """User ids as read: text as text (object array, no NumPy padding), typed as typed."""
    _missing(col, name, flag, row)
    if _is_text(col):
        values = col.to_numpy(dtype=object)
        i = _first_control([x if isinstance(x, str) else "" for x in values.tolist()])
        if i >= 0:
            raise ValueError(f"column {name!r} ({flag}) at row {row + i} is {values[i]!r}: {_CONTROL_WHY}")
        return values
    return col.to_numpy()


def items_of(col: Any, mode: Optional[str], name: str, flag: str, row: int) -> np.ndarray:
    """Item ids (int64 or str) of one column by the module's rules; ``mode``: "int",
    "text" or None (integers only when every value is canonical integer text)."""
    from fastsasrec.data import _as_ids

    _missing(col, name, flag, row)
    if not _is_text(col):
        return _as_ids(col.to_numpy(), f"column {name!r}")
    if mode == "text":
        return _text(col.to_numpy(dtype=object), name, flag, row)
    canonical = col.astype(str).str.fullmatch(_CANONICAL).to_numpy()
    values = col.to_numpy(dtype=object)
    if canonical.all():
        try:
            return values.astype(str).astype(np.int64)
        except OverflowError:  # 19 digits past 2**63 - 1
            canonical = np.array([ok and int(x) < 2**63 for ok, x in zip(canonical, values.tolist())])
    i = int(np.argmin(canonical))
    if mode is None:
        good = int(canonical.sum())
        if good >= canonical.size / 2:  # integer ids with a stray cell: said, not silently text
            warnings.warn(f"column {name!r} ({flag}) is read as text ids: at row {row + i} it holds "
                          f"{values[i]!r}, not an integer written as digits with no sign, space or "
                          f"leading zero, though {good:,} of its {canonical.size:,} ids are; integer ids given "
                          "later (--session 12) then name no item of the model: fix that cell, "
                          "or write every id as text from here on", stacklevel=2)
        return _text(values, name, flag, row)
    raise ValueError(f"column {name!r} ({flag}) at row {row + i} is {values[i]!r}: this model's item "
                     "ids are integers, written as digits with no sign, space or leading zero (0 to "
                     "2**63 - 1), and this is not one (it would be read as another id)")


def times_of(col: Any, name: str, flag: str, row: int, what: str, path: str,
             state: Optional[dict] = None) -> np.ndarray:
    """Times as numbers or datetime64 (UTC, no zone).  ``state`` carries the kind the
    first chunk of a CSV found (numbers or dates) to the next ones."""
    import pandas as pd

    _missing(col, name, flag, row)
    where = f"column {name!r} ({flag}) of {what} file {path!r}"
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return _utc_naive(col).to_numpy()
    if ((pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col))
            or pd.api.types.is_datetime64_any_dtype(col)):
        return col.to_numpy()
    return text_times(col, where, row, state)


def _columns(user_col: Any, item_col: Any, time_col: Any, flags: Sequence[str]) -> List[Tuple[Any, str]]:
    return list(zip((user_col, item_col, time_col), flags))


def chunks(path: str, user_col: str, item_col: str, time_col: Optional[str], chunk_rows: int,
           items: Optional[str], what: str = "EVENTS", flags: Sequence[str] = FLAGS) -> Iterator[Chunk]:
    """The file as Chunks of at most ``chunk_rows`` rows.  ``items``: "int" or "text"
    (a model's kind of ids; None decides per chunk, which only a whole file may do)."""
    check_file(path, what)
    state: dict = {}
    row = 0
    for frame in _raw(path, _columns(user_col, item_col, time_col, flags), chunk_rows, what):
        users = users_of(frame[user_col], user_col, flags[0], row)
        its = items_of(frame[item_col], items, item_col, flags[1], row)
        times = (None if time_col is None else
                 times_of(frame[time_col], time_col, flags[2], row, what, path, state))
        yield Chunk(row, users, its, times)
        row += len(frame)


def read(path: str, user_col: str, item_col: str, time_col: Optional[str],
         items: Optional[str] = None, what: str = "EVENTS", flags: Sequence[str] = FLAGS) -> Any:
    """The whole file as a pandas DataFrame of the three columns (time_col None: two), by
    the module's rules; ValueError for a file with no rows."""
    import pandas as pd

    (chunk,) = chunks(path, user_col, item_col, time_col, None, items, what, flags)  # type: ignore[arg-type]
    if chunk.users.size == 0:
        raise ValueError(f"{what} file {path!r} has no rows")
    cols = {user_col: chunk.users, item_col: chunk.items}
    if time_col is not None:
        cols[time_col] = chunk.times
    return pd.DataFrame(cols)


def item_mode(item_ids: np.ndarray) -> str:
    """The ``items`` rule of a model whose catalogue is ``item_ids`` (or of ids as an event
    table read them: strings in an object array are text too)."""
    if item_ids.dtype.kind == "O":
        return "text" if any(isinstance(i, str) for i in item_ids.tolist()) else "int"
    return "text" if item_ids.dtype.kind == "U" else "int"


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one file (through symlinks and hard links)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_output(output: str, flag: str = "output") -> None:
    """ValueError, before any work, when a file could not be written to ``output``."""
    target = os.path.realpath(output) if os.path.islink(output) else output
    if os.path.isdir(target):
        raise ValueError(f"{flag} {output!r} is a folder: give a file name, such as "
                         f"{os.path.join(output, 'model.fsr')!r}")
    if os.path.exists(target) and not stat.S_ISREG(os.stat(target).st_mode):
        raise ValueError(f"{flag} {output!r} exists and is not a regular file")
    out_dir = os.path.dirname(os.path.abspath(target))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"the folder of {flag} {output!r} is not a folder: {out_dir}")
    if not os.path.isdir(out_dir):
        raise ValueError(f"the folder of {flag} {output!r} does not exist: {out_dir}")
    try:  # the one sure test that the folder takes a new file: make one
        fd, probe = tempfile.mkstemp(prefix=".fastsasrec-", suffix=".tmp", dir=out_dir)
    except OSError as e:
        raise ValueError(f"cannot write {flag} {output!r}: {e.strerror} in the folder {out_dir}") from None
    os.close(fd)
    os.unlink(probe)


def read_items(path: str, id_col: str, items: Optional[str], what: str = "--item-features") -> Any:
    """A table of item features (.csv or .parquet) as a pandas DataFrame indexed by item id,
    the ids by the module's rules for ``items`` (None: integers when every one is canonical
    integer text); the other columns typed by pandas over the whole file (a CSV's "NA" and
    "null" are text, an empty cell is missing).  ValueError naming the file and the cause."""
    import pandas as pd

    check_file(path, what)
    with _reading(path, what):
        if is_parquet(path):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype={id_col: str}, keep_default_na=False, na_values=[""])
    if id_col not in frame.columns:
        raise ValueError(f"{what} file {path!r} has no column {id_col!r} (--item-id-col); its "
                         f"columns are: {', '.join(map(str, frame.columns))}")
    if len(frame) == 0:
        raise ValueError(f"{what} file {path!r} has no rows")
    ids = items_of(frame[id_col], items, id_col, "--item-id-col", 0)
    return frame.drop(columns=[id_col]).set_axis(pd.Index(ids, name=id_col), axis=0)
