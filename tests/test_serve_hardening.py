"""The server against hostile or unlucky clients: bodies nested past any use, ids holding
control characters or lone surrogates, session ids that only match in part, the denylist on
every answer, the fallback said, and clients that connect and stall.  The server is the
real uvicorn on a loopback port, as in test_serve.py."""
import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the serve tests need httpx (the test extra)")
pytest.importorskip("uvicorn", reason="the serve tests need uvicorn (the serve extra)")
pytest.importorskip("starlette", reason="the serve tests need starlette (the serve extra)")

from fastsasrec import SASRec  # noqa: E402
from fastsasrec.serve import create_app  # noqa: E402
from test_serve import Running, free_port, sessions  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return SASRec(iterations=2, factors=16, max_seq=10, random_state=0, num_threads=1).fit(sessions())


@pytest.fixture(scope="module")
def str_model():
    seqs = [[f"sku-{i}" for i in s] for s in sessions(items=120)]
    return SASRec(iterations=1, factors=8, max_seq=10, random_state=0, num_threads=1).fit(seqs)


@pytest.fixture
def running():
    servers = []

    def start(model, **kw):
        r = Running(create_app(model, **kw))
        servers.append(r)
        return r

    yield start
    for r in servers:
        r.close()


def post(r, path, raw, method="POST"):
    return r.client.request(method, path, content=raw, headers={"content-type": "application/json"})


# ----------------------------------------------------------------------------- bodies
@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"session": ' + b"[" * 100_000,
                                 b'{"session": ' + b"[" * 40 + b"]" * 40 + b"}",
                                 b'{"x": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}"],
                         ids=["100k-lists", "unclosed", "40-lists", "5000-objects"])
def test_deeply_nested_json_is_a_400_not_a_500(running, model, raw):
    r = running(model)
    got = post(r, "/v1/recommend", raw)
    assert got.status_code == 400, got.text
    assert "nested" in got.json()["error"] and got.json()["request_id"]


def test_brackets_inside_strings_are_not_nesting(running, str_model):
    r = running(str_model)
    got = post(r, "/v1/recommend", b'{"session": ["' + b"[{" * 500 + b'"], "n": 2}')
    assert got.status_code == 200, got.text  # an unknown id: the most popular items
    assert got.json()["fallback"] is True


# ----------------------------------------------------------------------------- ids
def test_a_lone_surrogate_is_refused_and_never_breaks_a_later_answer(running, str_model):
    r = running(str_model)
    got = post(r, "/v1/denylist", b'{"items": ["sku-1", "\\udfff"]}', method="PUT")
    assert got.status_code == 422 and got.json()["error"].startswith("items[1]: "), got.text
    assert "surrogate" in got.json()["error"] and "\\udfff" in got.json()["error"]
    assert r.client.get("/v1/denylist").status_code == 200
    got = post(r, "/v1/sessions/visitor/events", b'{"items": ["\\ud800x"]}')
    assert got.status_code == 422 and "items[0]" in got.json()["error"], got.text
    assert r.client.get("/v1/sessions/visitor").status_code == 404  # never held
    for path, raw in (("/v1/recommend", b'{"session": ["sku-1"], "exclude": ["\\udfff"]}'),
                      ("/v1/recommend/batch", b'{"sessions": [["sku-1"], ["\\udfff"]]}'),
                      ("/v1/similar", b'{"item": "\\udfff"}')):
        got = post(r, path, raw)
        assert got.status_code == 422 and "surrogate" in got.json()["error"], (path, got.text)


@pytest.mark.parametrize("bad", ["sku-1\x00", "sku-1\n", "\x7fsku-1", "sku\t1", "\x1f"])
def test_control_characters_in_ids_are_refused(running, str_model, bad):
    r = running(str_model)
    got = r.client.post("/v1/recommend", json={"session": ["sku-2", bad], "n": 3})
    assert got.status_code == 422 and got.json()["error"].startswith("session[1]: "), got.text
    assert "control characters" in got.json()["error"]
    got = r.client.put("/v1/denylist", json={"items": [bad]})
    assert got.status_code == 422 and "items[0]" in got.json()["error"], got.text
    assert r.client.get("/v1/denylist").json()["items"] == []


def test_a_trailing_nul_never_stands_for_the_id_without_it(running, str_model):
    r = running(str_model)
    top = r.client.post("/v1/recommend", json={"session": ["sku-1"], "n": 1}).json()["items"][0]
    assert r.client.put("/v1/denylist", json={"items": [top + "\x00"]}).status_code == 422
    assert r.client.post("/v1/recommend", json={"session": ["sku-1"], "n": 1}).json()["items"] == [top]


@pytest.mark.parametrize("sid", ["abc%0A", "abc%0D%0A", "%0Aabc", "abc%00"])
def test_a_session_id_must_match_whole(running, model, sid):
    r = running(model)
    got = r.client.post(f"/v1/sessions/{sid}/events", json={"items": [1]})
    assert got.status_code == 422 and "session_id" in got.json()["error"], got.text
    assert r.client.get(f"/v1/sessions/{sid}").status_code == 422


# ----------------------------------------------------------------------------- answers
def test_similar_never_answers_a_denylisted_item(running, model):
    r = running(model)
    want = model.similar_items(5, n=6)[0].tolist()
    assert r.client.put("/v1/denylist", json={"items": want[:2] + [want[3]]}).status_code == 200
    got = r.client.post("/v1/similar", json={"item": 5, "n": 3}).json()["items"]
    assert got == [want[2], want[4], want[5]]


def test_exclude_seen_and_its_deprecated_alias(running, model):
    r = running(model)
    s = [1, 2, 3]

    def items(**opts):
        got = r.client.post("/v1/recommend", json={"session": s, "n": 8, **opts})
        assert got.status_code == 200, got.text
        return got.json()["items"]

    keep = model.recommend(s, n=8, exclude_seen=False)[0].tolist()
    drop = model.recommend(s, n=8, exclude_seen=True)[0].tolist()
    assert keep != drop
    assert items() == drop and items(exclude_seen=True) == drop and items(keep_seen=False) == drop
    assert items(exclude_seen=False) == keep and items(keep_seen=True) == keep
    assert items(exclude_seen=False, keep_seen=True) == keep
    for ex, k in ((True, True), (False, False)):
        got = r.client.post("/v1/recommend", json={"session": s, "exclude_seen": ex, "keep_seen": k})
        assert got.status_code == 422 and "contradicts keep_seen" in got.json()["error"], got.text
    got = r.client.post("/v1/recommend/batch", json={"sessions": [s], "n": 8, "exclude_seen": False})
    assert got.json()["results"][0]["items"] == keep
    got = r.client.post("/v1/recommend", json={"session": s, "exclude_seen": "no"})
    assert got.status_code == 422 and got.json()["error"].startswith("exclude_seen: must be true or false")


def test_the_fallback_is_said(running, model):
    r = running(model)
    cold = r.client.post("/v1/recommend", json={"session": [999_999], "n": 3}).json()
    warm = r.client.post("/v1/recommend", json={"session": [1, 2], "n": 3}).json()
    assert cold["fallback"] is True and warm["fallback"] is False
    batch = r.client.post("/v1/recommend/batch", json={"sessions": [[1], [], [999_999, 2]]}).json()
    assert [x["fallback"] for x in batch["results"]] == [False, True, False]
    held = r.client.post("/v1/sessions/v/events", json={"items": [999_999]}).json()
    assert held["fallback"] is True


# ----------------------------------------------------------------------------- slow clients
def stalled(port, n, data=b"GET /healthz HT"):
    """n connections that each send ``data`` and then nothing."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(data)
        socks.append(s)
    return socks


def closed_within(sock, seconds):
    """True when the server closes ``sock`` within ``seconds``."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_stalled_clients_are_shed_and_cut_off_while_others_are_served(running, model):
    r = running(model, header_timeout=1.5, body_timeout=1.0, max_connections=32)
    socks = stalled(r.port, 300)
    try:
        t0 = time.monotonic()
        got = httpx.get(r.url + "/healthz", timeout=5)
        assert got.status_code == 200 and time.monotonic() - t0 < 2.0
        # A request's head has header_timeout from the connection's start...
        late = stalled(r.port, 1)[0]
        t0 = time.monotonic()
        assert closed_within(late, 5) and 1.0 < time.monotonic() - t0 < 4.0
        # ... then its body has body_timeout.
        body = stalled(r.port, 1, b"POST /v1/recommend HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n"
                                  b"content-type: application/json\r\n\r\n{\"session\"")[0]
        t0 = time.monotonic()
        assert closed_within(body, 5) and 0.5 < time.monotonic() - t0 < 3.5
        # A keep-alive client that sends its requests in time is never cut off.
        with httpx.Client(base_url=r.url, timeout=5) as c:
            for _ in range(3):
                assert c.post("/v1/recommend", json={"session": [1]}).status_code == 200
                time.sleep(0.6)
        text = r.client.get("/metrics").text
        shed = float(text.split('fastsasrec_connections_closed_total{reason="shed"} ')[1].split()[0])
        assert shed >= 300 - 32
        assert 'fastsasrec_connections_closed_total{reason="header_timeout"} 0' not in text
        assert 'fastsasrec_connections_closed_total{reason="body_timeout"} 1' in text
    finally:
        for s in socks:
            s.close()


def test_a_new_connection_is_refused_only_when_every_other_is_busy(running, model):
    r = running(model, header_timeout=5, body_timeout=5, max_connections=3)
    r.client.close()  # none of the test's own keep-alive connections stays open
    head = (b"POST /v1/recommend HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n"
            b"content-type: application/json\r\n\r\n{")
    busy = stalled(r.port, 3, head)  # each sending its body: none is waiting for a head
    try:
        time.sleep(0.2)
        t0 = time.monotonic()
        new = stalled(r.port, 1)[0]
        assert closed_within(new, 2) and time.monotonic() - t0 < 1.5
        assert not any(closed_within(s, 0.05) for s in busy)
    finally:
        for s in busy:
            s.close()
    with httpx.Client(base_url=r.url, timeout=5) as c:
        text = c.get("/metrics").text
    assert 'fastsasrec_connections_closed_total{reason="refused"} 1' in text
    assert 'fastsasrec_connections_closed_total{reason="shed"} 0' in text


def test_guard_settings_are_checked_by_name(model):
    from fastsasrec.serve.protocol import protocol

    with pytest.raises(ValueError, match="max_connections must be an integer >= 1, got 0"):
        create_app(model, max_connections=0)
    with pytest.raises(ValueError, match="header_timeout must be a number of seconds > 0, got 0"):
        protocol(0, 10)
    with pytest.raises(ValueError, match="body_timeout must be a number of seconds > 0, got inf"):
        create_app(model, body_timeout=float("inf"))


def test_a_process_at_its_open_files_limit_keeps_answering(model, tmp_path):
    """The issue's case: the server's open files limited to 256 and 300 stalled
    connections; with the default settings /healthz is answered at once."""
    path = tmp_path / "m.fsr"
    model.save(path)
    port = free_port()

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-m", "fastsasrec", "serve", str(path), "--port", str(port),
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=limit, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    url = f"http://127.0.0.1:{port}"
    socks = []
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server process did not get ready"
            time.sleep(0.05)
        socks = stalled(port, 300)
        for _ in range(3):
            t0 = time.monotonic()
            assert httpx.get(url + "/healthz", timeout=5).status_code == 200
            assert time.monotonic() - t0 < 2.0
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


# ----------------------------------------------------------------------------- one scorer
def test_the_server_scores_through_the_public_api_only():
    """The server never reaches into the fitted snapshot, the engine or the file format:
    every answer comes from recommend, recommend_batch and similar_items."""
    import pathlib
    import re

    import fastsasrec.serve as serve

    private = re.compile(r"(?<![A-Za-z0-9])(_fitted|_config|_persist|_core|_state)\b|\.engine\b")
    for path in pathlib.Path(serve.__file__).parent.glob("*.py"):
        found = private.search(path.read_text())
        assert found is None, f"{path.name} uses {found.group(0)}"


def test_a_batch_mixing_options_answers_each_as_alone(model):
    """One scoring call for asks with different n, exclude_seen, exclude lists and cold
    sessions gives each what recommend gives it alone, the denylist applied to all."""
    from fastsasrec.serve.batcher import _Ask, score
    from fastsasrec.serve.metrics import Metrics
    from fastsasrec.serve.server import Loaded

    loaded = Loaded.of(model, None, None, 1)
    deny = (7, 12345)
    asks = [_Ask([1, 2, 3], 5, [], True), _Ask([1, 2, 3], 8, [4], False), _Ask([], 3, [], True),
            _Ask([999_999], 4, [9], False), _Ask([5, 5, 6], 2, [], False), _Ask([8], 59, [], True)]
    metrics = Metrics()
    score(loaded, asks, deny, metrics)
    for a in asks:
        ids, scores, fallback, names = a.result
        assert names is None  # a model without item names
        want = model.recommend(a.session, n=a.n, exclude_seen=a.exclude_seen,
                               exclude=a.exclude or None, denylist=deny)
        assert ids.tolist() == want[0].tolist(), a
        np.testing.assert_allclose(scores, want[1], rtol=1e-6)
        assert fallback == want.fallback == (a.session in ([], [999_999]))
        assert 7 not in ids.tolist()
    assert metrics.unknown_items == 1


class Picky:
    """A model that refuses any session holding item 13 (as a model would refuse an id
    it cannot take), otherwise the real model."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def recommend(self, session, **kw):
        if 13 in session:
            raise ValueError("session: item 13 refused")
        return self.model.recommend(session, **kw)

    def recommend_batch(self, sessions, **kw):
        if any(13 in s for s in sessions):
            raise ValueError("sessions: item 13 refused")
        return self.model.recommend_batch(sessions, **kw)


def test_a_refused_session_fails_alone_not_the_batch_it_joined(running, model):
    from fastsasrec.serve.batcher import _Ask

    r = running(Picky(model))
    cur = r.server.current
    asks = [_Ask([1, 2], 3, [], True, cur), _Ask([13], 3, [], True, cur), _Ask([4], 2, [], True, cur)]

    async def submit():
        await asyncio.gather(r.server.batcher.submit(asks), return_exceptions=True)
        return [a.future.exception() for a in asks]

    errors = r.call(submit())
    assert errors[0] is None and errors[2] is None and "item 13 refused" in str(errors[1])
    for a in (asks[0], asks[2]):
        assert a.result[0].tolist() == model.recommend(a.session, n=a.n)[0].tolist()
    assert r.client.post("/v1/recommend", json={"session": [13]}).status_code == 500
