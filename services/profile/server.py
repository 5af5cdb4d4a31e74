"""Assembles the profile service for the shared runtime."""

from __future__ import annotations

from bundlerec.profile.exposure_service import ExposureLog
from bundlerec.profile.exposure_servicer import ExposureServicer
from bundlerec.profile.exposure_store import ExposureRules
from bundlerec.profile.refresher import SnapshotRefresher
from bundlerec.profile.service import ProfileService, snapshot_settings
from bundlerec.profile.servicer import ProfileServicer
from bundlerec.profile.settings import ProfileSettings
from bundlerec.profile.store import SqlProfileStore
from bundlerec.runtime.server import ServiceParts
from bundlerec.v1 import exposures_pb2, exposures_pb2_grpc, profile_pb2, profile_pb2_grpc

SERVICE_NAME = profile_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name
EXPOSURES_SERVICE_NAME = exposures_pb2.DESCRIPTOR.services_by_name["ExposureService"].full_name
US = 1_000_000


def exposure_rules(settings: ProfileSettings) -> ExposureRules:
    return ExposureRules(
        window_us=settings.attribution_window_seconds * US,
        skew_us=settings.max_future_skew_seconds * US,
        retention_days=settings.exposure_retention_days,
    )


async def build(settings: ProfileSettings) -> ServiceParts:
    store = await SqlProfileStore.open(
        settings.database_url,
        snapshot_settings(settings),
        migrate=settings.migrate_on_start,
        pool_size=settings.pool_size,
        key_secret=settings.event_key_secret.get_secret_value().encode(),
        retry_window_days=settings.retry_window_days,
        behaviour_retention_days=settings.behaviour_retention_days,
        exposures=exposure_rules(settings),
    )
    refresher = SnapshotRefresher(
        store, store.snapshot, settings.snapshot_refresh_seconds, settings.snapshot_refresh_batch
    )
    servicer = ProfileServicer(ProfileService(store, settings, on_change=refresher.poke))
    exposures = ExposureServicer(ExposureLog(store, settings))
    refresher.start()

    async def close() -> None:
        await refresher.close()
        await store.close()

    return ServiceParts(
        name="profile",
        register=lambda server: (
            profile_pb2_grpc.add_ProfileServiceServicer_to_server(servicer, server),
            exposures_pb2_grpc.add_ExposureServiceServicer_to_server(exposures, server),
        ),
        service_names=[SERVICE_NAME, EXPOSURES_SERVICE_NAME],
        readiness=store.readiness,
        close=close,
    )
