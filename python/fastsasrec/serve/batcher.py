"""Concurrent asks gathered into one scoring call: a request that finds the engine idle
runs at once (on the loop's thread); those that arrive while a batch runs form the next
one (``max_batch`` sessions at most), which may wait up to ``max_wait_ms`` for company
while requests keep coming, and runs on one worker thread with the GIL released."""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fastsasrec.serve.metrics import Metrics

if TYPE_CHECKING:  # pragma: no cover
    from fastsasrec.serve.server import Loaded, Server


@dataclasses.dataclass
class _Ask:
    """One session to score: original ids, how many items, what not to recommend.
    ``result``: (ids, scores, fallback), fallback true when the session had no known item
    and the answer is the most popular items."""

    session: List[Any]
    n: int
    exclude: List[Any]
    exclude_seen: bool
    loaded: Any = None  # the model that answers it (read once, when the request came)
    future: Any = None
    result: Any = None


def _encode(state: Any, ids: Sequence[Any], str_ids: bool) -> np.ndarray:
    if not ids:
        return np.zeros(0, dtype=np.int32)
    arr = np.array(ids, dtype=str) if str_ids else np.array(ids, dtype=np.int64)
    return state.encode(arr)


def score(loaded: "Loaded", asks: Sequence[_Ask], deny: Sequence[Any], metrics: Metrics) -> None:
    """Fills each ask's result with (ids, scores, fallback) from one engine call for every
    session with a known item (the most popular items for the others), each session's
    exclusions its own (its items with exclude_seen, its exclude list, the denylist)."""
    model = loaded.model
    state = model._fitted()
    str_ids = state.item_ids.dtype.kind == "U"
    V = int(state.item_ids.size)
    cached = state.cache.get("denylist")  # encoded once per denylist and model
    if cached is not None and cached[0] is deny:
        deny_int = cached[1]
    else:
        deny_int = _encode(state, list(deny), str_ids)
        deny_int = deny_int[deny_int > 0]
        state.cache["denylist"] = (deny, deny_int)
    warm: List[Tuple[_Ask, np.ndarray, np.ndarray]] = []
    unknown = 0
    for a in asks:
        internal = _encode(state, a.session, str_ids)
        known = internal[internal > 0]
        unknown += int(internal.size - known.size)
        extra = _encode(state, a.exclude, str_ids)
        parts = [deny_int, extra[extra > 0]]
        if a.exclude_seen:
            parts.append(known)
        excl = np.concatenate(parts).astype(np.int32) if any(p.size for p in parts) \
            else np.zeros(0, dtype=np.int32)
        n = min(a.n, V)
        if known.size == 0:
            ids, scores = state.popular(n, excl)
            a.result = (state.item_ids[ids - 1], scores, True)
        else:
            warm.append((a, known[-state.config["max_seq"]:], excl))
    if unknown:
        with metrics.lock:
            metrics.unknown_items += unknown
    if not warm:
        return
    K = min(max(a.n for a, _, _ in warm), V)
    items = np.concatenate([k for _, k, _ in warm]).astype(np.int32)
    offsets = np.concatenate(([0], np.cumsum([k.size for _, k, _ in warm]))).astype(np.int64)
    excl = np.concatenate([e for _, _, e in warm]).astype(np.int32)
    excl_off = np.concatenate(([0], np.cumsum([e.size for _, _, e in warm]))).astype(np.int64)
    ids, scores = state.engine.recommend(items, offsets, K, excl, excl_off)  # GIL released
    for row, (a, _, _) in enumerate(warm):
        r_ids, r_sc = ids[row, : a.n], scores[row, : a.n]
        valid = r_ids > 0
        a.result = (state.item_ids[r_ids[valid] - 1], r_sc[valid], False)


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
                self.last_size = len(batch)
                deny = self.server.denylist
                # Each request is answered by the model it was tagged with: a batch that
                # spans a reload makes one engine call per model.
                groups: Dict[int, List[_Ask]] = {}
                for a in batch:
                    groups.setdefault(id(a.loaded), []).append(a)
                for group in groups.values():
                    with self.server.metrics.lock:
                        self.server.metrics.batch.observe(len(group))
                    try:
                        if len(batch) == 1 and not self.queue:
                            # A lone request: answered on the loop's thread, without two
                            # thread hops (nothing else is waiting for the loop meanwhile).
                            score(group[0].loaded, group, deny, self.server.metrics)
                        else:
                            await loop.run_in_executor(self.pool, score, group[0].loaded, group,
                                                       deny, self.server.metrics)
                    except Exception as e:  # noqa: BLE001 - answered as the requests' 500
                        for a in group:
                            if not a.future.done():
                                a.future.set_exception(e)
                        continue
                    for a in group:
                        if not a.future.done():
                            a.future.set_result(None)
