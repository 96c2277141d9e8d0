"""Concurrent asks gathered into one scoring call: a request that finds the engine idle
runs at once (on the loop's thread); those that arrive while a batch runs form the next
one (``max_batch`` sessions at most), which may wait up to ``max_wait_ms`` for company
while requests keep coming, and runs on one worker thread with the GIL released."""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from fastsasrec.serve.metrics import Metrics

if TYPE_CHECKING:  # pragma: no cover
    from fastsasrec.serve.server import Loaded, Server


@dataclasses.dataclass
class _Ask:
    """One session to score: original ids, how many items, what not to recommend.
    ``result``: (ids, scores, fallback, names), fallback true when the session had no known
    item and the answer is the most popular items; names None when the model has none."""

    session: List[Any]
    n: int
    exclude: List[Any]
    exclude_seen: bool
    loaded: Any = None  # the model that answers it (read once, when the request came)
    future: Any = None
    result: Any = None
    candidates: Optional[Tuple[Any, ...]] = None  # only these ranked (None: the catalogue)


def score(loaded: "Loaded", asks: Sequence[_Ask], deny: Sequence[Any], metrics: Metrics) -> None:
    """Fills each ask's result with (ids, scores, fallback, names) from one call of the model's
    recommend_batch (recommend for a lone ask) with the largest n, each row cut to its
    own n; each session's exclusions its own (its items with exclude_seen, its exclude
    list) and the denylist's."""
    model = loaded.model
    deny = deny if deny else None  # the same object while the denylist is unchanged
    cand = asks[0].candidates  # one set for all (the batcher groups asks by it)
    if len(asks) == 1:
        a = asks[0]
        got = model.recommend(a.session, n=a.n, exclude_seen=a.exclude_seen,
                              exclude=a.exclude or None, denylist=deny, candidates=cand)
        a.result = (got[0], got[1], bool(got.fallback), got.names)
        _count_unknown(metrics, got.unknown)
        return
    seen = {a.exclude_seen for a in asks}
    if len(seen) == 1:  # one setting for all: the scorer leaves each session's items out
        exclude_seen = seen.pop()
        exclude = [a.exclude for a in asks] if any(a.exclude for a in asks) else None
    else:  # mixed: each session that leaves its items out lists them among its exclusions
        exclude_seen = False
        exclude = [a.session + a.exclude if a.exclude_seen else a.exclude for a in asks]
    got = model.recommend_batch([a.session for a in asks], n=max(a.n for a in asks),
                                exclude_seen=exclude_seen, exclude=exclude, denylist=deny,
                                candidates=cand)
    ids, scores, fallback, names = got[0], got[1], got.fallback, got.names
    _count_unknown(metrics, int(got.unknown.sum()))
    empty = "" if ids.dtype.kind == "U" else -1  # the id of an empty slot
    for row, a in enumerate(asks):
        r_ids, r_sc = ids[row, : a.n], scores[row, : a.n]
        r_names = names[row, : a.n] if names is not None else None
        valid = r_ids != empty
        if not valid.all():
            r_ids, r_sc = r_ids[valid], r_sc[valid]
            r_names = r_names[valid] if r_names is not None else None
        a.result = (r_ids, r_sc, bool(fallback[row]), r_names)


def _count_unknown(metrics: Metrics, unknown: int) -> None:
    metrics.unknown(unknown)


class Batcher:
    """Gathers concurrent asks into one ``score`` call run on one worker thread."""

    def __init__(self, server: "Server", max_batch: int, max_wait_ms: float):
        self.server, self.max_batch, self.max_wait = server, max_batch, max_wait_ms / 1e3
        self.queue: List[_Ask] = []
        self.wake: Optional[asyncio.Event] = None
        self.task: Optional[asyncio.Task] = None
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fastsasrec-engine")
        self.last_size = 1

    @property
    def depth(self) -> int:
        return len(self.queue)

    def start(self) -> None:
        self.wake = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.pool.shutdown(wait=True)

    async def submit(self, asks: List[_Ask]) -> None:
        loop = asyncio.get_running_loop()
        for a in asks:
            a.future = loop.create_future()
            self.queue.append(a)
        self.server.metrics.queue_depth.set(len(self.queue))
        self.wake.set()
        for a in asks:
            await a.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                # Under load (the last batch had company) wait a moment for more to come.
                if self.last_size > 1 and len(self.queue) < self.max_batch and self.max_wait > 0:
                    deadline = loop.time() + self.max_wait
                    while len(self.queue) < self.max_batch and loop.time() < deadline:
                        self.wake.clear()
                        try:
                            await asyncio.wait_for(self.wake.wait(), deadline - loop.time())
                        except asyncio.TimeoutError:
                            break
                batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch:]
                self.server.metrics.queue_depth.set(len(self.queue))
                self.last_size = len(batch)
                deny = self.server.denylist
                # Each request is answered by the model it was tagged with: a batch that
                # spans a reload makes one engine call per model.
                # Asks that rank only some candidates share a call with those ranking
                # the same ones.
                groups: Dict[Any, List[_Ask]] = {}
                for a in batch:
                    groups.setdefault((id(a.loaded), a.candidates), []).append(a)
                for group in groups.values():
                    self.server.metrics.batch.observe(len(group))
                    # A lone request is answered on the loop's thread, without two thread
                    # hops (nothing else is waiting for the loop meanwhile).
                    lone = len(batch) == 1 and not self.queue
                    error = await self._score(group, deny, lone)
                    if error is not None and len(group) > 1:
                        # One session the model refuses must not fail the others: each alone.
                        for a in group:
                            a.result = None
                            e = await self._score([a], deny, False)
                            if e is not None and not a.future.done():
                                a.future.set_exception(e)
                    elif error is not None:
                        group[0].future.set_exception(error)
                    for a in group:
                        if not a.future.done():
                            a.future.set_result(None)

    async def _score(self, group: List[_Ask], deny: Sequence[Any], lone: bool) -> Optional[Exception]:
        """Scores ``group``; the exception it raised, if any (answered as a 500)."""
        try:
            if lone:
                score(group[0].loaded, group, deny, self.server.metrics)
            else:
                await asyncio.get_running_loop().run_in_executor(
                    self.pool, score, group[0].loaded, group, deny, self.server.metrics)
        except Exception as e:  # noqa: BLE001 - answered as the requests' 500
            return e
        return None
