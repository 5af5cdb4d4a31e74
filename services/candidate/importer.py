"""The candidate service's part of `bundlerec import`: a dataset's catalogue, written in one
transaction (items with their text embeddings, bundles, time-decayed popularity and co-occurrence).
Called by the `bundlerec import` command (bundlerec/commands/importer.py), which reads and checks the dataset
first. Running candidate services follow it through the catalogue's change feed (feed.py): the
import's entry makes each rebuild its index in the background."""

from __future__ import annotations

import time
from collections.abc import Callable

from bundlerec.candidate.catalogue import CatalogueStore
from bundlerec.candidate.model import Bundle, Item
from bundlerec.candidate.statistics import BehaviourStatistics, Interaction, behaviour_statistics
from bundlerec.datasets.reader import Dataset

Say = Callable[[str], None]


def dataset_statistics(dataset: Dataset) -> BehaviourStatistics:
    """Popularity and co-occurrence from a dataset's events (timestamps decay only when Unix)."""
    interactions = [
        Interaction(e.user_id, e.event_type, e.target_type == "bundle", e.target_id, e.timestamp)
        for e in dataset.events
    ]
    members = {b.bundle_id: b.item_ids for b in dataset.bundles.values()}
    return behaviour_statistics(interactions, members, unix_time=dataset.info.timestamps == "unix")


async def import_catalogue(dataset: Dataset, database_url: str, encoder_dir: str, say: Say) -> tuple[int, int, int]:
    """(items new, items replaced, bundles) written into the catalogue at `database_url`."""
    from bundlerec.encoder.runtime import TextEncoder, item_text

    encoder = TextEncoder(encoder_dir)
    items = [
        Item(item_id=it.item_id, title=it.title, category=it.category, brand=it.brand, price=it.price,
             attributes=it.attributes)
        for it in dataset.items.values()
    ]  # fmt: skip
    say(f"embedding {len(items):,} item texts with the sentence encoder...")
    vectors = encoder.encode([item_text(it.title, it.category, it.brand) for it in items])
    statistics = dataset_statistics(dataset)
    bundles = [Bundle(b.bundle_id, b.item_ids, b.title) for b in dataset.bundles.values()]
    store = await CatalogueStore.open(database_url, migrate=True)
    try:
        newest = max((e.timestamp for e in dataset.events), default=None) if dataset.info.timestamps == "unix" else None
        inserted, updated = await store.import_catalogue(
            items, vectors, bundles, statistics, time.time_ns() // 1000, epoch_s=newest
        )
    finally:
        await store.close()
    say(
        f"catalogue: {inserted:,} items new, {updated:,} replaced, {len(bundles):,} bundles, "
        f"{len(statistics.item_pairs):,} item and {len(statistics.bundle_pairs):,} bundle co-occurrence pairs"
    )
    return inserted, updated, len(bundles)
