"""The gateway's write path: Track, SetUserConsent and ForgetUser, behind the servicer.

Writes do not degrade the way pages do: an event the profile service did not acknowledge is not
accepted, so the caller gets the error (UNAVAILABLE: retry; event and impression ids make retries
safe) and nothing is lost. The gateway's own per-user state, the impression counts behind
rotation, follows the user's choices here: withdrawing personalization consent or being forgotten
erases it. The profile service is reached through `AccountsPort` (clients.AccountsClient).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bundlerec.errors import Unavailable
from bundlerec.gateway.exposures import ExposureLog, NoExposures
from bundlerec.gateway.impressions import ImpressionStore, ImpressionsUnavailable

log = logging.getLogger("bundlerec.gateway")


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the profile service did with a batch of events."""

    recorded: int = 0  # newly stored as personal history
    duplicates: int = 0  # event ids already recorded (retries)
    anonymized: int = 0  # users without personalization consent: anonymous aggregates only


@dataclass(frozen=True, slots=True)
class ConsentState:
    personalization: bool
    sensitive_categories: bool
    updated_at_us: int  # 0: never set (the service's defaults apply)


@dataclass(frozen=True, slots=True)
class Impression:
    """A bundle shown to a user (checked by the servicer)."""

    impression_id: str
    user_id: str
    bundle_key: str  # impressions.bundle_key: the bundle id, or its items for a built bundle
    item_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Tracked:
    recorded: Recorded
    impressions: int  # impressions counted (a repeated impression id counts once)


class AccountsPort(Protocol):
    async def record_events(self, events: Sequence[bytes], seconds: float | None) -> Recorded:
        """Records the caller's events as they came, each an encoded `common.Event` (the gateway
        reads none of their fields; the profile service checks every one)."""
        ...

    async def set_consent(
        self, user_id: str, personalization: bool | None, sensitive: bool | None, seconds: float | None
    ) -> ConsentState: ...

    async def delete_user(self, user_id: str, seconds: float | None) -> bool:
        """Erases the user's profile; whether anything was kept."""
        ...


class Accounts:
    def __init__(
        self, profile: AccountsPort, impressions: ImpressionStore, exposures: ExposureLog | None = None
    ) -> None:
        self.profile = profile
        self.impressions = impressions
        self.exposures = exposures or NoExposures()

    async def track(
        self,
        events: Sequence[bytes],
        interactions: Sequence[tuple[str, str]],
        impressions: Sequence[Impression],
        seconds: float | None = None,
    ) -> Tracked:
        """Events first (a retry after a failure below re-sends them, and the profile service
        ignores repeats); each (user id, target id) of `interactions` resets that user's rotation
        of bundles holding the target; then the impressions, each counted atomically once per id."""
        recorded = Recorded()
        if events:
            recorded = await self.profile.record_events(events, seconds)
            targets: dict[str, list[str]] = {}
            for user_id, target_id in interactions:
                targets.setdefault(user_id, []).append(target_id)
            for user_id, target_ids in targets.items():
                try:
                    await self.impressions.interacted(user_id, target_ids)
                except ImpressionsUnavailable as error:  # the event is kept; only a rotation reset is missed
                    log.warning("impression counts not reset", extra={"fields": {"reason": str(error)}})
        counted = 0
        try:
            for impression in impressions:
                counted += await self.impressions.record(
                    impression.user_id, impression.impression_id, impression.bundle_key, impression.item_ids
                )
        except ImpressionsUnavailable:  # each impression is counted atomically, once per id: a retry is safe
            raise Unavailable("the impression store did not answer; retry the whole request") from None
        return Tracked(recorded, counted)

    async def set_consent(
        self, user_id: str, personalization: bool | None, sensitive: bool | None, seconds: float | None = None
    ) -> ConsentState:
        """Withdrawing personalization erases the gateway's impressions of the user first, and
        sends the pages queued for the exposure log, so the profile service erases them too."""
        if personalization is False:
            await self._forget_impressions(user_id)
            await self.exposures.flush()
        return await self.profile.set_consent(user_id, personalization, sensitive, seconds)

    async def forget(self, user_id: str, seconds: float | None = None) -> bool:
        """Erases the user everywhere the gateway reaches; whether anything was kept. Pages queued
        for the exposure log go first, so the erasure covers them."""
        await self.exposures.flush()
        existed = await self.profile.delete_user(user_id, seconds)
        shown = await self._forget_impressions(user_id)
        return existed or shown

    async def _forget_impressions(self, user_id: str) -> bool:
        try:
            return await self.impressions.forget(user_id)
        except ImpressionsUnavailable:
            raise Unavailable("the impression store did not answer; retry (erasure is idempotent)") from None


__all__ = ["Accounts", "AccountsPort", "ConsentState", "Impression", "Recorded", "Tracked"]
