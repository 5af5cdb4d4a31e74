"""The exposure log's SQL (tables profile_exposures, profile_outcomes, profile_bundle_outcomes):
functions on a connection, run inside the profile store's transactions (the rules are exposures.py).

The per-bundle counts exploration reads are kept as pages and outcomes arrive, whichever comes
first: a page credits the outcomes already stored for it, an outcome the page already stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bundlerec import db
from bundlerec.events import EventType, TargetType
from bundlerec.profile.exposures import (
    OUTCOME_TYPES,
    SHOWN,
    BundleOutcome,
    ExposedBundle,
    ExposedPage,
    Exposure,
    Outcome,
    RawOutcome,
    attribute,
    credited,
    pseudonym,
    shown_bundles,
)
from bundlerec.profile.model import Event
from bundlerec.profile.schema import BundleOutcomeRow, ExposureRow, OutcomeRow

exposures_t: Table = ExposureRow.__table__  # type: ignore[assignment]
outcomes_t: Table = OutcomeRow.__table__  # type: ignore[assignment]
bundle_outcomes_t: Table = BundleOutcomeRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class ExposureRules:
    """What the settings say about the exposure log."""

    window_us: int = 86_400 * 1_000_000  # outcomes later than this after their page are not its
    skew_us: int = 300 * 1_000_000  # how much earlier than the page an event's clock may put it
    retention_days: int = 180  # pages and outcomes older than this are deleted


Attributed = tuple[str, str, Outcome]  # a page's variant and placement, and the outcome it drew


@dataclass(frozen=True, slots=True)
class Recorded:
    recorded: int
    duplicates: int
    linked: int
    attributed: list[Attributed]  # outcomes stored earlier that the new pages drew


async def record(
    conn: AsyncConnection,
    exposures: Sequence[Exposure],
    secret: bytes,
    rules: ExposureRules,
    consent: Callable[[list[str]], Awaitable[dict[str, bool]]],
) -> Recorded:
    """`consent(user ids)`: their stored personalization consent, read FOR SHARE so a concurrent
    withdrawal waits for this batch and then erases it (as events are recorded)."""
    unique = {e.recommendation_id: e for e in exposures}
    users = sorted({e.requester_id for e in unique.values() if not e.anonymous and e.requester_id})
    linkable = {u for u, allowed in (await consent(users) if users else {}).items() if allowed}
    rows = []
    for e in sorted(unique.values(), key=lambda e: e.recommendation_id):
        linked = e.requester_id and (e.anonymous or e.requester_id in linkable)
        rows.append(
            {
                "recommendation_id": e.recommendation_id,
                "requester": pseudonym(secret, e.requester_id) if linked else "",
                "variant": e.variant,
                "variant_share": e.variant_share,
                "model_version": e.model_version,
                "placement": e.placement,
                "personalized": e.personalized,
                "degraded": e.degraded,
                "served_at_us": e.served_at_us,
                "segment": e.segment,
                "bundles": [b.row() for b in e.bundles],
            }
        )
    inserted = await db.insert_rows(conn, exposures_t, rows, key=["recommendation_id"], returning="recommendation_id")
    new = [unique[r] for r in sorted(inserted)]
    counts: Counter[tuple[str, str, str]] = Counter()
    stored = await _raw_outcomes(conn, [e.recommendation_id for e in new])
    attributed: list[Attributed] = []
    for e in new:
        counts.update(per_segment({(bundle_id, SHOWN) for bundle_id in shown_bundles(e.bundles)}, e.segment))
        drawn = _attributed(e.bundles, e.served_at_us, stored.get(e.recommendation_id, []), rules)
        counts.update(per_segment(credited(e.bundles, drawn), e.segment))
        attributed += [(e.variant, e.placement, o) for o in drawn]
    await _add(conn, counts)
    linked_rows = sum(1 for row in rows if row["recommendation_id"] in inserted and row["requester"])
    return Recorded(len(new), len(exposures) - len(new), linked_rows, attributed)


async def keep_outcomes(conn: AsyncConnection, events: Sequence[Event], rules: ExposureRules) -> list[Attributed]:
    """Stores the accepted events that name a recommendation (no user column), and credits the
    bundles of the pages already recorded; the outcomes those pages drew."""
    events = [e for e in events if e.recommendation_id and e.type in OUTCOME_TYPES]
    if not events:
        return []
    ids = sorted({e.recommendation_id for e in events})
    before = await _raw_outcomes(conn, ids)
    rows = [
        {
            "recommendation_id": e.recommendation_id,
            "target_type": e.target_type.value,
            "target_id": e.target_id,
            "event_type": e.type.value,
            "occurred_at_us": e.occurred_at_us,
        }
        for e in events
    ]
    await conn.execute(insert(outcomes_t), rows)
    counts: Counter[tuple[str, str, str]] = Counter()
    attributed: list[Attributed] = []
    for page in await conn.execute(select(exposures_t).where(exposures_t.c.recommendation_id.in_(ids))):
        bundles = [ExposedBundle.of_row(b) for b in page.bundles]
        old = _attributed(bundles, page.served_at_us, before.get(page.recommendation_id, []), rules)
        new = [
            RawOutcome(e.target_type, e.target_id, e.type, e.occurred_at_us)
            for e in events
            if e.recommendation_id == page.recommendation_id
        ]
        drawn = _attributed(bundles, page.served_at_us, new, rules)
        counts.update(per_segment(credited(bundles, old + drawn) - credited(bundles, old), page.segment))
        attributed += [(page.variant, page.placement, o) for o in drawn]
    await _add(conn, counts)
    return attributed


async def pages(
    conn: AsyncConnection, *, since_us: int, until_us: int, after_seq: int, limit: int, rules: ExposureRules
) -> tuple[list[ExposedPage], int | None]:
    """Pages served in [since, until) after `after_seq`, oldest first, with their outcomes; and the
    seq to continue after (None: no more)."""
    query = (
        select(exposures_t)
        .where(
            exposures_t.c.seq > after_seq,
            exposures_t.c.served_at_us >= since_us,
            exposures_t.c.served_at_us < until_us,
        )
        .order_by(exposures_t.c.seq)
        .limit(limit + 1)
    )
    rows = list(await conn.execute(query))
    more = len(rows) > limit
    rows = rows[:limit]
    raw = await _raw_outcomes(conn, [r.recommendation_id for r in rows])
    out = []
    for r in rows:
        bundles = tuple(ExposedBundle.of_row(b) for b in r.bundles)
        outcomes = tuple(_attributed(bundles, r.served_at_us, raw.get(r.recommendation_id, []), rules))
        out.append(
            ExposedPage(
                r.recommendation_id, r.requester, r.variant, r.variant_share, r.model_version, r.placement,
                r.served_at_us, bundles, outcomes, r.personalized, r.degraded, r.seq, r.segment,
            )
        )  # fmt: skip
    return out, (rows[-1].seq if more else None)


async def bundle_outcomes(conn: AsyncConnection, *, after: str, limit: int) -> tuple[list[BundleOutcome], str | None]:
    """Per catalogue bundle in id order after `after`; and the id to continue after (None: no more)."""
    ids = list(
        (
            await conn.execute(
                select(bundle_outcomes_t.c.bundle_id)
                .where(bundle_outcomes_t.c.bundle_id > after)
                .group_by(bundle_outcomes_t.c.bundle_id)
                .order_by(bundle_outcomes_t.c.bundle_id)
                .limit(limit + 1)
            )
        ).scalars()
    )
    more = len(ids) > limit
    ids = ids[:limit]
    counts: dict[tuple[str, str], dict[str, int]] = {}
    if ids:
        query = (
            select(bundle_outcomes_t)
            .where(bundle_outcomes_t.c.bundle_id.in_(ids))
            .order_by(bundle_outcomes_t.c.bundle_id, bundle_outcomes_t.c.segment)
        )
        for row in await conn.execute(query):
            counts.setdefault((row.bundle_id, row.segment), {})[row.measure] = row.count
    found = [
        BundleOutcome(b, s, c.get("shown", 0), c.get("engaged", 0), c.get("purchased", 0))
        for (b, s), c in counts.items()
    ]
    return found, (ids[-1] if more else None)


async def forget(conn: AsyncConnection, secret: bytes, requester_id: str) -> int:
    """Erases the requester's linked pages and their outcomes (the per-bundle counts, anonymous
    aggregates, stay); how many pages."""
    name = pseudonym(secret, requester_id)
    ids = select(exposures_t.c.recommendation_id).where(exposures_t.c.requester == name).scalar_subquery()
    await conn.execute(delete(outcomes_t).where(outcomes_t.c.recommendation_id.in_(ids)))
    return int((await conn.execute(delete(exposures_t).where(exposures_t.c.requester == name))).rowcount or 0)


async def trim(conn: AsyncConnection, before_us: int) -> None:
    """Pages served, and outcomes that happened, before `before_us` go."""
    await conn.execute(delete(exposures_t).where(exposures_t.c.served_at_us < before_us))
    await conn.execute(delete(outcomes_t).where(outcomes_t.c.occurred_at_us < before_us))


async def _raw_outcomes(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, list[RawOutcome]]:
    found: dict[str, list[RawOutcome]] = {}
    if not ids:
        return found
    query = select(outcomes_t).where(outcomes_t.c.recommendation_id.in_(list(ids))).order_by(outcomes_t.c.id)
    for row in await conn.execute(query):
        found.setdefault(row.recommendation_id, []).append(
            RawOutcome(TargetType(row.target_type), row.target_id, EventType(row.event_type), row.occurred_at_us)
        )
    return found


def _attributed(
    bundles: Sequence[ExposedBundle], served_at_us: int, raw: Sequence[RawOutcome], rules: ExposureRules
) -> list[Outcome]:
    found = (attribute(bundles, served_at_us, r, rules.window_us, rules.skew_us) for r in raw)
    return [o for o in found if o is not None]


def per_segment(earned: set[tuple[str, str]], segment: str) -> list[tuple[str, str, str]]:
    """Each (bundle, measure) counted for all the bundle's pages ("") and for the page's segment."""
    return [(b, s, m) for b, m in sorted(earned) for s in dict.fromkeys(("", segment))]


async def _add(conn: AsyncConnection, counts: Counter[tuple[str, str, str]]) -> None:
    if counts:
        rows = [{"bundle_id": b, "segment": s, "measure": m, "count": n} for (b, s, m), n in sorted(counts.items())]
        key = ["bundle_id", "segment", "measure"]
        await db.insert_rows(conn, bundle_outcomes_t, rows, key=key, add_to="count")
