"""The server's API as an OpenAPI 3.1 document (GET /openapi.json), written as data: every
route, its request body, its answer and each error it can give, the error body being
{"error", "request_id"}.  A client team generates its client from it; the tests check it
against live answers and against the app's routes, so a route added without an entry here
fails them."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fastsasrec.serve.inputs import MAX_BATCH_SESSIONS, MAX_CANDIDATES, MAX_N

# The routes that only an operator calls: behind the API key when the server has keys.
OPERATOR = frozenset({("PUT", "/v1/denylist"), ("GET", "/v1/denylist"), ("GET", "/v1/model"),
                      ("GET", "/metrics")})

_ERRORS = {
    400: "malformed JSON, or JSON nested over 32 levels",
    401: "no valid API key (send Authorization: Bearer <key>)",
    404: "unknown session or item",
    413: "the body is over the server's limit (--max-body)",
    422: "a field of the wrong type or value, named with the value",
    503: "the model is not loaded yet",
    "503 store": "the model is not loaded yet, or the session store did not answer (down or "
                 "slow): try again after Retry-After seconds",
    500: "internal error (logged with the request id)",
}


def _ref(name: str) -> Dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: Dict[str, Any], required: List[str], closed: bool = True) -> Dict[str, Any]:
    out: Dict[str, Any] = {"type": "object", "properties": props, "required": required}
    if closed:
        out["additionalProperties"] = False
    return out


_IDS = {"type": "array", "items": _ref("ItemId")}
_N = {"type": "integer", "minimum": 1, "maximum": MAX_N, "default": 10,
      "description": "how many items to answer (fewer when the catalogue is smaller)"}
_CANDIDATES = dict(_IDS, maxItems=MAX_CANDIDATES, description=(
    "rank only these items (a 'new for you' slot, a category page), each with its score in "
    "the whole catalogue's ranking; ids the model does not know are ignored, and at least "
    "one must be known"))
_ANSWER = {
    "items": {"type": "array", "items": _ref("ItemId"), "description": "best first"},
    "scores": {"type": "array", "items": {"type": ["number", "null"]},
               "description": "one per item; null for an empty slot"},
    "fallback": {"type": "boolean", "description": "the session held no item the model "
                 "knows: these are the most popular items"},
    "names": {"type": "array", "items": {"type": ["string", "null"]},
              "description": "the items' names, when the model was fitted with item names"},
}

SCHEMAS: Dict[str, Any] = {
    "ItemId": {"type": ["integer", "string"], "description": "an item id of the model's "
               "kind: integers (int64) or strings; an empty slot is -1 or \"\""},
    "Error": _obj({"error": {"type": "string"}, "request_id": {"type": "string"}},
                  ["error", "request_id"]),
    "RecommendRequest": _obj({
        "session": dict(_IDS, description="the session's item ids, oldest first"),
        "n": _N, "exclude": dict(_IDS, description="items never to answer"),
        "exclude_seen": {"type": "boolean", "default": True,
                         "description": "leave the session's own items out"},
        "keep_seen": {"type": "boolean", "deprecated": True,
                      "description": "the opposite of exclude_seen"},
        "candidates": _CANDIDATES,
    }, ["session"]),
    "Recommendation": _obj(dict(_ANSWER, model={"type": "string", "description":
                                                "the model that answered"}),
                           ["items", "scores", "fallback", "model"]),
    "BatchRequest": _obj({
        "sessions": {"type": "array", "items": _IDS, "minItems": 1, "maxItems": MAX_BATCH_SESSIONS},
        "n": _N, "exclude_seen": {"type": "boolean", "default": True},
        "keep_seen": {"type": "boolean", "deprecated": True},
        "candidates": _CANDIDATES,
    }, ["sessions"]),
    "BatchRecommendation": _obj({
        "results": {"type": "array", "items": _obj(_ANSWER, ["items", "scores", "fallback"])},
        "model": {"type": "string"},
    }, ["results", "model"]),
    "SimilarRequest": _obj({"item": _ref("ItemId"), "n": _N}, ["item"]),
    "Similar": _obj({"items": _ANSWER["items"], "scores": _ANSWER["scores"],
                     "names": _ANSWER["names"], "model": {"type": "string"}},
                    ["items", "scores", "model"]),
    "EventsRequest": _obj({
        "items": dict(_IDS, maxItems=10_000, description="the clicked items, oldest first"),
        "n": _N, "exclude": _IDS,
        "exclude_seen": {"type": "boolean", "default": True,
                         "description": "leave the held session's items out (false: an "
                                        "abandoned cart's items may come back)"},
        "event_id": {"type": "string", "pattern": "^[A-Za-z0-9._~:@!$&'()*+,;=-]{1,128}$",
                     "description": "the client's id of this event: sent again (a retry), it "
                                    "is applied once and the session is answered as it is"},
        "candidates": _CANDIDATES,
    }, ["items"]),
    "SessionRecommendation": _obj(dict(_ANSWER, model={"type": "string"},
                                       session_id={"type": "string"},
                                       session_length={"type": "integer", "minimum": 0}),
                                  ["items", "scores", "fallback", "model", "session_id",
                                   "session_length"]),
    "Session": _obj({"session_id": {"type": "string"}, "items": _IDS,
                     "expires_in": {"type": "number", "description": "seconds"}},
                    ["session_id", "items", "expires_in"]),
    "Denylist": _obj({"items": _IDS}, ["items"]),
    "DenylistSet": _obj({"items": {"type": "integer", "minimum": 0,
                                   "description": "the distinct items now denied"}}, ["items"]),
    "Model": _obj({
        "library_version": {"type": "string"}, "model": {"type": "string"},
        "sha256": {"type": ["string", "null"]}, "path": {"type": ["string", "null"]},
        "items": {"type": "integer"}, "factors": {"type": "integer"},
        "max_seq": {"type": "integer"}, "device": {"type": "string"},
        "loaded_at": {"type": "number", "description": "Unix time"},
        "pid": {"type": "integer", "description": "the server process that answered (one "
                "of the workers with --workers)"},
    }, ["library_version", "model", "sha256", "path", "items", "factors", "max_seq",
        "device", "loaded_at", "pid"]),
}

_SESSION_ID = {"name": "session_id", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": "^[A-Za-z0-9._~:@!$&'()*+,;=-]{1,256}$"}}

# The routes that call the session store: with a shared store (Redis) they can answer 503.
STORE = frozenset({("POST", "/v1/sessions/{session_id}/events"), ("GET", "/v1/sessions/{session_id}"),
                   ("DELETE", "/v1/sessions/{session_id}"), ("PUT", "/v1/denylist"),
                   ("GET", "/v1/denylist")})

# (method, path): (summary, request schema, 200's schema or media type, error statuses)
_OPS: Dict[tuple, tuple] = {
    ("POST", "/v1/recommend"): ("Recommend for a session the client sends",
                                "RecommendRequest", "Recommendation", (400, 413, 422, 503)),
    ("POST", "/v1/recommend/batch"): ("Recommend for many sessions", "BatchRequest",
                                      "BatchRecommendation", (400, 413, 422, 503)),
    ("POST", "/v1/similar"): ("Items similar to an item", "SimilarRequest", "Similar",
                              (400, 404, 413, 422, 503)),
    ("POST", "/v1/sessions/{session_id}/events"): (
        "Append clicks to a held session (made on first use) and recommend for it",
        "EventsRequest", "SessionRecommendation", (400, 413, 422, 503)),
    ("GET", "/v1/sessions/{session_id}"): ("A held session", None, "Session", (404, 422)),
    ("DELETE", "/v1/sessions/{session_id}"): ("Forget a held session", None, 204, (404, 422)),
    ("PUT", "/v1/denylist"): ("Replace the denylist: items never recommended", "Denylist",
                              "DenylistSet", (400, 413, 422, 503)),
    ("GET", "/v1/denylist"): ("The denylist", None, "Denylist", ()),
    ("GET", "/v1/model"): ("The model being served", None, "Model", (503,)),
    ("GET", "/healthz"): ("Liveness: the process answers", None, "text/plain", ()),
    ("GET", "/readyz"): ("Readiness: the model is loaded and warmed, and the session store "
                         "answers (503, text, saying why, until then)",
                         None, "text/plain", ()),
    ("GET", "/metrics"): ("Prometheus metrics (text format 0.0.4)", None, "text/plain", ()),
    ("GET", "/openapi.json"): ("This document", None, "application/json", ()),
}


def _operation(method: str, path: str, secured: bool, shared_store: bool) -> Dict[str, Any]:
    summary, request, ok, errors = _OPS[(method, path)]
    store = shared_store and (method, path) in STORE
    if store:
        errors = tuple(sorted(set(errors) | {503}))
    op: Dict[str, Any] = {"summary": summary, "operationId": _operation_id(method, path)}
    if "{session_id}" in path:
        op["parameters"] = [_SESSION_ID]
    if request is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": _ref(request)}}}
    responses: Dict[str, Any] = {}
    if ok == 204:
        responses["204"] = {"description": "done (no body)"}
    elif ok == "text/plain":
        responses["200"] = {"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}}
        if path == "/readyz":
            responses["503"] = {"description": "not ready, and why",
                                "content": {"text/plain": {"schema": {"type": "string"}}}}
    elif ok == "application/json":
        responses["200"] = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
    else:
        responses["200"] = {"description": "ok", "content": {"application/json": {"schema": _ref(ok)}}}
    statuses = list(errors) + ([401] if secured else []) + [500]
    for status in sorted(statuses):
        responses[str(status)] = {"description": _ERRORS["503 store" if store and status == 503 else status],
                                  "content": {"application/json": {"schema": _ref("Error")}}}
        if store and status == 503:
            responses["503"]["headers"] = {"Retry-After": {"schema": {"type": "integer"},
                                                           "description": "seconds"}}
        if status == 401:
            responses["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    op["responses"] = responses
    if secured:
        op["security"] = [{"apiKey": []}]
    return op


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}").replace(".", "_") for w in path.split("/") if w and w != "v1"]
    return "_".join([method.lower()] + words)


def document(secured: bool = False, version: Optional[str] = None,
             shared_store: bool = False) -> Dict[str, Any]:
    """The OpenAPI 3.1 document of the server's API; ``secured``: the server has API keys,
    so the operator's routes (``OPERATOR``) need one; ``shared_store``: sessions and the
    denylist live in Redis, so their routes (``STORE``) can answer 503 with Retry-After."""
    if version is None:
        from fastsasrec import __version__ as version
    paths: Dict[str, Dict[str, Any]] = {}
    for method, path in _OPS:
        guarded = secured and (method, path) in OPERATOR
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, guarded, shared_store)
    components: Dict[str, Any] = {"schemas": SCHEMAS}
    if secured:
        components["securitySchemes"] = {"apiKey": {
            "type": "http", "scheme": "bearer",
            "description": "one of the keys of the server's --api-key-file"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "fastsasrec", "version": version,
                 "description": "Next-item recommendations from a SASRec model. Every "
                                "response carries an X-Request-ID header."},
        "paths": paths,
        "components": components,
    }


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)
