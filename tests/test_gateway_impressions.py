"""Impression stores: the in-memory one and Redis (real server), behind one interface; two gateway
replicas sharing Redis count together and are erased together; a Redis outage never fails a page."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as redis

from bundlerec.gateway.impressions import ImpressionStore, ImpressionsUnavailable, MemoryImpressions
from bundlerec.gateway.impressions_redis import RedisImpressions
from bundlerec.gateway.server import assemble
from bundlerec.gateway.settings import GatewaySettings
from bundlerec.runtime.server import start_server
from bundlerec.v1 import gateway_pb2, gateway_pb2_grpc
from tests.processes import free_port

REDIS_URL = os.environ.get("BUNDLEREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRE_REDIS = os.environ.get("BUNDLEREC_REQUIRE_REDIS") == "1"


@contextlib.asynccontextmanager
async def _redis_namespace() -> AsyncIterator[tuple[str, redis.Redis]]:
    """A key prefix of its own on the real Redis, emptied afterwards. Skips (fails, in CI) without one."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_timeout=2)
    try:
        await client.ping()
    except (redis.RedisError, OSError) as exc:
        await client.aclose()
        if REQUIRE_REDIS:
            pytest.fail(f"Redis is required (BUNDLEREC_REQUIRE_REDIS=1) but unreachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis unreachable at {REDIS_URL}: {exc}")
    prefix = f"bundlerec-test-{uuid.uuid4().hex[:8]}:"
    try:
        yield prefix, client
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[tuple[str, redis.Redis]]:
    async with _redis_namespace() as namespace:
        yield namespace


def _replica(prefix: str, rotate_after: int = 2) -> RedisImpressions:
    return RedisImpressions.connect(REDIS_URL, timeout_seconds=2, key_secret=b"k", rotate_after=rotate_after,
                                    prefix=prefix, ttl_seconds=3600)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ImpressionStore]:
    if request.param == "memory":
        yield MemoryImpressions(rotate_after=2)
        return
    async with _redis_namespace() as (prefix, _):
        replica = _replica(prefix)
        yield replica
        await replica.close()


async def test_bundles_rotate_until_an_interaction_and_retries_count_once(store: ImpressionStore) -> None:
    for n in range(2):
        assert await store.first_time("ann", f"imp-{n}")
        await store.shown("ann", "b:kit", ["boots", "poles"])
    assert not await store.first_time("ann", "imp-0")  # a retry
    assert await store.first_time("bob", "imp-0")  # ids are per requester
    await store.shown("ann", "i:a|b", ["a", "b"])
    assert await store.overexposed("ann", ["b:kit", "i:a|b", "b:other"]) == {"b:kit"}
    assert await store.overexposed("bob", ["b:kit"]) == set()
    await store.interacted("ann", ["poles"])  # one of the kit's items
    assert await store.overexposed("ann", ["b:kit"]) == set()
    for _ in range(2):
        await store.shown("ann", "b:kit", ["boots", "poles"])
    await store.interacted("ann", ["kit"])  # the bundle itself
    assert await store.overexposed("ann", ["b:kit"]) == set()


async def test_forgetting_a_requester_leaves_nothing(store: ImpressionStore) -> None:
    assert await store.first_time("ann", "imp-1")
    await store.shown("ann", "b:kit", ["boots"])
    await store.shown("bob", "b:kit", ["boots"])
    assert await store.forget("ann")
    assert not await store.forget("ann")
    assert await store.first_time("ann", "imp-1")  # the id went with the rest
    assert await store.forget("ann")
    if isinstance(store, MemoryImpressions):
        assert "ann" not in store and "bob" in store
    else:
        assert not await store.holds("ann") and await store.holds("bob")


async def test_replicas_sharing_redis_count_together_and_one_erasure_reaches_all(
    redis_prefix: tuple[str, redis.Redis],
) -> None:
    prefix, client = redis_prefix
    first, second = _replica(prefix), _replica(prefix)
    try:
        await first.shown("ann", "b:kit", ["boots"])
        await second.shown("ann", "b:kit", ["boots"])  # each replica saw one impression
        assert await first.overexposed("ann", ["b:kit"]) == {"b:kit"}
        assert await second.first_time("ann", "imp-9") and not await first.first_time("ann", "imp-9")
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        assert keys and all("ann" not in k for k in keys)  # requesters are named by a keyed hash
        assert all(0 < ttl <= 3600 for ttl in [await client.ttl(k) for k in keys])  # everything expires
        assert await second.forget("ann")
        assert [k async for k in client.scan_iter(match=f"{prefix}*")] == []
        assert await first.overexposed("ann", ["b:kit"]) == set()
    finally:
        await first.close()
        await second.close()


async def test_a_redis_outage_keeps_pages_and_refuses_only_what_must_be_retried() -> None:
    down = RedisImpressions.connect(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.2, key_secret=b"k")
    assert await down.overexposed("ann", ["b:kit"]) == set()  # the page goes on without rotation
    with pytest.raises(ImpressionsUnavailable):
        await down.shown("ann", "b:kit", ["boots"])
    with pytest.raises(ImpressionsUnavailable):
        await down.forget("ann")
    await down.close()

    nowhere = f"127.0.0.1:{free_port()}"
    settings = GatewaySettings(
        port=0, metrics_port=0, profile_address=nowhere, candidate_address=nowhere, ranker_address=nowhere,
        impressions_url=f"redis://127.0.0.1:{free_port()}/0", impressions_timeout_ms=200,
    )
    gateway = await assemble(settings)
    server = await start_server(settings, gateway.parts())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = gateway_pb2_grpc.RecommendationServiceStub(channel)
            page = await stub.Recommend(gateway_pb2.RecommendRequest(session_id="s1"), timeout=5)
            assert page.degraded  # degraded by the unreachable services, but a page, not an error
            impression = gateway_pb2.Impression(impression_id="i1", user_id="u1", recommendation_id="r1",
                                                bundle_id="kit")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Track(gateway_pb2.TrackRequest(impressions=[impression]), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "retry" in (refused.value.details() or "")
    finally:
        await server.stop()


def test_a_malformed_impressions_url_stops_the_start() -> None:
    from bundlerec.gateway.server import open_impressions

    with pytest.raises(SystemExit, match="impressions_url"):
        open_impressions(GatewaySettings(impressions_url="mysql://nope"))
