"""The server's store in this process: a client's event id applied once, the denylist kept
in a file across restarts, and the store's arguments checked.  (Redis and replicas:
test_serve_fleet.py.)"""
import json
import os

import pytest

pytest.importorskip("httpx", reason="the serve tests need httpx (the test extra)")
pytest.importorskip("uvicorn", reason="the serve tests need uvicorn (the serve extra)")

from fastsasrec.serve import SessionStore, create_app  # noqa: E402
from fastsasrec.serve.sessions import EVENT_IDS  # noqa: E402
from test_serve import model  # noqa: E402,F401 (a fixture)
from test_serve_hardening import running  # noqa: E402,F401 (a fixture: servers of a given model)


def test_a_repeated_event_id_is_applied_once():
    store = SessionStore(max_sessions=10, ttl=60)
    assert store.append("s", [1, 2], 10, False, event_id="e1") == [1, 2]
    assert store.append("s", [1, 2], 10, False, event_id="e1") == [1, 2]  # the retry
    assert store.append("s", [3], 10, False, event_id="e2") == [1, 2, 3]
    assert store.append("s", [4], 10, False) == [1, 2, 3, 4]  # no id: always applied
    assert store.append("t", [9], 10, False, event_id="e1") == [9]  # ids are per session
    # The last EVENT_IDS ids are remembered; an older one is applied again.
    for i in range(EVENT_IDS):
        store.append("s", [], 10, False, event_id=f"x{i}")
    assert store.append("s", [5], 10, False, event_id="x0") == [1, 2, 3, 4]  # remembered
    assert store.append("s", [5], 10, False, event_id="e1") == [1, 2, 3, 4, 5]  # forgotten
    store.delete("s")  # a deleted session forgets its ids
    assert store.append("s", [7], 10, False, event_id="x1") == [7]


def test_the_event_id_over_http(running, model):
    c = running(model).client
    first = c.post("/v1/sessions/v/events", json={"items": [1, 2], "event_id": "click-1"}).json()
    again = c.post("/v1/sessions/v/events", json={"items": [1, 2], "event_id": "click-1"}).json()
    assert first["session_length"] == again["session_length"] == 2
    assert first["items"] == again["items"]
    assert c.get("/v1/sessions/v").json()["items"] == [1, 2]
    for bad in ("", "a b", "x" * 129, 7, None, ["a"]):
        got = c.post("/v1/sessions/v/events", json={"items": [3], "event_id": bad})
        assert got.status_code == 422 and got.json()["error"].startswith("event_id: must be"), got.text
    assert c.get("/v1/sessions/v").json()["items"] == [1, 2]


def test_the_denylist_file_survives_a_restart(running, model, tmp_path):
    path = tmp_path / "deny.json"
    c = running(model, denylist_file=str(path)).client
    assert c.get("/v1/denylist").json() == {"items": []}  # no file yet: an empty list
    assert c.put("/v1/denylist", json={"items": [3, 5, 3]}).json() == {"items": 2}
    assert json.loads(path.read_text()) == {"items": [3, 5]}
    assert [p for p in os.listdir(tmp_path)] == ["deny.json"]  # no temporary left
    r = running(model, denylist_file=str(path))  # the restart
    assert r.client.get("/v1/denylist").json() == {"items": [3, 5]}
    got = r.client.post("/v1/recommend", json={"session": [1], "n": 50}).json()["items"]
    assert 3 not in got and 5 not in got
    # Without the file the list is gone on a restart (today's behaviour, still the default).
    assert running(model).client.get("/v1/denylist").json() == {"items": []}


def test_a_denylist_of_the_other_id_kind_matches_nothing_and_fails_nothing(running, model, tmp_path, caplog):
    # A file (or a shared store) written beside a model of string ids, read by one of
    # integer ids: its ids can be no item of this model; every route still answers.
    path = tmp_path / "deny.json"
    path.write_text('{"items": ["3", "5"]}')
    c = running(model, denylist_file=str(path)).client
    assert c.get("/readyz").status_code == 200
    for route, body in (("/v1/recommend", {"session": [1], "n": 50}),
                        ("/v1/recommend/batch", {"sessions": [[1]], "n": 50}),
                        ("/v1/sessions/s/events", {"items": [1], "n": 50}),
                        ("/v1/similar", {"item": 1, "n": 50})):
        got = c.post(route, json=body)
        assert got.status_code == 200, (route, got.text)
        items = got.json()["results"][0]["items"] if "results" in got.json() else got.json()["items"]
        assert 3 in items or 5 in items  # nothing left out in their name
    assert "the denylist holds 2 string ids, and this model's are integers" in caplog.text


@pytest.mark.parametrize("text, why", [("{", "cannot be read"), ('{"x": 1}', "not a denylist"),
                                       ('{"items": [1, "a"]}', "all integers or all strings")])
def test_a_damaged_denylist_file_is_refused_naming_it(model, tmp_path, text, why):
    path = tmp_path / "deny.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=why) as e:
        create_app(model, denylist_file=str(path))
    assert str(path) in str(e.value)


def test_store_arguments_are_checked(model, tmp_path):
    with pytest.raises(ValueError, match="store must be 'memory' or a redis:// URL"):
        create_app(model, store="mysql://x")
    with pytest.raises(ValueError, match="denylist_file .* is for the in-process store"):
        create_app(model, store="redis://127.0.0.1:1/0", denylist_file=str(tmp_path / "d.json"))


def test_cli_store_flags_are_checked(capsys, model, tmp_path):
    from fastsasrec.cli import main

    path = str(tmp_path / "m.fsr")
    model.save(path)
    for argv, msg in ((["--store", "mysql://x"], "--store must be memory or a redis:// URL"),
                      (["--store-timeout", "0"], "--store-timeout must be > 0 seconds"),
                      (["--denylist-refresh", "-1"], "--denylist-refresh must be > 0 seconds"),
                      (["--store", "redis://h:1/0", "--denylist-file", "d"], "--denylist-file is for")):
        assert main(["serve", path] + argv) == 2
        assert msg in capsys.readouterr().err
    (tmp_path / "d.json").write_text("[]")
    assert main(["serve", path, "--denylist-file", str(tmp_path / "d.json")]) == 2
    assert "not a denylist" in capsys.readouterr().err


def test_a_redis_store_without_redis_py_names_the_extra(model, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r'pip install "fastsasrec\[redis\]"'):
        create_app(model, store="redis://127.0.0.1:6379/0")


def test_a_redis_url_is_shown_without_its_password():
    pytest.importorskip("redis", reason="needs redis-py (the test extra)")
    from fastsasrec.serve.redis_store import RedisStore

    store = RedisStore("redis://app:s3cret@cache.internal:6380/2", max_sessions=10, ttl=60)
    assert store.name == "redis://app:***@cache.internal:6380/2"
    assert RedisStore("redis://h:1/0", max_sessions=10, ttl=60).name == "redis://h:1/0"
    for bad in (0, -1, float("nan"), True):
        with pytest.raises(ValueError, match="store_timeout must be a number of seconds > 0"):
            RedisStore("redis://h:1/0", max_sessions=10, ttl=60, timeout=bad)
