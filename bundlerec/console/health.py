"""Degradations per stage over the last minutes, from the gateway's own Prometheus counters: the
console scrapes its endpoint on a period and keeps the samples of the window (counters only, no
shopper data), so a page can say how many calls each stage failed, and why, since a moment ago."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import deque
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

DEGRADED = "bundlerec_gateway_degraded"  # {stage, reason}
PAGES = "bundlerec_gateway_pages"


@dataclass(frozen=True)
class Sample:
    at: float
    degraded: dict[tuple[str, str], float]  # (stage, reason) → count so far
    pages: float


def parse(text: str, at: float) -> Sample:
    degraded: dict[tuple[str, str], float] = {}
    pages = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{DEGRADED}_total":
                key = (sample.labels.get("stage", ""), sample.labels.get("reason", ""))
                degraded[key] = degraded.get(key, 0.0) + sample.value
            elif sample.name == f"{PAGES}_total":
                pages += sample.value
    return Sample(at, degraded, pages)


class GatewayMetrics:
    """The scrapes of the last `window` seconds, taken every `period` seconds."""

    def __init__(self, url: str, period: float = 10.0, window: float = 600.0) -> None:
        self.url, self.period, self.window = url, period, window
        self.samples: deque[Sample] = deque()
        self.error = "" if url else "no gateway metrics address is set (BUNDLEREC_CONSOLE_GATEWAY_METRICS_URL)"

    async def scrape(self) -> None:
        if not self.url:
            return
        try:
            text = await asyncio.to_thread(_get, self.url)
        except OSError as error:
            self.error = f"{self.url}: {error}"
            return
        now = time.monotonic()
        self.error = ""
        self.samples.append(parse(text, now))
        while self.samples and self.samples[0].at < now - self.window:
            self.samples.popleft()

    async def run(self) -> None:
        while True:
            await self.scrape()
            await asyncio.sleep(self.period)

    def recent(self) -> tuple[float, float, dict[tuple[str, str], float]]:
        """(seconds covered, pages served, degradations by (stage, reason)) between the oldest and
        the newest sample of the window."""
        if len(self.samples) < 2:
            return 0.0, 0.0, {}
        first, last = self.samples[0], self.samples[-1]
        changes = {key: value - first.degraded.get(key, 0.0) for key, value in last.degraded.items()}
        return last.at - first.at, last.pages - first.pages, {k: v for k, v in changes.items() if v > 0}


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as reply:
        return reply.read().decode("utf-8", "replace")
