"""Pages served go to the exposure log in the background: against the real services (the pages,
their kinds, an attributed click, erasure), and the recorder alone with a sink that fails on
purpose (the page never waits, what is lost is counted)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from bundlerec.gateway.exposures import ExposedBundle, ExposureRecorder, PageRecord, RecordRefused
from bundlerec.v1 import common_pb2, exposures_pb2, exposures_pb2_grpc, gateway_pb2
from tests.harness.servers import eventually
from tests.harness.shops import Running, Suite, buyer, running_suite

torch = pytest.importorskip("torch", reason="training the test model needs the train extra (torch)")


@pytest.fixture(scope="module")
async def shop(suite: Suite, encoder_dir: str) -> AsyncIterator[Running]:
    async with running_suite(suite, encoder_dir, exposure_flush_ms=20) as running:
        yield running


async def logged(shop: Running, recommendation_id: str) -> exposures_pb2.ExposedPage | None:
    stub = exposures_pb2_grpc.ExposureServiceStub(shop.profile.channel)
    token = ""
    while True:
        reply = await stub.ListExposedPages(exposures_pb2.ListExposedPagesRequest(page_token=token))
        for page in reply.pages:
            if page.recommendation_id == recommendation_id:
                return page
        token = reply.next_page_token
        if not token:
            return None


async def test_a_page_and_the_click_it_drew_reach_the_exposure_log(shop: Running, suite: Suite) -> None:
    user = buyer(suite)
    anchor = next(iter(suite.items))
    context = gateway_pb2.RecommendContext(placement=gateway_pb2.PLACEMENT_PRODUCT_PAGE, anchor_item_id=anchor)
    page = await shop.stub.Recommend(gateway_pb2.RecommendRequest(user_id=user, context=context, page_size=6))
    assert page.bundles
    for bundle in page.bundles:
        expected = common_pb2.BUNDLE_KIND_BUILT if bundle.generated else common_pb2.BUNDLE_KIND_CURATED
        assert bundle.kind == expected
    clicked = page.bundles[-1].items[0].item_id
    await shop.stub.Track(
        gateway_pb2.TrackRequest(
            events=[
                common_pb2.Event(
                    event_id=uuid.uuid4().hex,
                    user_id=user,
                    type=common_pb2.EVENT_TYPE_CLICK,
                    target=common_pb2.TargetRef(type=common_pb2.TARGET_TYPE_ITEM, id=clicked),
                    recommendation_id=page.recommendation_id,
                )
            ]
        )
    )

    async def attributed() -> bool:
        found = await logged(shop, page.recommendation_id)
        return found is not None and bool(found.outcomes)

    await eventually(attributed)
    found = await logged(shop, page.recommendation_id)
    assert found is not None
    assert (found.variant, found.variant_share, found.placement) == ("default", 1.0, "product_page")
    assert found.segment == " > ".join(suite.items[anchor][0].split(" > ")[:2])  # what the page was about
    assert found.requester and found.requester != user and found.personalized
    assert [(b.bundle_id, list(b.item_ids), b.kind) for b in found.bundles] == [
        (b.bundle_id, [i.item_id for i in b.items], b.kind) for b in page.bundles
    ]
    assert found.bundles[0].item_prices == pytest.approx([i.price for i in page.bundles[0].items])
    assert [(o.type, o.position) for o in found.outcomes] == [(common_pb2.EVENT_TYPE_CLICK, len(page.bundles) - 1)]


async def test_forgetting_a_user_erases_the_pages_just_served(shop: Running) -> None:
    visitor = f"session-{uuid.uuid4().hex[:8]}"
    page = await shop.stub.Recommend(gateway_pb2.RecommendRequest(session_id=visitor, page_size=4))
    await shop.stub.ForgetUser(gateway_pb2.ForgetUserRequest(user_id=visitor))  # flushes the queue first
    assert await logged(shop, page.recommendation_id) is None
    await asyncio.sleep(0.1)  # nothing of it arrives later either
    assert await logged(shop, page.recommendation_id) is None


async def test_a_preview_is_the_shoppers_page_and_leaves_no_trace(shop: Running, suite: Suite) -> None:
    """The console's preview: the page the shopper would get, with its trace, but no exposure is
    logged and no page is counted."""
    user = buyer(suite)
    request = gateway_pb2.RecommendRequest(user_id=user, page_size=5, debug=True)
    pages = REGISTRY.get_sample_value("bundlerec_gateway_pages_total", {"variant": "default", "personalized": "true"})
    preview = gateway_pb2.RecommendRequest(user_id=user, page_size=5, debug=True, preview=True)
    shown = await shop.stub.Recommend(preview)
    assert shown.bundles and shown.trace.stages and shown.personalized
    served = await shop.stub.Recommend(request)  # the same shopper's real page, logged
    assert [b.bundle_id for b in shown.bundles] == [b.bundle_id for b in served.bundles]

    async def arrived() -> bool:
        return await logged(shop, served.recommendation_id) is not None

    await eventually(arrived)
    assert await logged(shop, shown.recommendation_id) is None
    after = REGISTRY.get_sample_value("bundlerec_gateway_pages_total", {"variant": "default", "personalized": "true"})
    assert (after or 0) - (pages or 0) == 1  # the served page only


class FlakySink:
    """Fails the first `failures` calls (the injected fault), then keeps what it gets."""

    def __init__(self, failures: int = 0, refuse: bool = False, pause: float = 0.0) -> None:
        self.failures, self.refuse, self.pause = failures, refuse, pause
        self.kept: list[PageRecord] = []
        self.calls = 0

    async def record(self, pages: Sequence[PageRecord], seconds: float) -> None:
        self.calls += 1
        await asyncio.sleep(self.pause)
        if self.refuse:
            raise RecordRefused("exposures[0].placement: must be one of ...")
        if self.calls <= self.failures:
            raise ConnectionError("the log is down")
        self.kept.extend(pages)


def record(n: int) -> PageRecord:
    bundle = ExposedBundle(0, "b-1", ("i-1",), (1.0,), "curated")
    return PageRecord(f"rec-{n}", "u", False, "a", 1.0, "v1", "home", 1, (bundle,), True, False)


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("bundlerec_gateway_exposures_dropped_total", {"reason": reason}) or 0.0


async def test_a_failing_log_is_retried_and_what_it_never_takes_is_counted() -> None:
    sink = FlakySink(failures=2)
    recorder = ExposureRecorder(sink, batch=10, flush_seconds=0.01, retries=3)
    recorder.start()
    for n in range(25):
        recorder.record(record(n))
    await eventually(lambda: _true(len(sink.kept) == 25))
    assert [p.recommendation_id for p in sink.kept] == [f"rec-{n}" for n in range(25)]  # in order, once each
    await recorder.close()

    before = dropped("refused"), dropped("failed")
    refused, down = ExposureRecorder(FlakySink(refuse=True)), ExposureRecorder(FlakySink(failures=99), retries=1)
    for recorder in (refused, down):
        recorder.record(record(1))
        await recorder.flush()
    assert (dropped("refused"), dropped("failed")) == (before[0] + 1, before[1] + 1)


async def test_a_full_queue_drops_and_counts_instead_of_waiting() -> None:
    sink = FlakySink(pause=10.0)  # the log hangs
    recorder = ExposureRecorder(sink, max_queued=100, flush_seconds=0.01)
    before = dropped("queue_full")
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n in range(150):
        recorder.record(record(n))
    assert loop.time() - started < 0.5  # never waited on the log
    assert dropped("queue_full") == before + 50 and recorder.queued == 100


async def _true(value: bool) -> bool:
    return value


async def test_variants_change_the_ranking_strategy_and_the_rules(
    suite: Suite, encoder_dir: str, tmp_path: Path
) -> None:
    brands = Counter(brand for _, brand, _, _ in suite.items.values())
    banned = brands.most_common(1)[0][0]
    rules = tmp_path / "b.toml"
    rules.write_text(f'exclude_brands = ["{banned}"]\n')
    variants = [
        {"name": "control", "share": 0.5, "strategy": "popularity"},
        {"name": "b", "share": 0.5, "rules_file": str(rules), "exploration_share": 0.2},
    ]
    async with running_suite(suite, encoder_dir, experiment_variants=variants, exposure_flush_ms=20) as shop:
        seen: dict[str, int] = Counter()
        for n in range(40):
            page = await shop.stub.Recommend(gateway_pb2.RecommendRequest(session_id=f"v-{n}", page_size=6))
            seen[page.experiment_variant] += 1
            if page.experiment_variant == "control":
                assert page.model_version == ""  # not ranked
                assert all(b.sources == [gateway_pb2.BUNDLE_SOURCE_POPULARITY] for b in page.bundles if not b.generated)
            else:
                assert page.model_version
                assert all(i.brand != banned for b in page.bundles for i in b.items)
            last = page
        assert seen["control"] > 5 and seen["b"] > 5

        async def logged_with_share() -> bool:
            found = await logged(shop, last.recommendation_id)
            return found is not None and found.variant_share == 0.5

        await eventually(logged_with_share)
