"""`bundlerec import DIR`: loads a dataset in the import format (docs/import-format.md) into the
catalogue store and the profile store, showing progress and a summary. An entry point: it reads the
dataset and hands each service its part through that service's importer
(bundlerec.candidate.importer, bundlerec.profile.importer); the stores are theirs.

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

from bundlerec.datasets.reader import read_dataset

Say = Callable[[str], None]


@dataclass(frozen=True)
class ImportTargets:
    catalogue_url: str
    profile_url: str | None  # None: do not import events into the profile store
    encoder_dir: str
    profile_key_secret: bytes = b""


async def import_dataset(path: str, targets: ImportTargets, *, on_error: str = "reject", say: Say = print) -> dict:
    """Reads and checks the dataset, then hands each service its part (each service's importer)."""
    from bundlerec.candidate.importer import import_catalogue
    from bundlerec.profile.importer import import_events

    started = time.monotonic()
    dataset = read_dataset(path, on_error=on_error, progress=lambda name, rows: say(f"  reading {name}: {rows:,} rows"))  # type: ignore[arg-type]
    say(f"read {path}: {len(dataset.items):,} items, {len(dataset.bundles):,} bundles, {len(dataset.events):,} events")
    if dataset.error_count:
        say(f"skipped {dataset.error_count:,} bad rows; the first ones:")
        for error in dataset.errors[:10]:
            say(f"  {error}")
    _, _, bundles = await import_catalogue(dataset, targets.catalogue_url, targets.encoder_dir, say)
    recorded = duplicates = anonymized = 0
    if targets.profile_url:
        recorded, duplicates, anonymized = await import_events(
            dataset, targets.profile_url, targets.profile_key_secret, say
        )
    summary = {
        "items": len(dataset.items),
        "bundles": bundles,
        "events": len(dataset.events),
        "events_recorded": recorded,
        "events_already_there": duplicates,
        "events_anonymized": anonymized,
        "rows_skipped": dataset.error_count,
        "seconds": round(time.monotonic() - started, 1),
    }
    say("done: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in summary.items()))
    return summary
