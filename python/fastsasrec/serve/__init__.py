"""The recommendation server for the live widget: ``fastsasrec serve MODEL``, or
``create_app(model_or_path, ...)`` to mount in an existing ASGI application.

An ASGI app (Starlette; run by uvicorn), installed with ``pip install "fastsasrec[serve]"``.
Endpoints (JSON in and out):

    POST   /v1/recommend          {session, n, exclude, exclude_seen, candidates}
                                  -> {items, scores, fallback, model}
    POST   /v1/recommend/batch    {sessions, n, exclude_seen, candidates}
                                  -> {results: [{items, scores, fallback}], model}
    POST   /v1/similar            {item, n}  -> {items, scores, model}
    POST   /v1/sessions/{id}/events   {items, n, exclude, event_id, candidates}: appends
                                  clicks to a held session, answers as /v1/recommend
    GET    /v1/sessions/{id}      the held session;  DELETE: forget it
    PUT    /v1/denylist           {items}: never recommend these (GET: the list)
    GET    /v1/model   /healthz   /readyz   /metrics (Prometheus text)
    GET    /openapi.json          this list as an OpenAPI 3.1 document

With API keys (``--api-key-file``, ``create_app(api_keys=)``) the denylist, /v1/model and
/metrics need ``Authorization: Bearer <key>``; ``--cors-origin`` lets browser pages of
those origins call the server.

``exclude_seen`` (default true) leaves the session's own items out; ``keep_seen``, its
opposite, is accepted as a deprecated alias.  ``fallback`` is true when the session had no
item the model knows and the answer is the most popular items.  No answer holds an item
of the denylist, /v1/similar's included.

The modules, by job: ``app`` (the endpoints, module-level functions reading
``request.app.state.server``, and ``create_app``), ``server`` (the state behind them:
the model, held by one reference that a reload replaces whole; running it with uvicorn),
``batcher`` (concurrent requests gathered into one scoring call), ``sessions`` (the held
sessions in this process), ``stores`` and ``redis_store`` (where sessions and the
denylist live), ``metrics`` (/metrics, prometheus_client; one view across workers),
``workers`` (``--workers N``: worker processes on one port, reloads rolled through them),
``inputs`` (what a request may hold; every client mistake a 4xx naming it), ``protocol``
(deadlines on each request's head and body, and the connection cap that sheds the slow
first), ``openapi`` (the document, as data), ``access`` (the API keys and the CORS
origins).

The model is held by one reference that a reload replaces whole (SIGHUP, ``--watch``, or
``Server.reload``): the new file is loaded and warmed beside the old model, then swapped
in one assignment, so every request is answered wholly by one model; a file that fails to
load leaves the old one serving.

Held sessions and the denylist live in a store (``stores``): this process by default
(the denylist optionally in a file), or Redis (``redis_store``, ``--store
redis://HOST:PORT/DB``), shared by every replica; a store that does not answer within
its deadline makes its routes answer 503 with Retry-After while the others go on.
"""
from __future__ import annotations

from typing import Any

from fastsasrec.serve.batcher import Batcher, score
from fastsasrec.serve.inputs import MAX_BATCH_SESSIONS, MAX_DEPTH, MAX_N, HTTPError
from fastsasrec.serve.metrics import Metrics
from fastsasrec.serve.server import Loaded, Server, prepare, run, serve_app, uvicorn_config
from fastsasrec.serve.sessions import SessionStore

__all__ = ["create_app", "prepare", "serve_app", "run", "uvicorn_config", "Server", "Loaded",
           "SessionStore", "Metrics", "Batcher", "HTTPError", "score",
           "MAX_N", "MAX_BATCH_SESSIONS", "MAX_DEPTH"]


def __getattr__(name: str) -> Any:
    # The app needs starlette (the serve extra): imported when first asked for, so the
    # session store and the rest stay importable without it.
    if name == "create_app":
        try:
            from fastsasrec.serve.app import create_app
        except ImportError as e:  # pragma: no cover - the serve extra is missing
            raise ImportError(f"the server needs starlette and uvicorn: pip install "
                              f"\"fastsasrec[serve]\" ({e})") from None
        return create_app
    raise AttributeError(f"module 'fastsasrec.serve' has no attribute {name!r}")
