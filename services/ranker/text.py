"""Text vectors of items the model never saw, so a text model can score a brand-new item by its
title: asked of the candidate service (`GetTextVectors`: it embeds every item at upsert), cached.
The ranker never reads the candidate service's database.

Text is an improvement, not a requirement: when the catalogue cannot answer, unknown items are
scored from the UNKNOWN row alone, the failure is logged once, and the catalogue is left alone for
a few seconds rather than slowing every request down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc
import numpy as np

from bundlerec.v1 import candidate_pb2, candidate_pb2_grpc

log = logging.getLogger("bundlerec.ranker")

CHUNK = 1000  # ids per call: GetTextVectors' limit


class ItemTextSource(Protocol):
    async def text_vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The text vectors of those of `item_ids` that have one."""
        ...

    async def close(self) -> None: ...


class CandidateTextSource:
    """The candidate service's GetTextVectors, over a channel this source owns."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.stub = candidate_pb2_grpc.CandidateServiceStub(channel)

    async def text_vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(item_ids), CHUNK):
            request = candidate_pb2.GetTextVectorsRequest(item_ids=item_ids[start : start + CHUNK])
            for pb in (await self.stub.GetTextVectors(request)).vectors:
                found[pb.item_id] = np.asarray(pb.vector, np.float32)
        return found  # the caller (CachedItemText) bounds the time and handles failures

    async def close(self) -> None:
        await self.channel.close()


class CachedItemText:
    """An LRU cache (with expiry, so re-embedded or newly added items show up) in front of a source
    whose failures become "no text"."""

    def __init__(
        self,
        source: ItemTextSource,
        *,
        size: int = 100_000,
        ttl_seconds: float = 30.0,
        timeout_seconds: float = 0.5,
        pause_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.size = size
        self.ttl = ttl_seconds
        self.timeout = timeout_seconds
        self.pause = pause_seconds
        self.clock = clock
        self._cache: OrderedDict[str, tuple[float, np.ndarray | None]] = OrderedDict()
        self._paused_until = 0.0
        self._failing = False

    async def text_vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        now = self.clock()
        found: dict[str, np.ndarray] = {}
        missing = []
        for item_id in item_ids:
            hit = self._cache.get(item_id)
            if hit is None or now - hit[0] > self.ttl:
                missing.append(item_id)
                continue
            self._cache.move_to_end(item_id)
            if hit[1] is not None:
                found[item_id] = hit[1]
        if not missing or now < self._paused_until:
            return found
        try:
            async with asyncio.timeout(self.timeout):
                fetched = await self.source.text_vectors(missing)
        except Exception as error:  # unreachable, timed out, no such table...: score without text
            self._paused_until = now + self.pause
            if not self._failing:
                self._failing = True
                log.warning(
                    "catalogue unavailable: unknown items are scored without text",
                    extra={"fields": {"error": type(error).__name__}},
                )
            return found
        if self._failing:
            self._failing = False
            log.info("catalogue available again: unknown items are scored with their text")
        for item_id in missing:
            vector = fetched.get(item_id)
            self._cache[item_id] = (now, vector)
            self._cache.move_to_end(item_id)
            if vector is not None:
                found[item_id] = vector
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return found

    async def close(self) -> None:
        await self.source.close()
