"""The guarantees users rely on: nothing acknowledged is lost (SIGKILL mid-ingest),
read-your-writes under concurrency, and complete erasure."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid

import grpc
import pytest
from sqlalchemy import select

from bundlerec import db
from bundlerec.profile.exposures import pseudonym
from bundlerec.v1 import common_pb2, exposures_pb2, exposures_pb2_grpc, profile_pb2, profile_pb2_grpc
from tests.harness.databases import rows_mentioning
from tests.harness.factories import event, exposure_page
from tests.harness.processes import start_profile
from tests.harness.servers import ProfileServer


@pytest.mark.slow
def test_acknowledged_events_survive_sigkill_mid_ingest(database_url: str) -> None:
    process, address = start_profile(database_url)
    run = uuid.uuid4().hex[:8]
    acked: list[list[str]] = []
    sent: list[list[str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            batch_no = 0
            while not stop.is_set():
                batch = [
                    event(f"kill-{run}-{n}-{i % 5}", f"item-{i}", event_id=f"{run}-{n}-{batch_no}-{i}")
                    for i in range(50)
                ]
                with lock:
                    sent.append([e.event_id for e in batch])
                try:
                    stub.RecordEvents(profile_pb2.RecordEventsRequest(events=batch), timeout=10)
                except grpc.RpcError:
                    return  # the server died under us: this batch was not acknowledged
                with lock:
                    acked.append([e.event_id for e in batch])
                batch_no += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stop.set()
    for t in threads:
        t.join()

    restarted, _ = start_profile(database_url)
    try:
        stored = asyncio.run(_stored_event_ids(database_url, f"{run}-"))
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=30)

    assert len(acked) >= 20
    assert len(sent) > len(acked), "the kill must land while batches are in flight"
    missing = [i for batch in acked for i in batch if i not in stored]
    assert not missing, f"{len(missing)} acknowledged events lost"
    for batch in sent:  # a batch is all or nothing, acknowledged or not
        present = sum(i in stored for i in batch)
        assert present in (0, len(batch)), f"batch half-written: {present}/{len(batch)}"


async def _stored_event_ids(database_url: str, prefix: str) -> set[str]:
    from bundlerec.profile.store import events_t

    engine = db.create_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(events_t.c.event_id).where(events_t.c.event_id.startswith(prefix)))
            return {r[0] for r in rows}
    finally:
        await engine.dispose()


async def test_read_your_writes_with_concurrent_writers_and_readers(profile: ProfileServer) -> None:
    run = uuid.uuid4().hex[:8]
    reader = grpc.aio.insecure_channel(profile.address)  # reads on another connection than writes
    read_stub = profile_pb2_grpc.ProfileServiceStub(reader)
    stale: list[str] = []

    async def writer(n: int) -> None:
        user = f"ryw-{run}-{n}"
        for i in range(8):
            sent = event(user, f"item-{i}", at=time.time() + i * 1e-3)
            await profile.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=[sent]))
            got = (await read_stub.GetProfile(profile_pb2.GetProfileRequest(user_id=user))).profile
            if got.total_events != i + 1 or got.recent_events[-1].event_id != sent.event_id:
                stale.append(f"{user} write {i}: saw {got.total_events} events")

    async def bystander_reader() -> None:  # reads of other users while the writers write
        for _ in range(40):
            await read_stub.GetProfile(profile_pb2.GetProfileRequest(user_id=f"ryw-{run}-0"))

    try:
        await asyncio.gather(*[writer(n) for n in range(16)], *[bystander_reader() for _ in range(4)])
    finally:
        await reader.close()

    assert not stale, stale[:5]


async def test_erasure_leaves_no_row_about_the_user_in_any_table(profile: ProfileServer, database_url: str) -> None:
    user = f"erase-me-{uuid.uuid4().hex[:8]}"
    await profile.stub.SetConsent(profile_pb2.SetConsentRequest(user_id=user, sensitive_categories=True))
    shown = exposure_page(
        user, rec=f"rec-for-{user}", bundles=[("b-1", ["item-2"], [1.0])]
    )  # the page the event below follows from
    await exposures_pb2_grpc.ExposureServiceStub(profile.channel).RecordExposures(
        exposures_pb2.RecordExposuresRequest(exposures=[shown])
    )
    await profile.stub.RecordEvents(
        profile_pb2.RecordEventsRequest(
            events=[
                event(user, "item-1", event_id=f"{user}-e1", category="Health", context={"who": user}),
                event(
                    user,
                    "item-2",
                    event_id=f"{user}-e2",
                    kind=common_pb2.EVENT_TYPE_CLICK,
                    recommendation_id=f"rec-for-{user}",
                ),
            ]
        )
    )
    before = await rows_mentioning(database_url, user)
    assert {"profile_events", "profile_exposures", "profile_outcomes"} <= set(before), before
    assert await rows_mentioning(database_url, pseudonym(b"bundlerec", user))  # the page names its pseudonym

    await profile.stub.DeleteUser(profile_pb2.DeleteUserRequest(user_id=user))

    assert await rows_mentioning(database_url, user) == {}
    assert await rows_mentioning(database_url, pseudonym(b"bundlerec", user)) == {}
    got = (await profile.stub.GetProfile(profile_pb2.GetProfileRequest(user_id=user))).profile
    assert not got.known


async def test_a_batch_retried_after_erasure_does_not_bring_the_user_back(
    profile: ProfileServer, database_url: str
) -> None:
    user = f"retry-erased-{uuid.uuid4().hex[:8]}"
    batch = profile_pb2.RecordEventsRequest(events=[event(user, f"{user}-item", event_id=f"{user}-e1")])
    await profile.stub.RecordEvents(batch)
    await profile.stub.DeleteUser(profile_pb2.DeleteUserRequest(user_id=user))

    retried = await profile.stub.RecordEvents(batch)  # the client never saw the first reply
    got = (await profile.stub.GetProfile(profile_pb2.GetProfileRequest(user_id=user))).profile

    assert (retried.recorded, retried.duplicates) == (0, 1)
    assert not got.known and got.total_events == 0  # the next request treats them as new
    # only the target's anonymous aggregates (its id carries the user's here): no user column
    assert set(await rows_mentioning(database_url, user)) <= {"profile_popularity", "profile_behaviour_log"}


async def test_a_batch_retried_after_consent_withdrawal_is_not_counted_twice(profile: ProfileServer) -> None:
    from bundlerec.v1 import common_pb2

    user = f"retry-withdrawn-{uuid.uuid4().hex[:8]}"
    target = f"{user}-item"
    batch = profile_pb2.RecordEventsRequest(events=[event(user, target, kind=common_pb2.EVENT_TYPE_PURCHASE)])
    await profile.stub.RecordEvents(batch)
    await profile.stub.SetConsent(profile_pb2.SetConsentRequest(user_id=user, personalization=False))

    retried = await profile.stub.RecordEvents(batch)
    popular = await profile.stub.ListPopularTargets(
        profile_pb2.ListPopularTargetsRequest(target_type=common_pb2.TARGET_TYPE_ITEM, page_size=1000)
    )

    assert (retried.anonymized, retried.duplicates) == (0, 1)
    assert {t.target.id: t.score for t in popular.targets}[target] == pytest.approx(5.0)  # one purchase


async def test_remembered_event_ids_are_purged_after_the_retry_window(database_url: str) -> None:
    from bundlerec.profile.service import snapshot_settings
    from bundlerec.profile.settings import ProfileSettings
    from bundlerec.profile.store import SqlProfileStore, anonymous_t

    store = await SqlProfileStore.open(
        database_url, snapshot_settings(ProfileSettings(database_url=database_url)), migrate=True, retry_window_days=30
    )
    stale, fresh = f"stale-{uuid.uuid4().hex}", f"fresh-{uuid.uuid4().hex}"
    today = int(time.time()) // 86_400
    try:
        async with store.engine.begin() as conn:
            await conn.execute(
                anonymous_t.insert(), [{"event_key": stale, "day": today - 31}, {"event_key": fresh, "day": today - 29}]
            )
        await store.record([], default=store_default(), now_us=time.time_ns() // 1000)
        async with store.engine.connect() as conn:
            kept = set(
                (
                    await conn.execute(
                        select(anonymous_t.c.event_key).where(anonymous_t.c.event_key.in_([stale, fresh]))
                    )
                ).scalars()
            )
    finally:
        await store.close()

    assert kept == {fresh}


def store_default():  # type: ignore[no-untyped-def]
    from bundlerec.profile.model import Consent

    return Consent(personalization=True, sensitive_categories=False)
