"""Every page served goes to the exposure log (the profile service's ExposureService), without the
page ever waiting for it.

A page hands its record to `ExposureRecorder.record`, which only puts it on a bounded in-memory
queue (no I/O, no await: well under a millisecond). A background task sends the queue in batches,
retrying a failed batch with backoff while it has room. What cannot be kept is counted, never
raised into a page: a full queue (the log is down or slower than traffic) drops the newest record
(`bundlerec_gateway_exposures_dropped_total{reason="queue_full"}`), and a batch the log refuses
as invalid, or still cannot take after its retries, is dropped as "refused" or "failed". Pages
are idempotent by recommendation id, so a retried batch is never counted twice.

Erasure: ForgetUser and consent withdrawal first flush the queue (`flush`), so a page this
replica served before the erasure cannot reach the log after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bundlerec.gateway import metrics
from bundlerec.gateway.model import Context, Recommendation

log = logging.getLogger("bundlerec.gateway")


@dataclass(frozen=True, slots=True)
class ExposedBundle:
    position: int
    bundle_id: str  # "" for a bundle built for the request
    item_ids: tuple[str, ...]
    item_prices: tuple[float, ...]  # 0.0 where unknown
    kind: str  # "curated", "built", "featured", "explored"


@dataclass(frozen=True, slots=True)
class PageRecord:
    recommendation_id: str
    requester_id: str  # the user id, or the session id of an anonymous visitor
    anonymous: bool
    variant: str
    variant_share: float
    model_version: str
    placement: str
    served_at_us: int
    bundles: tuple[ExposedBundle, ...]
    personalized: bool
    degraded: bool
    segment: str = ""  # what the page was about (exploration.page_segment)


def page_record(
    page: Recommendation, requester_id: str, anonymous: bool, share: float, context: Context, segment: str = ""
) -> PageRecord:
    return PageRecord(
        recommendation_id=page.recommendation_id,
        requester_id=requester_id,
        anonymous=anonymous,
        variant=page.variant,
        variant_share=share,
        model_version=page.model_version,
        placement=context.placement.value,
        served_at_us=time.time_ns() // 1000,
        bundles=tuple(
            ExposedBundle(
                n,
                b.bundle_id,
                tuple(i.item_id for i in b.items),
                tuple(i.price or 0.0 for i in b.items),
                b.kind,
            )
            for n, b in enumerate(page.bundles)
        ),
        personalized=page.personalized,
        degraded=bool(page.degraded),
        segment=segment,
    )


class RecordRefused(Exception):
    """The log refused the batch as invalid: sending it again would not help."""


class ExposureSink(Protocol):
    async def record(self, pages: Sequence[PageRecord], seconds: float) -> None:
        """Keeps the batch, or raises (RecordRefused: never retry it; anything else: retry)."""
        ...


class ExposureRecorder:
    def __init__(
        self,
        sink: ExposureSink,
        *,
        max_queued: int = 10_000,
        batch: int = 500,
        flush_seconds: float = 1.0,
        timeout_seconds: float = 5.0,
        retries: int = 3,
    ) -> None:
        self.sink = sink
        self.batch = batch
        self.flush_seconds = flush_seconds
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        self._queue: asyncio.Queue[PageRecord] = asyncio.Queue(max_queued)
        self._task: asyncio.Task[None] | None = None
        self._sending = asyncio.Lock()
        self._arrived = asyncio.Event()

    def record(self, page: PageRecord) -> None:
        """Queues the page for the log; never blocks, never raises."""
        try:
            self._queue.put_nowait(page)
        except asyncio.QueueFull:
            metrics.EXPOSURES_DROPPED.labels("queue_full").inc()
            return
        self._arrived.set()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def flush(self) -> None:
        """Sends everything queued now (each batch with its retries)."""
        async with self._sending:
            while not self._queue.empty():
                await self._send(self._take())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), self.timeout_seconds)

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            await asyncio.sleep(self.flush_seconds)  # let a batch gather
            async with self._sending:  # pages leave the queue only under the lock (flush waits for them)
                self._arrived.clear()
                await self._send(self._take())
                while self._queue.qsize() >= self.batch:  # behind: no pause between full batches
                    await self._send(self._take())
                if not self._queue.empty():
                    self._arrived.set()

    def _take(self) -> list[PageRecord]:
        pages: list[PageRecord] = []
        while len(pages) < self.batch and not self._queue.empty():
            pages.append(self._queue.get_nowait())
        return pages

    async def _send(self, pages: list[PageRecord]) -> None:
        if not pages:
            return
        _count(pages)  # here, not in the page's path
        for attempt in range(self.retries + 1):
            try:
                await self.sink.record(pages, self.timeout_seconds)
                return
            except RecordRefused as refused:
                log.error("exposure batch refused", extra={"fields": {"pages": len(pages), "reason": str(refused)}})
                metrics.EXPOSURES_DROPPED.labels("refused").inc(len(pages))
                return
            except Exception as error:  # the log is down or slow: back off, retry while there is room
                if attempt == self.retries:
                    fields = {"pages": len(pages), "reason": str(error)}
                    log.warning("exposure batch not recorded", extra={"fields": fields})
                    metrics.EXPOSURES_DROPPED.labels("failed").inc(len(pages))
                    return
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))


class NoExposures:
    """Recording off (the setting): pages are not logged."""

    def record(self, page: PageRecord) -> None:
        return None

    def start(self) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None


class ExposureLog(Protocol):
    def record(self, page: PageRecord) -> None: ...
    def start(self) -> None: ...
    async def flush(self) -> None: ...
    async def close(self) -> None: ...


def _count(pages: list[PageRecord]) -> None:
    kinds: Counter[tuple[str, str]] = Counter()
    for (variant, placement), n in Counter((p.variant, p.placement) for p in pages).items():
        metrics.EXPOSURES.labels(variant, placement).inc(n)
    for page in pages:
        kinds.update((page.variant, b.kind) for b in page.bundles)
    for (variant, kind), n in kinds.items():
        metrics.EXPOSED_BUNDLES.labels(variant, kind).inc(n)
