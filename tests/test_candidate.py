"""The candidate service against real servers, a real SQL store, real FAISS and the real ONNX
sentence encoder (exported once per test session)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import grpc
import pytest

from bundlerec.candidate.catalogue import CatalogueStore
from bundlerec.candidate.index import CatalogueIndex
from bundlerec.candidate.model import Item, RecentInteraction, RetrievalRequest
from bundlerec.candidate.service import CandidateService
from bundlerec.encoder.runtime import TextEncoder
from bundlerec.events import EventType
from bundlerec.v1 import candidate_pb2 as pb
from bundlerec.v1 import common_pb2
from tests.harness.factories import recent
from tests.harness.servers import CandidateServer, running_candidate

ITEM, BUNDLE = common_pb2.TARGET_TYPE_ITEM, common_pb2.TARGET_TYPE_BUNDLE
VECTOR, CO_OCCURRENCE, POPULARITY, ANCHOR, MEMBERSHIP = 1, 2, 3, 4, 5

SHOP = [
    ("boots", "Waterproof leather hiking boots", "Outdoor > Footwear", "Northpeak", 129.0),
    ("poles", "Carbon trekking poles, pair", "Outdoor > Gear", "Northpeak", 59.0),
    ("shell", "Lightweight rain jacket for hiking", "Outdoor > Jackets", "Alpina", 149.0),
    ("pack", "30 litre hiking daypack", "Outdoor > Bags", "Alpina", 79.0),
    ("grinder", "Conical burr coffee grinder", "Kitchen > Coffee", "Brewmaster", 89.0),
    ("kettle", "Gooseneck pour-over kettle", "Kitchen > Coffee", "Brewmaster", 45.0),
    ("beans", "Single origin espresso beans 1 kg", "Kitchen > Coffee", "Roastery", 24.0),
    ("phone", "Smartphone 128 GB, midnight black", "Electronics > Phones", "Vireo", 599.0),
    ("case", "Shockproof phone case, clear", "Electronics > Phone accessories", "Vireo", 19.0),
    ("charger", "65 W USB-C fast charger", "Electronics > Phone accessories", "Voltix", 35.0),
]


def item(key: str, title: str, category: str, brand: str, price: float, **kw: object) -> common_pb2.Item:
    return common_pb2.Item(item_id=key, title=title, category=category, brand=brand, price=price, **kw)


@pytest.fixture
async def shop(tmp_path, encoder_dir: str) -> AsyncIterator[CandidateServer]:  # type: ignore[no-untyped-def]
    """A small shop on its own SQLite file: ten items, two curated bundles."""
    async with running_candidate(f"sqlite:///{tmp_path / 'catalogue.sqlite3'}", encoder_dir) as server:
        await server.stub.UpsertItems(pb.UpsertItemsRequest(items=[item(*row) for row in SHOP]))
        await server.stub.UpsertBundles(
            pb.UpsertBundlesRequest(
                bundles=[
                    common_pb2.Bundle(bundle_id="hike-kit", title="Day hike kit", item_ids=["boots", "poles", "pack"]),
                    common_pb2.Bundle(
                        bundle_id="phone-set", title="Phone starter set", item_ids=["phone", "case", "charger"]
                    ),
                ]
            )
        )
        yield server


async def test_catalogue_round_trip_and_missing_ids(shop: CandidateServer) -> None:
    got = await shop.stub.GetItems(pb.GetItemsRequest(item_ids=["kettle", "nope", "boots"]))
    bundles = await shop.stub.GetBundles(pb.GetBundlesRequest(bundle_ids=["hike-kit", "ghost"]))

    assert [i.item_id for i in got.items] == ["kettle", "boots"]
    assert list(got.missing_item_ids) == ["nope"]
    assert got.items[0].title == "Gooseneck pour-over kettle" and got.items[0].price == 45.0
    assert got.items[0].availability.in_stock
    assert list(bundles.bundles[0].item_ids) == ["boots", "poles", "pack"]
    assert list(bundles.missing_bundle_ids) == ["ghost"]


async def test_list_items_pages_through_the_catalogue(shop: CandidateServer) -> None:
    seen, token = [], ""
    while True:
        page = await shop.stub.ListItems(pb.ListItemsRequest(page_size=3, page_token=token))
        seen += [i.item_id for i in page.items]
        token = page.next_page_token
        if not token:
            break

    assert seen == sorted(row[0] for row in SHOP)
    for garbage in ("not-a-token", "boots", "ZXhwb3J0OjU="):  # the last: another listing's ("export:5")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await shop.stub.ListItems(pb.ListItemsRequest(page_size=3, page_token=garbage))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in caught.value.details()


async def test_ids_with_control_characters_are_refused(shop: CandidateServer) -> None:
    for bad in ("a\tb", "a\nb", "a\x7fb", "a\x85b", "a\u2028b"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await shop.stub.UpsertItems(pb.UpsertItemsRequest(items=[item(bad, "Lamp", "Home", "Lux", 10.0)]))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "items[0].item_id" in caught.value.details()


async def test_the_index_version_names_the_index_and_counts_its_changes(shop: CandidateServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = (await shop.stub.Retrieve(pb.RetrieveRequest(recent=recent("boots"), item_limit=3))).index_version
    await shop.stub.UpsertItems(pb.UpsertItemsRequest(items=[item("lamp", "Desk lamp", "Home", "Lux", 30.0)]))
    second = (await shop.stub.Retrieve(pb.RetrieveRequest(recent=recent("boots"), item_limit=3))).index_version
    index, _, changes = first.partition(".")
    assert second.partition(".")[0] == index and int(second.partition(".")[2]) > int(changes)
    async with running_candidate(shop.settings.database_url, shop.settings.encoder_dir) as other:
        reply = await other.stub.Retrieve(pb.RetrieveRequest(recent=recent("boots"), item_limit=3))
        assert reply.index_version.partition(".")[0] != index  # another process: another index


async def test_a_new_item_is_retrievable_by_the_next_call_through_its_title(shop: CandidateServer) -> None:
    await shop.stub.UpsertItems(
        pb.UpsertItemsRequest(items=[common_pb2.Item(item_id="new-boots", title="Trail hiking shoes, waterproof")])
    )

    reply = await shop.stub.Retrieve(
        pb.RetrieveRequest(recent=recent("boots", "shell"), item_limit=3, sources=[VECTOR])
    )

    assert "new-boots" in [c.target.id for c in reply.items]


async def test_history_pulls_similar_items_and_bundles(shop: CandidateServer) -> None:
    reply = await shop.stub.Retrieve(pb.RetrieveRequest(recent=recent("grinder"), item_limit=2, bundle_limit=1))

    assert {c.target.id for c in reply.items} == {"kettle", "beans"}
    assert all(VECTOR in c.sources for c in reply.items)
    assert "grinder" not in [c.target.id for c in reply.items]  # the history is context, not a candidate


async def test_anchor_brings_its_bundle_mates_and_bundles(shop: CandidateServer) -> None:
    reply = await shop.stub.Retrieve(pb.RetrieveRequest(anchor_item_id="phone", item_limit=2, bundle_limit=1))

    assert {c.target.id for c in reply.items} == {"case", "charger"}
    assert all(ANCHOR in c.sources for c in reply.items)
    assert reply.bundles[0].target.id == "phone-set"
    assert list(reply.bundles[0].item_ids) == ["phone", "case", "charger"]


async def test_no_history_falls_back_to_popularity_and_fills_the_limit(shop: CandidateServer) -> None:
    reply = await shop.stub.Retrieve(pb.RetrieveRequest(item_limit=100, bundle_limit=100))

    assert len(reply.items) == len(SHOP)  # the catalogue is exhausted before the limit
    assert all(POPULARITY in c.sources for c in reply.items)
    assert len(reply.bundles) == 2


async def test_filters_are_applied_during_retrieval(shop: CandidateServer) -> None:
    await shop.stub.SetAvailability(
        pb.SetAvailabilityRequest(
            updates=[pb.AvailabilityUpdate(item_id="kettle", availability=common_pb2.Availability(in_stock=False))]
        )
    )
    reply = await shop.stub.Retrieve(
        pb.RetrieveRequest(
            recent=recent("grinder"),
            item_limit=3,
            bundle_limit=5,
            filter=pb.CandidateFilter(in_stock_only=True, exclude_item_ids=["beans"], max_price=150.0),
        )
    )

    ids = [c.target.id for c in reply.items]
    assert "kettle" not in ids and "beans" not in ids
    assert len(ids) == 3  # filtered-out candidates are replaced, not just dropped
    got = await shop.stub.GetItems(pb.GetItemsRequest(item_ids=ids))
    assert all(i.price <= 150 and i.availability.in_stock for i in got.items)
    assert [b.target.id for b in reply.bundles] == ["hike-kit"]  # the phone costs 599


async def test_deleting_an_item_removes_it_from_bundles_and_results(shop: CandidateServer) -> None:
    await shop.stub.DeleteItems(pb.DeleteItemsRequest(item_ids=["poles"]))

    bundle = (await shop.stub.GetBundles(pb.GetBundlesRequest(bundle_ids=["hike-kit"]))).bundles[0]
    reply = await shop.stub.Retrieve(pb.RetrieveRequest(recent=recent("boots"), item_limit=50))

    assert list(bundle.item_ids) == ["boots", "pack"]
    assert "poles" not in [c.target.id for c in reply.items]


async def test_a_bundle_loses_its_last_member_and_goes(shop: CandidateServer) -> None:
    await shop.stub.DeleteItems(pb.DeleteItemsRequest(item_ids=["phone", "case", "charger"]))

    got = await shop.stub.GetBundles(pb.GetBundlesRequest(bundle_ids=["phone-set"]))
    reply = await shop.stub.Retrieve(pb.RetrieveRequest(bundle_limit=10))

    assert list(got.missing_bundle_ids) == ["phone-set"]
    assert [b.target.id for b in reply.bundles] == ["hike-kit"]


async def test_sources_are_restricted_as_asked(shop: CandidateServer) -> None:
    reply = await shop.stub.Retrieve(pb.RetrieveRequest(recent=recent("boots"), sources=[ANCHOR], bundle_limit=5))

    assert not reply.items and not reply.bundles  # no anchor: the anchor source has nothing to say


async def test_text_search_is_semantic(shop: CandidateServer) -> None:
    reply = await shop.stub.SearchText(pb.SearchTextRequest(query="something to make coffee with", limit=3))

    assert reply.results[0].item.category == "Kitchen > Coffee"


async def test_catalogue_survives_a_restart(tmp_path, encoder_dir: str) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'catalogue.sqlite3'}"
    async with running_candidate(url, encoder_dir) as first:
        await first.stub.UpsertItems(pb.UpsertItemsRequest(items=[item(*row) for row in SHOP]))
    async with running_candidate(url, encoder_dir) as second:
        reply = await second.stub.Retrieve(pb.RetrieveRequest(recent=recent("grinder"), item_limit=2))

    assert {c.target.id for c in reply.items} == {"kettle", "beans"}


@pytest.mark.postgres
async def test_catalogue_on_postgres(encoder_dir: str) -> None:
    from tests.harness.databases import postgres_database

    with postgres_database() as url:
        async with running_candidate(url, encoder_dir) as server:
            await server.stub.UpsertItems(pb.UpsertItemsRequest(items=[item(*row) for row in SHOP]))
            await server.stub.UpsertBundles(
                pb.UpsertBundlesRequest(bundles=[common_pb2.Bundle(bundle_id="b", item_ids=["phone", "case"])])
            )
            again = await server.stub.UpsertItems(pb.UpsertItemsRequest(items=[item(*SHOP[0])]))
            reply = await server.stub.Retrieve(pb.RetrieveRequest(anchor_item_id="phone", item_limit=1))

    assert (again.inserted, again.updated) == (0, 1)
    assert reply.items[0].target.id == "case"


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([common_pb2.Item(item_id="")], "items[0].item_id"),
        ([common_pb2.Item(item_id="a"), common_pb2.Item(item_id="a")], "items[1].item_id"),
        ([common_pb2.Item(item_id="a", price=float("nan"))], "items[0].price"),
        ([common_pb2.Item(item_id="a", price=-1)], "items[0].price"),
        ([common_pb2.Item(item_id="a", title="t" * 2000)], "items[0].title"),
        ([common_pb2.Item(item_id="a", external_vector=[0.1, 0.2])], "items[0].external_vector"),
        ([common_pb2.Item(item_id="ok"), common_pb2.Item(item_id="b", category="x\x00")], "items[1].category"),
    ],
)
async def test_bad_items_are_rejected_whole(shop: CandidateServer, items, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await shop.stub.UpsertItems(pb.UpsertItemsRequest(items=items))

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(field)
    got = await shop.stub.GetItems(pb.GetItemsRequest(item_ids=["ok", "a", "b"]))
    assert not got.items, "nothing of a rejected batch may be written"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (
            pb.UpsertBundlesRequest(bundles=[common_pb2.Bundle(bundle_id="x", item_ids=["ghost"])]),
            "bundles[0].item_ids[0]",
        ),
        (pb.UpsertBundlesRequest(bundles=[common_pb2.Bundle(bundle_id="x")]), "bundles[0].item_ids"),
        (
            pb.UpsertBundlesRequest(bundles=[common_pb2.Bundle(bundle_id="x", item_ids=["case", "case"])]),
            "bundles[0].item_ids[1]",
        ),
        (pb.RetrieveRequest(item_limit=5000), "item_limit"),
        (pb.RetrieveRequest(filter=pb.CandidateFilter(min_price=10, max_price=5)), "filter.min_price"),
        (
            pb.RetrieveRequest(recent=[pb.RecentInteraction(target=common_pb2.TargetRef(type=ITEM, id=""))]),
            "recent[0].target.id",
        ),
        (pb.RetrieveRequest(sources=[42]), "sources[0]"),
        (pb.RetrieveRequest(co_occurrence_floor=-1.0), "co_occurrence_floor"),
        (pb.RetrieveRequest(co_occurrence_floor=float("nan")), "co_occurrence_floor"),
        (pb.SearchTextRequest(query=""), "query"),
        (pb.SetAvailabilityRequest(), "updates"),
        (pb.SetAvailabilityRequest(updates=[pb.AvailabilityUpdate(item_id="case")]), "updates[0].availability"),
        (pb.RetrieveRequest(user_vector=[0.1, 0.2]), "user_vector"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_bad_requests_name_the_field(shop: CandidateServer, request_, field: str) -> None:  # type: ignore[no-untyped-def]
    rpc = type(request_).__name__.removesuffix("Request")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await getattr(shop.stub, rpc)(request_)

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(field)


async def test_random_filters_never_let_a_forbidden_item_through(tmp_path, encoder_dir: str) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    categories = ["A > x", "A > y", "B > x", "B > z", "C"]
    brands = ["n", "m", "o"]

    def random_item(item_id: str) -> common_pb2.Item:
        return common_pb2.Item(
            item_id=item_id,
            title=f"product {item_id} {rng.choice(['red', 'blue', 'green'])}",
            category=rng.choice(categories),
            brand=rng.choice(brands),
            price=round(rng.uniform(1, 100), 2),
            availability=common_pb2.Availability(in_stock=rng.random() < 0.7),
        )

    catalogue = [random_item(f"i{i}") for i in range(150)]
    by_id = {it.item_id: it for it in catalogue}
    async with running_candidate(f"sqlite:///{tmp_path / 'c.sqlite3'}", encoder_dir) as server:
        await server.stub.UpsertItems(pb.UpsertItemsRequest(items=catalogue))
        for round_ in range(40):
            if round_ % 8 == 7:  # the catalogue changes between queries: prices, stock, new items
                changed = [random_item(f"i{rng.randrange(170)}") for _ in range(5)]
                changed = list({it.item_id: it for it in changed}.values())
                await server.stub.UpsertItems(pb.UpsertItemsRequest(items=changed))
                flipped = [rng.choice(list(by_id)) for _ in range(5)]
                updates = [
                    pb.AvailabilityUpdate(
                        item_id=i, availability=common_pb2.Availability(in_stock=not by_id[i].availability.in_stock)
                    )
                    for i in dict.fromkeys(flipped)
                ]
                await server.stub.SetAvailability(pb.SetAvailabilityRequest(updates=updates))
                for it in changed:
                    by_id[it.item_id] = it
                for u in updates:
                    by_id[u.item_id].availability.in_stock = u.availability.in_stock
                catalogue = list(by_id.values())
            f = pb.CandidateFilter(
                in_stock_only=rng.random() < 0.7,
                exclude_categories=rng.sample(["A", "B > x", "C"], rng.randint(0, 1)),
                include_brands=rng.sample(brands, rng.randint(0, 2)),
                min_price=rng.uniform(0, 30),
                max_price=rng.uniform(50, 100),
                exclude_item_ids=[f"i{rng.randrange(150)}" for _ in range(10)],
            )
            limit = rng.choice([5, 20, 200])
            context = f"i{rng.randrange(150)}"
            reply = await server.stub.Retrieve(pb.RetrieveRequest(recent=recent(context), item_limit=limit, filter=f))

            def passes(it: common_pb2.Item, f: pb.CandidateFilter = f) -> bool:
                return (
                    (it.availability.in_stock or not f.in_stock_only)
                    and f.min_price <= it.price <= f.max_price
                    and not any(it.category == c or it.category.startswith(c + " >") for c in f.exclude_categories)
                    and (not f.include_brands or it.brand in f.include_brands)
                    and it.item_id not in f.exclude_item_ids
                )

            got = [by_id[c.target.id] for c in reply.items]
            assert all(passes(it) for it in got)
            eligible = [it for it in catalogue if passes(it) and it.item_id != context]
            assert len(got) == min(limit, len(eligible))  # filtered out ones are replaced until exhausted


async def open_service(url: str, encoder_dir: str, index_dir) -> CandidateService:  # type: ignore[no-untyped-def]
    encoder = TextEncoder(encoder_dir)
    store = await CatalogueStore.open(url, migrate=True)
    service = CandidateService(store, CatalogueIndex(encoder.dimension), encoder, index_dir)
    await service.load()
    return service


async def test_vector_indexes_are_restored_only_while_they_match_the_catalogue(tmp_path, encoder_dir: str) -> None:  # type: ignore[no-untyped-def]
    url, other_url = f"sqlite:///{tmp_path / 'a.sqlite3'}", f"sqlite:///{tmp_path / 'b.sqlite3'}"
    saved = tmp_path / "index"
    first = await open_service(url, encoder_dir, saved)
    await first.upsert_items([Item(key, title, category, brand, price) for key, title, category, brand, price in SHOP])
    query = RetrievalRequest(recent=(RecentInteraction("grinder", False, EventType.VIEW),), item_limit=2)
    expected = {c.target_id for c in first.retrieve(query).items}
    await first.close()  # saves: nothing else changed the catalogue

    second = await open_service(url, encoder_dir, saved)
    restored = second.restored
    got = {c.target_id for c in second.retrieve(query).items}
    await second.close()
    other_writer = await CatalogueStore.open(url, migrate=False)  # a change the saved index never saw
    await other_writer.delete_bundles(["nothing"], 0)
    await other_writer.close()
    third = await open_service(url, encoder_dir, saved)
    elsewhere = await open_service(other_url, encoder_dir, saved)  # another catalogue, same directory

    assert not first.restored and restored and got == expected == {"kettle", "beans"}
    assert not third.restored, "a catalogue changed behind the saved index must be rebuilt"
    assert not elsewhere.restored, "an index saved for one catalogue must not load into another"
    for service in (third, elsewhere):
        await service.close()


class OtherModel:
    """Stands in for a different sentence encoder of the same dimension (counts its calls)."""

    def __init__(self, dimension: int) -> None:
        self.dimension, self.texts = dimension, 0

    def encode(self, texts):  # type: ignore[no-untyped-def]
        import numpy as np

        self.texts += len(texts)
        out = np.zeros((len(texts), self.dimension), np.float32)
        out[:, 0] = 1.0
        return out


async def test_a_new_encoder_re_embeds_the_catalogue_once(tmp_path, encoder_dir: str) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    first = await open_service(url, encoder_dir, None)
    await first.upsert_items([Item(key, title, category, brand, price) for key, title, category, brand, price in SHOP])
    await first.close()

    other = OtherModel(first.index.text_dim)
    for _ in range(2):  # the second start finds the catalogue already embedded by this model
        store = await CatalogueStore.open(url, migrate=False)
        service = CandidateService(store, CatalogueIndex(other.dimension), other, None)
        await service.load()
        await service.close()

    assert other.texts == len(SHOP)  # every item once, not again at the second start
