"""A fleet: two real `fastsasrec serve` replicas (two processes, two loopback ports) on one
real redis-server.  A session continued across replicas; events from both replicas to one
session, concurrently, all kept in each sender's order; a retried event id applied once;
a replica SIGKILLed mid-load and Redis killed and restarted under load (AOF, fsync
always) losing no acknowledged event; 503 with Retry-After while Redis is down or slow,
the stateless routes answering, recovery without a restart; the denylist reaching the
other replica within its bound and surviving restarts.  And `--workers 2` on one port: a
session continued across its workers, /metrics one view of both, a worker killed and
replaced, SIGHUP and --watch rolling a new model through every worker under load with no
failed request.  Which worker answered: /v1/model's pid, asked on the same connection (a
connection stays with the worker that accepted it).  Skipped, with the reason, where
redis-server or redis-py is absent.  Bounded: a few hundred requests per test."""
import concurrent.futures
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

httpx = pytest.importorskip("httpx", reason="the fleet tests need httpx (the test extra)")
pytest.importorskip("uvicorn", reason="the fleet tests need uvicorn (the serve extra)")
redis = pytest.importorskip("redis", reason="the fleet tests need redis-py (the test extra)")
if shutil.which("redis-server") is None:
    pytest.skip("the fleet tests need redis-server (apt-get install redis-server)", allow_module_level=True)

from fastsasrec import SASRec  # noqa: E402
from test_serve import free_port, sessions  # noqa: E402
from test_serve_api import _check  # noqa: E402

REFRESH = 0.5  # --denylist-refresh of the replicas
TIMEOUT = 0.25  # --store-timeout


class RedisServer:
    """A redis-server on a free loopback port, its data in ``dir`` (AOF, fsync always)."""

    def __init__(self, dir):
        self.dir, self.port, self.proc = str(dir), free_port(), None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        return redis.Redis(port=self.port, socket_timeout=2)


class Replica:
    """`fastsasrec serve` as a process on the store, its output in a file (never a full pipe)."""

    def __init__(self, model_path, store, log, *extra):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastsasrec", "serve", str(model_path), "--port", str(self.port),
             "--threads", "1", "--store", store, "--denylist-refresh", str(REFRESH),
             "--store-timeout", str(TIMEOUT), *extra], stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=10)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, open(log).read()
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the replica did not get ready"
            time.sleep(0.05)

    def stop(self):
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


# The ids these tests send beyond sessions()' 1..59, in sequences of 200.
KNOWN = [list(range(b, b + 200)) for b in (1000, 2000, 3000, 4000)] + \
    [list(range(b, b + 200)) for b in range(10_000, 20_000, 200)]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    # max_seq 200: a session keeps every event these tests send; held sessions keep the
    # ids the model knows, so the catalogue holds every id they send.
    model = SASRec(iterations=1, factors=8, max_seq=200, random_state=0, num_threads=1).fit(
        sessions() + KNOWN)
    path = tmp_path_factory.mktemp("fleet") / "model.fsr"
    model.save(path)
    return path


@pytest.fixture
def fleet(model_path, tmp_path):
    """(redis, [replica A, replica B], start): two replicas on one Redis."""
    made = []
    rs = RedisServer(tmp_path)

    def start(*extra, store=None):
        r = Replica(model_path, store or rs.url, tmp_path / f"replica{len(made)}.log", *extra)
        made.append(r)
        return r

    yield rs, [start(), start()], start
    for r in made:
        r.stop()
    if rs.proc.poll() is None:
        rs.kill()


def _held(rs, sid):
    return [int(x) for x in rs.client().lrange(f"fastsasrec:s:{sid}", 0, -1)]


def test_a_session_spans_replicas_and_a_retry_is_applied_once(fleet):
    rs, (a, b), _ = fleet
    assert a.client.post("/v1/sessions/v1/events", json={"items": [1, 2]}).json()["session_length"] == 2
    got = b.client.post("/v1/sessions/v1/events", json={"items": [3], "event_id": "e-9"}).json()
    assert got["session_length"] == 3 and not set(got["items"]) & {1, 2, 3}
    retry = a.client.post("/v1/sessions/v1/events", json={"items": [3], "event_id": "e-9"}).json()
    assert retry["session_length"] == 3 and retry["items"] == got["items"]
    for r in (a, b):
        held = r.client.get("/v1/sessions/v1").json()
        assert held["items"] == [1, 2, 3] and held["expires_in"] == 1800
    assert b.client.delete("/v1/sessions/v1").status_code == 204
    assert a.client.get("/v1/sessions/v1").status_code == 404
    assert a.client.delete("/v1/sessions/v1").status_code == 404
    # Bad input is still a 422 naming it, whatever the store.
    bad = a.client.post("/v1/sessions/v1/events", json={"items": [1], "event_id": "a b"})
    assert bad.status_code == 422 and "event_id" in bad.json()["error"]


def test_the_cap_evicts_the_least_recently_used_across_replicas(fleet):
    rs, _, start = fleet
    a, b = start("--max-sessions", "3"), start("--max-sessions", "3")
    for sid, r in (("s1", a), ("s2", b), ("s3", a)):
        r.client.post(f"/v1/sessions/{sid}/events", json={"items": [1]})
    b.client.post("/v1/sessions/s1/events", json={"items": [2]})  # s1 used again: s2 is the oldest
    a.client.post("/v1/sessions/s4/events", json={"items": [3]})
    assert b.client.get("/v1/sessions/s2").status_code == 404
    assert [a.client.get(f"/v1/sessions/{s}").status_code for s in ("s1", "s3", "s4")] == [200] * 3
    assert rs.client().zcard("fastsasrec:touch") == 3
    assert "fastsasrec_sessions_evicted_total 1" in a.client.get("/metrics").text


def test_concurrent_events_from_both_replicas_are_all_kept_in_order(fleet):
    rs, (a, b), _ = fleet
    per_sender = 40

    def sender(replica, base):
        with httpx.Client(base_url=replica.url, timeout=10) as c:
            for i in range(per_sender):
                assert c.post("/v1/sessions/shared/events", json={"items": [base + i]}).status_code == 200

    senders = [(a, 1000), (b, 2000), (a, 3000), (b, 4000)]
    with concurrent.futures.ThreadPoolExecutor(len(senders)) as pool:
        list(pool.map(lambda s: sender(*s), senders))
    held = a.client.get("/v1/sessions/shared").json()["items"]
    assert len(held) == len(senders) * per_sender
    for _, base in senders:
        assert [x for x in held if base <= x < base + 1000] == list(range(base, base + per_sender))


def _load(replicas, stop, acked, errors, prefix):
    """Events to sessions prefix-0..3 through the replicas in turn until ``stop``; each
    acknowledged item recorded per session."""
    clients = [httpx.Client(base_url=r.url, timeout=5) for r in replicas]
    i = 0
    while not stop.is_set():
        sid, item = f"{prefix}-{i % 4}", 10_000 + i
        assert item < 20_000, "more events than KNOWN ids: a held session would drop them"
        try:
            got = clients[i % len(clients)].post(f"/v1/sessions/{sid}/events", json={"items": [item]})
        except httpx.TransportError:
            errors.append("transport")
        else:
            if got.status_code == 200:
                acked.setdefault(sid, []).append(item)
            else:
                assert got.status_code == 503, got.text
                assert got.headers["retry-after"] == "1" and "session store" in got.json()["error"]
                errors.append(503)
        i += 1
        time.sleep(0.002)
    for c in clients:
        c.close()


def test_a_replica_killed_mid_load_loses_no_acknowledged_event(fleet):
    rs, (a, b), _ = fleet
    stop, acked, errors = threading.Event(), {}, []
    worker = threading.Thread(target=_load, args=([a], stop, acked, errors, "k"))
    worker.start()
    time.sleep(1.0)
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    stop.set()
    worker.join(30)
    assert sum(map(len, acked.values())) > 20, acked
    for sid, items in acked.items():
        held = _held(rs, sid)
        assert held[:len(items)] == items, sid  # every acknowledged one, in order
        assert len(held) <= len(items) + 1  # at most the one in flight beyond them
        assert b.client.get(f"/v1/sessions/{sid}").json()["items"] == held


def test_redis_killed_and_restarted_under_load(fleet):
    rs, (a, b), _ = fleet
    a.client.put("/v1/denylist", json={"items": [3, 4]})
    stop, acked, errors = threading.Event(), {}, []
    worker = threading.Thread(target=_load, args=([a, b], stop, acked, errors, "r"))
    worker.start()
    time.sleep(0.7)
    rs.kill()
    time.sleep(0.7)
    # While Redis is down: the session and denylist routes answer 503 with Retry-After,
    # within the deadline; /readyz says why; the stateless routes answer.
    doc, seen = b.client.get("/openapi.json").json(), set()
    for method, template, url, body in (
            ("GET", "/v1/sessions/{session_id}", "/v1/sessions/r-0", None),
            ("DELETE", "/v1/sessions/{session_id}", "/v1/sessions/r-0", None),
            ("POST", "/v1/sessions/{session_id}/events", "/v1/sessions/r-0/events", {"items": [1]}),
            ("GET", "/v1/denylist", "/v1/denylist", None),
            ("PUT", "/v1/denylist", "/v1/denylist", {"items": [5]})):
        t0 = time.monotonic()
        got = b.client.request(method, url, json=body)
        assert got.status_code == 503 and time.monotonic() - t0 < 2, (url, got.text)
        _check(doc, seen, method, template, got)
    ready = b.client.get("/readyz")
    assert ready.status_code == 503 and f"redis://127.0.0.1:{rs.port}/0" in ready.text, ready.text
    assert b.client.get("/healthz").status_code == 200
    rec = b.client.post("/v1/recommend", json={"session": [1, 2], "n": 60}).json()["items"]
    assert not {3, 4} & set(rec)  # the cached denylist still applies
    metrics = b.client.get("/metrics").text
    assert 'fastsasrec_store_errors_total{op="get"} 1' in metrics
    assert 'fastsasrec_store_seconds_count{op="append"}' in metrics
    rs.start()  # the same port and data: the AOF is replayed
    deadline = time.monotonic() + 20
    while b.client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the replica did not recover"
        time.sleep(0.05)
    time.sleep(0.7)  # load after the restart, through both replicas
    stop.set()
    worker.join(30)
    assert 503 in errors and "transport" not in errors
    for sid, items in acked.items():
        held = _held(rs, sid)
        # None lost, in order; an event answered 503 may still have been applied (Redis
        # wrote it and died before the answer came back): a few such beyond them at most.
        rest = iter(held)
        assert all(x in rest for x in items), sid
        assert len(held) - len(items) <= 2, (sid, held, items)
    for r in (a, b):  # the denylist survived the restart
        assert r.client.get("/v1/denylist").json() == {"items": [3, 4]}


def test_a_slow_redis_is_a_503_within_the_deadline_never_a_hang(fleet):
    rs, (a, _), _ = fleet
    a.client.post("/v1/sessions/slow/events", json={"items": [1]})
    os.kill(rs.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        got = a.client.get("/v1/sessions/slow")
        took = time.monotonic() - t0
        assert got.status_code == 503 and "no answer within 0.25 s" in got.json()["error"], got.text
        assert took < TIMEOUT + 1.0, took
        assert a.client.post("/v1/similar", json={"item": 1}).status_code == 200
    finally:
        os.kill(rs.proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while a.client.get("/v1/sessions/slow").status_code != 200:
        assert time.monotonic() < deadline, "no recovery"
        time.sleep(0.05)
    assert a.client.get("/v1/sessions/slow").json()["items"] == [1]


def test_the_denylist_reaches_the_other_replica_within_the_bound(fleet):
    rs, (a, b), start = fleet
    assert a.client.put("/v1/denylist", json={"items": [7, 8, 7]}).json() == {"items": 2}
    assert b.client.get("/v1/denylist").json() == {"items": [7, 8]}  # read from Redis
    t0 = time.monotonic()
    while {7, 8} & set(b.client.post("/v1/recommend", json={"session": [1], "n": 60}).json()["items"]):
        assert time.monotonic() - t0 < REFRESH + TIMEOUT + 0.5, "not applied within the bound"
        time.sleep(0.02)
    # A replica restarted (or a new one) starts with it.
    b.stop()
    c = start()
    assert c.client.get("/v1/denylist").json() == {"items": [7, 8]}
    assert not {7, 8} & set(c.client.post("/v1/recommend", json={"session": [1], "n": 60}).json()["items"])


def test_string_ids_round_trip_through_redis(tmp_path):
    from fastsasrec.serve import create_app
    from test_serve import Running

    rs = RedisServer(tmp_path)
    seqs = [[f"sku-{i}" for i in s] for s in sessions(items=40)] + [["s:sku-2", "12", "sku-1"]]
    model = SASRec(iterations=1, factors=8, max_seq=10, random_state=0, num_threads=1).fit(seqs)
    r = Running(create_app(model, store=rs.url))
    try:
        odd = ["sku-1", "s:sku-2", "12", "sku-3"]  # ids that look like the encoding, or a number
        got = r.client.post("/v1/sessions/x/events", json={"items": odd, "event_id": "a"}).json()
        assert got["session_length"] == 4 and all(isinstance(i, str) for i in got["items"])
        assert r.client.get("/v1/sessions/x").json()["items"] == odd
        assert r.client.put("/v1/denylist", json={"items": ["sku-5"]}).json() == {"items": 1}
        assert r.client.get("/v1/denylist").json() == {"items": ["sku-5"]}
        doc = r.client.get("/openapi.json").json()
        assert "503" in doc["paths"]["/v1/sessions/{session_id}"]["get"]["responses"]
    finally:
        r.close()
        rs.kill()


# ----------------------------------------------------------------------------- workers
@pytest.fixture(scope="module")
def other_path(model_path):
    other = SASRec(iterations=1, factors=8, max_seq=200, random_state=1, num_threads=1).fit(sessions())
    path = model_path.parent / "other.fsr"
    other.save(path)
    return path


@pytest.fixture
def workers(fleet, model_path, tmp_path):
    """start(*extra): `fastsasrec serve --workers 2` on the fleet's Redis, serving a copy of
    the model (tests replace the file); returns (the process, the copy's path)."""
    rs, _, _ = fleet
    made = []

    def start(*extra):
        live = tmp_path / f"live{len(made)}.fsr"
        shutil.copy(model_path, live)
        w = Replica(live, rs.url, tmp_path / f"workers{len(made)}.log", "--workers", "2", *extra)
        made.append(w)
        return w, live

    yield start
    for w in made:
        w.stop()


def _on_a_new_connection(url, method, path, **kw):
    """(response, pid of the worker that answered it): /v1/model asked on the same connection."""
    with httpx.Client(base_url=url, timeout=10) as c:
        got = c.request(method, path, **kw)
        return got, c.get("/v1/model").json()["pid"]


def _tag(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _serving(text, tag):
    """How many workers /metrics says serve model ``tag``."""
    m = re.search(r'^fastsasrec_model_info\{items="\d+",model="%s"\} ([\d.]+)$' % tag, text, re.M)
    return float(m.group(1)) if m else 0.0


def _until(check, what, limit=30):
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_workers_share_sessions_and_metrics_and_replace_a_dead_one(workers, other_path):
    w, live = workers("--watch", "0.2")
    sent, pids = [], set()
    while len(pids) < 2 or len(sent) < 10:  # events until both workers have taken some
        assert len(sent) < 60, f"every event reached worker {pids}"
        got, pid = _on_a_new_connection(w.url, "POST", "/v1/sessions/w/events",
                                        json={"items": [len(sent) + 1]})
        sent.append(len(sent) + 1)
        assert got.status_code == 200 and got.json()["session_length"] == len(sent), got.text
        pids.add(pid)
    assert w.client.get("/v1/sessions/w").json()["items"] == sent
    # /metrics is the fleet's, whichever worker answers it.
    count = f'fastsasrec_requests_total{{route="/v1/sessions/{{session_id}}/events",status="200"}} {len(sent)}.0'
    hist = f'fastsasrec_request_seconds_count{{route="/v1/sessions/{{session_id}}/events"}} {len(sent)}.0'
    scraped = set()
    for _ in range(60):
        if len(scraped) == 2:
            break
        got, pid = _on_a_new_connection(w.url, "GET", "/metrics")
        assert count in got.text and hist in got.text, got.text
        assert _serving(got.text, _tag(live)) == 2
        scraped.add(pid)
    assert scraped == pids
    # A worker that dies is replaced; its live gauges leave /metrics (else 3 would serve).
    os.kill(min(pids), signal.SIGKILL)
    _until(lambda: _on_a_new_connection(w.url, "GET", "/v1/model")[1] not in pids,
           "no new worker answered")
    _until(lambda: _serving(w.client.get("/metrics").text, _tag(live)) == 2, "the count is off")
    assert w.client.get("/v1/sessions/w").json()["items"] == sent
    # --watch: a new file rolls through every worker.
    shutil.copy(other_path, live)
    _until(lambda: _serving(w.client.get("/metrics").text, _tag(other_path)) == 2, "no reload")
    assert 'fastsasrec_reloads_total{result="ok"} 2.0' in w.client.get("/metrics").text


def test_sighup_rolls_a_new_model_through_every_worker_with_no_failed_request(workers, other_path):
    w, live = workers()
    old, new = _tag(live), _tag(other_path)
    stop, answers = threading.Event(), []

    def load():  # a few requests per connection, so that both workers take some
        while not stop.is_set():
            with httpx.Client(base_url=w.url, timeout=10) as c:
                for _ in range(4):
                    try:
                        got = c.post("/v1/recommend", json={"session": [1, 2, 3], "n": 5})
                    except httpx.TransportError as e:
                        answers.append((repr(e), None))
                    else:
                        answers.append((got.status_code, got.json().get("model")))
                    time.sleep(0.002)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        _until(lambda: len(answers) > 20, "no answers")
        shutil.copy(other_path, live)
        w.proc.send_signal(signal.SIGHUP)
        _until(lambda: _serving(w.client.get("/metrics").text, new) == 2, "not every worker reloaded")
        n = len(answers)
        _until(lambda: len(answers) > n + 20, "no answers after the reload")
    finally:
        stop.set()
        loader.join(30)
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:5]
    tags = [tag for _, tag in answers]
    assert tags[0] == old and tags[-1] == new and set(tags) == {old, new}
    seen = set()
    for _ in range(60):  # every worker says it serves the new model
        info = _on_a_new_connection(w.url, "GET", "/v1/model")[0].json()
        assert info["model"] == new
        seen.add(info["pid"])
        if len(seen) == 2:
            break
    assert len(seen) == 2
    text = w.client.get("/metrics").text
    assert 'fastsasrec_reloads_total{result="ok"} 2.0' in text and _serving(text, old) == 0
