"""The held sessions and the denylist in Redis, shared by every replica of the server
(``fastsasrec serve MODEL --store redis://HOST:PORT/DB``; needs ``pip install
"fastsasrec[redis]"``).

Keys (prefix ``fastsasrec:``): ``s:<id>`` a session's items (a list, oldest first),
``e:<id>`` its recent event ids (a sorted set), both with the session's TTL; ``touch``
every session's last use (a sorted set, milliseconds of Redis's clock): the cap evicts
the least recently used from it; ``denylist`` the list (JSON) and ``denylist:version`` a
counter bumped by each write.

An event is ONE Lua script, so Redis applies it whole, in its arrival order, whatever the
replica: the event id checked and remembered (the last ``EVENT_IDS`` of the session), the
items appended, the list trimmed to max_seq, the TTLs refreshed, the session touched, the
expired dropped from ``touch`` and the least recently used evicted past the cap.  The
scripts name keys they compute, so the store is one Redis (replicated or behind Sentinel
is fine), not Redis Cluster.

Each replica caches the denylist and reads its version every ``denylist_refresh`` seconds
(and reads it back at once after its own writes): a change reaches every replica within
``denylist_refresh + timeout`` seconds while Redis answers.  Every call has a deadline
(``timeout``): a store down or slow is a ``StoreError`` (503 with Retry-After), never a
hang; redis-py reconnects on the next call once Redis is back."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit, urlunsplit

from fastsasrec.serve.sessions import EVENT_IDS
from fastsasrec.serve.stores import Store, StoreError, parse_denylist

log = logging.getLogger("fastsasrec.serve")
PREFIX = "fastsasrec:"

# KEYS: items, event ids, touch.  ARGV: max_seq, ttl ms, max_sessions, event id ('' none),
# session id, key prefix, items...  Returns {applied (1/0), evicted, items}.
_APPEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local applied = 1
if ARGV[4] ~= '' then
  if redis.call('ZSCORE', KEYS[2], ARGV[4]) then
    applied = 0
  else
    redis.call('ZADD', KEYS[2], now, ARGV[4])
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(%d + 1))
  end
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if applied == 1 and #ARGV >= 7 then
  for i = 7, #ARGV, 500 do
    redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 499, #ARGV)))
  end
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[3], now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - ttl)
local evicted = 0
local over = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[3])
if over > 0 then
  local old = redis.call('ZPOPMIN', KEYS[3], over)
  for i = 1, #old, 2 do
    redis.call('DEL', ARGV[6] .. 's:' .. old[i], ARGV[6] .. 'e:' .. old[i])
    evicted = evicted + 1
  end
end
return {applied, evicted, redis.call('LRANGE', KEYS[1], 0, -1)}
""" % EVENT_IDS

# KEYS: items, event ids, touch.  ARGV: ttl ms, session id.  A held session is touched
# (its TTL refreshed) and returned; nil when none is held.
_GET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = redis.call('ZSCORE', KEYS[3], ARGV[2])
if not last or tonumber(last) <= now - tonumber(ARGV[1]) then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], now, ARGV[2])
return redis.call('LRANGE', KEYS[1], 0, -1)
"""

# KEYS: denylist, its version.  ARGV: the list (JSON).  Returns the new version.
_DENY = """
redis.call('SET', KEYS[1], ARGV[1])
return redis.call('INCR', KEYS[2])
"""


def _encode(x: Any) -> bytes:
    return ("s:" + x).encode() if isinstance(x, str) else str(int(x)).encode()


def _decode(b: bytes) -> Any:
    return b[2:].decode() if b[:2] == b"s:" else int(b)


def redacted(url: str) -> str:
    """``url`` without its password (what logs, errors and /readyz show)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisStore(Store):
    """Sessions and the denylist in the Redis at ``url`` (see the module)."""

    shared = True

    def __init__(self, url: str, *, max_sessions: int, ttl: float, timeout: float = 0.25,
                 denylist_refresh: float = 1.0, metrics: Any = None):
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ImportError("store redis:// needs redis-py: pip install \"fastsasrec[redis]\"") from None
        for name, v in (("store_timeout", timeout), ("denylist_refresh", denylist_refresh)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {v!r}")
        self.url, self.name = url, redacted(url)
        self.max_sessions, self.ttl_ms = int(max_sessions), max(1, int(ttl * 1000))
        self.timeout, self.refresh = float(timeout), float(denylist_refresh)
        self.metrics = metrics
        self.denylist: Tuple[Any, ...] = ()
        self.version: Optional[int] = None
        self.sessions = 0  # as of the last refresh
        self._evicted = 0
        self._client: Any = None
        self._task: Optional[asyncio.Task] = None

    @property
    def evicted(self) -> int:  # type: ignore[override]
        return self._evicted

    async def start(self) -> None:
        import redis.asyncio as aredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside redis-py (the deadline is ours); a broken connection is
        # dropped and the next call opens a new one.
        self._client = aredis.Redis.from_url(
            self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0)
        self._append = self._client.register_script(_APPEND)
        self._get = self._client.register_script(_GET)
        self._deny = self._client.register_script(_DENY)
        try:
            await self._poll()
        except StoreError as e:
            log.warning("%s; the denylist is empty until it answers", e)
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._client is not None:
            try:
                await asyncio.wait_for(self._client.aclose(), self.timeout)
            except Exception:  # noqa: BLE001 - closing; nothing left to answer
                pass

    async def _call(self, op: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """``fn()`` under the deadline, timed and counted in /metrics; StoreError when
        Redis does not answer in time or answers an error."""
        import redis

        t0 = time.perf_counter()
        err = False
        try:
            return await asyncio.wait_for(fn(), self.timeout)
        except (redis.RedisError, OSError, asyncio.TimeoutError) as e:
            err = True
            why = f"no answer within {self.timeout:g} s" if isinstance(e, asyncio.TimeoutError) \
                else f"{type(e).__name__}: {e}"
            raise StoreError(self.name, op, why) from None
        finally:
            if self.metrics is not None:
                self.metrics.store_call(op, time.perf_counter() - t0, err)

    def _keys(self, sid: str) -> List[str]:
        return [f"{PREFIX}s:{sid}", f"{PREFIX}e:{sid}", f"{PREFIX}touch"]

    async def append(self, sid: str, items: Sequence[Any], max_seq: int, str_ids: bool,
                     event_id: Optional[str] = None) -> List[Any]:
        args = [max_seq, self.ttl_ms, self.max_sessions, event_id or "", sid, PREFIX]
        args += [_encode(x) for x in items[-max_seq:]]  # LTRIM would keep only these
        applied, evicted, held = await self._call(
            "append", lambda: self._append(keys=self._keys(sid), args=args))
        self._evicted += int(evicted)
        if evicted and self.metrics is not None:
            self.metrics.evicted.inc(int(evicted))
        return [_decode(b) for b in held]

    async def get(self, sid: str) -> Optional[Tuple[List[Any], float]]:
        held = await self._call("get", lambda: self._get(keys=self._keys(sid),
                                                         args=[self.ttl_ms, sid]))
        if held is None:
            return None
        return [_decode(b) for b in held], self.ttl_ms / 1000

    async def delete(self, sid: str) -> bool:
        keys = self._keys(sid)

        async def drop() -> Any:
            async with self._client.pipeline(transaction=True) as p:
                p.zrem(keys[2], sid)
                p.delete(keys[0], keys[1])
                return await p.execute()

        removed, _ = await self._call("delete", drop)
        return bool(removed)

    async def _poll(self) -> None:
        """Reads the denylist's version (and the sessions' count); the list itself only
        when the version moved."""
        async def both() -> Any:
            async with self._client.pipeline(transaction=False) as p:
                p.get(PREFIX + "denylist:version")
                p.zcard(PREFIX + "touch")
                return await p.execute()

        version, self.sessions = await self._call("denylist_version", both)
        version = int(version) if version is not None else 0
        if version != self.version:
            await self.read_denylist()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            try:
                await self._poll()
            except StoreError as e:  # counted in /metrics; the cached list stays in force
                log.debug("%s", e)
            except Exception as e:  # noqa: BLE001 - the loop must go on
                log.error("denylist refresh failed: %s", e)

    async def read_denylist(self) -> Tuple[Any, ...]:
        raw, version = await self._call("denylist_read", lambda: self._client.mget(
            PREFIX + "denylist", PREFIX + "denylist:version"))
        deny = parse_denylist(json.loads(raw), f"{self.name} key {PREFIX}denylist") if raw else ()
        self.version = int(version) if version is not None else 0
        self.denylist = deny  # one assignment: a batch reads it once
        return deny

    async def write_denylist(self, items: Sequence[Any]) -> Tuple[Any, ...]:
        deny = tuple(dict.fromkeys(items))
        version = await self._call("denylist_write", lambda: self._deny(
            keys=[PREFIX + "denylist", PREFIX + "denylist:version"],
            args=[json.dumps({"items": list(deny)})]))
        self.version, self.denylist = int(version), deny
        return deny

    async def check(self) -> Optional[str]:
        try:
            await self._call("ping", self._client.ping)
        except StoreError as e:
            return str(e)
        return None

    def gauges(self) -> Dict[str, float]:
        return {"sessions": self.sessions}
