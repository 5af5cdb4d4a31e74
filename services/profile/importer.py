"""The profile service's part of `bundlerec import`: a dataset's events, in batches whose event ids
derive from the dataset, so an interrupted import can simply be run again (nothing is counted
twice). Called by the `bundlerec import` command (bundlerec/commands/importer.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

from bundlerec.datasets.reader import Dataset
from bundlerec.profile import model
from bundlerec.profile.service import snapshot_settings
from bundlerec.profile.settings import ProfileSettings
from bundlerec.profile.store import SqlProfileStore

Say = Callable[[str], None]
EVENT_BATCH = 1000


async def import_events(dataset: Dataset, database_url: str, key_secret: bytes, say: Say) -> tuple[int, int, int]:
    """(events recorded, already there, anonymized) in the profile store at `database_url`, with
    the consent a user who never set it gets by default."""
    # snapshots made under the default settings; a service configured otherwise rebuilds them on read
    snapshots = snapshot_settings(ProfileSettings(database_url=database_url))
    store = await SqlProfileStore.open(database_url, snapshots, migrate=True, key_secret=key_secret)
    default = model.Consent(personalization=True, sensitive_categories=False)
    totals = [0, 0, 0]
    try:
        now = time.time_ns() // 1000
        for start in range(0, len(dataset.events), EVENT_BATCH):
            batch = [
                model.Event(
                    event_id=f"import:{dataset.info.name}:{start + i}",
                    user_id=e.user_id,
                    type=model.EventType(e.event_type),
                    target_type=model.TargetType(e.target_type),
                    target_id=e.target_id,
                    occurred_at_us=e.timestamp * 1_000_000,
                    value=e.value,
                    category=dataset.items[e.target_id].category if e.target_type == "item" else "",
                )
                for i, e in enumerate(dataset.events[start : start + EVENT_BATCH])
            ]
            # the catalogue import counts this history into its statistics: not into the live log too
            result = await store.record(batch, default=default, now_us=now, log_behaviour=False)
            totals[0] += result.recorded
            totals[1] += result.duplicates
            totals[2] += result.anonymized
            done = start + len(batch)
            if done % (EVENT_BATCH * 20) == 0 or done == len(dataset.events):
                say(f"  events: {done:,} / {len(dataset.events):,}")
    finally:
        await store.close()
    return totals[0], totals[1], totals[2]
