"""Assembles the candidate service for the shared runtime."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from bundlerec.candidate.behaviour_client import ProfileBehaviour
from bundlerec.candidate.catalogue import CatalogueStore
from bundlerec.candidate.collaborative import ModelWatcher
from bundlerec.candidate.following import Followers
from bundlerec.candidate.index import CatalogueIndex
from bundlerec.candidate.service import CandidateService, Encoder
from bundlerec.candidate.servicer import CandidateServicer
from bundlerec.candidate.settings import CandidateSettings
from bundlerec.candidate.vectors import set_search_threads
from bundlerec.runtime.server import ServiceParts
from bundlerec.runtime.tls import open_channel
from bundlerec.v1 import candidate_pb2, candidate_pb2_grpc

SERVICE_NAME = candidate_pb2.DESCRIPTOR.services_by_name["CandidateService"].full_name


def load_encoder(settings: CandidateSettings) -> Encoder:
    from bundlerec.encoder.runtime import TextEncoder

    return TextEncoder(settings.encoder_dir)


async def build(
    settings: CandidateSettings, encoder_factory: Callable[[CandidateSettings], Encoder] = load_encoder
) -> ServiceParts:
    set_search_threads(settings.search_threads)
    encoder = encoder_factory(settings)
    store = await CatalogueStore.open(
        settings.database_url, migrate=settings.migrate_on_start, pool_size=settings.pool_size
    )
    dim = encoder.encode([""]).shape[1]
    watcher = ModelWatcher(Path(settings.models_dir)) if settings.models_dir else None
    collaborative = await asyncio.to_thread(watcher.initial) if watcher else None
    index = CatalogueIndex(
        dim, settings.external_vector_dim, exact_below=settings.exact_search_below, collaborative=collaborative
    )
    service = CandidateService(store, index, encoder, Path(settings.index_dir) if settings.index_dir else None)
    await service.load()
    followers = Followers(service)
    followers.follow_catalogue(settings.feed_poll_seconds, settings.database_url)
    channel = open_channel(settings.profile_address, settings.client_security()) if settings.profile_address else None
    if channel is not None:
        source = ProfileBehaviour(channel)
        followers.learn_behaviour(source, settings.behaviour_poll_seconds, settings.statistics_half_life_days)
    if watcher:
        followers.follow_models(watcher, settings.model_poll_seconds)
    servicer = CandidateServicer(service)

    async def close() -> None:
        await followers.close()
        if channel is not None:
            await channel.close()
        await service.close()

    return ServiceParts(
        name="candidate",
        register=lambda server: candidate_pb2_grpc.add_CandidateServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
        readiness=store.readiness,
        close=close,
    )
