"""Live statistics: what the profile service records reaches the candidate service's popularity
and co-occurrence, on every replica, counted once, without a user id."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import select

from bundlerec.candidate.live import Observed, Target, increments
from bundlerec.candidate.statistics import Interaction, behaviour_statistics
from bundlerec.events import EventType
from bundlerec.v1 import candidate_pb2, common_pb2, profile_pb2
from tests.harness.databases import rows_mentioning
from tests.harness.factories import event, recent
from tests.harness.servers import eventually, running_candidate, running_profile


def test_live_counts_are_the_import_s_counts_for_the_same_history() -> None:
    steps = [("kettle", EventType.VIEW, 100), ("mug", EventType.PURCHASE, 200), ("beans", EventType.CLICK, 300)]
    imported = behaviour_statistics(
        [Interaction("u1", kind, False, item, at) for item, kind, at in steps], {}, unix_time=True
    )
    observed = [
        Observed(
            Target(False, item, kind),
            at,
            tuple((Target(False, prior, prior_kind), n - j) for j, (prior, prior_kind, _) in enumerate(steps[:n])),
        )
        for n, (item, kind, at) in enumerate(steps)
    ]
    live = increments(observed, {}, epoch_s=300, half_life_days=30.0)
    assert live.popularity.keys() == imported.popularity.keys()
    assert all(abs(live.popularity[i] - imported.popularity[i]) < 1e-9 for i in imported.popularity)
    assert live.item_pairs.keys() == imported.item_pairs.keys()
    # a partner's weight grows with the time of the event that names it, not its own (the log
    # carries no partner times): seconds apart against a 30-day half-life
    assert all(abs(live.item_pairs[p] / imported.item_pairs[p] - 1) < 1e-4 for p in imported.item_pairs)


async def test_recorded_behaviour_reaches_every_replica_once_and_anonymously(tmp_path: Path, encoder_dir: str) -> None:
    tag = uuid.uuid4().hex[:6]
    shoppers, private = [f"s{n}-{tag}" for n in range(3)], f"private-{tag}"
    catalogue = f"sqlite:///{tmp_path / 'catalogue.sqlite3'}"
    fast = {"feed_poll_seconds": 0.05, "behaviour_poll_seconds": 0.05}
    async with running_profile(f"sqlite:///{tmp_path / 'profile.sqlite3'}") as profile:
        async with (
            running_candidate(catalogue, encoder_dir, profile_address=profile.address, **fast) as first,
            running_candidate(catalogue, encoder_dir, profile_address=profile.address, **fast) as second,
        ):
            await first.stub.UpsertItems(candidate_pb2.UpsertItemsRequest(items=[
                common_pb2.Item(item_id=i, title=t) for i, t in
                (("kettle", "Gooseneck kettle"), ("mug", "Enamel mug"), ("phone", "Smartphone"), ("beans", "Beans"))
            ]))  # fmt: skip
            await profile.stub.SetConsent(profile_pb2.SetConsentRequest(user_id=private, personalization=False))
            events = [
                e for s in shoppers for e in (event(s, "kettle"), event(s, "mug", kind=common_pb2.EVENT_TYPE_PURCHASE))
            ]
            events += [event(private, "phone", kind=common_pb2.EVENT_TYPE_PURCHASE) for _ in range(4)]
            await profile.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=events))

            async def learned(server) -> bool:  # type: ignore[no-untyped-def]
                together = await server.stub.Retrieve(
                    candidate_pb2.RetrieveRequest(
                        recent=recent("kettle"), item_limit=3, sources=[candidate_pb2.CANDIDATE_SOURCE_CO_OCCURRENCE]
                    )
                )
                popular = await server.stub.Retrieve(candidate_pb2.RetrieveRequest(
                    item_limit=2, sources=[candidate_pb2.CANDIDATE_SOURCE_POPULARITY]))  # fmt: skip
                return [c.target.id for c in together.items][:1] == ["mug"] and [
                    c.target.id for c in popular.items
                ] == ["phone", "mug"]

            for server in (first, second):
                await eventually(lambda server=server: learned(server), seconds=20)

    # counted once though both replicas read the log: 4 purchases x 5 (growth ~1: the epoch is the first event)
    from bundlerec import db
    from bundlerec.candidate.schema import stats_t

    engine = db.create_engine(catalogue)
    async with engine.connect() as conn:
        phone = (await conn.execute(select(stats_t.c.popularity).where(stats_t.c.item_id == "phone"))).scalar_one()
    await engine.dispose()
    assert 20.0 <= phone < 20.1
    for who in (*shoppers, private, tag):
        assert await rows_mentioning(catalogue, who) == {}, "no user id in the catalogue store"
