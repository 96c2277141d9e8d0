"""Counters and histograms for /metrics, kept by prometheus_client (Prometheus text format
0.0.4).  One process: each server has its own registry.  Several worker processes on one
port (``fastsasrec serve --workers N``): prometheus_client's multiprocess mode, every worker
writing its values to files in $PROMETHEUS_MULTIPROC_DIR and whichever answers /metrics
adding them all up, so a scrape sees the fleet, whichever worker it reaches.  Counters and
histograms are summed across workers; gauges as their ``multiprocess_mode`` says (the live
workers' sum, or the value most recently written).  prometheus_client is imported here
only, when a server is made."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict

if TYPE_CHECKING:  # pragma: no cover
    from fastsasrec.serve.server import Loaded, Server

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CLOSE_REASONS = ("header_timeout", "body_timeout", "shed", "refused")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# What the store reports at scrape time (``Store.gauges``): name, help.
_STORE_GAUGES = (("sessions", "Sessions held by the server."),
                 ("session_items", "Items held in those sessions."),
                 ("session_bytes", "Memory of the held sessions (keys, items, entries)."))


def multiprocess() -> bool:
    """True in a worker of a fleet: $PROMETHEUS_MULTIPROC_DIR names the shared folder."""
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The server's counters, histograms and gauges (see the module)."""

    def __init__(self) -> None:
        import prometheus_client as pc

        pc.disable_created_metrics()  # no *_created series: a scrape is what it counts
        self._pc = pc
        self.multiprocess = multiprocess()
        # Multiprocess: the values live in the shared folder's files, read back at scrape.
        reg = None if self.multiprocess else pc.CollectorRegistry(auto_describe=False)
        self.registry = reg
        self._requests = pc.Counter("fastsasrec_requests", "HTTP requests by route and status.",
                                    ["route", "status"], registry=reg)
        self._latency = pc.Histogram("fastsasrec_request_seconds", "Request latency, from the "
                                     "request's arrival to its response.", ["route"],
                                     buckets=_LATENCY_BUCKETS, registry=reg)
        self.batch = pc.Histogram("fastsasrec_batch_sessions", "Sessions per engine call "
                                  "(micro-batches).", buckets=_BATCH_BUCKETS, registry=reg)
        self._unknown = pc.Counter("fastsasrec_unknown_items", "Session items not in the "
                                   "model's catalogue.", registry=reg)
        self._in_flight = pc.Gauge("fastsasrec_requests_in_flight", "Requests received and not "
                                   "yet answered (this one included).", registry=reg,
                                   multiprocess_mode="livesum")
        self.queue_depth = pc.Gauge("fastsasrec_queue_depth", "Requests waiting for the engine.",
                                    registry=reg, multiprocess_mode="livesum")
        self._store_latency = pc.Histogram("fastsasrec_store_seconds", "Calls to the session "
                                           "store (Redis) by operation, errors included.", ["op"],
                                           buckets=_LATENCY_BUCKETS, registry=reg)
        self._store_errors = pc.Counter("fastsasrec_store_errors", "Calls to the session store "
                                        "that failed or timed out (answered 503 where a request "
                                        "needed them).", ["op"], registry=reg)
        self.evicted = pc.Counter("fastsasrec_sessions_evicted", "Sessions dropped at the cap "
                                  "(least recently used).", registry=reg)
        self.reloads = pc.Counter("fastsasrec_reloads", "Model reloads by result (summed over "
                                  "the workers).", ["result"], registry=reg)
        self._closed = pc.Counter("fastsasrec_connections_closed", "Connections the server "
                                  "closed: no complete request head (header_timeout) or body "
                                  "(body_timeout) in time, shed at the connection cap while "
                                  "waiting for a head (shed), refused at the cap (refused).",
                                  ["reason"], registry=reg)
        # The workers serving each model (1 in one process; during a rolling reload the
        # old and the new model each count theirs).
        self._model = pc.Gauge("fastsasrec_model_info", "The model being served (the value: "
                               "the worker processes serving it).", ["model", "items"],
                               registry=reg, multiprocess_mode="livesum")
        self._model_labels: Any = None
        self._store_gauges: Dict[str, Any] = {}
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        for reason in CLOSE_REASONS:
            self._closed.labels(reason)
        self._children: Dict[Any, Any] = {}

    # ---- what the server counts
    def started(self) -> None:
        self._in_flight.inc()

    def request(self, route: str, status: int, seconds: float) -> None:
        self._in_flight.dec()
        key = (route, status)
        children = self._children.get(key)
        if children is None:  # labels() looked up once per route and status
            children = self._children[key] = (self._requests.labels(route, str(status)),
                                               self._latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def store_call(self, op: str, seconds: float, error: bool) -> None:
        """One call to a shared store (Redis): its latency, and whether it failed."""
        self._store_latency.labels(op).observe(seconds)
        errors = self._store_errors.labels(op)  # listed (at 0) for every op called
        if error:
            errors.inc()

    def unknown(self, n: int) -> None:
        if n:
            self._unknown.inc(n)

    @property
    def unknown_items(self) -> int:
        return int(self._value(self._unknown))

    def closed(self, reason: str) -> None:
        """A connection the server closed, by reason (``CLOSE_REASONS``)."""
        self._closed.labels(reason).inc()

    def model(self, loaded: "Loaded") -> None:
        """``loaded`` is the model this process serves now (replacing the one before)."""
        labels = (loaded.tag, str(loaded.model.n_items))
        if labels == self._model_labels:
            return
        if self._model_labels is not None:
            self._model.labels(*self._model_labels).set(0)
            if not self.multiprocess:  # (there its file keeps the 0)
                self._model.remove(*self._model_labels)
        self._model.labels(*labels).set(1)
        self._model_labels = labels

    @staticmethod
    def _value(metric: Any) -> float:
        return sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith("_total"))

    # ---- the exposition
    def render(self, server: "Server") -> bytes:
        """The text of /metrics: this process's, or the fleet's in multiprocess mode."""
        pc = self._pc
        for key, value in server.store.gauges().items():
            g = self._store_gauges.get(key)
            if g is None:
                text = dict(_STORE_GAUGES)[key]
                # The store's figures are the same from any worker (Redis's count): the
                # most recent one written.
                g = self._store_gauges[key] = pc.Gauge(
                    f"fastsasrec_{key}", text, registry=self.registry,
                    multiprocess_mode="livemostrecent")
            g.set(value)
        if not self.multiprocess:
            return pc.generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = pc.CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry)
        return pc.generate_latest(registry)
