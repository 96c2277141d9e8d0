"""The recommendation server for the live widget: ``fastsasrec serve MODEL``, or
``create_app(model_or_path, ...)`` to mount in an existing ASGI application.

An ASGI app (Starlette; run by uvicorn), installed with ``pip install "fastsasrec[serve]"``.
Endpoints (JSON in and out):

    POST   /v1/recommend                 {session, n, exclude, keep_seen} -> {items, scores, model}
    POST   /v1/recommend/batch           {sessions, n, keep_seen}         -> {results: [...], model}
    POST   /v1/similar                   {item, n}                        -> {items, scores, model}
    POST   /v1/sessions/{id}/events      {items, n, exclude}  appends clicks to a held session
    GET    /v1/sessions/{id}             the held session;  DELETE: forget it
    PUT    /v1/denylist                  {items}: never recommend these (GET: the list)
    GET    /v1/model   /healthz   /readyz   /metrics (Prometheus text)

Concurrent recommend requests are gathered into one engine call (``max_batch`` sessions
at most), run off the event loop with the GIL released: a request that finds the engine
idle runs at once (on the loop's thread); those that arrive while a batch runs form the
next one, which may wait up to ``max_wait_ms`` (default 0) for company while requests
keep coming.

The model is held by one reference that a reload replaces whole (SIGHUP, ``--watch``, or
``Server.reload``): the new file is loaded and warmed beside the old model, then swapped
in one assignment, so every request is answered wholly by one model; a file that fails to
load leaves the old one serving.  Sessions held by the server live in this process only.
"""
from __future__ import annotations

import array
import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fastsasrec import _persist

log = logging.getLogger("fastsasrec.serve")

MAX_N = 1000  # items a request may ask for
MAX_BATCH_SESSIONS = 10_000  # sessions in one /v1/recommend/batch request
_SESSION_ID = re.compile(r"^[A-Za-z0-9._~:@!$&'()*+,;=-]{1,256}$")


# ----------------------------------------------------------------------------- errors
class HTTPError(Exception):
    """An error answered to the client with its status and message (never a 500)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _unprocessable(field: str, value: Any, why: str) -> HTTPError:
    shown = json.dumps(value)[:100] if _jsonable(value) else repr(value)[:100]
    return HTTPError(422, f"{field}: {why}, got {shown}")


def _jsonable(x: Any) -> bool:
    try:
        json.dumps(x)
        return True
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- the model
@dataclasses.dataclass(frozen=True)
class Loaded:
    """One model as served: the estimator, where it came from, and what /v1/model says."""

    model: Any
    path: Optional[str]
    sha256: Optional[str]
    loaded_at: float
    generation: int

    @property
    def tag(self) -> str:
        """What each response names its model by: the file's SHA-256 prefix (or the
        generation of a model given in memory)."""
        return self.sha256[:12] if self.sha256 else f"memory-{self.generation}"


def _file_signature(path: str) -> Optional[Tuple[float, int, int]]:
    """(mtime, size, inode) of the file at ``path``, None when it cannot be read: what
    changes when a new model file is written or renamed over it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime, st.st_size, st.st_ino)



def _warm(model: Any) -> None:
    """One request through every path a request takes, so the first client does not pay
    for the first allocations."""
    ids = model.item_ids[: min(3, model.n_items)]
    model.recommend(list(ids.tolist()), n=min(10, model.n_items))


# ----------------------------------------------------------------------------- sessions
class SessionStore:
    """The sessions the server holds: for each client session id, its most recent items
    (at most ``max_len``), oldest first.  A session expires ``ttl`` seconds after its last
    use; at most ``max_sessions`` are held, the least recently used going first.  ``clock``
    is injectable (tests).  Thread-safe."""

    # Bytes of one held session beyond its key, its items and the two dicts' tables (which
    # sys.getsizeof counts with the OrderedDict's link nodes): the (items, time) tuple,
    # the float and the size's int (CPython, 64-bit).
    _ENTRY_BYTES = 56 + 24 + 32

    def __init__(self, max_sessions: int, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.max_sessions, self.ttl, self.clock = max_sessions, ttl, clock
        self._d: "OrderedDict[str, Tuple[Any, float]]" = OrderedDict()
        self._bytes: Dict[str, int] = {}
        self._lock = threading.Lock()
        self.evicted = 0
        self.expired = 0
        self.bytes = 0  # the held sessions' memory, kept as they change

    @classmethod
    def _size(cls, sid: str, seq: Any) -> int:
        items = sum(sys.getsizeof(x) for x in seq) if isinstance(seq, list) else 0
        return sys.getsizeof(sid) + sys.getsizeof(seq) + items + cls._ENTRY_BYTES

    def _drop(self, sid: str) -> None:
        del self._d[sid]
        self.bytes -= self._bytes.pop(sid)

    def _expire(self, now: float) -> None:
        while self._d:
            sid, (_, last) = next(iter(self._d.items()))
            if now - last < self.ttl:
                break
            self._drop(sid)
            self.expired += 1

    def append(self, sid: str, items: Sequence[Any], max_len: int, str_ids: bool) -> List[Any]:
        """Appends ``items`` to session ``sid`` (made on first use) and returns its items."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            held = self._d.get(sid)
            seq = held[0] if held is not None else None
            if held is not None:
                self._drop(sid)
            if seq is None or (str_ids != isinstance(seq, list)):
                seq = [] if str_ids else array.array("q")
            seq.extend(items)
            if len(seq) > max_len:
                del seq[: len(seq) - max_len]
            self._d[sid] = (seq, now)
            self._bytes[sid] = self._size(sid, seq)
            self.bytes += self._bytes[sid]
            while len(self._d) > self.max_sessions:
                self._drop(next(iter(self._d)))
                self.evicted += 1
            return list(seq)

    def get(self, sid: str) -> Optional[Tuple[List[Any], float]]:
        """(items, seconds until it expires), or None."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            held = self._d.get(sid)
            if held is None:
                return None
            self._d.move_to_end(sid)
            self._d[sid] = (held[0], now)
            return list(held[0]), self.ttl

    def delete(self, sid: str) -> bool:
        with self._lock:
            self._expire(self.clock())
            if sid not in self._d:
                return False
            self._drop(sid)
            return True

    def stats(self) -> Tuple[int, int]:
        """(sessions held, items held), after expiring what is due."""
        with self._lock:
            self._expire(self.clock())
            return len(self._d), sum(len(s) for s, _ in self._d.values())

    def memory(self) -> int:
        """Bytes the held sessions take: their keys, items and entries (kept as they
        change) and the tables that index them."""
        with self._lock:
            self._expire(self.clock())
            return self.bytes + sys.getsizeof(self._d) + sys.getsizeof(self._bytes)


# ----------------------------------------------------------------------------- metrics
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, v: float) -> None:
        i = 0
        while i < len(self.buckets) and v > self.buckets[i]:
            i += 1
        self.counts[i] += 1
        self.total += v
        self.n += 1

    def lines(self, name: str, labels: str = "") -> List[str]:
        out, acc = [], 0
        sep = "," if labels else ""
        for b, c in zip(self.buckets, self.counts):
            acc += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {acc}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        lab = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{lab} {self.total:.6f}")
        out.append(f"{name}_count{lab} {self.n}")
        return out


class Metrics:
    """Counters and histograms for /metrics (Prometheus text format 0.0.4)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Dict[Tuple[str, int], int] = {}
        self.latency: Dict[str, _Histogram] = {}
        self.batch = _Histogram(_BATCH_BUCKETS)
        self.unknown_items = 0
        self.reloads = {"ok": 0, "failed": 0}
        self.in_flight = 0  # requests received and not yet answered (this one included)

    def started(self) -> None:
        with self.lock:
            self.in_flight += 1

    def request(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.in_flight -= 1
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
            self.latency.setdefault(route, _Histogram(_LATENCY_BUCKETS)).observe(seconds)

    def render(self, server: "Server") -> str:
        lines = ["# HELP fastsasrec_requests_total HTTP requests by route and status.",
                 "# TYPE fastsasrec_requests_total counter"]
        with self.lock:
            for (route, status), c in sorted(self.requests.items()):
                lines.append(f'fastsasrec_requests_total{{route="{route}",status="{status}"}} {c}')
            lines += ["# HELP fastsasrec_request_seconds Request latency, from the request's "
                      "arrival to its response.", "# TYPE fastsasrec_request_seconds histogram"]
            for route, h in sorted(self.latency.items()):
                lines += h.lines("fastsasrec_request_seconds", f'route="{route}"')
            lines += ["# HELP fastsasrec_batch_sessions Sessions per engine call (micro-batches).",
                      "# TYPE fastsasrec_batch_sessions histogram"]
            lines += self.batch.lines("fastsasrec_batch_sessions")
            unknown = self.unknown_items
            reloads = dict(self.reloads)
            in_flight = self.in_flight
        sessions, items = server.sessions.stats()
        loaded = server.current
        lines += [
            "# HELP fastsasrec_requests_in_flight Requests received and not yet answered "
            "(this one included).",
            "# TYPE fastsasrec_requests_in_flight gauge",
            f"fastsasrec_requests_in_flight {in_flight}",
            "# HELP fastsasrec_queue_depth Requests waiting for the engine.",
            "# TYPE fastsasrec_queue_depth gauge",
            f"fastsasrec_queue_depth {server.batcher.depth}",
            "# HELP fastsasrec_unknown_items_total Session items not in the model's catalogue.",
            "# TYPE fastsasrec_unknown_items_total counter",
            f"fastsasrec_unknown_items_total {unknown}",
            "# HELP fastsasrec_sessions Sessions held by the server.",
            "# TYPE fastsasrec_sessions gauge",
            f"fastsasrec_sessions {sessions}",
            "# HELP fastsasrec_session_items Items held in those sessions.",
            "# TYPE fastsasrec_session_items gauge",
            f"fastsasrec_session_items {items}",
            "# HELP fastsasrec_session_bytes Memory of the held sessions (keys, items, entries).",
            "# TYPE fastsasrec_session_bytes gauge",
            f"fastsasrec_session_bytes {server.sessions.memory()}",
            "# HELP fastsasrec_sessions_evicted_total Sessions dropped at the cap (least recently used).",
            "# TYPE fastsasrec_sessions_evicted_total counter",
            f"fastsasrec_sessions_evicted_total {server.sessions.evicted}",
            "# HELP fastsasrec_reloads_total Model reloads by result.",
            "# TYPE fastsasrec_reloads_total counter",
            f'fastsasrec_reloads_total{{result="ok"}} {reloads["ok"]}',
            f'fastsasrec_reloads_total{{result="failed"}} {reloads["failed"]}',
        ]
        if loaded is not None:
            lines += ["# HELP fastsasrec_model_info The model being served.",
                      "# TYPE fastsasrec_model_info gauge",
                      f'fastsasrec_model_info{{model="{loaded.tag}",items="{loaded.model.n_items}"}} 1']
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- scoring
@dataclasses.dataclass
class _Ask:
    """One session to score: original ids, how many items, what not to recommend."""

    session: List[Any]
    n: int
    exclude: List[Any]
    keep_seen: bool
    loaded: Any = None  # the model that answers it (read once, when the request came)
    future: Any = None
    result: Any = None


def _encode(state: Any, ids: Sequence[Any], str_ids: bool) -> np.ndarray:
    if not ids:
        return np.zeros(0, dtype=np.int32)
    arr = np.array(ids, dtype=str) if str_ids else np.array(ids, dtype=np.int64)
    return state.encode(arr)


def score(loaded: Loaded, asks: Sequence[_Ask], deny: Sequence[Any], metrics: Metrics) -> None:
    """Fills each ask's result with (ids, scores) from one engine call for every session
    with a known item (the most popular items for the others), each session's exclusions
    its own (its items unless keep_seen, its exclude list, the denylist)."""
    model = loaded.model
    state = model._fitted()
    str_ids = state.item_ids.dtype.kind == "U"
    V = int(state.item_ids.size)
    cached = state.cache.get("denylist")  # encoded once per denylist and model
    if cached is not None and cached[0] is deny:
        deny_int = cached[1]
    else:
        deny_int = _encode(state, list(deny), str_ids)
        deny_int = deny_int[deny_int > 0]
        state.cache["denylist"] = (deny, deny_int)
    warm: List[Tuple[_Ask, np.ndarray, np.ndarray]] = []
    unknown = 0
    for a in asks:
        internal = _encode(state, a.session, str_ids)
        known = internal[internal > 0]
        unknown += int(internal.size - known.size)
        extra = _encode(state, a.exclude, str_ids)
        parts = [deny_int, extra[extra > 0]]
        if not a.keep_seen:
            parts.append(known)
        excl = np.concatenate(parts).astype(np.int32) if any(p.size for p in parts) \
            else np.zeros(0, dtype=np.int32)
        n = min(a.n, V)
        if known.size == 0:
            ids, scores = state.popular(n, excl)
            a.result = (state.item_ids[ids - 1], scores)
        else:
            warm.append((a, known[-state.config["max_seq"]:], excl))
    if unknown:
        with metrics.lock:
            metrics.unknown_items += unknown
    if not warm:
        return
    K = min(max(a.n for a, _, _ in warm), V)
    items = np.concatenate([k for _, k, _ in warm]).astype(np.int32)
    offsets = np.concatenate(([0], np.cumsum([k.size for _, k, _ in warm]))).astype(np.int64)
    excl = np.concatenate([e for _, _, e in warm]).astype(np.int32)
    excl_off = np.concatenate(([0], np.cumsum([e.size for _, _, e in warm]))).astype(np.int64)
    ids, scores = state.engine.recommend(items, offsets, K, excl, excl_off)  # GIL released
    for row, (a, _, _) in enumerate(warm):
        r_ids, r_sc = ids[row, : a.n], scores[row, : a.n]
        valid = r_ids > 0
        a.result = (state.item_ids[r_ids[valid] - 1], r_sc[valid])


class Batcher:
    """Gathers concurrent asks into one ``score`` call run on one worker thread."""

    def __init__(self, server: "Server", max_batch: int, max_wait_ms: float):
        self.server, self.max_batch, self.max_wait = server, max_batch, max_wait_ms / 1e3
        self.queue: List[_Ask] = []
        self.wake: Optional[asyncio.Event] = None
        self.task: Optional[asyncio.Task] = None
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fastsasrec-engine")
        self.last_size = 1

    @property
    def depth(self) -> int:
        return len(self.queue)

    def start(self) -> None:
        self.wake = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.pool.shutdown(wait=True)

    async def submit(self, asks: List[_Ask]) -> None:
        loop = asyncio.get_running_loop()
        for a in asks:
            a.future = loop.create_future()
            self.queue.append(a)
        self.wake.set()
        for a in asks:
            await a.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                # Under load (the last batch had company) wait a moment for more to come.
                if self.last_size > 1 and len(self.queue) < self.max_batch and self.max_wait > 0:
                    deadline = loop.time() + self.max_wait
                    while len(self.queue) < self.max_batch and loop.time() < deadline:
                        self.wake.clear()
                        try:
                            await asyncio.wait_for(self.wake.wait(), deadline - loop.time())
                        except asyncio.TimeoutError:
                            break
                batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch:]
                self.last_size = len(batch)
                deny = self.server.denylist
                # Each request is answered by the model it was tagged with: a batch that
                # spans a reload makes one engine call per model.
                groups: Dict[int, List[_Ask]] = {}
                for a in batch:
                    groups.setdefault(id(a.loaded), []).append(a)
                for group in groups.values():
                    with self.server.metrics.lock:
                        self.server.metrics.batch.observe(len(group))
                    try:
                        if len(batch) == 1 and not self.queue:
                            # A lone request: answered on the loop's thread, without two
                            # thread hops (nothing else is waiting for the loop meanwhile).
                            score(group[0].loaded, group, deny, self.server.metrics)
                        else:
                            await loop.run_in_executor(self.pool, score, group[0].loaded, group,
                                                       deny, self.server.metrics)
                    except Exception as e:  # noqa: BLE001 - answered as the requests' 500
                        for a in group:
                            if not a.future.done():
                                a.future.set_exception(e)
                        continue
                    for a in group:
                        if not a.future.done():
                            a.future.set_result(None)


# ----------------------------------------------------------------------------- server
class Server:
    """The state behind the app: the model, the held sessions, the denylist, the batcher
    and the metrics.  ``app.state.server`` of ``create_app``."""

    def __init__(self, model_or_path: Any, *, device: str = "auto", num_threads: Optional[int] = None,
                 max_batch: int = 64, max_wait_ms: float = 0.0, session_ttl: float = 1800.0,
                 max_sessions: int = 100_000, max_body: int = 1 << 20, watch: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        for name, v, lo in (("max_batch", max_batch, 1), ("max_sessions", max_sessions, 1),
                            ("max_body", max_body, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        for name, v in (("max_wait_ms", max_wait_ms), ("session_ttl", session_ttl), ("watch", watch)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if session_ttl <= 0:
            raise ValueError(f"session_ttl must be > 0 seconds, got {session_ttl!r}")
        self.device, self.num_threads = device, num_threads
        self.max_body, self.watch_interval = max_body, float(watch)
        self.metrics = Metrics()
        self.sessions = SessionStore(max_sessions, float(session_ttl), clock)
        self.batcher = Batcher(self, max_batch, float(max_wait_ms))
        self.denylist: Tuple[Any, ...] = ()
        self.current: Optional[Loaded] = None
        self.ready = False
        self._generation = 0
        self._reload_lock: Optional[asyncio.Lock] = None
        self._watch_task: Optional[asyncio.Task] = None
        self._load_task: Optional[asyncio.Task] = None
        self.load_error: Optional[str] = None
        self._source = model_or_path
        if isinstance(model_or_path, (str, os.PathLike)):
            self.path: Optional[str] = os.fspath(model_or_path)
        else:
            self.path = None
            if not hasattr(model_or_path, "_fitted"):
                raise ValueError(f"model_or_path must be a fitted SASRec or a model file path, "
                                 f"got {type(model_or_path).__name__}")
            model_or_path._fitted()  # not fitted: the caller's mistake, said now

    # ---- model
    def _load(self, path: str) -> Loaded:
        from fastsasrec import SASRec

        # The digest and the model must be of one file: a new file renamed over the path
        # between the two reads changes its signature, and the pair is read again.
        for _ in range(3):
            before = _file_signature(path)
            sha = _persist.file_sha256(path)
            model = SASRec.load(path, device=self.device, num_threads=self.num_threads)
            if _file_signature(path) == before:
                break
        else:
            raise RuntimeError(f"{path!r} changed three times while it was being loaded")
        _warm(model)
        self._generation += 1
        return Loaded(model, path, sha, time.time(), self._generation)

    async def startup(self) -> None:
        """Starts the batcher and loads (and warms) the model in the background: the server
        answers /healthz at once, and 503 "not ready" until the model is in."""
        self._reload_lock = asyncio.Lock()
        self.batcher.start()
        self._load_task = asyncio.get_running_loop().create_task(self._initial_load())

    async def _initial_load(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.current is not None:
                pass  # loaded before the server started (load_now)
            elif self.path is not None:
                self.current = await loop.run_in_executor(None, self._load, self.path)
            else:
                model = self._source
                if self.num_threads is not None:
                    model.set_params(num_threads=self.num_threads)
                await loop.run_in_executor(None, _warm, model)
                self._generation += 1
                self.current = Loaded(model, None, None, time.time(), self._generation)
        except Exception as e:  # noqa: BLE001 - said in the log; /readyz stays 503
            log.error("could not load the model %s: %s", self.path or "", e)
            self.load_error = str(e)
            return
        self.ready = True
        log.info("serving %s (%d items, model %s)", self.path or "a model in memory",
                 self.current.model.n_items, self.current.tag)
        if self.watch_interval > 0 and self.path is not None:
            self._watch_task = loop.create_task(self._watch())

    async def shutdown(self) -> None:
        for task in (self._watch_task, self._load_task):
            if task is not None:
                task.cancel()
        await self.batcher.stop()

    async def reload(self, path: Optional[str] = None) -> bool:
        """Loads ``path`` (default: the file being served) beside the current model, warms
        it and swaps it in; True when it did.  A file that fails to load is logged and the
        current model goes on serving."""
        path = path or self.path
        if path is None:
            log.error("reload: this server was given a model in memory, not a file")
            return False
        async with self._reload_lock:
            loop = asyncio.get_running_loop()
            try:
                new = await loop.run_in_executor(None, self._load, path)
            except Exception as e:  # noqa: BLE001 - any failure keeps the old model
                with self.metrics.lock:
                    self.metrics.reloads["failed"] += 1
                log.error("reload of %s failed, still serving model %s: %s", path,
                          self.current.tag if self.current else "none", e)
                return False
            old = self.current
            self.current = new  # one assignment: a request reads it once
            self.path = path
            with self.metrics.lock:
                self.metrics.reloads["ok"] += 1
            log.info("reloaded %s: model %s -> %s (%d items)", path, old.tag if old else "none",
                     new.tag, new.model.n_items)
            return True

    def load_now(self) -> None:
        """Loads and warms the model file here, before the server starts, so that a file
        that cannot be served is the caller's error (ValueError or OSError naming it)
        rather than a server that never gets ready."""
        if self.path is None:
            raise ValueError("load_now needs a model file; this server was given a model")
        self.current = self._load(self.path)

    async def _watch(self) -> None:
        seen = _file_signature(self.path)
        while True:
            await asyncio.sleep(self.watch_interval)
            now = _file_signature(self.path)
            if now is not None and now != seen:
                seen = now
                await self.reload()

    def install_signal_handlers(self) -> None:
        """SIGHUP reloads the model (main thread of a Unix process only)."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            log.info("SIGHUP reload not available here (not the main thread, or no SIGHUP)")


# ----------------------------------------------------------------------------- requests
def _ids(value: Any, field: str, str_ids: bool, limit: int = 1_000_000) -> List[Any]:
    """A JSON list of item ids of the model's kind, or 422 naming the field and value."""
    if not isinstance(value, list):
        raise _unprocessable(field, value, "must be a list of item ids")
    if len(value) > limit:
        raise _unprocessable(field, f"<{len(value)} ids>", f"holds more than {limit} ids")
    for i, x in enumerate(value):
        if str_ids:
            if not isinstance(x, str):
                raise _unprocessable(f"{field}[{i}]", x, "this model's item ids are strings")
        elif isinstance(x, bool) or not isinstance(x, int):
            raise _unprocessable(f"{field}[{i}]", x, "this model's item ids are integers")
        elif not -2**63 <= x < 2**63:
            raise _unprocessable(f"{field}[{i}]", x, "item ids must fit in 64 bits (int64)")
    return value


def _int_field(body: Dict[str, Any], field: str, default: int, lo: int, hi: int) -> int:
    v = body.get(field, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _unprocessable(field, v, f"must be an integer in {lo}..{hi}")
    return v


def _bool_field(body: Dict[str, Any], field: str, default: bool) -> bool:
    v = body.get(field, default)
    if not isinstance(v, bool):
        raise _unprocessable(field, v, "must be true or false")
    return v


def _check_keys(body: Dict[str, Any], allowed: Sequence[str]) -> None:
    extra = [k for k in body if k not in allowed]
    if extra:
        raise HTTPError(422, f"unknown field {extra[0]!r}; this endpoint takes {', '.join(allowed)}")


def _out(ids: np.ndarray, scores: np.ndarray) -> Tuple[List[Any], List[Optional[float]]]:
    return ids.tolist(), [float(s) if math.isfinite(s) else None for s in scores.tolist()]


def create_app(model_or_path: Any, *, device: str = "auto", num_threads: Optional[int] = None,
               max_batch: int = 64, max_wait_ms: float = 0.0, session_ttl: float = 1800.0,
               max_sessions: int = 100_000, max_body: int = 1 << 20, watch: float = 0.0,
               clock: Callable[[], float] = time.monotonic, signals: bool = False) -> Any:
    """The server as an ASGI application (Starlette).

    ``model_or_path``: a fitted SASRec, or the path of a model file (loaded at startup, and
    reloadable).  ``max_batch``: sessions per engine call; ``max_wait_ms``: how long a
    batch may wait for company under load (0: it takes what arrived while the engine ran).  ``session_ttl`` (seconds) and ``max_sessions``
    bound the held sessions; ``max_body``: the largest request body in bytes; ``watch``:
    seconds between checks of the model file for a new version (0: never).  ``clock``:
    the sessions' clock (tests inject one).  ``signals``: SIGHUP reloads (the CLI sets
    it).  ``app.state.server`` is the ``Server``."""
    try:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, PlainTextResponse, Response
        from starlette.routing import Route
    except ImportError as e:  # pragma: no cover - the serve extra is missing
        raise ImportError(f"the server needs starlette and uvicorn: pip install \"fastsasrec[serve]\" ({e})") from None

    server = Server(model_or_path, device=device, num_threads=num_threads, max_batch=max_batch,
                    max_wait_ms=max_wait_ms, session_ttl=session_ttl, max_sessions=max_sessions,
                    max_body=max_body, watch=watch, clock=clock)

    async def body_of(request: Request) -> Dict[str, Any]:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > server.max_body:
            raise HTTPError(413, f"request body of {length} bytes is over the limit of {server.max_body}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > server.max_body:
                raise HTTPError(413, f"request body is over the limit of {server.max_body} bytes")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"malformed JSON: {e}") from None
        if not isinstance(body, dict):
            raise HTTPError(422, f"the body must be a JSON object, got {type(body).__name__}")
        return body

    def loaded() -> Loaded:
        cur = server.current
        if not server.ready or cur is None:
            raise HTTPError(503, "the model is not loaded yet")
        return cur

    def str_ids(cur: Loaded) -> bool:
        return cur.model.item_ids.dtype.kind == "U"

    async def recommend_one(cur: Loaded, session: List[Any], n: int, exclude: List[Any],
                            keep_seen: bool) -> Dict[str, Any]:
        ask = _Ask(session, n, exclude, keep_seen, cur)
        await server.batcher.submit([ask])
        ids, scores = ask.result
        items, sc = _out(ids, scores)
        return {"items": items, "scores": sc, "model": cur.tag}

    async def recommend(request: Request) -> Response:
        cur = loaded()
        body = await body_of(request)
        _check_keys(body, ("session", "n", "exclude", "keep_seen"))
        s = str_ids(cur)
        if "session" not in body:
            raise HTTPError(422, "session: required (a list of item ids, oldest first)")
        session = _ids(body["session"], "session", s)
        n = _int_field(body, "n", 10, 1, MAX_N)
        exclude = _ids(body.get("exclude", []), "exclude", s)
        keep_seen = _bool_field(body, "keep_seen", False)
        return JSONResponse(await recommend_one(cur, session, n, exclude, keep_seen))

    async def recommend_batch(request: Request) -> Response:
        cur = loaded()
        body = await body_of(request)
        _check_keys(body, ("sessions", "n", "keep_seen"))
        s = str_ids(cur)
        sessions = body.get("sessions")
        if not isinstance(sessions, list) or not sessions:
            raise _unprocessable("sessions", sessions, "must be a non-empty list of sessions")
        if len(sessions) > MAX_BATCH_SESSIONS:
            raise _unprocessable("sessions", f"<{len(sessions)} sessions>",
                                 f"holds more than {MAX_BATCH_SESSIONS} sessions")
        sessions = [_ids(x, f"sessions[{i}]", s) for i, x in enumerate(sessions)]
        n = _int_field(body, "n", 10, 1, MAX_N)
        keep_seen = _bool_field(body, "keep_seen", False)
        asks = [_Ask(x, n, [], keep_seen, cur) for x in sessions]
        await server.batcher.submit(asks)
        results = []
        for a in asks:
            items, sc = _out(*a.result)
            results.append({"items": items, "scores": sc})
        return JSONResponse({"results": results, "model": cur.tag})

    async def similar(request: Request) -> Response:
        cur = loaded()
        body = await body_of(request)
        _check_keys(body, ("item", "n"))
        if "item" not in body:
            raise HTTPError(422, "item: required (an item id)")
        item = _ids([body["item"]], "item", str_ids(cur))[0]
        n = _int_field(body, "n", 10, 1, MAX_N)
        loop = asyncio.get_running_loop()
        try:
            ids, sims = await loop.run_in_executor(None, cur.model.similar_items, item, n)
        except ValueError as e:
            if "not in the model's catalogue" in str(e):
                raise HTTPError(404, f"item {json.dumps(item)} is not in the model's catalogue") from None
            raise HTTPError(422, str(e)) from None
        items, sc = _out(ids, sims)
        return JSONResponse({"items": items, "scores": sc, "model": cur.tag})

    def session_id(request: Request) -> str:
        sid = request.path_params["session_id"]
        if not _SESSION_ID.match(sid):
            raise _unprocessable("session_id", sid, "must be 1 to 256 URL-safe characters")
        return sid

    async def session_events(request: Request) -> Response:
        cur = loaded()
        sid = session_id(request)
        body = await body_of(request)
        _check_keys(body, ("items", "n", "exclude"))
        s = str_ids(cur)
        if "items" not in body:
            raise HTTPError(422, "items: required (the clicked item ids, oldest first)")
        items = _ids(body["items"], "items", s, limit=10_000)
        n = _int_field(body, "n", 10, 1, MAX_N)
        exclude = _ids(body.get("exclude", []), "exclude", s)
        held = server.sessions.append(sid, items, int(cur.model._fitted().config["max_seq"]), s)
        out = await recommend_one(cur, held, n, exclude, False)
        out["session_id"] = sid
        out["session_length"] = len(held)
        return JSONResponse(out)

    async def session_get(request: Request) -> Response:
        sid = session_id(request)
        held = server.sessions.get(sid)
        if held is None:
            raise HTTPError(404, f"no session {sid!r} (never created, expired or evicted)")
        items, ttl = held
        return JSONResponse({"session_id": sid, "items": list(items), "expires_in": ttl})

    async def session_delete(request: Request) -> Response:
        sid = session_id(request)
        if not server.sessions.delete(sid):
            raise HTTPError(404, f"no session {sid!r} (never created, expired or evicted)")
        return Response(status_code=204)

    async def denylist_put(request: Request) -> Response:
        cur = loaded()
        body = await body_of(request)
        _check_keys(body, ("items",))
        if "items" not in body:
            raise HTTPError(422, "items: required (the item ids never to recommend)")
        items = _ids(body["items"], "items", str_ids(cur))
        server.denylist = tuple(dict.fromkeys(items))  # one assignment: a batch reads it once
        return JSONResponse({"items": len(server.denylist)})

    async def denylist_get(request: Request) -> Response:
        return JSONResponse({"items": list(server.denylist)})

    async def model_info(request: Request) -> Response:
        from fastsasrec import __version__

        cur = loaded()
        state = cur.model._fitted()
        return JSONResponse({
            "library_version": __version__, "model": cur.tag, "sha256": cur.sha256,
            "path": cur.path, "items": int(state.item_ids.size),
            "factors": int(state.config["factors"]), "max_seq": int(state.config["max_seq"]),
            "device": state.engine.device, "loaded_at": cur.loaded_at,
        })

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        if not server.ready:
            why = f"the model failed to load: {server.load_error}" if server.load_error \
                else "the model is loading"
            return PlainTextResponse(f"not ready: {why}\n", status_code=503)
        return PlainTextResponse("ready\n")

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(server.metrics.render(server),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        Route("/v1/recommend", recommend, methods=["POST"]),
        Route("/v1/recommend/batch", recommend_batch, methods=["POST"]),
        Route("/v1/similar", similar, methods=["POST"]),
        Route("/v1/sessions/{session_id}/events", session_events, methods=["POST"]),
        Route("/v1/sessions/{session_id}", session_get, methods=["GET"]),
        Route("/v1/sessions/{session_id}", session_delete, methods=["DELETE"]),
        Route("/v1/denylist", denylist_put, methods=["PUT"]),
        Route("/v1/denylist", denylist_get, methods=["GET"]),
        Route("/v1/model", model_info, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Any):
        await server.startup()
        if signals:
            server.install_signal_handlers()
        yield
        await server.shutdown()

    from starlette.exceptions import HTTPException

    def rid_of(request: Request) -> str:
        return request.scope.get("fastsasrec.request_id", "")

    async def client_error(request: Request, exc: HTTPError) -> Response:
        return JSONResponse({"error": exc.message, "request_id": rid_of(request)}, status_code=exc.status)

    async def routing_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse({"error": str(exc.detail), "request_id": rid_of(request)},
                            status_code=exc.status_code, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("request %s %s %s failed", rid_of(request), request.method, request.url.path,
                  exc_info=exc)
        return JSONResponse({"error": "internal error (logged with this request id)",
                             "request_id": rid_of(request)}, status_code=500)

    inner = Starlette(routes=routes, lifespan=lifespan,
                      exception_handlers={HTTPError: client_error, HTTPException: routing_error,
                                          Exception: server_error})
    inner.state.server = server
    app = _Guard(inner, server)
    app.state = inner.state
    return app


class _Guard:
    """ASGI middleware: a request id on every request (X-Request-ID, the client's when it
    sends a sane one, else a new one), on its response and in its log lines; and each
    request counted and timed for /metrics by its route template.  (The errors' bodies are
    the app's exception handlers': JSON {"error", "request_id"}.)"""

    def __init__(self, app: Any, server: Server):
        self.app, self.server = app, server
        self.router = app.router

    def _route(self, scope: Dict[str, Any]) -> str:
        from starlette.routing import Match

        for r in self.router.routes:
            match, _ = r.matches(scope)
            if match != Match.NONE:
                return r.path
        return "other"

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        self.server.metrics.started()
        rid = None
        for k, v in scope.get("headers", []):
            if k == b"x-request-id" and 0 < len(v) <= 64 and re.fullmatch(rb"[A-Za-z0-9._-]+", v):
                rid = v.decode()
        rid = rid or uuid.uuid4().hex[:16]
        scope["fastsasrec.request_id"] = rid
        status = [500]

        async def send_with_id(message: Dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = dict(message, headers=list(message.get("headers", [])) +
                               [(b"x-request-id", rid.encode())])
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # noqa: BLE001 - answered (500) and logged by the app already
            pass
        finally:
            self.server.metrics.request(self._route(scope), status[0], time.perf_counter() - t0)


def prepare(path: str, **kw: Any) -> Any:
    """The app for the model file at ``path`` (``create_app``'s keywords), the model
    already loaded and warmed: ValueError or OSError naming the file if it cannot be."""
    app = create_app(path, signals=True, **kw)
    app.state.server.load_now()
    return app


def serve_app(app: Any, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Runs ``app`` with uvicorn until SIGINT or SIGTERM (requests in flight are finished
    first); SIGHUP reloads the model."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False,
                timeout_graceful_shutdown=30)


def run(path: str, host: str = "127.0.0.1", port: int = 8000, **kw: Any) -> None:
    """Serves the model file at ``path``: ``prepare`` then ``serve_app``."""
    serve_app(prepare(path, **kw), host, port)
