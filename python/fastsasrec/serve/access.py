"""Who may call what: the API keys that guard the operator's routes, and the browser
origins allowed to call the server (CORS).

With keys, the operator's routes (``openapi.OPERATOR``: the denylist, read and write; the
model's information; /metrics) need ``Authorization: Bearer <key>`` holding one of them,
else 401 with ``WWW-Authenticate: Bearer``.  Keys are compared by their SHA-256 digests
with ``hmac.compare_digest``, every key each time, so the time taken says nothing of how
much of a key matched.  The recommend, session, health and document routes stay open."""
from __future__ import annotations

import functools
import hashlib
import hmac
import re
from typing import Any, Awaitable, Callable, Iterable, List, Optional, Sequence, Tuple

from starlette.requests import Request
from starlette.responses import Response

from fastsasrec.serve.inputs import HTTPError

_KEY = re.compile(r"[\x21-\x7e]+")  # visible ASCII, no space: what a header carries as is
_ORIGIN = re.compile(r"https?://[^/\s?#]+")


def _key_error(where: str, key: Any) -> Optional[str]:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        return f"{where}: an API key must be visible ASCII characters with no space"
    return None


def read_api_keys(path: str) -> List[str]:
    """The keys in the file at ``path``: one a line, blank lines and lines starting with #
    ignored.  ValueError naming the file when it cannot be read or holds no key."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the API key file {path!r}: {e}") from None
    keys = []
    for i, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        why = _key_error(f"{path!r} line {i}", line)
        if why:
            raise ValueError(why)
        keys.append(line)
    if not keys:
        raise ValueError(f"the API key file {path!r} holds no key (one a line; blank lines "
                         f"and # comments are ignored)")
    return keys


def digests(api_keys: Optional[Iterable[str]]) -> Optional[Tuple[bytes, ...]]:
    """The keys' SHA-256 digests (None: no keys, every route open); ValueError naming a bad
    one."""
    if api_keys is None:
        return None
    if isinstance(api_keys, str):
        raise ValueError("api_keys must be a list of keys, got a string (wrap it in a list)")
    keys = list(api_keys)
    if not keys:
        raise ValueError("api_keys must hold at least one key, got an empty list "
                         "(None leaves every route open)")
    for i, k in enumerate(keys):
        why = _key_error(f"api_keys[{i}]", k)
        if why:
            raise ValueError(why)
    return tuple(hashlib.sha256(k.encode()).digest() for k in keys)


def _valid(held: Sequence[bytes], token: str) -> bool:
    got = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
    ok = False
    for d in held:
        ok |= hmac.compare_digest(d, got)
    return ok


def check(request: Request) -> None:
    """Raises 401 unless the request carries one of the server's keys (when it has keys)."""
    held = request.app.state.api_keys
    if held is None:
        return
    header = request.headers.get("authorization")
    if header is None:
        raise HTTPError(401, "this route needs an API key: send Authorization: Bearer <key>",
                        headers={"WWW-Authenticate": 'Bearer realm="fastsasrec"'})
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not _valid(held, token.strip()):
        raise HTTPError(401, "the API key is not valid (send Authorization: Bearer <key>)",
                        headers={"WWW-Authenticate": 'Bearer realm="fastsasrec", error="invalid_token"'})


def operator(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """``endpoint``, answered only for a request with a valid key (when the server has keys)."""
    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        check(request)
        return await endpoint(request)

    return guarded


def cors_origins(origins: Optional[Iterable[str]]) -> Optional[List[str]]:
    """The browser origins to allow, checked ("https://shop.example", with a port when not
    the scheme's own, no path; "*" for any); None or empty: no CORS headers at all."""
    if origins is None:
        return None
    if isinstance(origins, str):
        raise ValueError("cors_origins must be a list of origins, got a string (wrap it in a list)")
    out = list(origins)
    for i, o in enumerate(out):
        if o != "*" and (not isinstance(o, str) or not _ORIGIN.fullmatch(o)):
            raise ValueError(f"cors_origins[{i}] must be an origin such as https://shop.example "
                             f"(scheme and host, a port if any, no path or trailing slash) "
                             f"or \"*\", got {o!r}")
    return out or None


def cors_middleware(origins: List[str]) -> Any:
    """Starlette's CORSMiddleware for these origins: preflights answered, only an allowed
    origin echoed back, the request id readable by the page."""
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    return Middleware(CORSMiddleware, allow_origins=origins,
                      allow_methods=["GET", "POST", "PUT", "DELETE"],
                      allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                      expose_headers=["X-Request-ID"], max_age=600)
