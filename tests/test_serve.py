"""The server for the live widget, tested as a client sees it: a real uvicorn on a free
loopback port, spoken to over HTTP with httpx.  Most tests run the server in a thread of
this process (so that a test can inject a clock, or reload the model); the signal tests
(SIGHUP reload, SIGTERM drain) run `fastsasrec serve` as a process.
"""
import asyncio
import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the serve tests need httpx (the test extra)")
uvicorn = pytest.importorskip("uvicorn", reason="the serve tests need uvicorn (the serve extra)")
pytest.importorskip("starlette", reason="the serve tests need starlette (the serve extra)")

from fastsasrec import SASRec  # noqa: E402
from fastsasrec.serve import create_app, uvicorn_config  # noqa: E402


def sessions(n=300, items=60, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, items, size=rng.integers(2, 15)).tolist() for _ in range(n)]


@pytest.fixture(scope="module")
def model():
    return SASRec(iterations=2, factors=16, max_seq=10, random_state=0, num_threads=1).fit(sessions())


@pytest.fixture(scope="module")
def other_model():
    return SASRec(iterations=2, factors=16, max_seq=10, random_state=7, num_threads=1).fit(sessions(seed=3))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A uvicorn server on a loopback port, in a thread; ``client`` talks HTTP to it."""

    def __init__(self, app, wait_ready=True):
        self.app = app
        self.server = app.state.server
        self.port = free_port()
        self.uv = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=self.port,
                                                log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.uv.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uv.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)
        while wait_ready and self.client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.01)

    def call(self, coro):
        """Runs a coroutine on the server's own event loop."""
        loop = self.server.batcher.task.get_loop()
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    def close(self):
        self.client.close()
        self.uv.should_exit = True
        self.thread.join(30)


@pytest.fixture
def running(model):
    servers = []

    def start(model_or_path=model, wait_ready=True, **kw):
        r = Running(create_app(model_or_path, **kw), wait_ready=wait_ready)
        servers.append(r)
        return r

    yield start
    for r in servers:
        r.close()


# ----------------------------------------------------------------------------- endpoints
def test_recommend_answers_what_the_model_says(running, model):
    r = running()
    for session, n, exclude, keep in (([1, 2, 3], 5, [], False), ([7, 8], 3, [12, 40], False),
                                      ([9, 9, 9], 4, [], True), ([], 3, [], False),
                                      ([999, 1000], 2, [], False)):
        body = {"session": session, "n": n, "exclude": exclude, "keep_seen": keep}
        got = r.client.post("/v1/recommend", json=body)
        assert got.status_code == 200, got.text
        ids, scores = model.recommend(session, n=n, exclude_seen=not keep, exclude=exclude or None)
        data = got.json()
        assert data["items"] == ids.tolist()
        np.testing.assert_allclose(data["scores"], scores, rtol=1e-6)
        assert data["model"] == "memory-1"
        assert got.headers["x-request-id"]


def test_candidates_rank_only_those(running, model):
    r = running()
    cand = [5, 9, 12, 30, 41, 999]  # 999: unknown, ignored
    for session, n in (([1, 2, 3], 3), ([], 2), ([7, 8], 10)):
        got = r.client.post("/v1/recommend", json={"session": session, "n": n, "candidates": cand})
        assert got.status_code == 200, got.text
        want = model.recommend(session, n=n, candidates=cand)
        assert got.json()["items"] == want.ids.tolist() and got.json()["fallback"] == want.fallback
        np.testing.assert_array_equal(np.asarray(got.json()["scores"], np.float32), want.scores)
    sess = [[1, 2, 3], [], [4, 5]]
    got = r.client.post("/v1/recommend/batch", json={"sessions": sess, "n": 4, "candidates": cand}).json()
    assert [x["items"] for x in got["results"]] == model.recommend_batch(sess, n=4, candidates=cand).ids.tolist()
    bad = r.client.post("/v1/recommend", json={"session": [1], "candidates": [998, 999]})
    assert bad.status_code == 422 and "candidates: holds no item of the model's catalogue" in bad.json()["error"]
    bad = r.client.post("/v1/recommend", json={"session": [1], "candidates": []})
    assert bad.status_code == 422 and "candidates" in bad.json()["error"]
    bad = r.client.post("/v1/recommend", json={"session": [1], "candidates": 5})
    assert bad.status_code == 422 and "candidates: must be a list" in bad.json()["error"]
    # A held session's events: the candidates are checked before the clicks are kept.
    bad = r.client.post("/v1/sessions/s1/events", json={"items": [1, 2], "candidates": [998]})
    assert bad.status_code == 422 and "candidates: holds no item" in bad.json()["error"]
    assert r.client.get("/v1/sessions/s1").status_code == 404
    got = r.client.post("/v1/sessions/s1/events", json={"items": [1, 2], "n": 3, "candidates": cand})
    assert got.status_code == 200, got.text
    assert got.json()["items"] == model.recommend([1, 2], n=3, candidates=cand).ids.tolist()
    assert r.client.get("/v1/sessions/s1").json()["items"] == [1, 2]


def test_concurrent_requests_with_and_without_candidates_are_each_right(running, model):
    """Asks with other candidate sets (or none) may come in one micro-batch: each set is
    scored apart, and every answer is the model's."""
    r = running(max_batch=16, max_wait_ms=2)
    rng = np.random.default_rng(2)
    sets = [None, [3, 4, 5, 6, 7], [10, 20, 30, 40, 50, 59]]
    asks = [(rng.integers(1, 60, size=rng.integers(1, 8)).tolist(), sets[i % 3]) for i in range(150)]

    def one(ask):
        s, cand = ask
        body = {"session": s, "n": 3, **({"candidates": cand} if cand else {})}
        with httpx.Client(base_url=r.url, timeout=30) as c:
            return c.post("/v1/recommend", json=body).json()["items"]

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        got = list(pool.map(one, asks))
    assert got == [model.recommend(s, n=3, candidates=c).ids.tolist() for s, c in asks]


def test_batch_and_similar(running, model):
    r = running()
    sess = [[1, 2, 3], [], [4, 5], [999]]
    got = r.client.post("/v1/recommend/batch", json={"sessions": sess, "n": 4}).json()
    ids, _ = model.recommend_batch(sess, n=4)
    assert [x["items"] for x in got["results"]] == ids.tolist()
    sim = r.client.post("/v1/similar", json={"item": 5, "n": 3}).json()
    assert sim["items"] == model.similar_items(5, n=3)[0].tolist()
    assert r.client.post("/v1/similar", json={"item": 12345}).status_code == 404


def test_the_click_by_click_session(running, model):
    r = running()
    c = r.client
    first = c.post("/v1/sessions/visitor-42/events", json={"items": [1], "n": 3}).json()
    assert first["session_length"] == 1 and first["items"] == model.recommend([1], n=3)[0].tolist()
    second = c.post("/v1/sessions/visitor-42/events", json={"items": [2, 3], "n": 3, "exclude": [5]}).json()
    assert second["items"] == model.recommend([1, 2, 3], n=3, exclude=[5])[0].tolist()
    assert c.get("/v1/sessions/visitor-42").json()["items"] == [1, 2, 3]
    # Sessions keep their most recent max_seq (10) items.
    c.post("/v1/sessions/visitor-42/events", json={"items": list(range(11, 30))})
    assert c.get("/v1/sessions/visitor-42").json()["items"] == list(range(20, 30))
    # Ids the model does not know are ignored, as everywhere: a run of them (products
    # listed after the model) pushes none of the known items out.
    got = c.post("/v1/sessions/visitor-42/events", json={"items": [424242 + i for i in range(12)], "n": 3})
    assert got.json()["session_length"] == 10 and got.json()["fallback"] is False
    assert got.json()["items"] == model.recommend(list(range(20, 30)), n=3)[0].tolist()
    assert c.get("/v1/sessions/visitor-42").json()["items"] == list(range(20, 30))
    # The abandoned cart's e-mail may name what the visitor viewed: exclude_seen false.
    cart = c.post("/v1/sessions/visitor-42/events", json={"items": [], "n": 3, "exclude_seen": False})
    assert cart.json()["items"] == model.recommend(list(range(20, 30)), n=3, exclude_seen=False)[0].tolist()
    bad = c.post("/v1/sessions/visitor-42/events", json={"items": [], "exclude_seen": "no"})
    assert bad.status_code == 422 and bad.json()["error"].startswith("exclude_seen")
    assert c.delete("/v1/sessions/visitor-42").status_code == 204
    assert c.get("/v1/sessions/visitor-42").status_code == 404
    assert c.delete("/v1/sessions/visitor-42").status_code == 404


def test_denylist_is_never_recommended(running, model):
    r = running()
    top = model.recommend([1, 2, 3], n=5)[0].tolist()
    assert r.client.put("/v1/denylist", json={"items": top[:2] + [99999]}).json() == {"items": 3}
    got = r.client.post("/v1/recommend", json={"session": [1, 2, 3], "n": 5}).json()["items"]
    assert not set(got) & set(top[:2]) and got[:3] == top[2:]
    batch = r.client.post("/v1/recommend/batch", json={"sessions": [[1, 2, 3], []], "n": 50}).json()
    for res in batch["results"]:
        assert not set(res["items"]) & set(top[:2])
    assert r.client.get("/v1/denylist").json()["items"] == top[:2] + [99999]
    r.client.put("/v1/denylist", json={"items": []})
    assert r.client.post("/v1/recommend", json={"session": [1, 2, 3], "n": 5}).json()["items"] == top


def test_model_health_ready_metrics(running, model, tmp_path):
    path = tmp_path / "m.fsr"
    model.save(path)
    r = running(str(path))
    info = r.client.get("/v1/model").json()
    import hashlib

    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["items"] == model.n_items and info["factors"] == 16 and info["max_seq"] == 10
    assert info["device"] == "cpu"
    assert r.client.get("/healthz").status_code == 200
    assert r.client.get("/readyz").status_code == 200
    r.client.post("/v1/recommend", json={"session": [1, 777777], "n": 2})
    r.client.post("/v1/sessions/a/events", json={"items": [1]})
    text = r.client.get("/metrics").text
    assert 'fastsasrec_requests_total{route="/v1/recommend",status="200"} 1' in text
    assert 'fastsasrec_request_seconds_bucket{le="+Inf",route="/v1/recommend"} 1' in text
    assert "fastsasrec_unknown_items_total 1" in text
    assert "fastsasrec_sessions 1" in text and "fastsasrec_session_items 1" in text
    assert float(next(l for l in text.splitlines() if l.startswith("fastsasrec_session_bytes ")).split()[1]) > 0
    assert "fastsasrec_queue_depth 0" in text and "fastsasrec_batch_sessions_count 2" in text
    assert f'fastsasrec_model_info{{items="{model.n_items}",model="{info["model"]}"}} 1' in text


def test_not_ready_until_the_model_is_in(running, model, monkeypatch):
    from fastsasrec.serve import server as serve

    gate = threading.Event()
    original = serve._warm

    def slow_warm(m):
        gate.wait(30)
        original(m)

    monkeypatch.setattr(serve, "_warm", slow_warm)
    r = running(model, wait_ready=False)
    assert r.client.get("/healthz").status_code == 200
    assert r.client.get("/readyz").status_code == 503
    got = r.client.post("/v1/recommend", json={"session": [1]})
    assert got.status_code == 503 and "not loaded yet" in got.json()["error"]
    gate.set()
    deadline = time.monotonic() + 10
    while r.client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert r.client.post("/v1/recommend", json={"session": [1]}).status_code == 200


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("path,body,status,message", [
    ("/v1/recommend", b"{not json", 400, "malformed JSON"),
    ("/v1/recommend", b'{"session": [1], "n": 3, "n": 4}', 400, "the key 'n' appears twice in an object"),
    ("/v1/recommend", b'{"session": [1], "candidates": [' + b",".join(b"%d" % (90_000 + i) for i in range(25))
     + b"]}", 422, "candidates: none of its 25 ids is in the model's catalogue"),
    ("/v1/recommend/batch", b'{"sessions": [' + b",".join([b"[1]"] * 10_001) + b"]}", 422,
     "sessions: holds 10,001 sessions, more than the 10,000 accepted"),
    ("/v1/recommend", b"[1, 2]", 422, "the body must be a JSON object"),
    ("/v1/recommend", b"{}", 422, "session: required"),
    ("/v1/recommend", b'{"session": "1,2"}', 422, 'session: must be a list of item ids, got "1,2"'),
    ("/v1/recommend", b'{"session": [1, "a"]}', 422, 'session\\[1\\]: this model\'s item ids are integers, got "a"'),
    ("/v1/recommend", b'{"session": [true]}', 422, "session\\[0\\]: this model's item ids are integers, got true"),
    ("/v1/recommend", b'{"session": [1.5]}', 422, "session\\[0\\]: .* got 1.5"),
    ("/v1/recommend", b'{"session": [18446744073709551616]}', 422, "must fit in 64 bits"),
    ("/v1/recommend", b'{"session": [1], "n": 0}', 422, "n: must be an integer in 1..1000, got 0"),
    ("/v1/recommend", b'{"session": [1], "n": 1001}', 422, "n: must be an integer in 1..1000, got 1001"),
    ("/v1/recommend", b'{"session": [1], "n": "5"}', 422, 'n: must be an integer in 1..1000, got "5"'),
    ("/v1/recommend", b'{"session": [1], "keep_seen": "yes"}', 422, 'keep_seen: must be true or false'),
    ("/v1/recommend", b'{"session": [1], "exclude": 3}', 422, "exclude: must be a list"),
    ("/v1/recommend", b'{"session": [1], "sessoin": 3}', 422, "unknown field 'sessoin'"),
    ("/v1/recommend/batch", b'{"sessions": []}', 422, "sessions: must be a non-empty list"),
    ("/v1/recommend/batch", b'{"sessions": [[1], 2]}', 422, "sessions\\[1\\]: must be a list"),
    ("/v1/similar", b'{"n": 2}', 422, "item: required"),
    ("/v1/similar", b'{"item": [1]}', 422, "item\\[0\\]"),
    ("/v1/sessions/a/events", b'{"n": 2}', 422, "items: required"),
    ("/v1/sessions/a%20b/events", b'{"items": [1]}', 422, "session_id: must be 1 to 256 URL-safe"),
])
def test_client_errors_are_named_never_500(running, path, body, status, message):
    r = running()
    got = r.client.post(path, content=body, headers={"content-type": "application/json"})
    assert got.status_code == status, got.text
    import re

    assert re.search(message, got.json()["error"]), got.json()
    assert got.json()["request_id"] == got.headers["x-request-id"]


def test_other_client_errors(running):
    r = running(max_body=1000)
    c = r.client
    assert c.post("/v1/recommend", content=b"x" * 1001).status_code == 413

    def chunks():  # no Content-Length: the limit holds while the body streams in
        for _ in range(20):
            yield b'{"session": [' + b"1," * 50
    got = c.post("/v1/recommend", content=chunks())
    assert got.status_code == 413 and "over the limit of 1000 bytes" in got.json()["error"]
    assert c.get("/v1/sessions/nobody").status_code == 404
    assert c.get("/v1/nothing").status_code == 404
    assert c.get("/v1/recommend").status_code == 405
    assert c.put("/v1/denylist", json={"items": "x"}).status_code == 422
    got = c.post("/v1/recommend", json={"session": [1]}, headers={"x-request-id": "abc-123"})
    assert got.headers["x-request-id"] == "abc-123"


def test_string_catalogues(running):
    m = SASRec(iterations=1, factors=8, max_seq=5, random_state=0).fit([["a", "b", "c"], ["b", "c", "d"]] * 10)
    r = running(m)
    got = r.client.post("/v1/recommend", json={"session": ["a", "b"], "n": 2}).json()
    assert got["items"] == m.recommend(["a", "b"], n=2)[0].tolist()
    bad = r.client.post("/v1/recommend", json={"session": ["a", 1]})
    assert bad.status_code == 422 and "strings" in bad.json()["error"]


def test_a_server_error_is_a_logged_500_with_the_request_id(running, monkeypatch, caplog):
    from fastsasrec.serve import batcher

    r = running()

    def broken(*a, **k):
        raise RuntimeError("the engine broke")

    monkeypatch.setattr(batcher, "score", broken)
    with caplog.at_level("ERROR", logger="fastsasrec.serve"):
        got = r.client.post("/v1/recommend", json={"session": [1]})
    assert got.status_code == 500
    rid = got.json()["request_id"]
    assert rid and rid == got.headers["x-request-id"]
    assert any(rid in rec.getMessage() for rec in caplog.records)
    monkeypatch.undo()
    assert r.client.post("/v1/recommend", json={"session": [1]}).status_code == 200


# ----------------------------------------------------------------------------- concurrency
def test_concurrent_requests_are_batched_and_right(running, model):
    r = running(max_batch=16, max_wait_ms=2)
    rng = np.random.default_rng(1)
    asks = [rng.integers(1, 60, size=rng.integers(1, 12)).tolist() for _ in range(400)]

    def one(s):
        with httpx.Client(base_url=r.url, timeout=30) as c:
            return c.post("/v1/recommend", json={"session": s, "n": 5}).json()["items"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, asks))
    want = [model.recommend(s, n=5)[0].tolist() for s in asks]
    assert got == want
    text = r.client.get("/metrics").text
    count = float(next(l for l in text.splitlines() if l.startswith("fastsasrec_batch_sessions_count")).split()[1])
    assert count < len(asks)  # some engine calls served several requests


# ----------------------------------------------------------------------------- sessions
def test_sessions_expire_and_are_capped(running):
    now = [1000.0]
    r = running(session_ttl=60, max_sessions=3, clock=lambda: now[0])
    c = r.client
    for sid in ("a", "b", "c"):
        c.post(f"/v1/sessions/{sid}/events", json={"items": [1]})
    now[0] += 30
    c.post("/v1/sessions/a/events", json={"items": [2]})  # a is used again: b is now the oldest
    c.post("/v1/sessions/d/events", json={"items": [3]})  # a fourth: the least recently used goes
    assert c.get("/v1/sessions/b").status_code == 404
    assert [c.get(f"/v1/sessions/{s}").status_code for s in "acd"] == [200, 200, 200]
    now[0] += 61  # past the TTL of every one
    assert [c.get(f"/v1/sessions/{s}").status_code for s in "acd"] == [404, 404, 404]
    text = c.get("/metrics").text
    assert "fastsasrec_sessions 0" in text and "fastsasrec_sessions_evicted_total 1" in text


SESSION_MEMORY = """
import json, sys, tracemalloc
from fastsasrec.serve import SessionStore
store = SessionStore(max_sessions=1000, ttl=60)
str_ids = sys.argv[1] == "str"
tracemalloc.start()
before = tracemalloc.get_traced_memory()[0]
for i in range(3000):  # the ids of each request are new objects, as JSON decoding makes them
    ids = [f"sku-{j:08d}" for j in range(100)] if str_ids else list(range(10**6, 10**6 + 100))
    store.append(f"s{i:06d}", ids, 50, str_ids)
    del ids
traced = tracemalloc.get_traced_memory()[0] - before
held = store.stats()
counted = store.memory()
for i in range(2000, 3000):
    store.delete(f"s{i:06d}")
print(json.dumps(dict(held=held, traced=traced, counted=counted, after=[store.stats(), store.memory()])))
"""


@pytest.mark.parametrize("kind", ["int", "str"])
def test_memory_of_held_sessions_is_bounded_and_reported(kind):
    """The cap bounds the sessions held, and what /metrics reports as their memory is what
    they take (tracemalloc, in a fresh process: nothing else allocates meanwhile)."""
    import json

    out = subprocess.run([sys.executable, "-c", SESSION_MEMORY, kind], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["held"] == [1000, 50_000]
    assert abs(r["counted"] - r["traced"]) <= 0.05 * r["traced"], r
    assert r["after"][0] == [0, 0] and r["after"][1] < r["counted"] / 4  # the tables only


# ----------------------------------------------------------------------------- reload
def test_reload_swaps_the_whole_model_with_no_failed_or_mixed_request(running, model, other_model, tmp_path):
    path = tmp_path / "live.fsr"
    model.save(path)
    r = running(str(path), max_batch=8)
    tag_a = r.client.get("/v1/model").json()["model"]
    rng = np.random.default_rng(2)
    asks = [rng.integers(1, 60, size=rng.integers(1, 10)).tolist() for _ in range(60)]
    want = {}
    stop = threading.Event()
    results = []

    def fire():
        with httpx.Client(base_url=r.url, timeout=30) as c:
            i = 0
            while not stop.is_set():
                s = asks[i % len(asks)]
                got = c.post("/v1/recommend", json={"session": s, "n": 5})
                results.append((i % len(asks), got.status_code, got.json()))
                i += 1

    threads = [threading.Thread(target=fire) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    other_model.save(path)
    assert r.call(r.server.reload()) is True
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    tag_b = r.client.get("/v1/model").json()["model"]
    assert tag_a != tag_b
    want = {tag_a: model, tag_b: other_model}
    seen = set()
    for i, status, data in results:
        assert status == 200, data
        m = want[data["model"]]
        seen.add(data["model"])
        assert data["items"] == m.recommend(asks[i], n=5)[0].tolist()  # wholly one model
    assert seen == {tag_a, tag_b}


def test_a_file_that_fails_to_load_leaves_the_old_model(running, model, tmp_path, caplog):
    path = tmp_path / "live.fsr"
    model.save(path)
    r = running(str(path))
    tag = r.client.get("/v1/model").json()["model"]
    path.write_bytes(b"not a model")
    with caplog.at_level("ERROR", logger="fastsasrec.serve"):
        assert r.call(r.server.reload()) is False
    assert any("reload of" in rec.getMessage() for rec in caplog.records)
    assert r.client.get("/v1/model").json()["model"] == tag
    assert r.client.post("/v1/recommend", json={"session": [1]}).status_code == 200
    assert 'fastsasrec_reloads_total{result="failed"} 1' in r.client.get("/metrics").text


def test_watch_reloads_a_new_file(running, model, other_model, tmp_path):
    path = tmp_path / "live.fsr"
    model.save(path)
    r = running(str(path), watch=0.05)
    tag = r.client.get("/v1/model").json()["model"]
    other_model.save(path)
    deadline = time.monotonic() + 20
    while r.client.get("/v1/model").json()["model"] == tag:
        assert time.monotonic() < deadline, "the new file was not picked up"
        time.sleep(0.05)


# ----------------------------------------------------------------------------- the process
def start_process(path, *extra):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fastsasrec", "serve", str(path), "--port", str(port),
                             "--threads", "1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server process did not get ready"
        time.sleep(0.05)


def test_process_sighup_reloads_and_sigterm_drains(model, other_model, tmp_path):
    path = tmp_path / "live.fsr"
    model.save(path)
    proc, url = start_process(path, "--max-batch", "4")
    try:
        tag = httpx.get(url + "/v1/model").json()["model"]
        other_model.save(path)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while httpx.get(url + "/v1/model").json()["model"] == tag:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # Requests in flight when SIGTERM lands are answered before the process exits.
        big = [[int(x) for x in np.arange(1, 60)[:10]]] * 2000
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futs = [pool.submit(httpx.post, url + "/v1/recommend/batch",
                                json={"sessions": big, "n": 50}, timeout=60) for _ in range(8)]
            # SIGTERM once the server holds them (a loaded machine may take a while to
            # connect them; one not yet connected would meet a closed port).
            deadline = time.monotonic() + 20
            while True:
                answered = sum(f.done() for f in futs)  # before the read: never counted twice
                text = httpx.get(url + "/metrics").text
                held = float(re.search(r"^fastsasrec_requests_in_flight ([\d.]+)$", text, re.M).group(1)) - 1
                if held + answered >= len(futs):
                    break
                assert time.monotonic() < deadline
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            codes = [f.result().status_code for f in futs]
        assert codes == [200] * 8
        # uvicorn, once drained, ends by the signal it was sent (the convention a process
        # supervisor reads as "stopped on request").
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.stdout.read()
    assert "Traceback" not in out, out


def test_cli_refuses_a_bad_model_file_in_one_line(tmp_path):
    bad = tmp_path / "bad.fsr"
    bad.write_bytes(b"nope")
    out = subprocess.run([sys.executable, "-m", "fastsasrec", "serve", str(bad)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "cannot load MODEL" in out.stderr and "Traceback" not in out.stderr


# ----------------------------------------------------------------------------- never a 500
def test_whatever_a_client_sends_is_never_a_500(running):
    """Random JSON bodies (and random bytes) at every endpoint: each answer is 200 or a
    client error with a JSON body naming it, never a 500."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    r = running()
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20)
    fields = st.sampled_from(["session", "sessions", "n", "exclude", "keep_seen", "item", "items", "x"])
    bodies = st.dictionaries(fields, json_values | st.lists(st.integers(-5, 80), max_size=8), max_size=4)
    paths = st.sampled_from(["/v1/recommend", "/v1/recommend/batch", "/v1/similar",
                             "/v1/sessions/fuzz/events", "/v1/denylist"])

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=paths, body=bodies | st.binary(max_size=40).map(lambda b: ("raw", b)))
    def check(path, body):
        method = "PUT" if path == "/v1/denylist" else "POST"
        if isinstance(body, tuple):
            got = r.client.request(method, path, content=body[1])
        else:
            got = r.client.request(method, path, json=body)
        assert got.status_code in (200, 400, 404, 413, 422), (path, body, got.status_code, got.text)
        if got.status_code != 200:
            assert got.json()["error"]

    check()
    r.client.put("/v1/denylist", json={"items": []})


def test_cli_refuses_bad_settings_by_name(tmp_path, model):
    path = tmp_path / "m.fsr"
    model.save(path)
    out = subprocess.run([sys.executable, "-m", "fastsasrec", "serve", str(path), "--max-batch", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "max_batch must be an integer >= 1, got 0" in out.stderr



def test_workers_need_the_shared_store(tmp_path, model):
    # Sessions in one worker's memory would be unknown to the others: refused, in one line.
    path = tmp_path / "m.fsr"
    model.save(path)
    for flags, said in ((["--workers", "2"], "--workers 2 needs --store redis://HOST:PORT/DB: "
                                             "with the in-process store each worker would hold "
                                             "its own sessions"),
                        (["--workers", "0"], "--workers must be >= 1, got 0")):
        out = subprocess.run([sys.executable, "-m", "fastsasrec", "serve", str(path), *flags],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and said in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_each_worker_gets_its_share_of_the_cores(monkeypatch):
    from fastsasrec.serve import workers

    monkeypatch.setattr(workers, "cores", lambda: 16)
    assert [workers.engine_threads(n, None) for n in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]
    assert workers.engine_threads(4, 2) == 2 and workers.engine_threads(4, 0) == 0  # the user's

def test_popular_answers_are_sorted_once_per_model(model):
    """Sessions with no known item get the most popular items: the order is computed once
    per fitted model (a cache), and exclusions only drop items from its head."""
    state = model._fitted()
    a = state.popular(5, np.zeros(0, np.int32))
    assert "popular" in state.cache
    b = state.popular(5, a[0][:2].astype(np.int32))
    np.testing.assert_array_equal(b[0][:3], a[0][2:])
    ids, _ = model.recommend([999999], n=5)
    np.testing.assert_array_equal(ids, model.item_ids[a[0] - 1])


def test_prometheus_client_is_the_servers_alone():
    # /metrics is kept by prometheus_client, imported when a server is made, never by
    # `import fastsasrec` (nor by the serve package's session store).
    code = ("import sys, fastsasrec, fastsasrec.cli, fastsasrec.serve; "
            "print('prometheus_client' in sys.modules); "
            "fastsasrec.serve.Metrics(); print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"], out.stderr
