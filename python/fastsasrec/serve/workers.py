"""Worker processes on one port (``fastsasrec serve --workers N``).

A supervisor (this process) binds the port once; N workers, started afresh (spawn, not
fork: no engine state is copied), each build the app from the same settings with their own
engine and share of the cores, and accept connections from that one listening socket, so
the kernel hands each new connection to a worker that is free to take it.  Their sessions
and denylist are in the shared store (Redis); /metrics adds all workers up
(prometheus_client's multiprocess mode, in a folder this process makes and removes).

Reloads are rolling: on SIGHUP (or a new model file under ``watch``) the supervisor asks
one worker at a time to load the file beside its model and swap (``Server.reload``), and
asks the next once it has; meanwhile every worker answers, each request by one whole
model whose tag its response carries.  A reload that fails stops the roll, the rest
keeping the model they have.  SIGTERM or SIGINT drains and stops every worker; a worker
that dies is replaced, its live gauges dropped from /metrics."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

from fastsasrec.serve.metrics import MULTIPROC_ENV

log = logging.getLogger("fastsasrec.serve")

RESTART_DELAY = 1.0  # seconds before replacing a worker that died soon after its start
STOP_TIMEOUT = 40.0  # seconds a worker has to drain on SIGTERM (uvicorn's 30 and a margin)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def engine_threads(workers: int, threads: Optional[int]) -> int:
    """Each worker's engine threads: ``threads`` when the user set them, else an equal
    share of the cores (at least one)."""
    return threads if threads is not None else max(1, cores() // workers)


# ----------------------------------------------------------------------------- a worker
def _worker(sock: socket.socket, app_kwargs: Dict[str, Any], options: Dict[str, Any],
            conn: Any) -> None:
    """One worker process: the app, its model loaded, served on the shared socket until
    SIGTERM; reload orders come from the supervisor over ``conn``."""
    import uvicorn

    from fastsasrec.serve.app import create_app
    from fastsasrec.serve.server import uvicorn_config

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads are the supervisor's to order
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    app = create_app(**app_kwargs)
    server = app.state.server
    try:
        server.load_now()
    except Exception as e:  # noqa: BLE001 - said, and the supervisor sees the exit
        log.error("worker could not load the model %s: %s", server.path, e)
        sys.exit(1)
    threading.Thread(target=_orders, args=(server, conn), daemon=True).start()
    config = uvicorn_config(app, **options)
    uvicorn.Server(config).run(sockets=[sock])


def _orders(server: Any, conn: Any) -> None:
    """The supervisor's reload orders, each answered with (reloaded, model tag) once the
    new model serves.  The supervisor gone (the pipe closed): this worker stops too."""
    while True:
        try:
            conn.recv()
        except (EOFError, OSError):
            os.kill(os.getpid(), signal.SIGTERM)
            return
        while server.loop is None:  # the order came before the server's loop ran
            time.sleep(0.01)
        ok = asyncio.run_coroutine_threadsafe(server.reload(), server.loop).result()
        conn.send((ok, server.current.tag))


# ----------------------------------------------------------------------------- the supervisor
@dataclasses.dataclass
class _Proc:
    process: Any
    conn: Any
    started: float


class Supervisor:
    """N workers on ``sock``: starts them, replaces any that dies, rolls reloads, stops
    them (see the module)."""

    def __init__(self, n: int, sock: socket.socket, app_kwargs: Dict[str, Any],
                 options: Dict[str, Any], metrics_dir: str, watch: float = 0.0):
        self.n, self.sock, self.app_kwargs, self.options = n, sock, app_kwargs, options
        self.metrics_dir, self.watch = metrics_dir, float(watch)
        self.path = app_kwargs["model_or_path"]
        self.ctx = multiprocessing.get_context("spawn")
        self.workers: List[Optional[_Proc]] = [None] * n
        self.hup = False
        self.stop: Optional[int] = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def _signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.hup = True
        else:
            self.stop = signum
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:  # already awake
            pass

    def _wait(self, objects: List[Any], timeout: Optional[float]) -> List[Any]:
        ready = multiprocessing.connection.wait(objects + [self._wake_r], timeout)
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass
        return ready

    def _start(self, i: int) -> None:
        mine, theirs = self.ctx.Pipe()
        p = self.ctx.Process(target=_worker, name=f"fastsasrec-worker-{i}",
                             args=(self.sock, self.app_kwargs, self.options, theirs))
        p.start()
        theirs.close()
        self.workers[i] = _Proc(p, mine, time.monotonic())
        log.info("worker %d started (pid %d, %s engine threads)", i, p.pid,
                 self.app_kwargs.get("num_threads"))

    def _reap(self) -> None:
        """Replaces each worker that exited (unless stopping), its live gauges dropped."""
        from prometheus_client import multiprocess

        for i, w in enumerate(self.workers):
            if w is None or w.process.is_alive():
                continue
            w.process.join()
            multiprocess.mark_process_dead(w.process.pid, self.metrics_dir)
            w.conn.close()
            self.workers[i] = None
            if self.stop is not None:
                continue
            log.warning("worker %d (pid %d) exited with status %s; starting another", i,
                        w.process.pid, w.process.exitcode)
            if time.monotonic() - w.started < 10:
                time.sleep(RESTART_DELAY)  # a worker that cannot start is not restarted in a spin
            self._start(i)

    def roll(self) -> None:
        """Reloads the workers one at a time, each once the one before serves the new model."""
        log.info("reloading %s in %d workers, one at a time", self.path, self.n)
        tag = None
        for i, w in enumerate(self.workers):
            if w is None or not w.process.is_alive():
                continue
            try:
                w.conn.send("reload")
            except OSError:
                continue
            while self.stop is None:
                ready = self._wait([w.conn, w.process.sentinel], 1.0)
                if w.conn in ready:
                    try:
                        ok, tag = w.conn.recv()
                    except (EOFError, OSError):  # it died meanwhile: its replacement loads the file
                        break
                    if not ok:
                        log.error("worker %d (pid %d) could not reload %s; the roll stops, the "
                                  "workers not reloaded keep their model", i, w.process.pid, self.path)
                        return
                    log.info("worker %d (pid %d) serves model %s", i, w.process.pid, tag)
                    break
                if w.process.sentinel in ready:
                    break
            if self.stop is not None:
                return
        log.info("reloaded every worker: model %s", tag)

    def run(self) -> None:
        from fastsasrec.serve.server import _file_signature

        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signal)
        for i in range(self.n):
            self._start(i)
        seen = _file_signature(self.path) if self.watch > 0 else None
        next_check = time.monotonic() + self.watch
        while self.stop is None:
            timeout = max(0.0, next_check - time.monotonic()) if self.watch > 0 else None
            self._wait([w.process.sentinel for w in self.workers if w is not None], timeout)
            self._reap()
            if self.hup and self.stop is None:
                self.hup = False
                self.roll()
            if self.watch > 0 and time.monotonic() >= next_check:
                next_check = time.monotonic() + self.watch
                now = _file_signature(self.path)
                if now is not None and now != seen:
                    seen = now
                    self.roll()
        self.shutdown()

    def shutdown(self) -> None:
        log.info("stopping %d workers (signal %d): requests in flight are answered first",
                 self.n, self.stop or signal.SIGTERM)
        live = [w for w in self.workers if w is not None]
        for w in live:
            if w.process.is_alive():
                os.kill(w.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for w in live:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                log.error("worker pid %d did not stop in %g s; killed", w.process.pid, STOP_TIMEOUT)
                w.process.kill()
                w.process.join()
        self._reap()


def run(n: int, app_kwargs: Dict[str, Any], host: str, port: int, options: Dict[str, Any],
        watch: float = 0.0) -> None:
    """Serves ``create_app(**app_kwargs)`` from ``n`` worker processes on ``host:port``
    until SIGTERM or SIGINT; ``options``: uvicorn's (``server.run_options``); ``watch``:
    seconds between checks of the model file, a new version rolled through the workers."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    sock = uvicorn.Config(app=None, host=host, port=port).bind_socket()  # exits 3 if it cannot
    sock.listen(2048)  # connections queue from now, while the workers start
    metrics_dir = tempfile.mkdtemp(prefix="fastsasrec-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir  # the workers inherit it
    try:
        Supervisor(n, sock, app_kwargs, options, metrics_dir, watch).run()
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        sock.close()
