"""`python benchmarks/bench_serve.py --fleet`: held-session events on a fleet (two replicas
on one redis-server, or --workers 2) against one server with the in-process store (see
bench_serve.py's docstring).  The generator is bench_serve's open loop, request i sent to
server i mod 2; every acknowledged event is checked in its session at the end."""
import asyncio
import collections
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench_serve import _exchange, free_port, ml100k_model, print_rows, start, stop

CLICKS = 10  # events per visitor (a session), well under max_seq: none trimmed away


def events(prefix: str, sessions: list, n: int) -> list:
    """(request bytes, session id, item) for n events: visitor i // CLICKS clicks the items
    of one of ``sessions`` in turn, each event asking for 10 recommendations."""
    out = []
    for i in range(n):
        sid, k = f"{prefix}-{i // CLICKS}", i % CLICKS
        s = sessions[(i // CLICKS) % len(sessions)]
        item = s[k % len(s)]
        data = json.dumps({"items": [item], "n": 10}).encode()
        out.append((f"POST /v1/sessions/{sid}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                    + data, sid, item))
    return out


async def run_events(ports: list, evs: list, rate, duration: float, conns: int) -> tuple:
    """bench_serve.run_load's open loop over ``evs``, event i to ports[i % len(ports)] (each
    port its own connections and queue); (the row, the acknowledged (sid, item) pairs)."""
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    per = max(1, conns // len(ports))
    pools = [[await asyncio.open_connection("127.0.0.1", p) for _ in range(per)] for p in ports]
    lat, acked, errors = [], [], 0
    cpu0 = time.process_time()
    t_start = clock()

    async def one(rw, i, t0):
        nonlocal errors
        req, sid, item = evs[i]
        ok = await _exchange(*rw, req)
        lat.append((clock() - t0) * 1e3)
        if ok:
            acked.append((sid, item))
        else:
            errors += 1

    if rate is None:
        deadline, counter = t_start + duration, iter(range(len(evs)))

        async def flat(rw):
            for i in counter:
                if clock() >= deadline:
                    return
                await one(rw, i, clock())

        await asyncio.gather(*(flat(rw) for pool in pools for rw in pool))
    else:
        n = min(int(rate * duration), len(evs))
        queues = [asyncio.Queue() for _ in ports]

        async def worker(q, rw):
            while True:
                item = await q.get()
                if item is None:
                    return
                await one(rw, *item)

        tasks = [loop.create_task(worker(q, rw)) for q, pool in zip(queues, pools) for rw in pool]
        for i in range(n):
            delay = t_start + i / rate - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            queues[i % len(ports)].put_nowait((i, clock()))
        for q, pool in zip(queues, pools):
            for _ in pool:
                q.put_nowait(None)
        await asyncio.gather(*tasks)
    elapsed, cpu = clock() - t_start, time.process_time() - cpu0
    for pool in pools:
        for _, w in pool:
            w.close()
    a = np.asarray(lat)
    return dict(rate=rate, sent=len(a), errors=errors, achieved=len(a) / elapsed,
                p50=float(np.percentile(a, 50)), p99=float(np.percentile(a, 99)), max=float(a.max()),
                gen_us_per_req=cpu / max(len(a), 1) * 1e6), acked


def lost(port: int, acked: list) -> tuple:
    """(sessions read, acknowledged events missing from them): each session read back."""
    want = collections.defaultdict(collections.Counter)
    for sid, item in acked:
        want[sid][item] += 1
    conn, missing = http.client.HTTPConnection("127.0.0.1", port, timeout=10), 0
    for sid, items in want.items():
        conn.request("GET", f"/v1/sessions/{sid}")
        got = conn.getresponse()
        body = json.loads(got.read())
        held = collections.Counter(body["items"]) if got.status == 200 else collections.Counter()
        missing += sum((items - held).values())
    conn.close()
    return len(want), missing


def redis_server(tmp: str, fsync: str) -> tuple:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp,
                             "--save", "", "--appendonly", "yes", "--appendfsync", fsync],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def fleet(args) -> dict:
    if shutil.which("redis-server") is None:
        raise SystemExit("--fleet needs redis-server (apt-get install redis-server)")
    model, sessions = ml100k_model(args.data, args.threads)
    tmp = tempfile.mkdtemp(prefix="bench_serve_fleet_")
    path = os.path.join(tmp, "ml100k.fsr")
    model.save(path)
    rates = [float(x) for x in args.fleet_rates.split(",")]
    print(f"\n## held-session events, {model.n_items:,} items: POST /v1/sessions/{{id}}/events "
          f"({CLICKS} events a visitor, the answer included); Redis AOF appendfsync {args.redis_fsync}")
    print("| setup | rate (req/s) | sent | errors | achieved (req/s) | p50 ms | p99 ms | max ms | generator µs/req |")
    print("|---|---|---|---|---|---|---|---|---|")
    redis, url = redis_server(tmp, args.redis_fsync)
    results, summary = {}, []
    serve = [sys.executable, "-m", "fastsasrec", "serve", path, "--threads", str(args.threads)]
    try:
        for setup in args.fleet_setups.split(","):
            ports = [free_port() for _ in range(2 if setup == "replicas" else 1)]
            extra = {"single": [], "replicas": ["--store", url],
                     "workers": ["--store", url, "--workers", "2"]}[setup]
            procs = [start(serve + ["--port", str(p)] + extra, p, "/readyz") for p in ports]
            rows, acked, fails = [], [], 0
            try:
                run = lambda evs, rate, conns: asyncio.run(  # noqa: E731
                    run_events(ports, evs, rate, args.duration, conns))
                run(events(f"{setup}-warm", sessions, 2000), None, 8)
                for step, rate in enumerate(rates + [None]):
                    if rate is not None and fails >= 2:
                        continue  # a rate is not tried once two in a row have failed
                    n = int((rate or 8000) * args.duration)
                    row, ok = run(events(f"{setup}-{step}", sessions, n), rate,
                                  args.conns if rate else 32)
                    rows.append(row)
                    acked += ok
                    if rate is not None:
                        fails = fails + 1 if (row["p99"] > 20 or row["errors"]) else 0
                # Read back from the other replica (the last port).
                checked, missing = lost(ports[-1], acked)
            finally:
                for p in procs:
                    stop(p)
            best = print_rows(setup, rows)
            at_1000 = next((r["p99"] for r in rows if r["rate"] == 1000), None)
            results[setup] = dict(rows=rows, best_rate_p99_20ms=best, p99_at_1000=at_1000,
                                  acknowledged=len(acked), sessions_checked=checked, lost=missing)
            summary.append(f"{setup}: highest rate held at p99 <= 20 ms: {best:,.0f} req/s; p99 at "
                           f"1,000 req/s: {'-' if at_1000 is None else f'{at_1000:.2f} ms'}; "
                           f"{len(acked):,} events acknowledged in {checked:,} sessions, {missing} lost")
    finally:
        redis.kill()
        redis.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    for line in summary:
        print(line)
    if "single" in results:
        base = results["single"]["best_rate_p99_20ms"]
        for setup in ("replicas", "workers"):
            if setup in results and base:
                print(f"{setup} / single at p99 <= 20 ms: "
                      f"{results[setup]['best_rate_p99_20ms'] / base:.0%}")
    return results
