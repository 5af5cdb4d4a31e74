"""The catalogue's change feed, service by service on one SQLite file (where polling is the only
mechanism): other writers' changes are applied incrementally, a replica's own writes are not
applied twice, a replica left behind the trimmed feed rebuilds, and compaction rebuilds in the
background while writes and retrieval go on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bundlerec.candidate import feed
from bundlerec.candidate.catalogue import CatalogueStore
from bundlerec.candidate.index import CatalogueIndex
from bundlerec.candidate.model import Bundle, Filter, Item
from bundlerec.candidate.service import CandidateService
from bundlerec.encoder.runtime import TextEncoder
from tests.harness.servers import eventually


@pytest.fixture
async def two(tmp_path: Path, encoder_dir: str) -> AsyncIterator[tuple[CandidateService, CandidateService]]:
    encoder = TextEncoder(encoder_dir)
    url = f"sqlite:///{tmp_path / 'catalogue.sqlite3'}"
    services = []
    for _ in range(2):
        service = CandidateService(
            await CatalogueStore.open(url, migrate=True), CatalogueIndex(encoder.dimension), encoder
        )
        await service.load()
        services.append(service)
    yield services[0], services[1]
    for service in services:
        await service.close()


def titles(service: CandidateService, query: str, in_stock_only: bool = False) -> dict[str, str]:
    index = service.index
    vector = service.encoder.encode([query])[0]
    hits = index.item_vectors.search(
        index.fusion.fuse(vector), 20, index.item_mask(Filter(in_stock_only=in_stock_only))
    )
    return {key: index.items[key].title for key, _ in hits}


async def test_other_writers_changes_are_applied_and_own_ones_are_not_repeated(
    two: tuple[CandidateService, CandidateService],
) -> None:
    a, b = two
    await a.upsert_items([Item("grinder", "Burr coffee grinder"), Item("kettle", "Gooseneck kettle")])
    await a.upsert_bundles([Bundle("kit", ("grinder", "kettle"), "Pour-over kit")])
    assert not await a.follow_catalogue(), "a replica's own writes are already in its index"
    slots = dict(a.index.item_vectors.slot_of)

    assert await b.follow_catalogue()
    assert {"grinder", "kettle"} <= set(titles(b, "coffee")) and b.index.bundles["kit"].item_ids == (
        "grinder",
        "kettle",
    )
    assert not await b.follow_catalogue(), "nothing newer"
    assert a.sequence == b.sequence

    await b.set_availability([("kettle", False, 0)])
    await b.delete_items(["grinder"])
    await b.upsert_items([Item("beans", "Espresso beans")])
    assert await a.follow_catalogue()
    assert "grinder" not in a.index.items and a.index.bundles["kit"].item_ids == ("kettle",)
    assert "kettle" not in titles(a, "kettle", in_stock_only=True) and "kettle" in titles(a, "kettle")
    assert "beans" in titles(a, "espresso")
    assert a.index.item_vectors.slot_of["kettle"] == slots["kettle"], "availability alone moves no vector"

    # interleaved writes: each replica ends with the newest state of every row
    await a.upsert_items([Item("mug", "Enamel mug")])
    await b.upsert_items([Item("mug", "Glass mug")])
    await a.follow_catalogue()
    await b.follow_catalogue()
    assert a.index.items["mug"].title == b.index.items["mug"].title == "Glass mug"
    assert a.sequence == b.sequence


async def test_a_replica_behind_the_trimmed_feed_rebuilds(
    two: tuple[CandidateService, CandidateService], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two
    monkeypatch.setattr(feed, "KEEP", 2)
    monkeypatch.setattr(feed, "TRIM_EVERY", 1)
    for n in range(5):
        await a.upsert_items([Item(f"item-{n}", f"Thing number {n}")])
    old = b.index
    assert await b.follow_catalogue()

    async def rebuilt() -> bool:
        return b.index is not old and all(f"item-{n}" in b.index.items for n in range(5))

    await eventually(rebuilt)


async def test_compaction_rebuilds_in_the_background(two: tuple[CandidateService, CandidateService]) -> None:
    a, _ = two
    await a.upsert_items([Item(f"item-{n}", f"Thing number {n}") for n in range(40)])
    old = a.index
    for round_ in range(3):  # every upsert of a known item leaves a tombstone
        await a.upsert_items([Item(f"item-{n}", f"Thing number {n}, take {round_}") for n in range(10)])
    assert a.index is old or not a.index.wants_compaction()

    async def compacted() -> bool:
        return a.index is not old and not a.index.wants_compaction()

    await eventually(compacted)
    assert a.index.items["item-3"].title == "Thing number 3, take 2"
    slots = a.index.item_vectors.key_at  # 70 before: at most the round replayed on the new index remains
    assert len(slots) <= 50 and {k for k in slots if k} == {f"item-{n}" for n in range(40)}


async def test_a_replica_lacking_an_import_saves_no_index_until_its_rebuild_lands(
    tmp_path: Path, encoder_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bundlerec.candidate.statistics import EMPTY

    encoder = TextEncoder(encoder_dir)
    url, saved = f"sqlite:///{tmp_path / 'catalogue.sqlite3'}", tmp_path / "index"
    service = CandidateService(
        await CatalogueStore.open(url, migrate=True), CatalogueIndex(encoder.dimension), encoder, saved
    )
    await service.load()
    importer = await CatalogueStore.open(url, migrate=False)
    items = [Item("imported", "An imported kettle")]
    await importer.import_catalogue(items, encoder.encode(["An imported kettle"]), [], EMPTY, 0)
    await importer.close()

    async def broken() -> None:  # the injected fault: every snapshot fails
        raise OSError("disk gone")

    monkeypatch.setattr(service.store, "snapshot", broken)
    assert await service.follow_catalogue()  # sees the import: a rebuild is due, and fails
    await service.close()  # cancels the retrying rebuild; must not save the index without the import

    again = CandidateService(
        await CatalogueStore.open(url, migrate=False), CatalogueIndex(encoder.dimension), encoder, saved
    )
    await again.load()
    assert not again.restored and "imported" in again.index.items
    await again.close()
