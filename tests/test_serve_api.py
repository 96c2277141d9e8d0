"""The server's API as a document and its operator's routes guarded: GET /openapi.json
checked against the app's routes and against live answers (each success and each error a
route documents, validated against the schema the document gives); the API key on the
operator's routes; CORS for browser widgets; TLS and the CLI's options.  Real uvicorn on
loopback, as in test_serve.py."""
import re
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

httpx = pytest.importorskip("httpx", reason="the serve tests need httpx (the test extra)")
pytest.importorskip("uvicorn", reason="the serve tests need uvicorn (the serve extra)")
pytest.importorskip("starlette", reason="the serve tests need starlette (the serve extra)")

from fastsasrec import SASRec  # noqa: E402
from fastsasrec.serve import create_app  # noqa: E402
from fastsasrec.serve.access import read_api_keys  # noqa: E402
from test_serve import Running, free_port, sessions  # noqa: E402

KEY = "k3y-0f-the-0perator_Abc.123"
BEARER = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def model():
    return SASRec(iterations=2, factors=16, max_seq=10, random_state=0, num_threads=1).fit(sessions())


@pytest.fixture(scope="module")
def named_model():
    """String ids with names: the answers carry "names" beside "items"."""
    seqs = [[f"sku-{i}" for i in s] for s in sessions(items=40)]
    table = pd.DataFrame({"category": [f"c{i % 3}" for i in range(1, 40)],
                          "title": [f"Product {i}" for i in range(1, 40)]},
                         index=[f"sku-{i}" for i in range(1, 40)])
    return SASRec(iterations=1, factors=8, max_seq=10, random_state=0, num_threads=1).fit(
        seqs, item_features=table, item_names="title")


@pytest.fixture
def running():
    servers = []

    def start(model, wait_ready=True, **kw):
        r = Running(create_app(model, **kw), wait_ready=wait_ready)
        servers.append(r)
        return r

    yield start
    for r in servers:
        r.close()


# ----------------------------------------------------------------------------- a validator
def validate(value, schema, doc, where="$"):
    """The JSON-schema subset the document uses: $ref, type (one or a list), properties,
    required, additionalProperties false, items, minimum/maximum, minItems/maxItems,
    pattern.  An AssertionError naming where the value breaks the schema."""
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
             "integer": int, "number": (int, float)}
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(isinstance(value, kinds[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                 for t in types)
        assert ok, f"{where}: {value!r} is not of type {types}"
    if isinstance(value, dict):
        for k in schema.get("required", []):
            assert k in value, f"{where}: {k!r} is required"
        props = schema.get("properties", {})
        for k, v in value.items():
            if k in props:
                validate(v, props[k], doc, f"{where}.{k}")
            else:
                assert schema.get("additionalProperties", True) is not False, f"{where}: {k!r} is not allowed"
    if isinstance(value, list):
        assert len(value) >= schema.get("minItems", 0), f"{where}: too few items"
        assert len(value) <= schema.get("maxItems", len(value)), f"{where}: too many items"
        for i, v in enumerate(value):
            validate(v, schema.get("items", {}), doc, f"{where}[{i}]")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        assert value >= schema.get("minimum", value) and value <= schema.get("maximum", value), where
    if isinstance(value, str) and "pattern" in schema:
        assert re.search(schema["pattern"], value), f"{where}: {value!r} does not match"


def test_the_validator_refuses_what_breaks_a_schema():
    from fastsasrec.serve.openapi import document

    doc = document()
    good = {"items": [1, 2], "scores": [0.5, None], "fallback": False, "model": "m"}
    validate(good, {"$ref": "#/components/schemas/Recommendation"}, doc)
    for bad in (dict(good, extra=1), {k: v for k, v in good.items() if k != "model"},
                dict(good, items=[1.5]), dict(good, fallback=0), dict(good, scores=["x"])):
        with pytest.raises(AssertionError):
            validate(bad, {"$ref": "#/components/schemas/Recommendation"}, doc)


# ----------------------------------------------------------------------------- the document
def _routes(app):
    out = set()
    for r in app.router.routes:
        out |= {(m, r.path) for m in r.methods if m != "HEAD"}
    return out


def _documented(doc):
    return {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}


@pytest.mark.parametrize("secured", [False, True])
def test_the_document_lists_exactly_the_apps_routes(model, secured):
    app = create_app(model, api_keys=[KEY] if secured else None)
    doc = app.state.openapi
    assert _documented(doc) == _routes(app)
    guarded = {(m.upper(), p) for p, ops in doc["paths"].items() for m, op in ops.items() if "security" in op}
    with_401 = {(m.upper(), p) for p, ops in doc["paths"].items() for m, op in ops.items()
                if "401" in op["responses"]}
    want = {("PUT", "/v1/denylist"), ("GET", "/v1/denylist"), ("GET", "/v1/model"), ("GET", "/metrics")}
    assert guarded == with_401 == (want if secured else set())


def test_the_document_is_valid_openapi_3_1(model):
    validator = pytest.importorskip("openapi_spec_validator")
    for secured in (False, True):
        doc = create_app(model, api_keys=[KEY] if secured else None).state.openapi
        assert doc["openapi"].startswith("3.1")
        validator.validate(doc)


def _check(doc, seen, method, template, got):
    """The answer ``got`` to ``method template`` is one the document gives, and its body
    validates against the document's schema for its status."""
    op = doc["paths"][template][method.lower()]
    spec = op["responses"].get(str(got.status_code))
    assert spec is not None, f"{method} {template} answered {got.status_code}, undocumented: {got.text}"
    seen.add((method, template, got.status_code))
    if "content" not in spec:
        assert got.content == b"", got.content
        return
    ctype = got.headers["content-type"].split(";")[0]
    assert ctype in spec["content"], (method, template, got.status_code, ctype)
    if ctype == "application/json":
        validate(got.json(), spec["content"][ctype]["schema"], doc, f"{method} {template} {got.status_code}")
    for header in spec.get("headers", {}):
        assert header.lower() in got.headers, (method, template, header)


def _exercise(r, doc, seen, str_ids, big):
    a, b = ("sku-1", "sku-2") if str_ids else (1, 2)
    unknown = "sku-none" if str_ids else 12345
    j = {"content-type": "application/json"}
    calls = [  # (method, template, url, body or raw bytes, headers)
        ("POST", "/v1/recommend", "/v1/recommend", {"session": [a, b], "n": 3}, {}),
        ("POST", "/v1/recommend", "/v1/recommend", b"{no", j),
        ("POST", "/v1/recommend", "/v1/recommend", big, j),
        ("POST", "/v1/recommend", "/v1/recommend", {"sessoin": [a]}, {}),
        ("POST", "/v1/recommend/batch", "/v1/recommend/batch", {"sessions": [[a], [], [unknown]], "n": 2}, {}),
        ("POST", "/v1/recommend/batch", "/v1/recommend/batch", b"[[[", j),
        ("POST", "/v1/recommend/batch", "/v1/recommend/batch", big, j),
        ("POST", "/v1/recommend/batch", "/v1/recommend/batch", {"sessions": []}, {}),
        ("POST", "/v1/similar", "/v1/similar", {"item": a, "n": 2}, {}),
        ("POST", "/v1/similar", "/v1/similar", {"item": unknown}, {}),
        ("POST", "/v1/similar", "/v1/similar", b"\xff", j),
        ("POST", "/v1/similar", "/v1/similar", big, j),
        ("POST", "/v1/similar", "/v1/similar", {"n": 2}, {}),
        ("POST", "/v1/sessions/{session_id}/events", "/v1/sessions/v1/events", {"items": [a, b]}, {}),
        ("POST", "/v1/sessions/{session_id}/events", "/v1/sessions/v1/events", b"{", j),
        ("POST", "/v1/sessions/{session_id}/events", "/v1/sessions/v1/events", big, j),
        ("POST", "/v1/sessions/{session_id}/events", "/v1/sessions/a%20b/events", {"items": [a]}, {}),
        ("GET", "/v1/sessions/{session_id}", "/v1/sessions/v1", None, {}),
        ("GET", "/v1/sessions/{session_id}", "/v1/sessions/nobody", None, {}),
        ("GET", "/v1/sessions/{session_id}", "/v1/sessions/a%20b", None, {}),
        ("DELETE", "/v1/sessions/{session_id}", "/v1/sessions/v1", None, {}),
        ("DELETE", "/v1/sessions/{session_id}", "/v1/sessions/v1", None, {}),
        ("DELETE", "/v1/sessions/{session_id}", "/v1/sessions/a%20b", None, {}),
        ("PUT", "/v1/denylist", "/v1/denylist", {"items": [b]}, BEARER),
        ("PUT", "/v1/denylist", "/v1/denylist", b"{", dict(j, **BEARER)),
        ("PUT", "/v1/denylist", "/v1/denylist", big, dict(j, **BEARER)),
        ("PUT", "/v1/denylist", "/v1/denylist", {"items": "x"}, BEARER),
        ("PUT", "/v1/denylist", "/v1/denylist", {"items": []}, {}),
        ("GET", "/v1/denylist", "/v1/denylist", None, BEARER),
        ("GET", "/v1/denylist", "/v1/denylist", None, {"authorization": "Bearer wrong"}),
        ("GET", "/v1/model", "/v1/model", None, BEARER),
        ("GET", "/v1/model", "/v1/model", None, {}),
        ("GET", "/healthz", "/healthz", None, {}),
        ("GET", "/readyz", "/readyz", None, {}),
        ("GET", "/metrics", "/metrics", None, BEARER),
        ("GET", "/metrics", "/metrics", None, {"authorization": f"Basic {KEY}"}),
        ("GET", "/openapi.json", "/openapi.json", None, {}),
    ]
    for method, template, url, body, headers in calls:
        if isinstance(body, bytes):
            got = r.client.request(method, url, content=body, headers=headers)
        else:
            got = r.client.request(method, url, json=body, headers=headers)
        _check(doc, seen, method, template, got)
    return calls


def test_live_answers_match_the_document(running, model, named_model, monkeypatch):
    from fastsasrec.serve import batcher
    from fastsasrec.serve import server as serve

    seen = set()
    big = b'{"session": [' + b"1," * 3000 + b"1]}"
    for m, str_ids in ((model, False), (named_model, True)):
        r = running(m, api_keys=[KEY], max_body=2000)
        doc = r.client.get("/openapi.json").json()
        assert doc == r.app.state.openapi
        _exercise(r, doc, seen, str_ids, big)
        if str_ids:  # the names are in the answers that were validated
            got = r.client.post("/v1/recommend", json={"session": ["sku-1"], "n": 2}).json()
            assert got["names"] and all(x.startswith("Product ") for x in got["names"])
    # Before the model is in: 503 from every route that needs it, and from /readyz.
    gate = threading.Event()
    original = serve._warm
    monkeypatch.setattr(serve, "_warm", lambda x: (gate.wait(30), original(x)))
    r = running(model, wait_ready=False, api_keys=[KEY])
    for method, template, url, body in (
            ("POST", "/v1/recommend", "/v1/recommend", {"session": [1]}),
            ("POST", "/v1/recommend/batch", "/v1/recommend/batch", {"sessions": [[1]]}),
            ("POST", "/v1/similar", "/v1/similar", {"item": 1}),
            ("POST", "/v1/sessions/{session_id}/events", "/v1/sessions/s/events", {"items": [1]}),
            ("PUT", "/v1/denylist", "/v1/denylist", {"items": [1]}),
            ("GET", "/v1/model", "/v1/model", None), ("GET", "/readyz", "/readyz", None)):
        got = r.client.request(method, url, json=body, headers=BEARER)
        assert got.status_code == 503, (url, got.text)
        _check(doc, seen, method, template, got)
    gate.set()
    # A server error: a 500 with the error body.
    r = running(model, api_keys=[KEY])
    monkeypatch.setattr(batcher, "score", lambda *a, **k: 1 / 0)
    _check(doc, seen, "POST", "/v1/recommend", r.client.post("/v1/recommend", json={"session": [1]}))
    assert ("POST", "/v1/recommend", 500) in seen
    # Every answer the document gives was seen (500s once, above).
    documented = {(m.upper(), p, int(s)) for p, ops in doc["paths"].items() for m, op in ops.items()
                  for s in op["responses"] if s != "500"}
    assert documented - seen == set()


# ----------------------------------------------------------------------------- the API key
def test_operator_routes_need_a_valid_key_and_public_ones_do_not(running, model):
    r = running(model, api_keys=["first-key", KEY])
    c = r.client
    for method, url in (("PUT", "/v1/denylist"), ("GET", "/v1/denylist"), ("GET", "/v1/model"),
                        ("GET", "/metrics")):
        body = {"items": [3]} if method == "PUT" else None
        for headers in ({}, {"authorization": "Bearer"}, {"authorization": "Bearer wrong"},
                        {"authorization": f"Bearer {KEY}x"}, {"authorization": f"Bearer {KEY[:-1]}"},
                        {"authorization": f"Token {KEY}"}):
            got = c.request(method, url, json=body, headers=headers)
            assert got.status_code == 401, (method, url, headers, got.text)
            assert got.headers["www-authenticate"].startswith("Bearer"), got.headers
            assert got.json()["request_id"] == got.headers["x-request-id"]
            assert KEY not in got.text
        for key in ("first-key", KEY):
            for scheme in ("Bearer", "bearer"):
                got = c.request(method, url, json=body, headers={"authorization": f"{scheme} {key}"})
                assert got.status_code == 200, (method, url, got.text)
    assert c.get("/v1/denylist", headers=BEARER).json() == {"items": [3]}  # a 401 changed nothing
    assert "needs an API key" in c.put("/v1/denylist", json={"items": []}).json()["error"]
    assert c.get("/v1/denylist", headers=BEARER).json() == {"items": [3]}
    # The public routes answer without a key (and ignore a wrong one).
    for headers in ({}, {"authorization": "Bearer wrong"}):
        assert c.post("/v1/recommend", json={"session": [1]}, headers=headers).status_code == 200
        assert c.post("/v1/recommend/batch", json={"sessions": [[1]]}, headers=headers).status_code == 200
        assert c.post("/v1/similar", json={"item": 1}, headers=headers).status_code == 200
        assert c.post("/v1/sessions/s/events", json={"items": [1]}, headers=headers).status_code == 200
        assert c.get("/v1/sessions/s", headers=headers).status_code == 200
        for url in ("/healthz", "/readyz", "/openapi.json"):
            assert c.get(url, headers=headers).status_code == 200


def test_without_keys_every_route_is_open(running, model):
    r = running(model)
    assert r.client.put("/v1/denylist", json={"items": [3]}).status_code == 200
    assert r.client.get("/v1/model").status_code == 200 and r.client.get("/metrics").status_code == 200


def test_the_key_file_is_read_and_bad_ones_are_named(tmp_path, model):
    path = tmp_path / "keys"
    path.write_text("# the operators' keys\n\n  alpha-key-1  \n#beta\nbeta-key-2\n")
    assert read_api_keys(str(path)) == ["alpha-key-1", "beta-key-2"]
    for text in ("", "\n# only a comment\n   \n"):
        path.write_text(text)
        with pytest.raises(ValueError, match=f"{re.escape(repr(str(path)))} holds no key"):
            read_api_keys(str(path))
    path.write_text("good-key\nbad key\n")
    with pytest.raises(ValueError, match="line 2: an API key must be visible ASCII"):
        read_api_keys(str(path))
    with pytest.raises(ValueError, match="cannot read the API key file .*missing"):
        read_api_keys(str(tmp_path / "missing"))
    for keys, match in (([], "at least one key"), ("abc", "got a string"), ([KEY, "a b"], r"api_keys\[1\]"),
                        ([3], r"api_keys\[0\]")):
        with pytest.raises(ValueError, match=match):
            create_app(model, api_keys=keys)


@pytest.mark.parametrize("content,message", [("", "holds no key"), (None, "cannot read the API key file")])
def test_cli_refuses_an_empty_or_unreadable_key_file(tmp_path, model, content, message):
    path = tmp_path / "m.fsr"
    model.save(path)
    keys = tmp_path / "keys"
    if content is not None:
        keys.write_text(content)
    out = subprocess.run([sys.executable, "-m", "fastsasrec", "serve", str(path), "--api-key-file", str(keys)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr and str(keys) in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


# ----------------------------------------------------------------------------- CORS
def test_cors_echoes_only_the_given_origins(running, model):
    shop = "https://shop.example"
    r = running(model, cors_origins=[shop, "http://localhost:3000"], api_keys=[KEY])
    c = r.client
    pre = c.options("/v1/recommend", headers={"origin": shop, "access-control-request-method": "POST",
                                              "access-control-request-headers": "content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == shop
    assert "POST" in pre.headers["access-control-allow-methods"]
    pre = c.options("/v1/denylist", headers={"origin": "http://localhost:3000",
                                             "access-control-request-method": "PUT",
                                             "access-control-request-headers": "authorization, content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://localhost:3000"
    got = c.post("/v1/recommend", json={"session": [1]}, headers={"origin": shop})
    assert got.status_code == 200 and got.headers["access-control-allow-origin"] == shop
    assert "x-request-id" in got.headers["access-control-expose-headers"].lower()
    got = c.put("/v1/denylist", json={"items": []}, headers={"origin": shop})  # errors carry it too
    assert got.status_code == 401 and got.headers["access-control-allow-origin"] == shop
    for other in ("https://evil.example", "https://shop.example.evil.example", "http://shop.example"):
        pre = c.options("/v1/recommend", headers={"origin": other, "access-control-request-method": "POST"})
        assert pre.status_code == 400 and "access-control-allow-origin" not in pre.headers
        got = c.post("/v1/recommend", json={"session": [1]}, headers={"origin": other})
        assert got.status_code == 200 and "access-control-allow-origin" not in got.headers


def test_without_origins_no_cors_headers(running, model):
    r = running(model)
    got = r.client.post("/v1/recommend", json={"session": [1]}, headers={"origin": "https://shop.example"})
    assert got.status_code == 200 and "access-control-allow-origin" not in got.headers
    pre = r.client.options("/v1/recommend", headers={"origin": "https://shop.example",
                                                     "access-control-request-method": "POST"})
    assert pre.status_code == 405


@pytest.mark.parametrize("origins,match", [("https://a.example", "got a string"),
                                           (["https://a.example/"], "no path or trailing slash"),
                                           (["shop.example"], "shop.example"), ([None], "None")])
def test_bad_origins_are_named(model, origins, match):
    with pytest.raises(ValueError, match=match):
        create_app(model, cors_origins=origins)


# ----------------------------------------------------------------------------- the process
def _self_signed(tmp_path):
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def test_cli_serves_tls_cors_and_keys(tmp_path, model):
    path = tmp_path / "m.fsr"
    model.save(path)
    cert, key = _self_signed(tmp_path)
    keys = tmp_path / "keys"
    keys.write_text(f"# operators\n{KEY}\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fastsasrec", "serve", str(path), "--port", str(port),
                             "--threads", "1", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                             "--api-key-file", str(keys), "--cors-origin", "https://shop.example",
                             "--cors-origin", "https://other.example", "--forwarded-allow-ips", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        import ssl

        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(cert)), timeout=5) as c:
            while True:
                assert proc.poll() is None, proc.stdout.read()
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not get ready"
                time.sleep(0.05)
            assert c.get("/v1/model").status_code == 401
            assert c.get("/v1/model", headers=BEARER).json()["items"] == model.n_items
            for origin in ("https://shop.example", "https://other.example"):
                got = c.post("/v1/recommend", json={"session": [1]}, headers={"origin": origin})
                assert got.headers["access-control-allow-origin"] == origin
            doc = c.get("/openapi.json").json()
            assert "security" in doc["paths"]["/v1/model"]["get"]
        with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        proc.terminate()
        proc.wait(30)


def test_cli_refuses_bad_tls_files_by_name(tmp_path, model):
    path = tmp_path / "m.fsr"
    model.save(path)
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate")
    for args, match in ((["--ssl-certfile", str(bad)], "cannot use ssl_certfile"),
                        (["--ssl-keyfile", str(bad)], "needs ssl_certfile")):
        out = subprocess.run([sys.executable, "-m", "fastsasrec", "serve", str(path), "--port", str(free_port()),
                              *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and match in out.stderr and "cert.pem" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_cli_passes_tls_and_proxy_options_to_uvicorn(tmp_path, model, monkeypatch):
    """The options reach uvicorn's own Config as given (what uvicorn does with them is its
    own, tested by it); the served app is the one with the key and the origins."""
    import uvicorn

    from fastsasrec.cli import main

    path = tmp_path / "m.fsr"
    model.save(path)
    cert, key = _self_signed(tmp_path)
    seen = {}

    class Captured:
        def __init__(self, config):
            seen["config"], self.started = config, True

        def run(self):
            pass

    monkeypatch.setattr(uvicorn, "Server", Captured)
    assert main(["serve", str(path), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                 "--forwarded-allow-ips", "10.0.0.5,10.1.0.0/16", "--no-proxy-headers"]) == 0
    config = seen["config"]
    assert (config.ssl_certfile, config.ssl_keyfile) == (str(cert), str(key))
    assert config.proxy_headers is False and config.forwarded_allow_ips == "10.0.0.5,10.1.0.0/16"
    assert main(["serve", str(path)]) == 0
    config = seen["config"]
    assert config.ssl_certfile is None and config.proxy_headers is True
