"""Two candidate-service processes on one PostgreSQL database: every catalogue write made through
one (or by `bundlerec import`) reaches the other's index through the change feed, without a restart."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bundlerec.candidate.importer import import_catalogue
from bundlerec.datasets import read_dataset
from bundlerec.datasets.demo import generate_demo_shop
from bundlerec.v1 import candidate_pb2, candidate_pb2_grpc, common_pb2
from tests.harness.databases import postgres_database
from tests.harness.processes import candidate_settings, serve
from tests.harness.servers import eventually

pytestmark = pytest.mark.slow


@pytest.fixture
def replicas(encoder_dir: str, tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """(database url, the addresses of two candidate-service processes serving it)."""
    with postgres_database() as url:
        processes: list[subprocess.Popen[bytes]] = []
        addresses: list[str] = []
        try:
            for n in range(2):  # one after the other: the first migrates the database
                process, address = serve("candidate", candidate_settings(url, encoder_dir, tmp_path / f"index-{n}"))
                processes.append(process)
                addresses.append(address)
            yield url, addresses
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)


def item(item_id: str, title: str, category: str = "Kitchen > Coffee") -> common_pb2.Item:
    return common_pb2.Item(item_id=item_id, title=title, category=category, price=10.0)


async def found_by_text(
    stub: candidate_pb2_grpc.CandidateServiceStub, query: str, in_stock_only: bool = False
) -> set[str]:
    response = await stub.SearchText(
        candidate_pb2.SearchTextRequest(
            query=query, limit=50, filter=candidate_pb2.CandidateFilter(in_stock_only=in_stock_only)
        )
    )
    return {hit.item.item_id for hit in response.results}


async def bundles_for(stub: candidate_pb2_grpc.CandidateServiceStub, anchor: str) -> set[str]:
    response = await stub.Retrieve(candidate_pb2.RetrieveRequest(anchor_item_id=anchor, bundle_limit=50))
    return {c.target.id for c in response.bundles}


async def test_writes_through_one_replica_reach_the_other(replicas: tuple[str, list[str]]) -> None:
    _, (first, second) = replicas
    async with grpc.aio.insecure_channel(first) as a_channel, grpc.aio.insecure_channel(second) as b_channel:
        a = candidate_pb2_grpc.CandidateServiceStub(a_channel)
        b = candidate_pb2_grpc.CandidateServiceStub(b_channel)

        async def on_b(query: str, wanted: set[str], absent: set[str] = frozenset(), **kw: bool) -> bool:  # type: ignore[assignment]
            got = await found_by_text(b, query, **kw)
            return wanted <= got and not (absent & got)

        await a.UpsertItems(candidate_pb2.UpsertItemsRequest(items=[
            item("grinder", "Burr coffee grinder"), item("kettle", "Gooseneck pour-over kettle"),
            item("beans", "Ethiopian coffee beans"),
        ]))  # fmt: skip
        await eventually(lambda: on_b("coffee grinder", {"grinder", "kettle", "beans"}))

        # a bundle made on one replica is retrieved by the other
        await a.UpsertBundles(candidate_pb2.UpsertBundlesRequest(bundles=[
            common_pb2.Bundle(bundle_id="brew-kit", title="Pour-over kit", item_ids=["grinder", "kettle"]),
        ]))  # fmt: skip

        async def kit_on_b() -> bool:
            return "brew-kit" in await bundles_for(b, "grinder")

        await eventually(kit_on_b)

        # stock set on the second replica is honoured by the first
        await b.SetAvailability(candidate_pb2.SetAvailabilityRequest(updates=[
            candidate_pb2.AvailabilityUpdate(item_id="beans", availability=common_pb2.Availability(in_stock=False)),
        ]))  # fmt: skip

        async def beans_out_on_a() -> bool:
            return "beans" not in await found_by_text(a, "coffee beans", in_stock_only=True)

        await eventually(beans_out_on_a)
        assert "beans" in await found_by_text(a, "coffee beans")  # still known, only filtered

        # a delete on the first replica: the item and its bundle's membership leave the second
        await a.DeleteItems(candidate_pb2.DeleteItemsRequest(item_ids=["kettle"]))
        await eventually(lambda: on_b("kettle", {"grinder"}, {"kettle"}))

        async def kit_shrunk_on_b() -> bool:
            response = await b.Retrieve(candidate_pb2.RetrieveRequest(anchor_item_id="grinder", bundle_limit=50))
            kits = [c for c in response.bundles if c.target.id == "brew-kit"]
            return bool(kits) and list(kits[0].item_ids) == ["grinder"]

        await eventually(kit_shrunk_on_b)
        await b.DeleteBundles(candidate_pb2.DeleteBundlesRequest(bundle_ids=["brew-kit"]))

        async def kit_gone_on_a() -> bool:
            return "brew-kit" not in await bundles_for(a, "grinder")

        await eventually(kit_gone_on_a)

        # both replicas write the same item in turn: both end with the last write
        await a.UpsertItems(candidate_pb2.UpsertItemsRequest(items=[item("mug", "Enamel camping mug")]))
        await b.UpsertItems(candidate_pb2.UpsertItemsRequest(items=[item("mug", "Double-walled glass mug")]))

        async def same_mug_everywhere() -> bool:
            hits = [
                {
                    h.item.item_id: h.item.title
                    for h in (await s.SearchText(candidate_pb2.SearchTextRequest(query="mug"))).results
                }
                for s in (a, b)
            ]
            return all(h.get("mug") == "Double-walled glass mug" for h in hits)

        await eventually(same_mug_everywhere)


async def test_an_import_while_both_replicas_serve_reaches_both(
    replicas: tuple[str, list[str]], encoder_dir: str, tmp_path: Path
) -> None:
    url, addresses = replicas
    generate_demo_shop(tmp_path / "shop", seed=3, users=20, items=40, bundles=6)
    dataset = read_dataset(tmp_path / "shop")
    imported = next(iter(dataset.items.values()))
    bundle = next(iter(dataset.bundles.values()))
    await import_catalogue(dataset, url, encoder_dir, say=lambda _: None)
    for address in addresses:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = candidate_pb2_grpc.CandidateServiceStub(channel)

            async def has_import(stub: candidate_pb2_grpc.CandidateServiceStub = stub) -> bool:
                hits = await found_by_text(stub, imported.title)
                return imported.item_id in hits and bundle.bundle_id in await bundles_for(stub, bundle.item_ids[0])

            await eventually(has_import, seconds=30)
