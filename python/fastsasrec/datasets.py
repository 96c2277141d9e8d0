"""Built-in data: synthetic store sessions with a known right answer, and a reader (and
optional downloader) for MovieLens 100K."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
import zipfile
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple
from urllib.error import URLError
from urllib.request import urlopen

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "synthetic_store",
    "synthetic_store_catalog",
    "synthetic_store_events",
    "movielens_100k",
    "default_cache_dir",
    "ML100K_URL",
    "ML100K_SHA256",
]

# Intent journeys: a shopper on a journey tends to view its products in order.  The key
# is the store category of every product on the journey.
_JOURNEYS: Dict[str, List[str]] = {
    "coffee": ["espresso machine", "burr grinder", "coffee scale", "whole-bean coffee", "milk frother", "tamper"],
    "running": ["running shoes", "running socks", "sports watch", "energy gels", "foam roller", "hydration vest"],
    "baby": ["stroller", "car seat", "baby monitor", "diapers", "baby wipes", "changing mat"],
    "camping": ["tent", "sleeping bag", "camping stove", "headlamp", "water filter", "trekking poles"],
    "home office": ["standing desk", "office chair", "monitor arm", "usb-c dock", "webcam", "desk lamp"],
    "gaming": ["gaming console", "wireless controller", "headset", "charging stand", "racing wheel", "game pass card"],
    "baking": ["stand mixer", "baking tray", "silicone mat", "bread flour", "proofing basket", "bench scraper"],
    "cycling": ["road bike", "bike helmet", "bike lights", "bike lock", "cycling gloves", "repair kit"],
    "skincare": ["cleanser", "toner", "serum", "moisturiser", "sunscreen", "face mask"],
    "photography": ["mirrorless camera", "prime lens", "memory card", "tripod", "camera bag", "lens filter"],
}
_BRANDS = ["Acme", "Nordic", "Vela", "Orbit", "Kite"]
_FIRST_PRODUCT_ID = 1000


def _journeys() -> Tuple[Dict[int, Tuple[str, str]], List[List[int]]]:
    """({product id: (name, category)}, journeys as lists of product ids in order)."""
    catalog: Dict[int, Tuple[str, str]] = {}
    journeys: List[List[int]] = []
    pid = _FIRST_PRODUCT_ID
    for category, steps in _JOURNEYS.items():
        for brand in _BRANDS:
            ids = []
            for step in steps:
                catalog[pid] = (f"{brand} {step}", category)
                ids.append(pid)
                pid += 1
            journeys.append(ids)
    return catalog, journeys


def synthetic_store_catalog() -> Dict[int, Tuple[str, str]]:
    """The synthetic store's products: {product id: (name, category)}.

    300 products: 10 categories (coffee, running, baby, ...) x 5 brands x 6 journey
    steps.  Within a category and brand, ids follow the journey's order, e.g. Acme
    espresso machine (1000) -> Acme burr grinder (1001) -> Acme coffee scale (1002)."""
    return _journeys()[0]


def synthetic_store(n_sessions: int = 5000, random_state: int = 0, noise: float = 0.15,
                    min_len: int = 3, max_len: int = 6) -> Tuple[List[List[int]], Dict[int, str]]:
    """Synthetic e-commerce sessions over named products.

    Each session follows one intent journey (e.g. espresso machine -> burr grinder ->
    coffee scale -> whole-bean coffee), one brand's products, from a random step onwards
    (never past the journey's end), with ``noise`` of the views replaced by random
    products.  So a trained model has a known right answer: the next step of the
    journey.  ``synthetic_store_catalog()`` gives each product's category.

    Returns (sessions as lists of product ids, {product id: product name}).
    """
    if isinstance(n_sessions, (bool, np.bool_)) or not isinstance(n_sessions, (int, np.integer)) or n_sessions < 1:
        raise ValueError(f"n_sessions must be a positive integer, got {n_sessions!r}")
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be in [0, 1), got {noise!r}")
    if not 2 <= min_len <= max_len or min_len > 6:
        raise ValueError(f"need 2 <= min_len <= max_len and min_len <= 6, got min_len={min_len}, max_len={max_len}")
    rng = np.random.default_rng(random_state)
    catalog, journeys = _journeys()
    names = {pid: name for pid, (name, _) in catalog.items()}
    all_ids = np.array(sorted(names))
    sessions: List[List[int]] = []
    for _ in range(int(n_sessions)):
        j = journeys[rng.integers(len(journeys))]
        length = int(rng.integers(min_len, min(max_len, len(j)) + 1))
        start = int(rng.integers(0, len(j) - length + 1))
        s = list(j[start:start + length])
        for k in range(length):
            if rng.random() < noise:
                s[k] = int(all_ids[rng.integers(all_ids.size)])
        sessions.append(s)
    return sessions, names


def synthetic_store_events(n_sessions: int = 5000, random_state: int = 0, noise: float = 0.15,
                           min_len: int = 3, max_len: int = 6,
                           start: str = "2024-01-01") -> "pd.DataFrame":
    """The sessions of ``synthetic_store`` as an event log, the way a store records them.

    Returns a pandas DataFrame with one row per product view and columns ``session_id``
    (int, 1..n_sessions), ``product_id`` (int) and ``timestamp`` (datetime64): sessions
    start at random moments over 30 days from ``start``, views within a session are 5 s
    to 3 min apart, and rows are in time order, sessions interleaved.  Grouping by
    session and sorting by time gives back ``synthetic_store(n_sessions, random_state,
    ...)[0]`` exactly, e.g. ``SASRec.from_transactions(events, user_col="session_id",
    item_col="product_id")``.
    """
    import pandas as pd

    sessions, _ = synthetic_store(n_sessions, random_state, noise=noise, min_len=min_len, max_len=max_len)
    # A separate stream for the clock, so the sessions match synthetic_store's exactly.
    rng = np.random.default_rng([int(random_state), 1])
    lengths = np.array([len(s) for s in sessions], dtype=np.int64)
    n_rows = int(lengths.sum())
    session_id = np.repeat(np.arange(1, len(sessions) + 1, dtype=np.int64), lengths)
    product_id = np.fromiter((x for s in sessions for x in s), dtype=np.int64, count=n_rows)
    begin = rng.integers(0, 30 * 24 * 3600, size=len(sessions))          # seconds into the month
    gaps = rng.integers(5, 181, size=n_rows)                             # seconds between views
    first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    gaps[first] = 0
    within = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first], lengths)  # seconds into the session
    seconds = np.repeat(begin, lengths) + within
    timestamp = np.datetime64(pd.Timestamp(start).to_datetime64(), "s") + seconds.astype("timedelta64[s]")
    events = pd.DataFrame({"session_id": session_id, "product_id": product_id,
                           "timestamp": timestamp.astype("datetime64[ns]")})
    order = np.lexsort((np.arange(n_rows), seconds))  # time order; ties keep session order
    return events.iloc[order].reset_index(drop=True)


# ----------------------------------------------------------------------------- MovieLens
ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# SHA-256 of GroupLens' ml-100k.zip (4,924,029 bytes; GroupLens publishes its MD5,
# 0e33842e24a9c977be4e0107933c0723).  None would mean: download without verifying, with
# a warning saying so.
ML100K_SHA256: Optional[str] = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
_ML100K_MEMBERS = ("u.data", "u.item", "README")


def default_cache_dir() -> str:
    """Where downloads go: $FASTSASREC_CACHE, else $XDG_CACHE_HOME/fastsasrec, else
    ~/.cache/fastsasrec."""
    env = os.environ.get("FASTSASREC_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastsasrec")


def _has_ml100k(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "u.data")) and os.path.isfile(os.path.join(folder, "u.item"))


def _download_ml100k(dest: str, url: str) -> str:
    """Downloads the ML-100K zip into dest, verifies it, extracts u.data, u.item and the
    README into dest/ml-100k and returns that folder."""
    os.makedirs(dest, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ml-100k-", suffix=".zip", dir=dest)
    try:
        sha = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as f, urlopen(url, timeout=60) as response:
                while True:
                    chunk = response.read(1 << 20)
                    if not chunk:
                        break
                    sha.update(chunk)
                    f.write(chunk)
        except (URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ConnectionError(
                f"could not download MovieLens 100K from {url} ({reason}). Are you offline? "
                "Download and unzip it by hand, then pass path= the folder holding u.data and u.item"
            ) from None
        digest = sha.hexdigest()
        if ML100K_SHA256 is None:
            warnings.warn(
                f"the download of {url} was NOT verified: no known SHA-256 checksum is set "
                f"(ML100K_SHA256 is None); its SHA-256 is {digest}",
                stacklevel=3,
            )
        elif digest != ML100K_SHA256.lower():
            raise ValueError(
                f"checksum mismatch for {url}: SHA-256 {digest}, expected {ML100K_SHA256}. "
                "The file was deleted; it is corrupted or not the official archive"
            )
        out = os.path.join(dest, "ml-100k")
        try:
            with zipfile.ZipFile(tmp) as z:
                by_name = {os.path.basename(n): n for n in z.namelist() if not n.endswith("/")}
                missing = [m for m in ("u.data", "u.item") if m not in by_name]
                if missing:
                    raise ValueError(f"the archive from {url} holds no {' or '.join(missing)}")
                os.makedirs(out, exist_ok=True)
                for member in _ML100K_MEMBERS:  # only the files we read, by their base name
                    if member in by_name:
                        with z.open(by_name[member]) as src, open(os.path.join(out, member), "wb") as dst:
                            shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile as e:
            raise ValueError(f"the file downloaded from {url} is not a valid zip archive ({e})") from None
        return out
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_ml100k(folder: str):
    import pandas as pd

    data_path = os.path.join(folder, "u.data")
    try:
        events = pd.read_csv(data_path, sep="\t", header=None,
                             names=["user_id", "item_id", "rating", "timestamp"], dtype="int64")
    except (ValueError, pd.errors.ParserError) as e:
        raise ValueError(f"{data_path} is not a MovieLens u.data file (tab-separated user, item, "
                         f"rating, timestamp): {e}") from None
    titles: Dict[int, str] = {}
    item_path = os.path.join(folder, "u.item")
    with open(item_path, encoding="latin-1") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("|")
            try:
                titles[int(parts[0])] = parts[1]
            except (ValueError, IndexError):
                raise ValueError(f"{item_path}, line {lineno}: expected 'item id|title|...', "
                                 f"got {line.strip()[:60]!r}") from None
    return events, titles


def movielens_100k(path: Optional["os.PathLike[str] | str"] = None,
                   download: bool = False) -> Tuple["pd.DataFrame", Dict[int, str]]:
    """MovieLens 100K (GroupLens): 100,000 ratings of 1,682 movies by 943 users.

    Reads a local copy: ``path`` is the folder holding ``u.data`` and ``u.item`` (or a
    folder with an ``ml-100k`` subfolder holding them).  Without ``path`` it looks in
    ``./ml-100k``, then in the download cache (``default_cache_dir()``).  With
    ``download=True`` and no local copy it downloads the official zip from GroupLens
    into ``path`` (or the cache), checks its SHA-256 and extracts it.  The data's terms
    of use forbid redistributing it: read them in its README.

    Returns (events, titles): a pandas DataFrame with int64 columns ``user_id``,
    ``item_id``, ``rating`` (1-5) and ``timestamp`` (unix seconds), in file order, and
    {item id: title}.
    """
    cache = default_cache_dir()
    if path is not None:
        path = os.fspath(path)
        candidates = [path, os.path.join(path, "ml-100k")]
    else:
        candidates = [os.path.join(os.getcwd(), "ml-100k"), os.path.join(cache, "ml-100k")]
    for folder in candidates:
        if _has_ml100k(folder):
            return _read_ml100k(folder)
    if not download:
        tried = ", ".join(repr(c) for c in candidates)
        raise FileNotFoundError(
            f"MovieLens 100K not found (looked for u.data and u.item in {tried}). Pass "
            "path= the folder holding them, or download=True to fetch the official zip "
            f"from {ML100K_URL}"
        )
    folder = _download_ml100k(path if path is not None else cache, ML100K_URL)
    return _read_ml100k(folder)
