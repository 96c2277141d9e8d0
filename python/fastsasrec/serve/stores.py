"""Where the server keeps what outlives a request: the held sessions and the denylist.

``Store`` is the interface the endpoints call (coroutines, so that a store across the
network never blocks the event loop); ``LocalStore`` keeps them in this process (the
default: nothing to install; its denylist can live in a file, so it survives a restart);
``RedisStore`` (``fastsasrec.serve.redis_store``) keeps them in Redis, shared by every
replica.  A store that cannot answer raises ``StoreError``: the endpoint answers 503 with
Retry-After, and the endpoints that need no store go on answering."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from fastsasrec.serve.sessions import SessionStore

EVENT_ID_MAX = 128  # characters of a client's event id


class StoreError(Exception):
    """The store did not answer (down, slow, refused): ``store`` names it, ``op`` the call."""

    def __init__(self, store: str, op: str, why: str):
        super().__init__(f"the session store {store} did not answer ({op}): {why}")
        self.store, self.op, self.why = store, op, why


class Store:
    """The held sessions and the denylist.  ``denylist``: the list as this process knows
    it (a tuple, replaced whole; what each scoring call reads).  ``name``: what errors and
    /readyz call the store."""

    name = "store"
    shared = False  # True: other processes see the same sessions (503s are possible)
    denylist: Tuple[Any, ...] = ()
    evicted = 0

    async def start(self) -> None:
        """Called in the server's event loop before it answers."""

    async def stop(self) -> None:
        """Called as the server stops."""

    async def append(self, sid: str, items: Sequence[Any], max_seq: int, str_ids: bool,
                     event_id: Optional[str] = None) -> List[Any]:
        """Appends ``items`` to session ``sid`` (made on first use), keeps its last
        ``max_seq``, refreshes its TTL and returns what it holds; a repeated ``event_id``
        is applied once (the session is returned as it is)."""
        raise NotImplementedError

    async def get(self, sid: str) -> Optional[Tuple[List[Any], float]]:
        """(items, seconds until it expires) of a held session, or None."""
        raise NotImplementedError

    async def delete(self, sid: str) -> bool:
        raise NotImplementedError

    async def read_denylist(self) -> Tuple[Any, ...]:
        """The denylist as the store holds it now (and ``denylist`` updated)."""
        return self.denylist

    async def write_denylist(self, items: Sequence[Any]) -> Tuple[Any, ...]:
        """Replaces the denylist (distinct items, in order) and returns it."""
        raise NotImplementedError

    async def check(self) -> Optional[str]:
        """None when the store answers, else why not (for /readyz)."""
        return None

    def gauges(self) -> Dict[str, float]:
        """What /metrics shows of the store's contents: sessions, session_items,
        session_bytes, as far as it knows them cheaply."""
        return {}


def parse_denylist(data: Any, where: str) -> Tuple[Any, ...]:
    """The denylist of a JSON document ``{"items": [...]}`` (ids all integers or all
    strings), or ValueError naming ``where``."""
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError(f'{where}: not a denylist (a JSON object {{"items": [...]}})')
    ints = all(isinstance(x, int) and not isinstance(x, bool) for x in items)
    if not ints and not all(isinstance(x, str) for x in items):
        raise ValueError(f"{where}: the denylist's items must be all integers or all strings")
    return tuple(dict.fromkeys(items))


class LocalStore(Store):
    """Sessions in this process (``SessionStore``); the denylist in memory and, given
    ``denylist_file``, in that file too: written atomically on each change, read at start
    (a missing file is an empty list; a damaged one is refused, naming it)."""

    name = "in-process"

    def __init__(self, max_sessions: int, ttl: float, clock: Callable[[], float] = time.monotonic,
                 denylist_file: Optional[str] = None, metrics: Any = None):
        self.sessions = SessionStore(max_sessions, ttl, clock)
        self.metrics = metrics
        self.denylist_file = os.fspath(denylist_file) if denylist_file is not None else None
        self.denylist = ()
        if self.denylist_file is not None and os.path.exists(self.denylist_file):
            try:
                with open(self.denylist_file, "rb") as f:
                    data = json.loads(f.read())
            except (OSError, ValueError) as e:
                raise ValueError(f"denylist_file {self.denylist_file!r} cannot be read: {e}") from None
            self.denylist = parse_denylist(data, f"denylist_file {self.denylist_file!r}")

    @property
    def evicted(self) -> int:  # type: ignore[override]
        return self.sessions.evicted

    async def append(self, sid: str, items: Sequence[Any], max_seq: int, str_ids: bool,
                     event_id: Optional[str] = None) -> List[Any]:
        before = self.sessions.evicted
        held = self.sessions.append(sid, items, max_seq, str_ids, event_id)
        if self.metrics is not None and self.sessions.evicted != before:
            self.metrics.evicted.inc(self.sessions.evicted - before)
        return held

    async def get(self, sid: str) -> Optional[Tuple[List[Any], float]]:
        return self.sessions.get(sid)

    async def delete(self, sid: str) -> bool:
        return self.sessions.delete(sid)

    async def write_denylist(self, items: Sequence[Any]) -> Tuple[Any, ...]:
        deny = tuple(dict.fromkeys(items))
        if self.denylist_file is not None:
            from fastsasrec._archive import write_bytes

            write_bytes(self.denylist_file, json.dumps({"items": list(deny)}).encode())
        self.denylist = deny  # one assignment: a batch reads it once
        return deny

    def gauges(self) -> Dict[str, float]:
        sessions, items = self.sessions.stats()
        return {"sessions": sessions, "session_items": items, "session_bytes": self.sessions.memory()}


def open_store(url: Optional[str], *, max_sessions: int, ttl: float,
               clock: Callable[[], float] = time.monotonic, denylist_file: Optional[str] = None,
               timeout: float = 0.25, denylist_refresh: float = 1.0, metrics: Any = None) -> Store:
    """The store a server's ``store`` argument names: None or "memory" (in this process),
    or redis://HOST:PORT/DB (rediss:// for TLS, unix:///path.sock?db=N)."""
    if url is None or url == "memory":
        return LocalStore(max_sessions, ttl, clock, denylist_file, metrics)
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"store must be 'memory' or a redis:// URL (redis://HOST:PORT/DB), got {url!r}")
    if denylist_file is not None:
        raise ValueError(f"denylist_file {denylist_file!r} is for the in-process store; with "
                         f"store {url!r} the denylist lives in Redis")
    from fastsasrec.serve.redis_store import RedisStore

    return RedisStore(url, max_sessions=max_sessions, ttl=ttl, timeout=timeout,
                      denylist_refresh=denylist_refresh, metrics=metrics)
