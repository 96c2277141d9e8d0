"""Counters and histograms for /metrics (Prometheus text format 0.0.4)."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from fastsasrec.serve.server import Server

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, v: float) -> None:
        i = 0
        while i < len(self.buckets) and v > self.buckets[i]:
            i += 1
        self.counts[i] += 1
        self.total += v
        self.n += 1

    def lines(self, name: str, labels: str = "") -> List[str]:
        out, acc = [], 0
        sep = "," if labels else ""
        for b, c in zip(self.buckets, self.counts):
            acc += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {acc}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        lab = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{lab} {self.total:.6f}")
        out.append(f"{name}_count{lab} {self.n}")
        return out


class Metrics:
    """Counters and histograms for /metrics (Prometheus text format 0.0.4)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Dict[Tuple[str, int], int] = {}
        self.latency: Dict[str, _Histogram] = {}
        self.batch = _Histogram(_BATCH_BUCKETS)
        self.unknown_items = 0
        self.reloads = {"ok": 0, "failed": 0}
        self.in_flight = 0  # requests received and not yet answered (this one included)
        self.store_errors: Dict[str, int] = {}
        self.store_latency: Dict[str, _Histogram] = {}

    def store_call(self, op: str, seconds: float, error: bool) -> None:
        """One call to a shared store (Redis): its latency, and whether it failed."""
        with self.lock:
            self.store_latency.setdefault(op, _Histogram(_LATENCY_BUCKETS)).observe(seconds)
            if error:
                self.store_errors[op] = self.store_errors.get(op, 0) + 1

    def started(self) -> None:
        with self.lock:
            self.in_flight += 1

    def request(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.in_flight -= 1
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
            self.latency.setdefault(route, _Histogram(_LATENCY_BUCKETS)).observe(seconds)

    def render(self, server: "Server") -> str:
        lines = ["# HELP fastsasrec_requests_total HTTP requests by route and status.",
                 "# TYPE fastsasrec_requests_total counter"]
        with self.lock:
            for (route, status), c in sorted(self.requests.items()):
                lines.append(f'fastsasrec_requests_total{{route="{route}",status="{status}"}} {c}')
            lines += ["# HELP fastsasrec_request_seconds Request latency, from the request's "
                      "arrival to its response.", "# TYPE fastsasrec_request_seconds histogram"]
            for route, h in sorted(self.latency.items()):
                lines += h.lines("fastsasrec_request_seconds", f'route="{route}"')
            lines += ["# HELP fastsasrec_batch_sessions Sessions per engine call (micro-batches).",
                      "# TYPE fastsasrec_batch_sessions histogram"]
            lines += self.batch.lines("fastsasrec_batch_sessions")
            if self.store_latency:
                lines += ["# HELP fastsasrec_store_seconds Calls to the session store (Redis) "
                          "by operation, errors included.",
                          "# TYPE fastsasrec_store_seconds histogram"]
                for op, h in sorted(self.store_latency.items()):
                    lines += h.lines("fastsasrec_store_seconds", f'op="{op}"')
                lines += ["# HELP fastsasrec_store_errors_total Calls to the session store that "
                          "failed or timed out (answered 503 where a request needed them).",
                          "# TYPE fastsasrec_store_errors_total counter"]
                lines += [f'fastsasrec_store_errors_total{{op="{op}"}} {self.store_errors.get(op, 0)}'
                          for op in sorted(self.store_latency)]
            unknown = self.unknown_items
            reloads = dict(self.reloads)
            in_flight = self.in_flight
        gauges = server.store.gauges()
        loaded = server.current
        lines += [
            "# HELP fastsasrec_requests_in_flight Requests received and not yet answered "
            "(this one included).",
            "# TYPE fastsasrec_requests_in_flight gauge",
            f"fastsasrec_requests_in_flight {in_flight}",
            "# HELP fastsasrec_queue_depth Requests waiting for the engine.",
            "# TYPE fastsasrec_queue_depth gauge",
            f"fastsasrec_queue_depth {server.batcher.depth}",
            "# HELP fastsasrec_unknown_items_total Session items not in the model's catalogue.",
            "# TYPE fastsasrec_unknown_items_total counter",
            f"fastsasrec_unknown_items_total {unknown}",
        ]
        for key, kind, text in (
                ("sessions", "gauge", "Sessions held by the server."),
                ("session_items", "gauge", "Items held in those sessions."),
                ("session_bytes", "gauge", "Memory of the held sessions (keys, items, entries).")):
            if key in gauges:
                lines += [f"# HELP fastsasrec_{key} {text}", f"# TYPE fastsasrec_{key} {kind}",
                          f"fastsasrec_{key} {gauges[key]}"]
        lines += [
            "# HELP fastsasrec_sessions_evicted_total Sessions dropped at the cap (least "
            "recently used; with a shared store, those this process evicted).",
            "# TYPE fastsasrec_sessions_evicted_total counter",
            f"fastsasrec_sessions_evicted_total {server.store.evicted}",
            "# HELP fastsasrec_reloads_total Model reloads by result.",
            "# TYPE fastsasrec_reloads_total counter",
            f'fastsasrec_reloads_total{{result="ok"}} {reloads["ok"]}',
            f'fastsasrec_reloads_total{{result="failed"}} {reloads["failed"]}',
            "# HELP fastsasrec_connections_closed_total Connections the server closed: no "
            "complete request head (header_timeout) or body (body_timeout) in time, shed at "
            "the connection cap while waiting for a head (shed), refused at the cap (refused).",
            "# TYPE fastsasrec_connections_closed_total counter",
        ]
        closed = dict(server.connections_closed)
        lines += [f'fastsasrec_connections_closed_total{{reason="{r}"}} {closed.get(r, 0)}'
                  for r in ("header_timeout", "body_timeout", "shed", "refused")]
        if loaded is not None:
            lines += ["# HELP fastsasrec_model_info The model being served.",
                      "# TYPE fastsasrec_model_info gauge",
                      f'fastsasrec_model_info{{model="{loaded.tag}",items="{loaded.model.n_items}"}} 1']
        return "\n".join(lines) + "\n"
