"""Rebuilds stale snapshots (snapshots.py) in the background, soon after the writes that made them
stale, so that most reads find their user's snapshot fresh and cost one lookup.

A read that comes before the refresher still answers right: it builds the profile itself. Each
round takes the users with the oldest pending changes, so several writes to one user between two
rounds cost one rebuild. A write through this process wakes the refresher (`poke`), which waits
`interval` for more writes to gather and then rebuilds; otherwise it looks for changes made
through other replicas every `idle` seconds, so an idle service costs next to nothing. Replicas
may rebuild the same user at once; the store keeps one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from bundlerec.errors import Unavailable
from bundlerec.profile.snapshot import SnapshotSettings
from bundlerec.profile.store import ProfileStore

log = logging.getLogger("bundlerec.profile")


class SnapshotRefresher:
    def __init__(
        self,
        store: ProfileStore,
        settings: SnapshotSettings,
        interval_seconds: float,
        batch: int,
        idle_seconds: float = 2.0,
    ) -> None:
        self.store = store
        self.settings = settings
        self.interval = interval_seconds
        self.batch = batch
        self.idle = max(idle_seconds, interval_seconds)
        self._poked = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        """A write through this process made snapshots stale."""
        self._poked.set()

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="profile-snapshot-refresher")

    async def refresh_once(self) -> int:
        """Rebuilds the snapshots of up to `batch` users with pending changes; how many."""
        users = await self.store.stale_users(self.batch)
        for user_id in users:
            if self._stopping.is_set():
                break
            await self.store.build_snapshot(user_id, self.settings, keep=True)
        return len(users)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                done = await self.refresh_once()
            except Unavailable:  # the database is away: reads rebuild what they need meanwhile
                done = 0
            except Exception:  # never let the loop die; the reads stay right without it
                log.exception("snapshot refresh failed")
                done = 0
            if done < self.batch:  # caught up: until a write here, or the next look for others'
                self._poked.clear()
                await _until(self._poked, self.idle)
                await _until(self._stopping, self.interval)  # let a burst of writes gather

    async def close(self) -> None:
        """Stops after the rebuild in progress: cancelling one inside its transaction could leave
        SQLite's writer lock with a connection nobody closes."""
        if self._task is None:
            return
        self._stopping.set()
        self._poked.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=30)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None


async def _until(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
