"""Micro-batching: concurrent Rank requests share one onnxruntime run.

A request waits in a queue; one worker takes up to `max_batch` of them, waiting at most `max_wait`
after the oldest was queued (so a request that queued while the previous run was busy does not wait
again), pads them to a common shape and runs the model once on a dedicated thread. Requests that
arrive while a run is busy form the next batch. Padding is exact, not approximate: padded sequence
steps and candidate members are masked inside the model, padded candidates' scores are dropped, and
each request's extra_text rows are renumbered into one shared table. Requests for different model
versions go into separate runs, each on the model the request was encoded for, so a version swapped
in meanwhile never mixes with it.

A request that arrives at a quiet service (nothing on its way for QUIET_SECONDS before it) and is
still alone when encoded runs on the event loop instead: there is nothing to overlap it with, and
the trip to the inference thread and back (two thread wake-ups) costs more CPU than the run saves.
Under any steady concurrency the next request arrives before that quiet gap, so runs overlap the
loop's decoding as above; only small requests run inline, so the loop is never held for long.

One inference thread: on CPU onnxruntime already uses every core it is given inside a run, and a
second concurrent run would only fight it for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from bundlerec.ranker import metrics
from bundlerec.ranker.encoding import EncodedRequest
from bundlerec.ranker.model import LoadedModel
from bundlerec.ranking.features import PAD

log = logging.getLogger("bundlerec.ranker")

Output = tuple[np.ndarray, np.ndarray]  # one request's scores [N] and user vector [d]
INLINE_MAX_CANDIDATES = 256  # a request alone with more runs on the inference thread, as in a batch
QUIET_SECONDS = 0.005  # longer than a loaded service ever sits idle between requests


@dataclass(eq=False)
class _Pending:
    model: LoadedModel
    request: EncodedRequest
    future: asyncio.Future[Output]
    queued_at: float


class MicroBatcher:
    def __init__(self, max_batch: int, max_wait_seconds: float) -> None:
        self.max_batch = max_batch
        self.max_wait = max_wait_seconds
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ranker-inference")
        self._worker: asyncio.Task[None] | None = None
        self._on_the_way = 0  # requests between expecting() and their result (being checked or encoded)
        self._idle_since = 0.0  # when the last request on its way got its result
        self._quiet_arrival = False  # the request now alone arrived at a quiet service
        self._busy = False  # the worker holds a batch (gathering it, or its run is under way)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="ranker-batcher")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while not self._queue.empty():
            self._queue.get_nowait().future.cancel()
        self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Wraps a request's whole way, from arrival to result, so `submit` knows whether it has company."""
        now = time.monotonic()
        if self._on_the_way == 0:
            self._quiet_arrival = now - self._idle_since >= QUIET_SECONDS
        self._on_the_way += 1
        try:
            yield
        finally:
            self._on_the_way -= 1
            if self._on_the_way == 0:
                self._idle_since = time.monotonic()

    async def submit(self, model: LoadedModel, request: EncodedRequest) -> Output:
        if self._alone() and request.cand_bundles.shape[0] <= INLINE_MAX_CANDIDATES:
            metrics.QUEUE_WAIT.observe(0.0)
            return run_batch(model, [request])[0]
        loop = asyncio.get_running_loop()
        pending = _Pending(model, request, loop.create_future(), loop.time())
        self._queue.put_nowait(pending)
        return await pending.future

    def _alone(self) -> bool:
        return self._on_the_way == 1 and self._quiet_arrival and not self._busy and self._queue.empty()

    async def _work(self) -> None:
        while True:
            first = await self._queue.get()
            self._busy = True  # until this batch's results are out, newcomers queue for the next one
            try:
                batch = await self._gather(first)
                live = [p for p in batch if not p.future.done()]  # callers that gave up (deadline) are dropped
                groups: dict[int, list[_Pending]] = {}
                for pending in live:
                    groups.setdefault(id(pending.model), []).append(pending)
                for group in groups.values():
                    await self._run(group)
            finally:
                self._busy = False

    async def _gather(self, first: _Pending) -> list[_Pending]:
        """`first` and whatever joins it: all that queued meanwhile, and more up to max_wait after it queued."""
        loop = asyncio.get_running_loop()
        batch = [first]
        deadline = first.queued_at + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    batch.append(await self._queue.get())
            except TimeoutError:
                break
        return batch

    async def _run(self, group: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        for pending in group:
            metrics.QUEUE_WAIT.observe(loop.time() - pending.queued_at)
        try:
            outputs = await loop.run_in_executor(self._executor, run_batch, group[0].model, [p.request for p in group])
        except Exception as error:  # the callers get it (INTERNAL, logged by the interceptor)
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        for pending, output in zip(group, outputs, strict=True):
            if not pending.future.done():
                pending.future.set_result(output)


def run_batch(model: LoadedModel, requests: list[EncodedRequest]) -> list[Output]:
    """Pads `requests` to one shape, runs the model once, and splits the outputs back."""
    started = time.perf_counter()
    sequence, cand_items, cand_bundles, extra_text = pad(model, requests)
    scores, users = model.run(sequence, cand_items, cand_bundles, extra_text)
    metrics.INFERENCE_SECONDS.observe(time.perf_counter() - started)
    metrics.BATCH_SIZE.observe(len(requests))
    return [(scores[b, : len(r.cand_bundles)].copy(), users[b].copy()) for b, r in enumerate(requests)]


def pad(
    model: LoadedModel, requests: list[EncodedRequest]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """[B, 5, L] (left-padded: the newest step stays last), [B, N, M], [B, N], shared extra_text."""
    length = max(r.sequence.shape[1] for r in requests)
    count = max(r.cand_items.shape[0] for r in requests)
    width = max(r.cand_items.shape[1] for r in requests)
    sequence = np.full((len(requests), 5, length), PAD, np.int64)
    cand_items = np.full((len(requests), count, width), PAD, np.int64)
    cand_bundles = np.full((len(requests), count), PAD, np.int64)
    rows = model.num_item_rows
    extra: list[np.ndarray] = []
    offset = 0
    for b, r in enumerate(requests):
        seq, items = r.sequence, r.cand_items
        if r.extra_text is not None and offset:  # this request's extra rows follow the earlier requests'
            seq = seq.copy()
            seq[0] = np.where(seq[0] >= rows, seq[0] + offset, seq[0])
            items = np.where(items >= rows, items + offset, items)
        sequence[b, :, length - seq.shape[1] :] = seq
        cand_items[b, : items.shape[0], : items.shape[1]] = items
        cand_bundles[b, : r.cand_bundles.shape[0]] = r.cand_bundles
        if r.extra_text is not None:
            extra.append(r.extra_text)
            offset += len(r.extra_text)
    return sequence, cand_items, cand_bundles, (np.concatenate(extra) if extra else None)
