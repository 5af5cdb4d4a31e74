"""The fallback when the candidate service is down: the popular bundles and items of the shop,
with their catalogue data, refreshed by the gateway every few seconds while the service answers.

A failed refresh keeps the previous list, so the fallback survives the very outage it is for; a
gateway that never reached the candidate service has an empty list (and the page is empty,
degraded, not an error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from bundlerec.gateway.model import PageItem, Retrieved
from bundlerec.gateway.ports import CandidateFilter, CandidatePort, CandidateQuery, StageFailed
from bundlerec.sources import Source

log = logging.getLogger("bundlerec.gateway")


class PopularCache:
    def __init__(self, candidates: CandidatePort, limit: int = 100, timeout_seconds: float = 2.0) -> None:
        self.candidates = candidates
        self.limit = limit
        self.timeout_seconds = timeout_seconds
        self._retrieved = Retrieved((), ())
        self._catalogue: Mapping[str, PageItem] = {}
        self._primed = False

    @property
    def primed(self) -> bool:
        """Whether a refresh ever succeeded (until then the fallback has nothing to show)."""
        return self._primed

    def snapshot(self) -> tuple[Retrieved, Mapping[str, PageItem]]:
        return self._retrieved, self._catalogue

    async def refresh(self) -> bool:
        query = CandidateQuery(
            item_limit=self.limit,
            bundle_limit=self.limit,
            filter=CandidateFilter(in_stock_only=True),
            sources=(Source.POPULARITY,),
        )
        try:
            found = await self.candidates.retrieve(query, self.timeout_seconds)
            ids = list(dict.fromkeys(i for c in (*found.items, *found.bundles) for i in c.item_ids or (c.target_id,)))
            catalogue = await self.candidates.items(ids, self.timeout_seconds)
        except StageFailed as failure:
            log.warning("popular bundles not refreshed", extra={"fields": {"reason": failure.reason}})
            return False
        self._retrieved, self._catalogue = found, dict(catalogue)
        self._primed = True
        return True

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as error:  # the loop must outlive anything: readiness waits on it
                log.error("popular bundles refresh failed", extra={"fields": {"error": type(error).__name__}})
            with contextlib.suppress(TimeoutError):  # until the first success, retry soon: readiness waits on it
                await asyncio.wait_for(stop.wait(), interval if self._primed else min(interval, 1.0))
