"""Assembles the profile service for the shared runtime."""

from __future__ import annotations

from bundlerec.profile.refresher import SnapshotRefresher
from bundlerec.profile.service import ProfileService, snapshot_settings
from bundlerec.profile.servicer import ProfileServicer
from bundlerec.profile.settings import ProfileSettings
from bundlerec.profile.store import SqlProfileStore
from bundlerec.runtime.server import ServiceParts
from bundlerec.v1 import profile_pb2, profile_pb2_grpc

SERVICE_NAME = profile_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name


async def build(settings: ProfileSettings) -> ServiceParts:
    store = await SqlProfileStore.open(
        settings.database_url,
        snapshot_settings(settings),
        migrate=settings.migrate_on_start,
        pool_size=settings.pool_size,
        key_secret=settings.event_key_secret.get_secret_value().encode(),
        retry_window_days=settings.retry_window_days,
        behaviour_retention_days=settings.behaviour_retention_days,
    )
    refresher = SnapshotRefresher(
        store, store.snapshot, settings.snapshot_refresh_seconds, settings.snapshot_refresh_batch
    )
    servicer = ProfileServicer(ProfileService(store, settings, on_change=refresher.poke))
    refresher.start()

    async def close() -> None:
        await refresher.close()
        await store.close()

    return ServiceParts(
        name="profile",
        register=lambda server: profile_pb2_grpc.add_ProfileServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
        readiness=store.readiness,
        close=close,
    )
