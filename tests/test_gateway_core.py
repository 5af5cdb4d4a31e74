"""The gateway's three seams without the four services: what a request may use (consent.py), how a
stage is called (stages.py), and the write path (accounts.py), with in-process fakes only where a
fault is injected (a stage that fails, a profile service that does not answer in time)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from bundlerec.errors import Unavailable
from bundlerec.events import EventType
from bundlerec.gateway.accounts import Accounts, ConsentState, Impression, Recorded
from bundlerec.gateway.clients import AccountsClient
from bundlerec.gateway.consent import ConsentPolicy
from bundlerec.gateway.impressions import MemoryImpressions
from bundlerec.gateway.model import HistoryStep, Requester, Stage
from bundlerec.gateway.ports import CandidateFilter, StageFailed
from bundlerec.gateway.rules import Rules, candidate_filter
from bundlerec.gateway.stages import StageRunner, StageSettings
from bundlerec.privacy import SensitiveCategories

POLICY = ConsentPolicy(SensitiveCategories(["Health"]), history_length=3)


def step(target: str, category: str, is_bundle: bool = False) -> HistoryStep:
    return HistoryStep(target, is_bundle, EventType.VIEW, 1, category)


HISTORY = (
    step("old", "Kitchen > Kettles"),
    step("pills", "Health > Vitamins"),
    step("b1", "", is_bundle=True),
    step("unknown", ""),
    step("newest-health", "Health > Tests"),
)


def profile(personalized: bool, sensitive: bool) -> Requester:
    return Requester(
        "u1",
        anonymous=False,
        personalized=personalized,
        sensitive_allowed=sensitive,
        history=HISTORY,
        affinities=(("Health", 2.0), ("Kitchen", 1.0)),
        purchased=frozenset({"old"}),
    )


def test_without_personalization_nothing_personal_is_allowed_even_with_sensitive_consent() -> None:
    allowed = POLICY.allowed(profile(personalized=False, sensitive=True), answered=True)
    assert allowed.declined and not allowed.personalized
    assert (allowed.history, allowed.purchased, allowed.affinities) == ((), frozenset(), ())
    assert not allowed.evidence("Health > Vitamins") and allowed.evidence("Kitchen")
    assert allowed.history_anchor() == ""


def test_personalized_requests_get_the_recent_history_and_sensitive_evidence_only_with_consent() -> None:
    allowed = POLICY.allowed(profile(personalized=True, sensitive=False), answered=True)
    assert not allowed.declined and [s.target_id for s in allowed.history] == ["b1", "unknown", "newest-health"]
    assert allowed.purchased == {"old"} and not allowed.evidence("Health > Vitamins")
    assert allowed.history_anchor() == ""  # a bundle, an uncategorized item, a sensitive one: none is evidence
    longer = ConsentPolicy(POLICY.sensitive, history_length=5)
    assert longer.allowed(profile(True, False), answered=True).history_anchor() == "old"
    assert longer.allowed(profile(True, True), answered=True).history_anchor() == "newest-health"


def test_a_failed_profile_or_an_anonymous_visitor_is_not_a_decline() -> None:
    for allowed in (POLICY.unknown("u1", anonymous=False), POLICY.unknown("session", anonymous=True)):
        assert not allowed.declined and not allowed.personalized and allowed.history == ()


async def test_the_runner_gives_each_stage_its_share_and_records_what_stood_in() -> None:
    runner = StageRunner(StageSettings(deadline_seconds=1.0, breaker_failures=2, breaker_reset_seconds=60))
    run = runner.start(caller_seconds=None, debug=True)
    budgets = []

    async def answer(seconds: float) -> str:
        budgets.append(seconds)
        return "ok"

    assert await runner.call(run, Stage.PROFILE, "anonymous", answer) == "ok"
    assert 0.19 < budgets[0] <= 0.2  # its share: the later stages' are kept
    assert [t.stage for t in run.trace.stages] == [Stage.PROFILE] and not run.degraded

    async def down(seconds: float) -> str:
        raise StageFailed("unavailable")

    for _ in range(2):
        assert await runner.call(run, Stage.RANKER, "candidate_order", down, key="v1") is None
    assert await runner.call(run, Stage.RANKER, "candidate_order", answer, key="v1") is None  # open: not called
    assert [(d.reason, d.fallback) for d in run.degraded] == [("unavailable", "candidate_order")] * 2 + [
        ("circuit_open", "candidate_order")
    ]
    assert await runner.call(run, Stage.RANKER, "candidate_order", answer, key="v2") == "ok"  # its own breaker


async def test_a_caller_deadline_shorter_than_the_configured_one_bounds_every_stage() -> None:
    runner = StageRunner(StageSettings(deadline_seconds=1.0))
    run = runner.start(caller_seconds=0.01, debug=False)
    seen = []

    async def answer(seconds: float) -> None:
        seen.append(seconds)

    await runner.call(run, Stage.CANDIDATES, "cached_popular", answer)
    assert seen and seen[0] <= 0.004  # 40 % of 10 ms


class Profile:
    """The profile service's write side as the accounts see it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None]] = []

    async def record_events(self, events, seconds):  # type: ignore[no-untyped-def]
        self.calls.append(("record", seconds))
        return Recorded(recorded=len(events))

    async def set_consent(self, user_id, personalization, sensitive, seconds):  # type: ignore[no-untyped-def]
        self.calls.append(("consent", seconds))
        return ConsentState(bool(personalization), bool(sensitive), 1)

    async def delete_user(self, user_id, seconds):  # type: ignore[no-untyped-def]
        self.calls.append(("delete", seconds))
        return False


async def test_withdrawing_consent_and_forgetting_erase_the_gateways_impressions_too() -> None:
    impressions, profile_side = MemoryImpressions(), Profile()
    accounts = Accounts(profile_side, impressions)
    shown = [Impression(f"i{n}", "u1", "bundle-1", ("a", "b")) for n in range(3)]
    tracked = await accounts.track(["e1"], [("u1", "a")], [*shown, shown[0]], seconds=0.5)
    assert (tracked.recorded.recorded, tracked.impressions) == (1, 3)  # a repeated impression id counts once
    assert await impressions.holds("u1")
    await accounts.set_consent("u1", personalization=False, sensitive=None, seconds=0.25)
    assert not await impressions.holds("u1")
    await accounts.track([], [], shown[:1])
    assert await accounts.forget("u1", seconds=0.125)  # the profile kept nothing, the impressions existed
    assert not await impressions.holds("u1")
    assert profile_side.calls == [("record", 0.5), ("consent", 0.25), ("delete", 0.125)]


async def test_a_write_carries_the_callers_deadline_to_the_profile_service() -> None:
    async def never_answers(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(10)  # the injected fault
        return b""

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bundlerec.v1.ProfileService", {"DeleteUser": grpc.unary_unary_rpc_method_handler(never_answers)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = AccountsClient(channel, timeout_seconds=5.0)
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await client.delete_user("u1", seconds=0.2)
            assert time.monotonic() - started < 2.0  # not the 5 s cap
    finally:
        await server.stop(None)


def test_one_rules_to_filter_mapping_serves_pages_and_searches() -> None:
    rules = Rules(
        in_stock_only=True,
        include_categories=["Kitchen"],
        exclude_brands=["Acme"],
        min_price=5.0,
        blocklist_items=["bad-item"],
        blocklist_bundles=["bad-bundle"],
    )
    page = candidate_filter(rules)
    assert page.include_categories == ("Kitchen",) and page.min_price == 5.0
    assert page.exclude_brands == ("Acme",) and page.exclude_item_ids == ("bad-item",)
    assert page.exclude_bundle_ids == ("bad-bundle",)
    caller = CandidateFilter(in_stock_only=False, exclude_brands=("Other",), max_price=50.0)
    search = candidate_filter(rules, caller)
    # what holds for everything shown is added to the caller's filter; the scope stays the caller's
    assert search.in_stock_only and search.exclude_brands == ("Other", "Acme")
    assert search.exclude_item_ids == ("bad-item",) and search.include_categories == ()
    assert (search.min_price, search.max_price) == (None, 50.0)


def test_the_public_api_does_not_import_an_internal_one() -> None:
    from bundlerec.v1 import gateway_pb2

    imported = {d.name for d in gateway_pb2.DESCRIPTOR.dependencies}
    assert imported <= {"bundlerec/v1/common.proto", "google/protobuf/timestamp.proto"}, imported
