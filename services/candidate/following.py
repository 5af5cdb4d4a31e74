"""The candidate service's background loops: following the catalogue's change feed (other
replicas' writes, imports, live statistics), learning live statistics from the profile service's
behaviour log, and following the ranker's models directory (a new model's vectors).

On PostgreSQL a write's NOTIFY (feed.CHANNEL) wakes the feed follower at once, and polling is
only the fallback for a lost listener connection; on SQLite, where writers are other processes on
the same file, polling is the only mechanism."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.engine import make_url

from bundlerec.candidate import feed, live, metrics, stats_store
from bundlerec.candidate.collaborative import ModelWatcher
from bundlerec.candidate.service import CandidateService

log = logging.getLogger("bundlerec.candidate")
LISTENING_POLL_FACTOR = 10  # while the listener is connected, poll this many times less often


class Followers:
    """Starts and stops the loops of one service."""

    def __init__(self, service: CandidateService) -> None:
        self.service = service
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._listening = False

    def follow_catalogue(self, poll_seconds: float, database_url: str) -> None:
        """Applies other writers' changes every `poll_seconds` (0: never), or when notified."""
        if poll_seconds <= 0:
            return
        self._start(self._follow_feed(poll_seconds), "candidate-feed-follower")
        if database_url.startswith("postgresql"):
            self._start(self._listen(database_url), "candidate-feed-listener")

    def learn_behaviour(self, source: live.BehaviourSource, poll_seconds: float, half_life_days: float) -> None:
        """Counts the profile service's behaviour log into the statistics, a batch at a time."""
        if poll_seconds > 0:
            self._start(self._learn(source, poll_seconds, half_life_days), "candidate-behaviour-learner")

    def follow_models(self, watcher: ModelWatcher, interval: float) -> None:
        """Every `interval` seconds (0: never), swaps in the collaborative vectors of a newer model."""
        if interval > 0:
            self._start(self._follow_models(watcher, interval), "candidate-model-watcher")

    def _start(self, loop: object, name: str) -> None:
        self._tasks.append(asyncio.create_task(loop, name=name))  # type: ignore[arg-type]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _follow_feed(self, poll_seconds: float) -> None:
        while True:
            timeout = poll_seconds * (LISTENING_POLL_FACTOR if self._listening else 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                while await self.service.follow_catalogue():
                    pass  # until the feed has nothing newer
            except Exception as error:  # the follower must outlive a bad poll (a lost connection...)
                log.warning("catalogue feed poll failed", extra={"fields": {"error": type(error).__name__}})

    async def _listen(self, database_url: str) -> None:
        import psycopg

        conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        backoff = 0.5
        while True:
            try:
                # keepalives: a half-open connection must fail, not leave the follower believing it listens
                keepalives = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
                connect = psycopg.AsyncConnection.connect(conninfo, autocommit=True, **keepalives)
                async with await connect as conn:
                    await conn.execute(f"LISTEN {feed.CHANNEL}")
                    self._listening, backoff = True, 0.5
                    self._wake.set()  # anything written while not listening
                    async for _ in conn.notifies():
                        self._wake.set()
            except Exception as error:  # the listener must outlive anything: polling covers meanwhile
                fields = {"error": type(error).__name__}
                log.warning("catalogue feed listener lost; polling meanwhile", extra={"fields": fields})
            finally:
                self._listening = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _follow_models(self, watcher: ModelWatcher, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.service.check_model(watcher)
            except Exception as error:  # the watcher must outlive a bad poll (a vanished directory...)
                log.warning("model watcher poll failed", extra={"fields": {"error": type(error).__name__}})

    async def _learn(self, source: live.BehaviourSource, poll_seconds: float, half_life_days: float) -> None:
        while True:
            try:
                while counted := await learn_once(self.service, source, half_life_days):
                    if counted < BATCH:
                        break  # else a full batch: more may be waiting
            except Exception as error:  # the profile service down, a lost connection: try again later
                log.warning("behaviour log read failed", extra={"fields": {"error": type(error).__name__}})
            await asyncio.sleep(poll_seconds)


BATCH = 5000  # behaviour log entries read at a time


async def learn_once(service: CandidateService, source: live.BehaviourSource, half_life_days: float) -> int:
    """One batch of the behaviour log into the statistics, and this replica's index (the others
    follow through the change feed); the number of entries counted: 0 when there was nothing new,
    or when another replica counted them first."""
    engine = service.store.engine
    state = await stats_store.live_state(engine)
    observed, next_cursor = await source.read(state.cursor, BATCH)
    if not observed:
        return 0
    epoch = state.epoch_s if state.epoch_s is not None else int(min(o.occurred_s for o in observed))
    members = {bundle_id: bundle.item_ids for bundle_id, bundle in service.index.bundles.items()}
    counts = live.increments(observed, members, epoch_s=epoch, half_life_days=half_life_days)
    if not await service.count_behaviour(counts, state, next_cursor, epoch):
        return 0
    metrics.BEHAVIOUR_COUNTED.inc(len(observed))
    return len(observed)
