"""The exposure log's use cases (exposures.py says what is kept and how outcomes are attributed):
record the gateway's pages, list them with their outcomes for reports, and the per-bundle counts
exploration samples from. No grpc; the servicer checks each field."""

from __future__ import annotations

from collections.abc import Sequence

from bundlerec import validation
from bundlerec.errors import InvalidArgument
from bundlerec.profile.exposure_store import Recorded
from bundlerec.profile.exposures import BundleOutcome, ExposedPage, Exposure
from bundlerec.profile.service import US_PER_SECOND, now_us, page_position, time_range
from bundlerec.profile.settings import ProfileSettings
from bundlerec.profile.store import ProfileStore

PAGES_TOKEN, BUNDLES_TOKEN = "exposed-pages", "bundle-outcomes"
MAX_REPLY_BYTES = 3_000_000


class ExposureLog:
    def __init__(self, store: ProfileStore, settings: ProfileSettings) -> None:
        self.store = store
        self.settings = settings

    async def record(self, exposures: Sequence[Exposure]) -> Recorded:
        if not exposures:
            raise InvalidArgument("exposures", "must contain at least one page")
        most = self.settings.max_batch_exposures
        if len(exposures) > most:
            raise InvalidArgument("exposures", f"has {len(exposures)} pages; at most {most} per batch")
        latest = now_us() + self.settings.max_future_skew_seconds * US_PER_SECOND
        for i, e in enumerate(exposures):
            if e.served_at_us > latest:
                raise InvalidArgument(f"exposures[{i}].served_at", "is in the future")
        return await self.store.record_exposures(exposures)

    async def pages(
        self, since_us: int | None, until_us: int | None, window_seconds: int, page_size: int, page_token: str
    ) -> tuple[list[ExposedPage], str]:
        size = validation.page_size("page_size", page_size, default=1000, maximum=10_000)
        if window_seconds < 0 or window_seconds > 90 * 86_400:
            raise InvalidArgument("attribution_window_seconds", "must be 0 (the setting) to 90 days")
        window = window_seconds or self.settings.attribution_window_seconds
        since, until = time_range(since_us, until_us)
        found, last = await self.store.exposed_pages(
            since_us=since,
            until_us=until,
            after_seq=page_position(PAGES_TOKEN, page_token),
            limit=size,
            window_us=window * US_PER_SECOND,
        )
        total = 0
        for n, page in enumerate(found):  # a reply stays well under gRPC's 4 MB message limit
            total += page.size()
            if total > MAX_REPLY_BYTES and n:
                found, last = found[:n], found[n - 1].seq
                break
        return found, ("" if last is None else validation.encode_page_token(PAGES_TOKEN, last))

    async def bundle_outcomes(self, page_size: int, page_token: str) -> tuple[list[BundleOutcome], str]:
        size = validation.page_size("page_size", page_size, default=1000, maximum=10_000)
        after = validation.page_token("page_token", page_token, BUNDLES_TOKEN)
        found, last = await self.store.bundle_outcomes(after=after, limit=size)
        return found, ("" if last is None else validation.encode_page_token(BUNDLES_TOKEN, last))
