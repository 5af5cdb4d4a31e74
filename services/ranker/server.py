"""Assembles the ranker service for the shared runtime."""

from __future__ import annotations

import functools
from pathlib import Path

from bundlerec.ranker.batcher import MicroBatcher
from bundlerec.ranker.model import load_model
from bundlerec.ranker.query import Limits
from bundlerec.ranker.registry import ModelRegistry
from bundlerec.ranker.service import RankerService
from bundlerec.ranker.servicer import RankerServicer
from bundlerec.ranker.settings import RankerSettings
from bundlerec.ranker.text import CachedItemText, CandidateTextSource
from bundlerec.runtime.server import ServiceParts
from bundlerec.runtime.tls import open_channel
from bundlerec.v1 import ranker_pb2, ranker_pb2_grpc

SERVICE_NAME = ranker_pb2.DESCRIPTOR.services_by_name["RankerService"].full_name


async def build(settings: RankerSettings) -> ServiceParts:
    """Loads the model to serve before returning (an empty models directory is not an error: the
    service starts NOT_SERVING and the watcher loads the first version that appears)."""
    loader = functools.partial(
        load_model,
        providers=settings.providers,
        intra_op_threads=settings.intra_op_threads,
        use_int8=settings.use_int8,
        warmup_batch=settings.max_batch,
    )
    registry = ModelRegistry(
        Path(settings.models_dir), loader, keep=settings.keep_versions, pinned=settings.model_version
    )
    await registry.load_initial()
    registry.start_watching(settings.poll_seconds)
    batcher = MicroBatcher(settings.max_batch, settings.max_wait_ms / 1000)
    batcher.start()
    text = None
    if settings.candidate_address:
        channel = open_channel(settings.candidate_address, settings.client_security())
        text = CachedItemText(CandidateTextSource(channel))
    limits = Limits(settings.max_candidates, settings.max_members, settings.max_sequence)
    service = RankerService(registry, batcher, limits, text)
    servicer = RankerServicer(service)
    return ServiceParts(
        name="ranker",
        register=lambda server: ranker_pb2_grpc.add_RankerServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
        readiness=registry.readiness,
        close=service.close,
    )
