"""Assembles the gateway for the shared runtime: channels to the three services, the pipeline, and
the background tasks that keep the rules and the popular fallback fresh."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from bundlerec.gateway.accounts import Accounts
from bundlerec.gateway.builder import BuildLimits
from bundlerec.gateway.clients import AccountsClient, CandidateClient, ProfileClient, RankerClient
from bundlerec.gateway.experiments import Experiments
from bundlerec.gateway.exploration import BanditState, ExplorationSettings, Explorer
from bundlerec.gateway.exposure_client import ExposureClient
from bundlerec.gateway.exposures import ExposureLog, ExposureRecorder, NoExposures
from bundlerec.gateway.impressions import ImpressionStore, MemoryImpressions
from bundlerec.gateway.pipeline import PipelineSettings, Recommender
from bundlerec.gateway.popular import PopularCache
from bundlerec.gateway.rules import RulesError, RulesSource
from bundlerec.gateway.servicer import GatewayServicer
from bundlerec.gateway.settings import GatewaySettings
from bundlerec.gateway.stages import StageSettings
from bundlerec.privacy import SensitiveCategories
from bundlerec.runtime.server import ServiceParts
from bundlerec.runtime.tls import open_channel
from bundlerec.runtime.tracing import client_interceptors
from bundlerec.v1 import gateway_pb2, gateway_pb2_grpc

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["RecommendationService"].full_name


async def _connect(channels: list[grpc.aio.Channel], seconds: float = 2.0) -> None:
    """Opens the connections before the first request, whose budget would otherwise pay for them;
    a service that is not up yet is no reason to wait longer (its stage degrades until it is)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await asyncio.gather(*(channel.channel_ready() for channel in channels))


@dataclass
class Gateway:
    servicer: GatewayServicer
    impressions: ImpressionStore  # the gateway's only per-user state (erased with the user)
    popular: PopularCache
    close: Callable[[], Awaitable[None]]

    async def readiness(self) -> str | None:
        """Ready once the candidate service has answered: from then on every page has at least the
        popular fallback; before, a page would be empty, so traffic is better sent to another replica."""
        return None if self.popular.primed else "the candidate service has not answered yet (no page to serve)"

    def parts(self) -> ServiceParts:
        return ServiceParts(
            name="gateway",
            register=lambda server: gateway_pb2_grpc.add_RecommendationServiceServicer_to_server(self.servicer, server),
            service_names=[SERVICE_NAME],
            readiness=self.readiness,
            close=self.close,
        )


async def build(settings: GatewaySettings) -> ServiceParts:
    return (await assemble(settings)).parts()


def open_impressions(settings: GatewaySettings) -> ImpressionStore:
    url = settings.impressions_url.get_secret_value()
    if not url:
        return MemoryImpressions(settings.rotate_after_impressions)
    from bundlerec.gateway.impressions_redis import RedisImpressions

    key_secret = settings.impressions_key_secret.get_secret_value().encode()
    if not key_secret:
        raise SystemExit(
            "bundlerec serve gateway: impressions_key_secret is required with impressions_url "
            "(it keys the names under which requesters are kept)"
        )
    try:
        return RedisImpressions.connect(
            url,
            timeout_seconds=settings.impressions_timeout_ms / 1000,
            key_secret=key_secret,
            rotate_after=settings.rotate_after_impressions,
            ttl_seconds=settings.impressions_ttl_seconds,
        )
    except ValueError:  # the URL's scheme or form (not echoed: it may hold a password)
        raise SystemExit("bundlerec serve gateway: impressions_url: not a redis://, rediss:// or unix:// URL") from None


async def assemble(settings: GatewaySettings) -> Gateway:
    """A bad rules file stops the start (SystemExit naming the field); downstream services need not
    be up: the gateway serves degraded pages until they are."""
    try:
        rules = RulesSource(settings.rules_file or None)
        variant_rules = {v.name: RulesSource(v.rules_file) for v in settings.experiment_variants if v.rules_file}
    except RulesError as error:
        raise SystemExit(f"bundlerec serve gateway: {error}") from None
    security = settings.client_security()
    traced = client_interceptors("gateway", settings) or ()  # tracing on: spans and x-request-id downstream
    channels = [
        open_channel(address, security, interceptors=traced)
        for address in (settings.profile_address, settings.candidate_address, settings.ranker_address)
    ]
    profile_channel, candidate_channel, ranker_channel = channels
    candidates = CandidateClient(candidate_channel, settings.catalogue_ttl_seconds)
    popular = PopularCache(candidates, limit=settings.candidate_limit)
    impressions = open_impressions(settings)
    exposure_client = ExposureClient(profile_channel)
    bandit = BanditState(exposure_client)
    explorer = Explorer(
        bandit,
        ExplorationSettings(
            share=settings.exploration_share,
            placement_caps=settings.exploration_placement_caps,
            max_exposures=settings.exploration_max_exposures,
        ),
    )
    exposures: ExposureLog = NoExposures()
    if settings.record_exposures:
        exposures = ExposureRecorder(
            exposure_client,
            max_queued=settings.exposure_queue,
            batch=settings.exposure_batch,
            flush_seconds=settings.exposure_flush_ms / 1000,
        )
    recommender = Recommender(
        profile=ProfileClient(profile_channel, settings.history_length),
        candidates=candidates,
        ranker=RankerClient(ranker_channel),
        rules=rules,
        popular=popular,
        impressions=impressions,
        experiments=Experiments(salt=settings.experiment_salt, variants=tuple(settings.experiment_variants)),
        settings=PipelineSettings(
            stages=StageSettings(
                deadline_seconds=settings.deadline_ms / 1000,
                profile_share=settings.profile_share,
                candidates_share=settings.candidates_share,
                ranker_share=settings.ranker_share,
                breaker_failures=settings.breaker_failures,
                breaker_reset_seconds=settings.breaker_reset_seconds,
            ),
            candidate_limit=settings.candidate_limit,
            history_length=settings.history_length,
            build=BuildLimits(max_size=settings.built_bundle_size, max_bundles=settings.built_bundles),
            sensitive=SensitiveCategories(settings.sensitive_categories),
            two_tower_retrieval=settings.two_tower_retrieval,
            explain_min_co_occurrence=settings.explain_min_co_occurrence,
        ),
        exposures=exposures,
        explorer=explorer,
        variant_rules=variant_rules,
    )
    servicer = GatewayServicer(recommender, Accounts(AccountsClient(profile_channel), impressions, exposures))
    await _connect(channels)
    stop = asyncio.Event()
    exposures.start()
    tasks = [
        asyncio.create_task(popular.run(settings.popular_refresh_seconds, stop)),
        asyncio.create_task(rules.watch(settings.rules_poll_seconds, stop)),
        *(asyncio.create_task(source.watch(settings.rules_poll_seconds, stop)) for source in variant_rules.values()),
        asyncio.create_task(bandit.run(settings.exploration_refresh_seconds, stop)),
    ]

    async def close() -> None:
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await exposures.close()  # what is queued goes to the log before the channels close
        for channel in channels:
            await channel.close()
        await impressions.close()

    return Gateway(servicer, impressions, popular, close)
