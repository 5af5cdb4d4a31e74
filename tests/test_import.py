"""`bundlerec import`: a generated demo shop into real SQLite stores, then served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundlerec.candidate.catalogue import CatalogueStore
from bundlerec.commands.importer import ImportTargets, import_dataset
from bundlerec.datasets.demo import generate_demo_shop
from bundlerec.errors import InvalidArgument
from bundlerec.v1 import candidate_pb2 as pb
from bundlerec.v1 import profile_pb2
from tests.harness.databases import rows_mentioning
from tests.harness.servers import running_candidate, running_profile


@pytest.fixture
def shop_dir(tmp_path: Path) -> Path:
    out = tmp_path / "shop"
    generate_demo_shop(out, seed=5, users=40, items=150, bundles=20)
    return out


def targets(tmp_path: Path, encoder_dir: str) -> ImportTargets:
    return ImportTargets(
        catalogue_url=f"sqlite:///{tmp_path / 'catalogue.sqlite3'}",
        profile_url=f"sqlite:///{tmp_path / 'profile.sqlite3'}",
        encoder_dir=encoder_dir,
    )


async def test_imported_shop_is_served(shop_dir: Path, tmp_path: Path, encoder_dir: str) -> None:
    where = targets(tmp_path, encoder_dir)
    said: list[str] = []
    summary = await import_dataset(str(shop_dir), where, say=said.append)
    store = await CatalogueStore.open(where.catalogue_url, migrate=False)
    sold_out = next(iter(await store.list_items("", 1))).item_id
    await store.set_availability([(sold_out, False, 0)], 0)
    again = await import_dataset(str(shop_dir), where, say=said.append)
    still = (await store.get_items([sold_out]))[sold_out]
    await store.close()

    counts = json.loads((shop_dir / "dataset.json").read_text())["counts"]
    assert (summary["items"], summary["bundles"], summary["events"]) == (
        counts["items"],
        counts["bundles"],
        counts["events"],
    )
    assert summary["events_recorded"] == summary["events"] > 0
    assert again["events_recorded"] == 0 and again["events_already_there"] == summary["events"]
    assert any(line.startswith("done:") for line in said)
    assert not still.in_stock, "a re-import must not put sold-out items back in stock"
    async with running_profile(where.profile_url) as profile:  # type: ignore[arg-type]
        got = (await profile.stub.GetProfile(profile_pb2.GetProfileRequest(user_id="u0001"))).profile
    assert got.total_events > 0 and got.affinities
    async with running_candidate(where.catalogue_url, encoder_dir) as candidate:
        history = [pb.RecentInteraction(target=e.target, type=e.type) for e in got.recent_events[-5:]]
        reply = await candidate.stub.Retrieve(pb.RetrieveRequest(recent=history, item_limit=50, bundle_limit=10))
    sources = {s for c in reply.items for s in c.sources}
    assert {1, 2, 3} <= sources  # vector, co-occurrence from the imported events, popularity
    assert len(reply.items) == 50 and reply.bundles


async def test_a_bad_dataset_is_rejected_and_nothing_is_written(
    shop_dir: Path, tmp_path: Path, encoder_dir: str
) -> None:
    items = shop_dir / "items.csv"
    lines = items.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 2)[0] + ",not-a-price,"
    items.write_text("\n".join(lines) + "\n")
    where = targets(tmp_path, encoder_dir)

    with pytest.raises(InvalidArgument) as error:
        await import_dataset(str(shop_dir), where, say=lambda _: None)

    assert "items.csv:4" in str(error.value)
    assert not (tmp_path / "catalogue.sqlite3").exists() or not await rows_mentioning(where.catalogue_url, "u0001")
    assert not (tmp_path / "profile.sqlite3").exists()
