"""`bundlerec import DIR`: loads a dataset in the import format (docs/import-format.md) into the
catalogue store and the profile store, showing progress and a summary.

The whole dataset is validated first (bad rows are reported with file and line, then rejected or
skipped as --on-error says), so nothing is half-imported because of bad data. The catalogue —
items with their text embeddings, bundles, popularity and co-occurrence — is written in one
transaction. Events go to the profile store in batches with ids derived from the dataset, so
re-running an import that was interrupted records each event once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bundlerec.candidate import model as catalogue
from bundlerec.candidate.catalogue import CatalogueStore
from bundlerec.candidate.statistics import BehaviourStatistics, Interaction, behaviour_statistics
from bundlerec.datasets.reader import Dataset, read_dataset
from bundlerec.profile import model as profile
from bundlerec.profile.service import snapshot_settings
from bundlerec.profile.settings import ProfileSettings
from bundlerec.profile.store import SqlProfileStore

Say = Callable[[str], None]
EVENT_BATCH = 1000


@dataclass(frozen=True)
class ImportTargets:
    catalogue_url: str
    profile_url: str | None  # None: do not import events into the profile store
    encoder_dir: str
    profile_key_secret: bytes = b""


async def import_dataset(path: str, targets: ImportTargets, *, on_error: str = "reject", say: Say = print) -> dict:
    from bundlerec.encoder.runtime import TextEncoder, item_text

    started = time.monotonic()
    dataset = read_dataset(path, on_error=on_error, progress=lambda name, rows: say(f"  reading {name}: {rows:,} rows"))  # type: ignore[arg-type]
    say(f"read {path}: {len(dataset.items):,} items, {len(dataset.bundles):,} bundles, {len(dataset.events):,} events")
    if dataset.error_count:
        say(f"skipped {dataset.error_count:,} bad rows; the first ones:")
        for error in dataset.errors[:10]:
            say(f"  {error}")

    encoder = TextEncoder(targets.encoder_dir)
    items = [
        catalogue.Item(
            item_id=it.item_id,
            title=it.title,
            category=it.category,
            brand=it.brand,
            price=it.price,
            attributes=it.attributes,
        )
        for it in dataset.items.values()
    ]
    say(f"embedding {len(items):,} item texts with the sentence encoder...")
    vectors = encoder.encode([item_text(it.title, it.category, it.brand) for it in items])
    statistics = dataset_statistics(dataset)
    bundles = [catalogue.Bundle(b.bundle_id, b.item_ids, b.title) for b in dataset.bundles.values()]
    store = await CatalogueStore.open(targets.catalogue_url, migrate=True)
    try:
        inserted, updated = await store.import_catalogue(items, vectors, bundles, statistics, time.time_ns() // 1000)
    finally:
        await store.close()
    say(
        f"catalogue: {inserted:,} items new, {updated:,} replaced, {len(bundles):,} bundles, "
        f"{len(statistics.item_pairs):,} item and {len(statistics.bundle_pairs):,} bundle co-occurrence pairs"
    )

    recorded = duplicates = anonymized = 0
    if targets.profile_url:
        recorded, duplicates, anonymized = await _import_events(dataset, targets, say)
    summary = {
        "items": len(items),
        "bundles": len(bundles),
        "events": len(dataset.events),
        "events_recorded": recorded,
        "events_already_there": duplicates,
        "events_anonymized": anonymized,
        "rows_skipped": dataset.error_count,
        "seconds": round(time.monotonic() - started, 1),
    }
    say("done: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in summary.items()))
    return summary


def dataset_statistics(dataset: Dataset) -> BehaviourStatistics:
    """Popularity and co-occurrence from a dataset's events (timestamps decay only when Unix)."""
    interactions = [
        Interaction(e.user_id, e.event_type, e.target_type == "bundle", e.target_id, e.timestamp)
        for e in dataset.events
    ]
    members = {b.bundle_id: b.item_ids for b in dataset.bundles.values()}
    return behaviour_statistics(interactions, members, unix_time=dataset.info.timestamps == "unix")


async def _import_events(dataset: Dataset, targets: ImportTargets, say: Say) -> tuple[int, int, int]:
    # snapshots made under the default settings; a service configured otherwise rebuilds them on read
    snapshots = snapshot_settings(ProfileSettings(database_url=targets.profile_url or ""))
    store = await SqlProfileStore.open(
        targets.profile_url,  # type: ignore[arg-type]
        snapshots,
        migrate=True,
        key_secret=targets.profile_key_secret,
    )
    default = profile.Consent(personalization=True, sensitive_categories=False)
    totals = [0, 0, 0]
    try:
        now = time.time_ns() // 1000
        for start in range(0, len(dataset.events), EVENT_BATCH):
            batch = [
                profile.Event(
                    event_id=f"import:{dataset.info.name}:{start + i}",
                    user_id=e.user_id,
                    type=profile.EventType(e.event_type),
                    target_type=profile.TargetType(e.target_type),
                    target_id=e.target_id,
                    occurred_at_us=e.timestamp * 1_000_000,
                    value=e.value,
                    category=dataset.items[e.target_id].category if e.target_type == "item" else "",
                )
                for i, e in enumerate(dataset.events[start : start + EVENT_BATCH])
            ]
            result = await store.record(batch, default=default, now_us=now)
            totals[0] += result.recorded
            totals[1] += result.duplicates
            totals[2] += result.anonymized
            done = start + len(batch)
            if done % (EVENT_BATCH * 20) == 0 or done == len(dataset.events):
                say(f"  events: {done:,} / {len(dataset.events):,}")
    finally:
        await store.close()
    return totals[0], totals[1], totals[2]
