"""Live statistics on the four services as real processes, on the demo shop (issue 16's
acceptance): purchases of a new pair tracked through the gateway make a Retrieve whose history
holds one return the other from the co-occurrence source within 5 s; a surge of views moves an
item up the popularity source within 5 s; a candidate service restarted mid-stream resumes
without counting an event twice or skipping one."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from sqlalchemy import select

from bundlerec import db
from bundlerec.candidate.schema import meta_t, stats_t
from bundlerec.candidate.statistics import DAY
from bundlerec.candidate.stats_store import EPOCH
from bundlerec.v1 import candidate_pb2, candidate_pb2_grpc, common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.harness.factories import event, recent
from tests.harness.processes import Services, four_services
from tests.harness.servers import eventually
from tests.harness.shops import Suite

pytestmark = pytest.mark.slow
PURCHASE, VIEW = common_pb2.EVENT_TYPE_PURCHASE, common_pb2.EVENT_TYPE_VIEW
CO_OCCURRENCE, POPULARITY = candidate_pb2.CANDIDATE_SOURCE_CO_OCCURRENCE, candidate_pb2.CANDIDATE_SOURCE_POPULARITY


@pytest.fixture
def services(suite: Suite, encoder_dir: str) -> Iterator[Services]:
    with four_services(suite.profile_url, suite.catalogue_url, suite.models, encoder_dir, live_statistics=True) as s:
        yield s


async def track(services: Services, events: list[common_pb2.Event]) -> None:
    async with grpc.aio.insecure_channel(services["gateway"][1]) as channel:
        stub = gateway_pb2_grpc.RecommendationServiceStub(channel)
        for start in range(0, len(events), 1000):
            await stub.Track(gateway_pb2.TrackRequest(events=events[start : start + 1000]), timeout=30)


async def retrieved(services: Services, request: candidate_pb2.RetrieveRequest) -> list[str]:
    async with grpc.aio.insecure_channel(services["candidate"][1]) as channel:
        reply = await candidate_pb2_grpc.CandidateServiceStub(channel).Retrieve(request, timeout=10)
    return [c.target.id for c in reply.items]


def departments(suite: Suite) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item_id, (category, *_) in sorted(suite.items.items()):
        out.setdefault(category.split(">")[0].strip(), []).append(item_id)
    return out


async def test_purchases_of_a_new_pair_and_a_surge_of_views_reach_retrieval(services: Services, suite: Suite) -> None:
    first, second = list(departments(suite).values())[:2]
    together = recent(first[0])
    pair = candidate_pb2.RetrieveRequest(recent=together, item_limit=200, sources=[CO_OCCURRENCE])
    paired_before = set(await retrieved(services, pair))
    a, b = first[0], next(i for i in second if i not in paired_before)
    tag, now = uuid.uuid4().hex[:6], time.time()
    buyers = [f"pair-{tag}-{n}" for n in range(5)]
    await track(
        services,
        [e for u in buyers for e in (event(u, a, kind=PURCHASE, at=now), event(u, b, kind=PURCHASE, at=now + 1))],
    )

    async def paired() -> bool:
        return b in await retrieved(services, pair)

    await eventually(paired, seconds=5, every=0.1)

    popular = candidate_pb2.RetrieveRequest(item_limit=2000, sources=[POPULARITY])
    order = await retrieved(services, popular)
    quiet = order[len(order) // 2]  # an item of middling popularity
    await track(services, [event(f"viewer-{tag}-{n % 50}", quiet, kind=VIEW, at=now + 2) for n in range(1500)])

    async def surged() -> bool:
        return quiet in (await retrieved(services, popular))[:10]

    await eventually(surged, seconds=5, every=0.1)


async def test_a_candidate_service_restarted_mid_stream_counts_every_event_once(
    services: Services, suite: Suite
) -> None:
    item = sorted(suite.items)[7]
    engine = db.create_engine(suite.catalogue_url)

    async def popularity() -> float:
        async with engine.connect() as conn:
            found = (await conn.execute(select(stats_t.c.popularity).where(stats_t.c.item_id == item))).scalar()
        return float(found or 0.0)

    async with engine.connect() as conn:
        epoch = (await conn.execute(select(meta_t.c.value).where(meta_t.c.key == EPOCH))).scalar_one()
    before, tag, now = await popularity(), uuid.uuid4().hex[:6], time.time()
    expected = 0.0
    for batch in range(20):
        if batch == 10:
            await asyncio.to_thread(services.restart, "candidate")
        at = now + batch
        await track(services, [event(f"stream-{tag}-{batch}-{n}", item, kind=PURCHASE, at=at) for n in range(10)])
        expected += 10 * 5.0 * 2.0 ** ((at - epoch) / (30.0 * DAY))

    async def counted() -> bool:
        return await popularity() - before >= expected * (1 - 1e-9)

    await eventually(counted, seconds=30, every=0.2)
    await asyncio.sleep(2.0)  # two more reads of the log: time for a second count, which must not happen
    assert abs((await popularity() - before) / expected - 1) < 1e-6
    await engine.dispose()
