"""Impression stores: the in-memory one and Redis (real server), behind one interface; two gateway
replicas sharing Redis count together and are erased together; a Redis outage never fails a page."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis

from bundlerec.gateway.impressions import ImpressionStore, ImpressionsUnavailable, MemoryImpressions
from bundlerec.gateway.impressions_redis import RedisImpressions
from bundlerec.gateway.server import assemble
from bundlerec.gateway.settings import GatewaySettings
from bundlerec.runtime.server import start_server
from bundlerec.v1 import gateway_pb2, gateway_pb2_grpc
from tests.harness.processes import free_port
from tests.harness.servers import running_profile

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
    return RedisImpressions.connect(
        REDIS_URL, timeout_seconds=2, key_secret=b"k", rotate_after=rotate_after, prefix=prefix, ttl_seconds=3600
    )


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
        assert await store.record("ann", f"imp-{n}", "b:kit", ["boots", "poles"])
    assert not await store.record("ann", "imp-0", "b:kit", ["boots", "poles"])  # a retry
    assert await store.record("bob", "imp-0", "b:kit", ["boots"])  # ids are per requester
    await store.record("ann", "imp-2", "i:a|b", ["a", "b"])
    assert await store.overexposed("ann", ["b:kit", "i:a|b", "b:other"]) == {"b:kit"}
    assert await store.overexposed("bob", ["b:kit"]) == set()
    await store.interacted("ann", ["poles"])  # one of the kit's items
    assert await store.overexposed("ann", ["b:kit"]) == set()
    for n in range(3, 5):
        await store.record("ann", f"imp-{n}", "b:kit", ["boots", "poles"])
    assert await store.overexposed("ann", ["b:kit"]) == {"b:kit"}
    await store.interacted("ann", ["kit"])  # the bundle itself
    assert await store.overexposed("ann", ["b:kit"]) == set()


async def test_forgetting_a_requester_leaves_nothing(store: ImpressionStore) -> None:
    assert await store.record("ann", "imp-1", "b:kit", ["boots"])
    await store.record("bob", "imp-1", "b:kit", ["boots"])
    assert await store.forget("ann")
    assert not await store.forget("ann") and not await store.holds("ann")
    assert await store.record("ann", "imp-1", "b:kit", ["boots"])  # the id went with the rest
    assert await store.forget("ann")
    assert await store.holds("bob")


async def test_the_user_vector_is_kept_with_the_impressions_and_erased_with_them(store: ImpressionStore) -> None:
    from bundlerec.gateway.impressions import UserVector

    assert await store.user_vector("uv-1") is None
    await store.keep_user_vector("uv-1", UserVector("v7", (0.25, -1.5, 3.0)))
    assert await store.user_vector("uv-1") == UserVector("v7", (0.25, -1.5, 3.0))
    assert await store.forget("uv-1")
    assert await store.user_vector("uv-1") is None


async def test_replicas_sharing_redis_count_together_and_one_erasure_reaches_all(
    redis_prefix: tuple[str, redis.Redis],
) -> None:
    prefix, client = redis_prefix
    first, second = _replica(prefix), _replica(prefix)
    try:
        await first.record("ann", "imp-1", "b:kit", ["boots"])
        await second.record("ann", "imp-2", "b:kit", ["boots"])  # each replica saw one impression
        assert await first.overexposed("ann", ["b:kit"]) == {"b:kit"}
        assert not await first.record("ann", "imp-2", "b:kit", ["boots"])  # reported again to another replica
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        assert len(keys) == 1 and "ann" not in keys[0]  # one key per requester, named by a keyed hash
        assert 0 < await client.ttl(keys[0]) <= 3600  # it expires
        assert await second.forget("ann")
        assert [k async for k in client.scan_iter(match=f"{prefix}*")] == []
        assert await first.overexposed("ann", ["b:kit"]) == set()
    finally:
        await first.close()
        await second.close()


async def test_a_requester_over_the_bound_starts_afresh(redis_prefix: tuple[str, redis.Redis]) -> None:
    prefix, client = redis_prefix
    store = RedisImpressions.connect(REDIS_URL, timeout_seconds=2, key_secret=b"k", prefix=prefix, max_fields=30)
    try:
        for n in range(40):
            await store.record("ann", f"imp-{n}", f"b:{n}", ["x"])
        (key,) = [k async for k in client.scan_iter(match=f"{prefix}*")]
        assert await client.hlen(key) <= 30
        assert await client.hget(key, "c:b:39") == "1"  # the newest impression is kept
    finally:
        await store.close()


async def test_erasure_and_withdrawn_consent_through_the_gateway_empty_redis(
    redis_prefix: tuple[str, redis.Redis], tmp_path: Path
) -> None:
    prefix, client = redis_prefix
    async with running_profile(f"sqlite:///{tmp_path / 'profile.sqlite3'}") as profile:
        nowhere = f"127.0.0.1:{free_port()}"
        settings = GatewaySettings(
            port=0,
            metrics_port=0,
            profile_address=profile.address,
            candidate_address=nowhere,
            ranker_address=nowhere,
            impressions_url=REDIS_URL,
            impressions_key_secret="k",
        )
        gateway = await assemble(settings)
        assert isinstance(gateway.impressions, RedisImpressions)
        gateway.impressions.prefix = prefix  # this test's namespace
        server = await start_server(settings, gateway.parts())
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = gateway_pb2_grpc.RecommendationServiceStub(channel)

                async def shown(user: str) -> None:
                    impression = gateway_pb2.Impression(
                        impression_id=f"i-{user}", user_id=user, recommendation_id="r1", bundle_id="kit"
                    )
                    reply = await stub.Track(gateway_pb2.TrackRequest(impressions=[impression]), timeout=5)
                    assert reply.impressions_recorded == 1
                    assert [k async for k in client.scan_iter(match=f"{prefix}*")]

                await shown("ann")
                assert (await stub.ForgetUser(gateway_pb2.ForgetUserRequest(user_id="ann"), timeout=5)).existed
                assert [k async for k in client.scan_iter(match=f"{prefix}*")] == []
                await shown("bob")
                await stub.SetUserConsent(
                    gateway_pb2.SetUserConsentRequest(user_id="bob", personalization=False), timeout=5
                )
                assert [k async for k in client.scan_iter(match=f"{prefix}*")] == []
        finally:
            await server.stop()


async def test_a_redis_outage_keeps_pages_and_refuses_only_what_must_be_retried() -> None:
    down = RedisImpressions.connect(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.2, key_secret=b"k")
    assert await down.overexposed("ann", ["b:kit"]) == set()  # the page goes on without rotation
    with pytest.raises(ImpressionsUnavailable):
        await down.record("ann", "imp-1", "b:kit", ["boots"])
    with pytest.raises(ImpressionsUnavailable):
        await down.forget("ann")
    await down.close()

    nowhere = f"127.0.0.1:{free_port()}"
    settings = GatewaySettings(
        port=0,
        metrics_port=0,
        profile_address=nowhere,
        candidate_address=nowhere,
        ranker_address=nowhere,
        impressions_url=f"redis://127.0.0.1:{free_port()}/0",
        impressions_timeout_ms=200,
        impressions_key_secret="k",
    )
    gateway = await assemble(settings)
    server = await start_server(settings, gateway.parts())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = gateway_pb2_grpc.RecommendationServiceStub(channel)
            page = await stub.Recommend(gateway_pb2.RecommendRequest(session_id="s1"), timeout=5)
            assert page.degraded  # degraded by the unreachable services, but a page, not an error
            impression = gateway_pb2.Impression(
                impression_id="i1", user_id="u1", recommendation_id="r1", bundle_id="kit"
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Track(gateway_pb2.TrackRequest(impressions=[impression]), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "retry" in (refused.value.details() or "")
    finally:
        await server.stop()


def test_a_malformed_impressions_url_or_a_missing_key_stops_the_start() -> None:
    from bundlerec.gateway.server import open_impressions

    with pytest.raises(SystemExit, match="impressions_url") as stopped:
        open_impressions(GatewaySettings(impressions_url="mysql://app:hunter2@db", impressions_key_secret="k"))
    assert "hunter2" not in str(stopped.value)
    with pytest.raises(SystemExit, match="impressions_key_secret is required"):
        open_impressions(GatewaySettings(impressions_url=REDIS_URL))
