"""What `bundlerec retrain` reads through the services' APIs: ExportTrainingEvents and ListBundles,
on real servers, and the training set it writes (no user id, nobody erased)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path

import grpc
import pytest

from bundlerec.commands.recorded import export_recorded
from bundlerec.datasets import read_dataset
from bundlerec.runtime.tls import ChannelSecurity
from bundlerec.v1 import candidate_pb2, common_pb2, profile_pb2
from tests.harness.factories import event
from tests.harness.servers import ProfileServer, field_of, running_candidate, running_profile

T0 = 1_700_000_000


async def test_the_training_set_holds_no_user_id_and_nobody_erased(
    database_url: str, encoder_dir: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    kept, erased, private = f"user-kept-{tag}", f"user-erased-{tag}", f"user-private-{tag}"
    items = [
        common_pb2.Item(item_id=f"{name}-{tag}", title=name) for name in ("phone", "case", "pills", "mug", "ghost")
    ]
    async with (
        running_profile(database_url, sensitive_categories=["Health"]) as profile,
        running_candidate(f"sqlite:///{tmp_path / 'catalogue.sqlite3'}", encoder_dir) as candidate,
    ):
        await candidate.stub.UpsertItems(candidate_pb2.UpsertItemsRequest(items=items))
        await candidate.stub.UpsertBundles(
            candidate_pb2.UpsertBundlesRequest(
                bundles=[common_pb2.Bundle(bundle_id=f"kit-{tag}", item_ids=[f"phone-{tag}", f"case-{tag}"])]
            )
        )
        await profile.stub.SetConsent(profile_pb2.SetConsentRequest(user_id=private, personalization=False))
        bundle = common_pb2.TARGET_TYPE_BUNDLE
        await profile.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=[
            event(kept, f"phone-{tag}", at=T0),
            event(kept, f"pills-{tag}", at=T0 + 10, category="Health > Vitamins"),
            event(kept, f"kit-{tag}", target_type=bundle, kind=common_pb2.EVENT_TYPE_PURCHASE, at=T0 + 20),
            event(kept, f"deleted-{tag}", at=T0 + 25),
            event(erased, f"mug-{tag}", at=T0 + 30),
            event(private, f"ghost-{tag}", at=T0 + 40),
            event(kept, f"case-{tag}", at=T0 + 10_000),
        ]))  # fmt: skip
        await profile.stub.DeleteUser(profile_pb2.DeleteUserRequest(user_id=erased))
        out = tmp_path / "recorded"
        await asyncio.to_thread(
            export_recorded,
            out,
            profile=profile.address,
            candidate=candidate.address,
            security=ChannelSecurity(),
            since=dt.datetime.fromtimestamp(T0, dt.UTC),
            until=dt.datetime.fromtimestamp(T0 + 5_000, dt.UTC),
            progress=lambda line: None,
        )
    dataset = read_dataset(out)
    assert {b.bundle_id for b in dataset.bundles.values()} == {f"kit-{tag}"}
    assert len(dataset.items) >= 5
    mine = [e for e in dataset.events if e.target_id.endswith(tag)]
    assert [(e.target_id, e.event_type) for e in mine] == [(f"phone-{tag}", "view"), (f"kit-{tag}", "purchase")], (
        "the sensitive event without consent, the unknown item, the erased user, the user without consent and "
        "the event after `until` are all left out"
    )
    assert len({e.user_id for e in mine}) == 1
    files = "".join(path.read_text() for path in out.iterdir())
    assert kept not in files and erased not in files and private not in files, "users are pseudonyms"


async def test_pseudonyms_depend_on_the_key_and_pages_cover_everything(profile: ProfileServer) -> None:
    tag = uuid.uuid4().hex[:6]
    at = T0 + 100_000 + int(uuid.uuid4().int % 10_000) * 100  # a range no other test writes to
    await profile.stub.RecordEvents(
        profile_pb2.RecordEventsRequest(events=[event(f"u{n}-{tag}", f"i{n}-{tag}", at=at + n) for n in range(5)])
    )

    async def export(key: str) -> list[profile_pb2.TrainingEvent]:
        request = profile_pb2.ExportTrainingEventsRequest(
            since={"seconds": at}, until={"seconds": at + 5}, pseudonym_key=key, page_size=2
        )
        events: list[profile_pb2.TrainingEvent] = []
        while True:
            reply = await profile.stub.ExportTrainingEvents(request)
            events += reply.events
            if not reply.next_page_token:
                return events
            request.page_token = reply.next_page_token

    first, second = await export("a" * 16), await export("b" * 16)
    assert sorted(e.target.id for e in first) == [f"i{n}-{tag}" for n in range(5)], "each once, over three pages"
    assert len({e.user for e in first}) == 5
    assert not {e.user for e in first} & {e.user for e in second}, "two keys: two exports that cannot be joined"
    assert [e.user for e in first] == [e.user for e in await export("a" * 16)], "one key: the same pseudonyms"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "pseudonym_key"),
        ({"pseudonym_key": "short"}, "pseudonym_key"),
        ({"pseudonym_key": "k" * 16, "page_size": -1}, "page_size"),
        ({"pseudonym_key": "k" * 16, "page_token": "garbage"}, "page_token"),
        ({"pseudonym_key": "k" * 16, "since": {"seconds": 10}, "until": {"seconds": 10}}, "until"),
        ({"pseudonym_key": "k" * 16, "since": {"seconds": -1}}, "since"),
        ({"pseudonym_key": "k" * 16, "since": {"seconds": 4_102_444_800}}, "since"),  # 2100: no until before it
    ],
)
async def test_a_bad_export_request_names_the_field(profile: ProfileServer, fields: dict, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await profile.stub.ExportTrainingEvents(profile_pb2.ExportTrainingEventsRequest(**fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(caught.value) == field


async def test_list_bundles_pages_in_id_order(encoder_dir: str, tmp_path: Path) -> None:
    async with running_candidate(f"sqlite:///{tmp_path / 'catalogue.sqlite3'}", encoder_dir) as candidate:
        items = [common_pb2.Item(item_id=f"i{n}", title=f"item {n}") for n in range(3)]
        await candidate.stub.UpsertItems(candidate_pb2.UpsertItemsRequest(items=items))
        bundles = [
            common_pb2.Bundle(bundle_id=f"b{n}", title=f"kit {n}", item_ids=["i0", f"i{n % 2 + 1}"]) for n in range(5)
        ]
        await candidate.stub.UpsertBundles(candidate_pb2.UpsertBundlesRequest(bundles=bundles[::-1]))
        seen, token = [], ""
        while True:
            reply = await candidate.stub.ListBundles(candidate_pb2.ListBundlesRequest(page_size=2, page_token=token))
            seen += reply.bundles
            token = reply.next_page_token
            if not token:
                break
        assert [(b.bundle_id, list(b.item_ids), b.title) for b in seen] == [
            (b.bundle_id, list(b.item_ids), b.title) for b in bundles
        ]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await candidate.stub.ListBundles(candidate_pb2.ListBundlesRequest(page_token="nope"))
        assert field_of(caught.value) == "page_token"


async def test_bundlerec_retrain_reads_the_services_and_deletes_its_training_set(
    encoder_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch", reason="retraining needs the train extra (torch)")
    from bundlerec.commands.cli import main as bundlerec
    from bundlerec.commands.importer import ImportTargets, import_dataset
    from bundlerec.datasets.demo import generate_demo_shop
    from bundlerec.ranking import promotion

    generate_demo_shop(tmp_path / "shop", seed=3, users=150, items=150, bundles=30, days=8, drift=True)
    catalogue, profiles = f"sqlite:///{tmp_path / 'catalogue.sqlite3'}", f"sqlite:///{tmp_path / 'profile.sqlite3'}"
    await import_dataset(str(tmp_path / "shop"), ImportTargets(catalogue, profiles, encoder_dir), say=lambda _: None)
    monkeypatch.setenv("BUNDLEREC_RETRAIN_WORK_DIR", str(tmp_path / "work"))
    models = tmp_path / "models"
    async with running_profile(profiles) as profile, running_candidate(catalogue, encoder_dir) as candidate:
        args = ["retrain", "--profile", profile.address, "--candidate", candidate.address, "--models", str(models)]
        code = await asyncio.to_thread(bundlerec, [*args, "--no-text", "--epochs", "1", "--history-days", "3650"])
    assert code == 0
    (decision,) = promotion.decisions(models)
    assert decision.decision == promotion.PROMOTED and promotion.serving_version(models) == decision.version
    assert not any((tmp_path / "work").iterdir()), "the exported training set is deleted after the run"
