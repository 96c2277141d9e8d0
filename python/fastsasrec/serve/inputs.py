"""What a request may hold: each field checked, and a client's mistake answered as a 4xx
naming the field and the value (``HTTPError``), never a 500."""
from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

MAX_N = 1000  # items a request may ask for
MAX_BATCH_SESSIONS = 10_000  # sessions in one /v1/recommend/batch request
MAX_CANDIDATES = 100_000  # a request's candidates (ids)
MAX_DEPTH = 32  # brackets a body may nest (a valid request nests 3)
_SESSION_ID = re.compile(r"[A-Za-z0-9._~:@!$&'()*+,;=-]{1,256}")
# Characters no id may hold: control characters (NUL included) and lone surrogates, which
# no UTF-8 response can carry and which numpy's fixed-width strings would change.
_BAD_CHAR = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


class HTTPError(Exception):
    """An error answered to the client with its status and message (never a 500)."""

    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def unprocessable(field: str, value: Any, why: str) -> HTTPError:
    shown = json.dumps(value)[:100] if _jsonable(value) else repr(value)[:100]
    return HTTPError(422, f"{field}: {why}, got {shown}")


def too_many(field: str, count: int, limit: int, what: str) -> HTTPError:
    return HTTPError(422, f"{field}: holds {count:,} {what}, more than the {limit:,} accepted")


def _jsonable(x: Any) -> bool:
    try:
        json.dumps(x)
        return True
    except (TypeError, ValueError):
        return False


def nesting(raw: bytes) -> int:
    """How deep the brackets of a JSON text nest (brackets inside strings not counted),
    found without recursion."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:  # the common case: too few to matter
        return 0
    text = np.frombuffer(_STRING.sub(b'""', raw), dtype=np.uint8)
    step = ((text == ord("[")) | (text == ord("{"))).astype(np.int64)
    step -= (text == ord("]")) | (text == ord("}"))
    return int(np.cumsum(step).max(initial=0))


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out = dict(pairs)
    if len(out) < len(pairs):
        seen: set = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return out


def parse_body(raw: bytes) -> Dict[str, Any]:
    """The JSON object of a request body: 400 when it is not JSON or nests deeper than
    MAX_DEPTH, 422 when it is not an object."""
    depth = nesting(raw)
    if depth > MAX_DEPTH:
        raise HTTPError(400, f"JSON nested {depth} levels deep; at most {MAX_DEPTH} are accepted")
    try:
        body = json.loads(raw, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise HTTPError(400, f"malformed JSON: the key {e.args[0]!r} appears twice in an object "
                             "(which one counts is not defined)") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise HTTPError(400, f"malformed JSON: {e}") from None
    if not isinstance(body, dict):
        raise HTTPError(422, f"the body must be a JSON object, got {type(body).__name__}")
    return body


def ids(value: Any, field: str, str_ids: bool, limit: int = 1_000_000) -> List[Any]:
    """A JSON list of item ids of the model's kind, or 422 naming the field and value."""
    if not isinstance(value, list):
        raise unprocessable(field, value, "must be a list of item ids")
    if len(value) > limit:
        raise too_many(field, len(value), limit, "ids")
    if str_ids:
        try:
            bad = _BAD_CHAR.search("".join(value)) is not None
        except TypeError:
            bad = True
        if bad:
            for i, x in enumerate(value):
                if not isinstance(x, str):
                    raise unprocessable(f"{field}[{i}]", x, "this model's item ids are strings")
                if _BAD_CHAR.search(x):
                    raise unprocessable(f"{field}[{i}]", x, "an id may not hold control characters "
                                        "(NUL included) or lone surrogates")
        return value
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, int):
            raise unprocessable(f"{field}[{i}]", x, "this model's item ids are integers")
        if not -2**63 <= x < 2**63:
            raise unprocessable(f"{field}[{i}]", x, "item ids must fit in 64 bits (int64)")
    return value


def int_field(body: Dict[str, Any], field: str, default: int, lo: int, hi: int) -> int:
    v = body.get(field, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise unprocessable(field, v, f"must be an integer in {lo}..{hi}")
    return v


def bool_field(body: Dict[str, Any], field: str, default: bool) -> bool:
    v = body.get(field, default)
    if not isinstance(v, bool):
        raise unprocessable(field, v, "must be true or false")
    return v


def exclude_seen(body: Dict[str, Any]) -> bool:
    """``exclude_seen`` (default true), or its deprecated opposite ``keep_seen``; both
    given and contradicting each other is a 422."""
    ex: Optional[bool] = bool_field(body, "exclude_seen", True) if "exclude_seen" in body else None
    if "keep_seen" in body:
        keep = bool_field(body, "keep_seen", False)
        if ex is not None and ex == keep:
            raise HTTPError(422, f"exclude_seen ({json.dumps(ex)}) contradicts keep_seen "
                                 f"({json.dumps(keep)}, its deprecated opposite); send exclude_seen only")
        return not keep
    return True if ex is None else ex


def check_keys(body: Dict[str, Any], allowed: Sequence[str]) -> None:
    extra = [k for k in body if k not in allowed]
    if extra:
        raise HTTPError(422, f"unknown field {extra[0]!r}; this endpoint takes {', '.join(allowed)}")


def session_id(sid: str) -> str:
    """A held session's id: the whole of it 1 to 256 URL-safe characters, or 422."""
    if not _SESSION_ID.fullmatch(sid):
        raise unprocessable("session_id", sid, "must be 1 to 256 URL-safe characters")
    return sid


def event_id(value: Any) -> str:
    """A client's id of an event (so that a retry is applied once): 1 to 128 URL-safe
    characters, or 422."""
    if not isinstance(value, str) or len(value) > 128 or not _SESSION_ID.fullmatch(value):
        raise unprocessable("event_id", value, "must be a string of 1 to 128 URL-safe characters")
    return value
