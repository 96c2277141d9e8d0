#!/usr/bin/env python
"""Load test of `fastsasrec serve` against a PyTorch server (FastAPI on uvicorn around the
reference model, torch_server.py), POST /v1/recommend, on loopback only.

    python benchmarks/bench_serve.py                      # both models, both servers
    python benchmarks/bench_serve.py --duration 3 --rates 250,500,1000

For each model (1,682 items: trained briefly on MovieLens 100K; 100,000 items: trained
briefly on synthetic sessions) each server runs as its own process with one engine
thread, and an open-loop generator in this process sends requests at fixed rates (each
request's latency counted from the moment it was due, so a server that falls behind
pays for the queue: no coordinated omission; the clock starts when the generator hands
the request to a connection, at or just after it was due), then as fast as 32 connections allow. The
generator is lean (asyncio on uvloop, pre-encoded HTTP/1.1 requests on keep-alive
connections); its own CPU time per request is reported, and its ceiling against a
trivial server (a fixed response, no work) is measured in the same run, since it shares
the machine's two cores with the server.  Every run is bounded: at most rate x duration
requests, and a rate is not tried once two in a row have failed p99 <= 20 ms.

Also reported: the per-request overhead outside the engine (server p50 at a low rate
against the engine's own time for one session, in process) and the memory of 100,000
held sessions of max_seq items.

    python benchmarks/bench_serve.py --fleet              # held sessions: Redis fleet vs one process

--fleet: held-session events (POST /v1/sessions/{id}/events, the answer included; each
visitor clicks 10 times) on the 1,682-item model, sent alternately to two replicas on one
redis-server (AOF, --redis-fsync), against one server with the in-process store; each
server one engine thread, everything sharing the machine's cores.  Per setup: the
highest rate held at p99 <= 20 ms, p99 at 1,000 req/s, and the events lost: every
acknowledged (200) event must be in its session read back at the end (from the other
replica).  --fleet-setups adds "workers" (--workers 2 on one port, on the same Redis).
"""
import _env  # noqa: I001  (first: strips OpenBLAS variables before numpy loads)

if __name__ == "__main__":
    _env.strip_openblas_env()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TRIVIAL_SERVER = r"""
import asyncio, sys
try:
    import uvloop; uvloop.install()
except ImportError:
    pass
BODY = b'{"items":[1,2,3],"scores":[0.3,0.2,0.1],"model":"trivial"}'
RESP = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
async def handle(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
            if n:
                await r.readexactly(n)
            w.write(RESP)
    except (asyncio.IncompleteReadError, ConnectionError):
        w.close()
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, path: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("server did not get ready")


def start(cmd, port, ready_path):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE)
    wait_ready(port, ready_path, proc)
    return proc


def stop(proc):
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


# ----------------------------------------------------------------------------- the generator
def requests_for(path: str, bodies) -> list:
    out = []
    for b in bodies:
        data = json.dumps(b).encode()
        out.append(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return out


async def _exchange(reader, writer, req: bytes) -> bool:
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    n = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            n = int(line[15:])
    if n:
        await reader.readexactly(n)
    return head[9:12] == b"200"


async def run_load(port: int, reqs: list, rate, duration: float, conns: int) -> dict:
    """Open loop at ``rate`` requests/s for ``duration`` s, or (rate None) as fast as
    ``conns`` connections go.  Latencies in ms from when each request was due, on
    time.perf_counter (uvloop's loop.time() ticks in whole milliseconds)."""
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    pool = [await asyncio.open_connection("127.0.0.1", port) for _ in range(conns)]
    lat, errors = [], 0
    cpu0 = time.process_time()
    t_start = clock()
    if rate is None:
        deadline = t_start + duration

        async def worker(k, rw):
            nonlocal errors
            r, w = rw
            i = k
            while clock() < deadline:
                t0 = clock()
                ok = await _exchange(r, w, reqs[i % len(reqs)])
                lat.append((clock() - t0) * 1e3)
                errors += not ok
                i += conns

        await asyncio.gather(*(worker(k, rw) for k, rw in enumerate(pool)))
    else:
        n = int(rate * duration)
        queue: asyncio.Queue = asyncio.Queue()

        async def worker(rw):
            nonlocal errors
            r, w = rw
            while True:
                item = await queue.get()
                if item is None:
                    return
                i, due = item
                ok = await _exchange(r, w, reqs[i % len(reqs)])
                lat.append((clock() - due) * 1e3)
                errors += not ok

        workers = [loop.create_task(worker(rw)) for rw in pool]
        for i in range(n):
            due = t_start + i / rate
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            # From when it is handed out (at or after it was due: the event loop's timers
            # tick in milliseconds, a lateness of the generator's, not the server's).
            queue.put_nowait((i, clock()))
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
    elapsed = clock() - t_start
    cpu = time.process_time() - cpu0
    for _, w in pool:
        w.close()
    a = np.asarray(lat)
    return dict(rate=rate, sent=len(a), errors=errors, achieved=len(a) / elapsed,
                p50=float(np.percentile(a, 50)), p99=float(np.percentile(a, 99)), max=float(a.max()),
                gen_us_per_req=cpu / max(len(a), 1) * 1e6)


def load(port, reqs, rate, duration, conns):
    return asyncio.run(run_load(port, reqs, rate, duration, conns))


# ----------------------------------------------------------------------------- models
def ml100k_model(data, threads):
    from fastsasrec import SASRec

    ds = common.load_ml100k(data)
    cfg = dict(common.CONFIG, loss="softmax")
    model = SASRec(**cfg, iterations=3, num_threads=threads).fit(ds.to_original(ds.contexts))
    rng = np.random.default_rng(0)
    users = rng.integers(0, len(ds.contexts), size=2000)
    sessions = ds.to_original([ds.contexts[u][-cfg["max_seq"]:] for u in users])
    return model, [[int(x) for x in s] for s in sessions]


def big_model(n_items, threads):
    from fastsasrec import SASRec

    rng = np.random.default_rng(0)
    perm = rng.permutation(n_items) + 1  # every item appears: the catalogue is all of them
    seqs = [perm[i:i + 20].tolist() for i in range(0, n_items, 20)]
    seqs += [rng.integers(1, n_items + 1, size=20).tolist() for _ in range(20000)]
    cfg = dict(common.CONFIG, loss="sampled_softmax")
    model = SASRec(**cfg, iterations=1, num_threads=threads).fit(seqs)
    sessions = [rng.integers(1, n_items + 1, size=int(rng.integers(1, 50))).tolist() for _ in range(2000)]
    return model, sessions


def engine_ms(model, sessions) -> float:
    """p50 of the engine's own call for one session (no HTTP, no JSON, no id mapping)."""
    state = model._fitted()
    times = []
    for s in sessions[:500]:
        internal = state.encode(np.asarray(s, dtype=np.int64))
        internal = internal[internal > 0]
        off = np.array([0, internal.size], dtype=np.int64)
        t0 = time.perf_counter()
        state.engine.recommend(internal, off, 10, internal, off)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def session_memory(max_seq: int, n: int = 100_000) -> float:
    """MiB that n held sessions of max_seq integer ids take in the server's store."""
    import tracemalloc

    from fastsasrec.serve import SessionStore

    store = SessionStore(max_sessions=n, ttl=1e9)
    ids = list(range(10**6, 10**6 + max_seq))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        store.append(f"visitor-{i:012d}", ids, max_seq, False)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert store.stats() == (n, n * max_seq)
    print(f"(the store's own count, reported in /metrics as fastsasrec_session_bytes: "
          f"{store.memory() / 2**20:.1f} MiB)")
    return (after - before) / 2**20


# ----------------------------------------------------------------------------- main
def sweep(port, reqs, rates, duration, conns, target_ms=20.0):
    rows, fails = [], 0
    for rate in rates:
        r = load(port, reqs, rate, duration, conns)
        rows.append(r)
        fails = fails + 1 if (r["p99"] > target_ms or r["errors"]) else 0
        if fails >= 2:
            break
    rows.append(load(port, reqs, None, duration, 32))
    return rows


def generator_ceiling(duration: float, conns: int) -> tuple:
    """The generator's own ceiling: a trivial server, as fast as 32 connections go; and
    the floor of latency (its p50 at two low rates)."""
    port = free_port()
    trivial = subprocess.Popen([sys.executable, "-c", TRIVIAL_SERVER, str(port)], cwd=HERE)
    time.sleep(1.0)
    ceiling = load(port, requests_for("/v1/recommend", [{"session": [1, 2, 3], "n": 10}]), None,
                   duration, 32)
    floor = {rate: load(port, requests_for("/v1/recommend", [{"session": [1, 2, 3], "n": 10}]), rate,
                        duration, conns) for rate in (100.0, 500.0)}
    trivial.kill()
    print(f"\ngenerator ceiling against a trivial server: {ceiling['achieved']:,.0f} requests/s, "
          f"{ceiling['gen_us_per_req']:.0f} µs of generator CPU per request; the trivial server's "
          + ", ".join(f"p50 {f['p50']:.2f} ms at {r:.0f} req/s" for r, f in floor.items())
          + " (loopback, the generator and wake-ups: the floor of any server here)")
    return ceiling, floor


def print_rows(name: str, rows: list) -> float:
    """Prints a sweep's rows as table lines named ``name``; returns the highest rate
    achieved at p99 <= 20 ms without errors (0 when none)."""
    for r in rows:
        rate = "max (32 conns)" if r["rate"] is None else f"{r['rate']:.0f}"
        print(f"| {name} | {rate} | {r['sent']} | {r['errors']} | {r['achieved']:,.0f} | "
              f"{r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.1f} | {r['gen_us_per_req']:.0f} |",
              flush=True)
    held = [r for r in rows if r["rate"] is not None and r["p99"] <= 20 and not r["errors"]]
    return max((r["achieved"] for r in held), default=0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="ML-100K (default: ../shared/data/ml-100k)")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per rate")
    ap.add_argument("--rates", default="100,250,500,1000,1500,2000,3000,4000,6000")
    ap.add_argument("--conns", type=int, default=128, help="connections of the open-loop generator")
    ap.add_argument("--threads", type=int, default=1, help="engine threads of each server")
    ap.add_argument("--models", default="ml100k,100k")
    ap.add_argument("--impl", default="fastsasrec,torch")
    ap.add_argument("--out", default=None, help="write results as JSON here")
    ap.add_argument("--fleet", action="store_true",
                    help="held-session events: two replicas on Redis against one in-process server")
    ap.add_argument("--fleet-setups", default="single,replicas",
                    help="of single, replicas, workers (default: single,replicas)")
    ap.add_argument("--fleet-rates", default="250,500,1000,1500,2000,3000")
    ap.add_argument("--redis-fsync", default="always", choices=("always", "everysec", "no"),
                    help="the fleet's redis-server appendfsync (default: always)")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    rates = [float(x) for x in args.rates.split(",")]
    impls = args.impl.split(",")
    common.print_machine_info(common.machine_info(args.threads))
    results = {}

    ceiling, floor = generator_ceiling(args.duration, args.conns)
    results["ceiling"] = ceiling
    results["floor"] = {str(k): v for k, v in floor.items()}
    if args.fleet:
        from bench_serve_fleet import fleet

        results["fleet"] = fleet(args)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
        return

    tmp = tempfile.mkdtemp(prefix="bench_serve_")
    for name in args.models.split(","):
        if name == "ml100k":
            model, sessions = ml100k_model(args.data, args.threads)
        else:
            model, sessions = big_model(100_000, args.threads)
        n_items = model.n_items
        path = os.path.join(tmp, f"{name}.fsr")
        model.save(path)
        bodies = [{"session": s, "n": 10} for s in sessions]
        reqs = requests_for("/v1/recommend", bodies)
        eng = engine_ms(model, sessions)
        print(f"\n## {name}: {n_items:,} items; engine alone, one session: p50 {eng:.3f} ms")
        print("| server | rate (req/s) | sent | errors | achieved (req/s) | p50 ms | p99 ms | max ms | generator µs/req |")
        print("|---|---|---|---|---|---|---|---|---|")
        for impl in impls:
            port = free_port()
            if impl == "fastsasrec":
                cmd = [sys.executable, "-m", "fastsasrec", "serve", path, "--port", str(port),
                       "--threads", str(args.threads)]
                ready = "/readyz"
            else:
                cmd = [sys.executable, os.path.join(HERE, "torch_server.py"), "--items", str(n_items),
                       "--port", str(port), "--threads", str(args.threads)]
                ready = "/healthz"
            proc = start(cmd, port, ready)
            try:
                load(port, reqs, None, 1.0, 8)  # warm-up
                rows = sweep(port, reqs, rates, args.duration, args.conns)
            finally:
                stop(proc)
            best = print_rows(impl, rows)
            low = rows[0]
            fl = floor.get(low["rate"])
            outside = (f" = engine {eng:.3f} ms + the floor {fl['p50']:.2f} ms + "
                       f"{low['p50'] - eng - fl['p50']:.2f} ms of the server's own"
                       if impl == "fastsasrec" and fl is not None else "")
            print(f"\n{impl}: highest rate held at p99 <= 20 ms: {best:,.0f} req/s; at {low['rate']:.0f} req/s "
                  f"p50 {low['p50']:.2f} ms{outside}")
            results[f"{name}/{impl}"] = dict(rows=rows, best_rate_p99_20ms=best, engine_ms=eng)
    mem = session_memory(50)
    print(f"\n100,000 held sessions of 50 integer ids: {mem:.1f} MiB in the session store "
          f"({mem * 2**20 / 100_000:.0f} bytes a session); --max-sessions bounds it")
    results["sessions_100k_mib"] = mem
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
