"""Guards at the HTTP protocol level, below the app: a deadline on receiving each request's
head and body, and a cap on open connections that sheds the slow before the well-behaved.

uvicorn keeps a connection that sends part of a request line and stalls for as long as the
client likes (its keep-alive timeout restarts on every byte), and its ``limit_concurrency``
answers 503 to every client once the cap is reached.  ``protocol()`` makes a subclass of
uvicorn's HTTP protocol (httptools when installed, else h11), for ``uvicorn.Config(http=)``:

- a connection has ``header_timeout`` seconds, from when it opens or its last response
  ends, to send a complete request head, then ``body_timeout`` seconds for the body; on
  expiry the connection is closed.  The app's own time (computing the answer) is never
  counted.
- at ``max_connections`` open connections, a new one closes the connection that has waited
  longest for a request head (a stalled client, or an idle keep-alive one); only when every
  other connection is busy with a request is the new one refused (closed).
"""
from __future__ import annotations

import resource
from typing import Any, Callable, Dict, Optional

HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
_RESERVED_FILES = 64  # descriptors kept for the model file, logs and the runtime


def default_max_connections() -> int:
    """Open connections allowed by default: the process's open-files limit less a reserve,
    so that the server never runs out of descriptors (then it could accept no one)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65_536
    return max(16, min(int(soft) - _RESERVED_FILES, 65_536))


def _base() -> type:
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        return HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn without httptools
        from uvicorn.protocols.http.h11_impl import H11Protocol
        return H11Protocol


class _Deadlines:
    """The mixin over uvicorn's protocol.  ``_phase``: "head" (waiting for a request head),
    "body" (head in, body not complete) or None (the app has the request); ``_seen``: the
    request cycle whose head was last seen complete."""

    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    max_connections: Optional[int] = None
    closed: Callable[[str], None] = staticmethod(lambda reason: None)
    # The connections waiting for a request head, the longest-waiting first (a dict keeps
    # its insertion order): what the cap sheds, found in O(1).
    waiting: Dict[Any, None] = {}

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._timer = None
        self._phase: Optional[str] = None
        self._seen = None
        self._wait("head")
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self._shed()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._wait(None)
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self._progress()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if self.transport.is_closing():
            self._wait(None)
        elif self.cycle is self._seen and self.cycle.response_complete:
            self._wait("head")  # nothing pipelined: the next request's head is awaited
        else:
            self._progress()

    def _progress(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle is not self._seen:  # a new request's head is complete
            self._seen = cycle
            self._wait("body" if cycle.more_body else None)
        elif self._phase == "body" and not cycle.more_body:
            self._wait(None)

    def _wait(self, phase: Optional[str]) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._phase == "head":
            self.waiting.pop(self, None)
        self._phase = phase
        if phase == "head":
            self.waiting[self] = None
        if phase is not None and not self.transport.is_closing():
            limit = self.header_timeout if phase == "head" else self.body_timeout
            self._timer = self.loop.call_later(limit, self._expire, phase)

    def _expire(self, phase: str) -> None:
        self._timer = None
        self._close("header_timeout" if phase == "head" else "body_timeout")

    def _close(self, reason: str) -> None:
        self.closed(reason)
        self._wait(None)
        self._phase = "closed"
        if not self.transport.is_closing():
            self.transport.close()

    def _shed(self) -> None:
        """Closes the connection that has waited longest for a request head: another one
        when there is one, else this new one."""
        oldest = next(iter(self.waiting), self)
        oldest._close("shed" if oldest is not self else "refused")


def protocol(header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT,
             max_connections: Optional[int] = None,
             closed: Optional[Callable[[str], None]] = None) -> type:
    """uvicorn's HTTP protocol with these deadlines (seconds) and connection cap (None: the
    default from the open-files limit); ``closed(reason)`` is called for each connection
    closed, by its reason (header_timeout, body_timeout, shed, refused)."""
    for name, v in (("header_timeout", header_timeout), ("body_timeout", body_timeout)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
            raise ValueError(f"{name} must be a number of seconds > 0, got {v!r}")
    if max_connections is None:
        max_connections = default_max_connections()
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
        raise ValueError(f"max_connections must be an integer >= 1, got {max_connections!r}")
    base = _base()
    return type(f"Guarded{base.__name__}", (_Deadlines, base), {
        "header_timeout": float(header_timeout), "body_timeout": float(body_timeout),
        "max_connections": max_connections, "closed": staticmethod(closed or (lambda reason: None)),
        "waiting": {}})
