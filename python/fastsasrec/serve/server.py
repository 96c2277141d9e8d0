"""The state behind the app (``app.state.server``): the model, held by one reference that
a reload replaces whole, the held sessions, the denylist, the batcher and the metrics; and
the functions that run it with uvicorn."""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import os
import signal
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from fastsasrec.serve.batcher import Batcher
from fastsasrec.serve.metrics import Metrics
from fastsasrec.serve.protocol import BODY_TIMEOUT, HEADER_TIMEOUT, protocol
from fastsasrec.serve.stores import Store, open_store

log = logging.getLogger("fastsasrec.serve")


@dataclasses.dataclass(frozen=True)
class Loaded:
    """One model as served: the estimator, where it came from, and what /v1/model says.
    ``max_seq``: the most recent items of a session the model reads (what a held session
    keeps)."""

    model: Any
    path: Optional[str]
    sha256: Optional[str]
    loaded_at: float
    generation: int
    max_seq: int = 0
    catalogue: Any = None  # the model's item ids, sorted: what ``known`` looks up

    @classmethod
    def of(cls, model: Any, path: Optional[str], sha256: Optional[str], generation: int) -> "Loaded":
        return cls(model, path, sha256, time.time(), generation, int(model.max_seq_),
                   np.sort(model.item_ids_))

    def known(self, items: List[Any]) -> List[Any]:
        """The ids of ``items`` (of the model's kind) that the model knows, in order."""
        if not items:
            return items
        ids, given = self.catalogue, np.asarray(items)
        at = np.minimum(np.searchsorted(ids, given), ids.size - 1)
        return [i for i, ok in zip(items, (ids[at] == given).tolist()) if ok]

    @property
    def tag(self) -> str:
        """What each response names its model by: the file's SHA-256 prefix (or the
        generation of a model given in memory)."""
        return self.sha256[:12] if self.sha256 else f"memory-{self.generation}"



def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    ids = model.item_ids_[:3].tolist()
    model.recommend(ids, n=10)
    model.recommend_batch([ids, ids[:1]], n=10)


class Server:
    """The state behind the app: the model, the held sessions, the denylist, the batcher
    and the metrics.  ``app.state.server`` of ``create_app``."""

    def __init__(self, model_or_path: Any, *, device: str = "auto", num_threads: Optional[int] = None,
                 max_batch: int = 64, max_wait_ms: float = 0.0, session_ttl: float = 1800.0,
                 max_sessions: int = 100_000, max_body: int = 1 << 20, watch: float = 0.0,
                 header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT,
                 max_connections: Optional[int] = None, store: Optional[str] = None,
                 denylist_file: Optional[str] = None, store_timeout: float = 0.25,
                 denylist_refresh: float = 1.0, clock: Callable[[], float] = time.monotonic):
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
        # The protocol uvicorn runs the app with (``uvicorn_config``): deadlines on each
        # request's head and body, and the connection cap.
        self.http_protocol = protocol(header_timeout, body_timeout, max_connections,
                                      self.metrics.closed)
        self.store: Store = open_store(store, max_sessions=max_sessions, ttl=float(session_ttl),
                                       clock=clock, denylist_file=denylist_file,
                                       timeout=store_timeout, denylist_refresh=denylist_refresh,
                                       metrics=self.metrics)
        # The in-process store's sessions (None with a shared store).
        self.sessions = getattr(self.store, "sessions", None) if not self.store.shared else None
        self.batcher = Batcher(self, max_batch, float(max_wait_ms))
        self.current: Optional[Loaded] = None
        self.ready = False
        self._generation = 0
        self._reload_lock: Optional[asyncio.Lock] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None  # the loop it runs in, once started
        self._watch_task: Optional[asyncio.Task] = None
        self._load_task: Optional[asyncio.Task] = None
        self.load_error: Optional[str] = None
        self._deny_read: Optional[Tuple[Any, Any, Tuple[Any, ...]]] = None  # denylist's cache
        self._source = model_or_path
        if isinstance(model_or_path, (str, os.PathLike)):
            self.path: Optional[str] = os.fspath(model_or_path)
        else:
            self.path = None
            if not hasattr(type(model_or_path), "recommend_batch"):
                raise ValueError(f"model_or_path must be a fitted SASRec or a model file path, "
                                 f"got {type(model_or_path).__name__}")
            model_or_path.item_ids_  # not fitted: the caller's mistake, said now

    @property
    def denylist(self) -> Tuple[Any, ...]:
        """The denylist as this process knows it (the store's cached tuple), less ids of
        the other kind than the model's (strings for a model of integer ids, or the
        reverse: a file or a shared store written beside another model), which no item of
        this one can be; the same tuple while neither changes."""
        deny, cur = self.store.denylist, self.current
        if not deny or cur is None:
            return deny
        seen = self._deny_read
        if seen is not None and seen[0] is deny and seen[1] is cur:
            return seen[2]
        text = cur.model.item_ids_.dtype.kind == "U"
        kept = tuple(i for i in deny if isinstance(i, str) == text)
        if len(kept) < len(deny):
            log.warning("the denylist holds %d %s ids, and this model's are %s: they match no item",
                        len(deny) - len(kept), "integer" if text else "string",
                        "strings" if text else "integers")
            self._deny_read = (deny, cur, kept)
        else:
            self._deny_read = (deny, cur, deny)
        return self._deny_read[2]

    # ---- model
    def _load(self, path: str) -> Loaded:
        from fastsasrec import SASRec

        # The digest and the model must be of one file: a new file renamed over the path
        # between the two reads changes its signature, and the pair is read again.
        for _ in range(3):
            before = _file_signature(path)
            sha = _sha256(path)
            model = SASRec.load(path, device=self.device, num_threads=self.num_threads)
            if _file_signature(path) == before:
                break
        else:
            raise RuntimeError(f"{path!r} changed three times while it was being loaded")
        _warm(model)
        self._generation += 1
        return Loaded.of(model, path, sha, self._generation)

    async def startup(self) -> None:
        """Starts the batcher and loads (and warms) the model in the background: the server
        answers /healthz at once, and 503 "not ready" until the model is in."""
        self._reload_lock = asyncio.Lock()
        self.loop = asyncio.get_running_loop()
        await self.store.start()
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
                self.current = Loaded.of(model, None, None, self._generation)
        except Exception as e:  # noqa: BLE001 - said in the log; /readyz stays 503
            log.error("could not load the model %s: %s", self.path or "", e)
            self.load_error = str(e)
            return
        self.ready = True
        self.metrics.model(self.current)
        log.info("serving %s (%d items, model %s)", self.path or "a model in memory",
                 self.current.model.n_items, self.current.tag)
        if self.watch_interval > 0 and self.path is not None:
            self._watch_task = loop.create_task(self._watch())

    async def shutdown(self) -> None:
        for task in (self._watch_task, self._load_task):
            if task is not None:
                task.cancel()
        await self.batcher.stop()
        await self.store.stop()

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
                self.metrics.reloads.labels("failed").inc()
                log.error("reload of %s failed, still serving model %s: %s", path,
                          self.current.tag if self.current else "none", e)
                return False
            old = self.current
            self.current = new  # one assignment: a request reads it once
            self.path = path
            self.metrics.reloads.labels("ok").inc()
            self.metrics.model(new)
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


def prepare(path: str, **kw: Any) -> Any:
    """The app for the model file at ``path`` (``create_app``'s keywords), the model
    already loaded and warmed: ValueError or OSError naming the file if it cannot be."""
    from fastsasrec.serve.app import create_app

    app = create_app(path, signals=True, **kw)
    app.state.server.load_now()
    return app


def uvicorn_config(app: Any, host: str = "127.0.0.1", port: int = 8000, **kw: Any) -> Any:
    """uvicorn's Config for ``app``, with the server's guarded HTTP protocol (its deadlines
    and connection cap); ``kw``: more of uvicorn.Config's keywords."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, http=app.state.server.http_protocol,
                          ws="none", **kw)


def run_options(ssl_certfile: Optional[str] = None, ssl_keyfile: Optional[str] = None,
                proxy_headers: bool = True, forwarded_allow_ips: Optional[str] = None) -> Dict[str, Any]:
    """uvicorn's options for serving (``serve_app``'s keywords), the TLS files checked:
    ValueError, in one line, when they cannot be used."""
    if ssl_keyfile is not None and ssl_certfile is None:
        raise ValueError(f"ssl_keyfile {ssl_keyfile!r} needs ssl_certfile (the certificate)")
    if ssl_certfile is not None:  # said here, in one line, rather than by uvicorn's traceback
        import ssl

        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(ssl_certfile, ssl_keyfile)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"cannot use ssl_certfile {ssl_certfile!r} with ssl_keyfile "
                             f"{ssl_keyfile!r}: {e}") from None
    return dict(log_level="info", access_log=False, timeout_graceful_shutdown=30,
                ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, proxy_headers=proxy_headers,
                forwarded_allow_ips=forwarded_allow_ips)


def serve_app(app: Any, host: str = "127.0.0.1", port: int = 8000, *,
              ssl_certfile: Optional[str] = None, ssl_keyfile: Optional[str] = None,
              proxy_headers: bool = True, forwarded_allow_ips: Optional[str] = None) -> None:
    """Runs ``app`` with uvicorn until SIGINT or SIGTERM (requests in flight are finished
    first); SIGHUP reloads the model.  ``ssl_certfile`` (PEM; the key too unless
    ``ssl_keyfile``): HTTPS.  ``proxy_headers``: the client address and scheme are taken
    from X-Forwarded-For and X-Forwarded-Proto when the connection comes from one of
    ``forwarded_allow_ips`` (comma-separated addresses or networks, "*" for any; None:
    $FORWARDED_ALLOW_IPS, else 127.0.0.1).  These are uvicorn's own options."""
    import uvicorn

    options = run_options(ssl_certfile, ssl_keyfile, proxy_headers, forwarded_allow_ips)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(uvicorn_config(app, host, port, **options))
    try:
        server.run()
    except KeyboardInterrupt:  # pragma: no cover - as uvicorn.run
        pass
    if not server.started:
        raise SystemExit(3)  # uvicorn's exit status when it could not start (port in use)


def run(path: str, host: str = "127.0.0.1", port: int = 8000, *, ssl_certfile: Optional[str] = None,
        ssl_keyfile: Optional[str] = None, proxy_headers: bool = True,
        forwarded_allow_ips: Optional[str] = None, **kw: Any) -> None:
    """Serves the model file at ``path``: ``prepare`` (``create_app``'s keywords) then
    ``serve_app`` (TLS and proxy headers)."""
    serve_app(prepare(path, **kw), host, port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
              proxy_headers=proxy_headers, forwarded_allow_ips=forwarded_allow_ips)
