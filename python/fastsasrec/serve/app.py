"""The HTTP endpoints, as Starlette functions at module level: each reads the server's
state from ``request.app.state.server`` (a ``Server``).  ``create_app`` assembles them."""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import re
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Match, Route

from fastsasrec.serve import access, inputs
from fastsasrec.serve.openapi import OPERATOR, document, openapi
from fastsasrec.serve.batcher import _Ask
from fastsasrec.serve.inputs import MAX_BATCH_SESSIONS, MAX_CANDIDATES, MAX_N, HTTPError
from fastsasrec.serve.metrics import CONTENT_TYPE
from fastsasrec.serve.server import Loaded, Server
from fastsasrec.serve.stores import StoreError

log = logging.getLogger("fastsasrec.serve")


# ----------------------------------------------------------------------------- helpers
async def body_of(request: Request) -> Dict[str, Any]:
    """The request's JSON object, read up to the server's ``max_body`` bytes (413 past it)."""
    limit = request.app.state.server.max_body
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPError(413, f"request body of {length} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return inputs.parse_body(b"".join(chunks))


def loaded(server: Server) -> Loaded:
    cur = server.current
    if not server.ready or cur is None:
        raise HTTPError(503, "the model is not loaded yet")
    return cur


def _str_ids(cur: Loaded) -> bool:
    return cur.model.item_ids.dtype.kind == "U"


def _out(ids: np.ndarray, scores: np.ndarray) -> Tuple[List[Any], List[Optional[float]]]:
    return ids.tolist(), [float(s) if math.isfinite(s) else None for s in scores.tolist()]


def _answer(ask: _Ask) -> Dict[str, Any]:
    ids, scores, fallback, names = ask.result
    items, sc = _out(ids, scores)
    out = {"items": items, "scores": sc, "fallback": bool(fallback)}
    if names is not None:
        out["names"] = names.tolist()
    return out


def _candidates(body: Dict[str, Any], cur: Loaded, str_ids: bool) -> Optional[Tuple[Any, ...]]:
    """The request's "candidates" (only these ranked), or None; 422 when it holds no id the
    model knows."""
    if "candidates" not in body:
        return None
    cand = inputs.ids(body["candidates"], "candidates", str_ids, limit=MAX_CANDIDATES)
    if not cur.known(cand):
        if len(cand) > 20:
            raise HTTPError(422, f"candidates: none of its {len(cand):,} ids is in the model's catalogue")
        raise inputs.unprocessable("candidates", cand, "holds no item of the model's catalogue")
    return tuple(cand)


async def _recommend_one(server: Server, cur: Loaded, session: List[Any], n: int,
                         exclude: List[Any], exclude_seen: bool,
                         candidates: Optional[Tuple[Any, ...]] = None) -> Dict[str, Any]:
    ask = _Ask(session, n, exclude, exclude_seen, cur, candidates=candidates)
    await server.batcher.submit([ask])
    out = _answer(ask)
    out["model"] = cur.tag
    return out


# ----------------------------------------------------------------------------- endpoints
async def recommend(request: Request) -> Response:
    server = request.app.state.server
    cur = loaded(server)
    body = await body_of(request)
    inputs.check_keys(body, ("session", "n", "exclude", "exclude_seen", "keep_seen", "candidates"))
    s = _str_ids(cur)
    if "session" not in body:
        raise HTTPError(422, "session: required (a list of item ids, oldest first)")
    session = inputs.ids(body["session"], "session", s)
    n = inputs.int_field(body, "n", 10, 1, MAX_N)
    exclude = inputs.ids(body.get("exclude", []), "exclude", s)
    exclude_seen = inputs.exclude_seen(body)
    cand = _candidates(body, cur, s)
    return JSONResponse(await _recommend_one(server, cur, session, n, exclude, exclude_seen, cand))


async def recommend_batch(request: Request) -> Response:
    server = request.app.state.server
    cur = loaded(server)
    body = await body_of(request)
    inputs.check_keys(body, ("sessions", "n", "exclude_seen", "keep_seen", "candidates"))
    s = _str_ids(cur)
    sessions = body.get("sessions")
    if not isinstance(sessions, list) or not sessions:
        raise inputs.unprocessable("sessions", sessions, "must be a non-empty list of sessions")
    if len(sessions) > MAX_BATCH_SESSIONS:
        raise inputs.too_many("sessions", len(sessions), MAX_BATCH_SESSIONS, "sessions")
    sessions = [inputs.ids(x, f"sessions[{i}]", s) for i, x in enumerate(sessions)]
    n = inputs.int_field(body, "n", 10, 1, MAX_N)
    exclude_seen = inputs.exclude_seen(body)
    cand = _candidates(body, cur, s)
    asks = [_Ask(x, n, [], exclude_seen, cur, candidates=cand) for x in sessions]
    await server.batcher.submit(asks)
    return JSONResponse({"results": [_answer(a) for a in asks], "model": cur.tag})


async def similar(request: Request) -> Response:
    server = request.app.state.server
    cur = loaded(server)
    body = await body_of(request)
    inputs.check_keys(body, ("item", "n"))
    if "item" not in body:
        raise HTTPError(422, "item: required (an item id)")
    item = inputs.ids([body["item"]], "item", _str_ids(cur))[0]
    n = inputs.int_field(body, "n", 10, 1, MAX_N)
    deny = server.denylist
    loop = asyncio.get_running_loop()
    try:
        got = await loop.run_in_executor(None, functools.partial(
            cur.model.similar_items, item, n, denylist=deny if deny else None))
        ids, sims = got
    except ValueError as e:
        if "not in the model's catalogue" in str(e):
            raise HTTPError(404, f"item {json.dumps(item)} is not in the model's catalogue") from None
        raise HTTPError(422, str(e)) from None
    items, sc = _out(ids, sims)
    out = {"items": items, "scores": sc, "model": cur.tag}
    names = getattr(got, "names", None)
    if names is not None:
        out["names"] = names.tolist()
    return JSONResponse(out)


async def session_events(request: Request) -> Response:
    server = request.app.state.server
    cur = loaded(server)
    sid = inputs.session_id(request.path_params["session_id"])
    body = await body_of(request)
    inputs.check_keys(body, ("items", "n", "exclude", "exclude_seen", "event_id", "candidates"))
    s = _str_ids(cur)
    if "items" not in body:
        raise HTTPError(422, "items: required (the clicked item ids, oldest first)")
    items = inputs.ids(body["items"], "items", s, limit=10_000)
    n = inputs.int_field(body, "n", 10, 1, MAX_N)
    exclude = inputs.ids(body.get("exclude", []), "exclude", s)
    event_id = inputs.event_id(body["event_id"]) if "event_id" in body else None
    exclude_seen = inputs.bool_field(body, "exclude_seen", True)
    cand = _candidates(body, cur, s)  # checked with the rest before the events are held
    items = cur.known(items)  # unknown ids, ignored, must not push the known ones out
    held = await server.store.append(sid, items, cur.max_seq, s, event_id)
    out = await _recommend_one(server, cur, held, n, exclude, exclude_seen, cand)
    out["session_id"] = sid
    out["session_length"] = len(held)
    return JSONResponse(out)


async def session_get(request: Request) -> Response:
    sid = inputs.session_id(request.path_params["session_id"])
    held = await request.app.state.server.store.get(sid)
    if held is None:
        raise HTTPError(404, f"no session {sid!r} (never created, expired or evicted)")
    items, ttl = held
    return JSONResponse({"session_id": sid, "items": list(items), "expires_in": ttl})


async def session_delete(request: Request) -> Response:
    sid = inputs.session_id(request.path_params["session_id"])
    if not await request.app.state.server.store.delete(sid):
        raise HTTPError(404, f"no session {sid!r} (never created, expired or evicted)")
    return Response(status_code=204)


async def denylist_put(request: Request) -> Response:
    server = request.app.state.server
    cur = loaded(server)
    body = await body_of(request)
    inputs.check_keys(body, ("items",))
    if "items" not in body:
        raise HTTPError(422, "items: required (the item ids never to recommend)")
    items = inputs.ids(body["items"], "items", _str_ids(cur))
    deny = await server.store.write_denylist(items)
    return JSONResponse({"items": len(deny)})


async def denylist_get(request: Request) -> Response:
    return JSONResponse({"items": list(await request.app.state.server.store.read_denylist())})


async def model_info(request: Request) -> Response:
    from fastsasrec import __version__

    cur = loaded(request.app.state.server)
    model = cur.model
    return JSONResponse({
        "library_version": __version__, "model": cur.tag, "sha256": cur.sha256,
        "path": cur.path, "items": int(model.item_ids_.size), "factors": int(model.factors_),
        "max_seq": cur.max_seq, "device": model.device_, "loaded_at": cur.loaded_at,
        "pid": os.getpid(),
    })


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok\n")


async def readyz(request: Request) -> Response:
    server = request.app.state.server
    if not server.ready:
        why = f"the model failed to load: {server.load_error}" if server.load_error \
            else "the model is loading"
        return PlainTextResponse(f"not ready: {why}\n", status_code=503)
    why = await server.store.check()
    if why is not None:
        return PlainTextResponse(f"not ready: {why}\n", status_code=503)
    return PlainTextResponse("ready\n")


async def metrics(request: Request) -> Response:
    server = request.app.state.server
    return Response(server.metrics.render(server), media_type=CONTENT_TYPE)


def _route(path: str, endpoint: Any, method: str) -> Route:
    # The operator's routes (openapi.OPERATOR) need an API key when the server has keys.
    if (method, path) in OPERATOR:
        endpoint = access.operator(endpoint)
    return Route(path, endpoint, methods=[method])


ROUTES = [_route(*r) for r in (
    ("/v1/recommend", recommend, "POST"),
    ("/v1/recommend/batch", recommend_batch, "POST"),
    ("/v1/similar", similar, "POST"),
    ("/v1/sessions/{session_id}/events", session_events, "POST"),
    ("/v1/sessions/{session_id}", session_get, "GET"),
    ("/v1/sessions/{session_id}", session_delete, "DELETE"),
    ("/v1/denylist", denylist_put, "PUT"),
    ("/v1/denylist", denylist_get, "GET"),
    ("/v1/model", model_info, "GET"),
    ("/healthz", healthz, "GET"),
    ("/readyz", readyz, "GET"),
    ("/metrics", metrics, "GET"),
    ("/openapi.json", openapi, "GET"),
)]


# ----------------------------------------------------------------------------- errors
def _rid(request: Request) -> str:
    return request.scope.get("fastsasrec.request_id", "")


async def client_error(request: Request, exc: HTTPError) -> Response:
    return JSONResponse({"error": exc.message, "request_id": _rid(request)}, status_code=exc.status,
                        headers=exc.headers)


async def routing_error(request: Request, exc: HTTPException) -> Response:
    return JSONResponse({"error": str(exc.detail), "request_id": _rid(request)},
                        status_code=exc.status_code, headers=exc.headers)


async def store_error(request: Request, exc: StoreError) -> Response:
    # The store is down or slow: the client may try again shortly (the stateless routes
    # answer meanwhile).
    log.warning("request %s %s %s: %s", _rid(request), request.method, request.url.path, exc)
    return JSONResponse({"error": str(exc), "request_id": _rid(request)}, status_code=503,
                        headers={"Retry-After": "1"})


async def server_error(request: Request, exc: Exception) -> Response:
    log.error("request %s %s %s failed", _rid(request), request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal error (logged with this request id)",
                         "request_id": _rid(request)}, status_code=500)


# ----------------------------------------------------------------------------- the app
def create_app(model_or_path: Any, *, device: str = "auto", num_threads: Optional[int] = None,
               max_batch: int = 64, max_wait_ms: float = 0.0, session_ttl: float = 1800.0,
               max_sessions: int = 100_000, max_body: int = 1 << 20, watch: float = 0.0,
               header_timeout: float = 10.0, body_timeout: float = 30.0,
               max_connections: Optional[int] = None, api_keys: Optional[List[str]] = None,
               cors_origins: Optional[List[str]] = None, store: Optional[str] = None,
               denylist_file: Optional[str] = None, store_timeout: float = 0.25,
               denylist_refresh: float = 1.0, clock: Callable[[], float] = time.monotonic, signals: bool = False) -> Any:
    """The server as an ASGI application (Starlette).

    ``model_or_path``: a fitted SASRec, or the path of a model file (loaded at startup, and
    reloadable).  ``max_batch``: sessions per engine call; ``max_wait_ms``: how long a
    batch may wait for company under load (0: it takes what arrived while the engine ran).
    ``session_ttl`` (seconds) and ``max_sessions`` bound the held sessions; ``max_body``:
    the largest request body in bytes; ``watch``: seconds between checks of the model file
    for a new version (0: never).  ``header_timeout`` and ``body_timeout``: seconds a
    connection has to send a request's head, then its body, before it is closed;
    ``max_connections``: open connections at most, the slow shed first (None: from the
    open-files limit); these three hold when the app runs under ``serve_app`` or
    ``uvicorn_config``.  ``api_keys``: the operator's routes (the denylist, /v1/model,
    /metrics) need ``Authorization: Bearer <one of them>`` (None: open; see ``access``).
    ``cors_origins``: browser origins allowed to call the server (CORS; None: none).
    ``store``: where the held sessions and the denylist live: None or "memory" (this
    process; ``denylist_file``: a JSON file that keeps the denylist across restarts), or
    "redis://HOST:PORT/DB" (shared by replicas; ``store_timeout``: seconds each Redis call
    may take, past which the request is answered 503 with Retry-After;
    ``denylist_refresh``: seconds between checks for another replica's denylist change).
    ``clock``: the sessions' clock (tests inject one).  ``signals``: SIGHUP reloads (the
    CLI sets it).  ``app.state.server`` is the ``Server``; GET /openapi.json describes
    the API."""
    keys = access.digests(api_keys)
    origins = access.cors_origins(cors_origins)
    server = Server(model_or_path, device=device, num_threads=num_threads, max_batch=max_batch,
                    max_wait_ms=max_wait_ms, session_ttl=session_ttl, max_sessions=max_sessions,
                    max_body=max_body, watch=watch, header_timeout=header_timeout,
                    body_timeout=body_timeout, max_connections=max_connections, store=store,
                    denylist_file=denylist_file, store_timeout=store_timeout,
                    denylist_refresh=denylist_refresh, clock=clock)

    @asynccontextmanager
    async def lifespan(app: Any):
        await server.startup()
        if signals:
            server.install_signal_handlers()
        yield
        await server.shutdown()

    inner = Starlette(routes=ROUTES, lifespan=lifespan,
                      middleware=[access.cors_middleware(origins)] if origins else None,
                      exception_handlers={HTTPError: client_error, HTTPException: routing_error,
                                          StoreError: store_error, Exception: server_error})
    inner.state.server = server
    inner.state.api_keys = keys
    inner.state.openapi = document(secured=keys is not None, shared_store=server.store.shared)
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
