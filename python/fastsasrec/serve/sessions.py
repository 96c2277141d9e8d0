"""The sessions the server holds for its clients, click by click."""
from __future__ import annotations

import array
import sys
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# Event ids remembered per session (the most recent): a retry is recognised as long as it
# comes within this many later events of the same session.
EVENT_IDS = 256


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
        self._events: Dict[str, "OrderedDict[str, None]"] = {}  # recent event ids, per session
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
        self._events.pop(sid, None)
        self.bytes -= self._bytes.pop(sid)

    def _expire(self, now: float) -> None:
        while self._d:
            sid, (_, last) = next(iter(self._d.items()))
            if now - last < self.ttl:
                break
            self._drop(sid)
            self.expired += 1

    def append(self, sid: str, items: Sequence[Any], max_len: int, str_ids: bool,
               event_id: Optional[str] = None) -> List[Any]:
        """Appends ``items`` to session ``sid`` (made on first use) and returns its items.
        ``event_id``: the client's id of this event; an id among the session's last
        ``EVENT_IDS`` is not applied again (the session is returned as it is)."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            held = self._d.get(sid)
            seq = held[0] if held is not None else None
            events = self._events.get(sid) if held is not None else None
            if held is not None:
                self._drop(sid)
            if seq is None or (str_ids != isinstance(seq, list)):
                seq, events = ([] if str_ids else array.array("q")), None
            if event_id is not None:
                events = events if events is not None else OrderedDict()
                if event_id in events:
                    items = ()
                else:
                    events[event_id] = None
                    if len(events) > EVENT_IDS:
                        events.popitem(last=False)
            seq.extend(items)
            if len(seq) > max_len:
                del seq[: len(seq) - max_len]
            self._d[sid] = (seq, now)
            if events is not None:
                self._events[sid] = events
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
