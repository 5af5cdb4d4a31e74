"""Each user's precomputed profile (services/profile/snapshot.py, snapshots.py): built by the first
read after a write, reused until the next, never used once stale, and the same as a profile built
from the events. Real service, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
from sqlalchemy import func, select

from bundlerec.profile.service import snapshot_settings
from bundlerec.profile.settings import ProfileSettings
from bundlerec.profile.store import SqlProfileStore
from bundlerec.v1 import common_pb2, profile_pb2
from tests.harness.databases import postgres_database
from tests.harness.factories import event
from tests.harness.servers import ProfileServer, eventually, running_profile

KINDS = [
    common_pb2.EVENT_TYPE_VIEW,
    common_pb2.EVENT_TYPE_CLICK,
    common_pb2.EVENT_TYPE_ADD_TO_CART,
    common_pb2.EVENT_TYPE_PURCHASE,
    common_pb2.EVENT_TYPE_LIKE,
]
CATEGORIES = ["Home > Kitchen", "Sports > Running", "Health > Pharmacy", "Toys", ""]  # Health: sensitive
SETTINGS = {
    "snapshot_sequence_length": 12,
    "default_sequence_length": 10,
    "affinity_window": 15,
    "sensitive_categories": ["Health"],
    "snapshot_refresh_seconds": 0,  # reads rebuild snapshots; the refresher has a test of its own
}


def shuffled_history(user: str, rng: random.Random, count: int) -> list[common_pb2.Event]:
    """Events with repeated items and timestamps, out of order, in several categories and kinds."""
    base = 1_700_000_000
    return [
        event(
            user,
            f"item-{rng.randrange(8)}",
            kind=rng.choice(KINDS),
            target_type=common_pb2.TARGET_TYPE_BUNDLE if rng.random() < 0.1 else common_pb2.TARGET_TYPE_ITEM,
            at=base + rng.randrange(40) * 43_200,  # half days over three weeks: ties and several days
            category=rng.choice(CATEGORIES),
        )
        for _ in range(count)
    ]


async def rebuilt(database_url: str, user: str, **overrides: object) -> profile_pb2.Profile:
    """The user's profile built from the events, as a stale snapshot would be, without storing it."""
    settings = snapshot_settings(ProfileSettings(database_url=database_url, **{**SETTINGS, **overrides}))
    store = await SqlProfileStore.open(database_url, settings, migrate=False)
    try:
        encoded = await store.build_snapshot(user, settings, keep=False)
    finally:
        await store.close()
    assert encoded is not None
    return profile_pb2.Profile.FromString(encoded)


async def get(server: ProfileServer, user: str, length: int = 0) -> profile_pb2.Profile:
    reply = await server.stub.GetProfile(profile_pb2.GetProfileRequest(user_id=user, sequence_length=length))
    return reply.profile


def same(a: profile_pb2.Profile, b: profile_pb2.Profile) -> None:
    assert [(x.category, pytest.approx(x.score)) for x in a.affinities] == [(x.category, x.score) for x in b.affinities]
    a, b = profile_pb2.Profile.FromString(a.SerializeToString()), profile_pb2.Profile.FromString(b.SerializeToString())
    del a.affinities[:], b.affinities[:]
    assert a == b


async def test_reads_after_many_small_writes_equal_a_profile_rebuilt_from_the_events(database_url: str) -> None:
    rng = random.Random(7)
    users = [f"snap-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    async with running_profile(database_url, **SETTINGS) as server:
        history = [e for user in users for e in shuffled_history(user, rng, 60)]
        rng.shuffle(history)
        for start in range(0, len(history), 7):  # batches mixing users, timestamps out of order
            await server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=history[start : start + 7]))
        await server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=history[:10]))  # a retry: no change
        for user in users:
            kept = await get(server, user, 12)
            assert len(kept.recent_events) == 12 and kept.total_events == 60
            assert all(not e.category.startswith("Health") for e in kept.recent_events)  # no sensitive consent
            same(kept, await rebuilt(database_url, user))
            shorter = await get(server, user, 5)
            assert list(shorter.recent_events) == list(kept.recent_events[-5:])  # the newest five, oldest first
            longer = await get(server, user, 40)  # beyond what snapshots keep: read from the events
            assert list(longer.recent_events[-12:]) == list(kept.recent_events)


async def test_consent_changes_rebuild_the_snapshot_at_once(database_url: str) -> None:
    user = f"snap-{uuid.uuid4().hex[:8]}"
    async with running_profile(database_url, **SETTINGS) as server:
        events = [event(user, "pill", category="Health > Pharmacy", at=1_700_000_000 + i) for i in range(3)]
        await server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=events))
        assert len((await get(server, user)).recent_events) == 0  # sensitive, no consent for it
        await server.stub.SetConsent(profile_pb2.SetConsentRequest(user_id=user, sensitive_categories=True))
        shown = await get(server, user)
        assert [e.target.id for e in shown.recent_events] == ["pill"] * 3 and shown.affinities[0].category
        await server.stub.SetConsent(profile_pb2.SetConsentRequest(user_id=user, personalization=False))
        withdrawn = await get(server, user)
        assert (len(withdrawn.recent_events), withdrawn.total_events, list(withdrawn.affinities)) == (0, 0, [])


async def test_a_snapshot_built_under_other_settings_is_not_used_but_replaced(database_url: str) -> None:
    user = f"snap-{uuid.uuid4().hex[:8]}"
    events = [event(user, f"i{i}", category=CATEGORIES[i % 2], at=1_700_000_000 + i) for i in range(6)]
    async with running_profile(database_url, **SETTINGS) as server:
        await server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=events))
        assert len((await get(server, user)).recent_events) == 6
    # the same store under another sensitive list: "Home" is sensitive now
    async with running_profile(database_url, **{**SETTINGS, "sensitive_categories": ["Home"]}) as server:
        shown = await get(server, user)
        assert [e.target.id for e in shown.recent_events] == ["i1", "i3", "i5"]
        assert [a.category for a in shown.affinities] == ["Sports > Running"]
        other = snapshot_settings(
            ProfileSettings(database_url=database_url, **{**SETTINGS, "sensitive_categories": ["Home"]})
        )
        assert await stored_key(database_url, user) == other.key  # replaced by the one built for this read
        same(shown, await rebuilt(database_url, user, sensitive_categories=["Home"]))


@pytest.mark.postgres
async def test_a_write_committed_while_a_snapshot_is_built_keeps_it_stale() -> None:
    """A reader's rebuild sees one state of the store; a write committed meanwhile keeps its change
    row, so the next read does not serve the rebuilt (older) snapshot. PostgreSQL only: SQLite
    writers, rebuilds included, run one at a time."""

    with postgres_database() as database_url:
        await _write_during_rebuild(database_url)


async def _write_during_rebuild(database_url: str) -> None:
    from bundlerec.profile import snapshots

    user = f"snap-{uuid.uuid4().hex[:8]}"
    settings = snapshot_settings(ProfileSettings(database_url=database_url, **SETTINGS))
    async with running_profile(database_url, **SETTINGS) as server:
        await server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=[event(user, "a", at=1_700_000_000)]))
        store = await SqlProfileStore.open(database_url, settings, migrate=False)
        try:
            async with store.engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
                async with conn.begin():
                    await conn.execute(select(1))  # the transaction's view of the store starts here
                    late = event(user, "b", at=1_700_000_100)
                    await server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=[late]))
                    built = await snapshots.rebuild(conn, True, user, settings, 0)
            assert built is not None and [e.target.id for e in profile_pb2.Profile.FromString(built).recent_events] == [
                "a"
            ]
        finally:
            await store.close()
        assert [e.target.id for e in (await get(server, user)).recent_events] == ["a", "b"]
        assert await change_rows(database_url, user) == 0  # that read rebuilt it, covering the late write


async def test_reads_reuse_the_snapshot_until_the_next_write(database_url: str) -> None:
    user = f"snap-{uuid.uuid4().hex[:8]}"
    async with running_profile(database_url, **SETTINGS) as server:
        await server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=[event(user, "a", at=1_700_000_000)]))
        assert await change_rows(database_url, user) == 1
        first = await get(server, user)
        assert await change_rows(database_url, user) == 0  # built and stored by that read
        assert await get(server, user) == first
        await server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=[event(user, "b", at=1_700_000_001)]))
        assert await change_rows(database_url, user) == 1
        assert [e.target.id for e in (await get(server, user)).recent_events] == ["a", "b"]
        await server.stub.DeleteUser(profile_pb2.DeleteUserRequest(user_id=user))
        assert not (await get(server, user)).known


async def test_the_refresher_rebuilds_stale_snapshots_before_anyone_reads_them(database_url: str) -> None:
    user = f"snap-{uuid.uuid4().hex[:8]}"
    async with running_profile(database_url, **{**SETTINGS, "snapshot_refresh_seconds": 0.05}) as server:
        await server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=[event(user, "a", at=1_700_000_000)]))

        async def rebuilt() -> bool:  # no read in between: only the refresher can have built it
            return await change_rows(database_url, user) == 0

        await eventually(rebuilt, seconds=5)
        assert [e.target.id for e in (await get(server, user)).recent_events] == ["a"]


async def test_a_service_stopped_while_its_refresher_rebuilds_leaves_the_store_writable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'profile.sqlite3'}"
    events = [event(f"busy-{n}", "a", at=1_700_000_000) for n in range(300)]
    async with running_profile(url, **SETTINGS) as server:  # no refresher: 300 stale snapshots stay
        await server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=events))
    async with running_profile(url, **{**SETTINGS, "snapshot_refresh_seconds": 0.01}):
        await asyncio.sleep(0.3)  # stopped at some moment of rebuilding them (one transaction: not observable)
    async with running_profile(url, **SETTINGS) as server:  # its start migrates: takes the writer lock
        await server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=[event("busy-0", "b")]))


async def change_rows(database_url: str, user: str) -> int:
    from bundlerec.profile.snapshots import changes_t

    settings = snapshot_settings(ProfileSettings(database_url=database_url))
    store = await SqlProfileStore.open(database_url, settings, migrate=False)
    try:
        async with store.engine.connect() as conn:
            query = select(func.count()).select_from(changes_t).where(changes_t.c.user_id == user)
            return (await conn.execute(query)).scalar_one()
    finally:
        await store.close()


async def stored_key(database_url: str, user: str) -> str:
    from bundlerec.profile.snapshots import snapshots_t

    settings = snapshot_settings(ProfileSettings(database_url=database_url))
    store = await SqlProfileStore.open(database_url, settings, migrate=False)
    try:
        async with store.engine.connect() as conn:
            query = select(snapshots_t.c.snapshot_key).where(snapshots_t.c.user_id == user)
            return (await conn.execute(query)).scalar_one()
    finally:
        await store.close()
