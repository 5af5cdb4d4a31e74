"""Tables of the profile store (SQLAlchemy 2 declarative). Changes need an Alembic migration.

What is kept, and about whom:
- profile_users: one row per user who consented to personalization or set consent explicitly.
- profile_events: the personal event history; only for users with personalization consent.
- profile_snapshots: per user, the precomputed profile GetProfile answers with (snapshot.py).
- profile_changes: a row per write that changed a user's profile since their snapshot was built,
  added in the write's own transaction; a snapshot is used only while its user has none. Rows
  are only ever inserted by writers, so concurrent writers never wait on each other for them.
- profile_popularity: anonymous counts per target, day and event type (no user column).
- profile_behaviour_log: one anonymous row per accepted event (no user or event id): its target,
  type and time, and for a consenting user the targets of their previous few events, which the
  candidate service reads (ReadBehaviour) to keep popularity and co-occurrence live (behaviour.py).
- profile_anonymous_event_ids: keyed hashes (HMAC-SHA-256) of the ids of events not kept as
  personal history: those of users without consent, and those erased. A retried batch is then
  neither counted twice in popularity nor brought back after an erasure (no user column).
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bundlerec.db import new_metadata

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = new_metadata()


class UserRow(Base):
    __tablename__ = "profile_users"

    user_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    personalization: Mapped[bool] = mapped_column(Boolean)
    sensitive_categories: Mapped[bool] = mapped_column(Boolean)
    consent_updated_at_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at_us: Mapped[int] = mapped_column(BigInteger)


class EventRow(Base):
    __tablename__ = "profile_events"
    __table_args__ = (Index("ix_profile_events_user_time", "user_id", "occurred_at_us"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(256), unique=True)
    user_id: Mapped[str] = mapped_column(String(256), ForeignKey("profile_users.user_id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(16))
    target_type: Mapped[str] = mapped_column(String(8))
    target_id: Mapped[str] = mapped_column(String(256))
    occurred_at_us: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    category: Mapped[str] = mapped_column(String(512))
    context: Mapped[dict[str, str]] = mapped_column(JSON)
    recommendation_id: Mapped[str] = mapped_column(String(256))
    received_at_us: Mapped[int] = mapped_column(BigInteger)


class SnapshotRow(Base):
    __tablename__ = "profile_snapshots"

    user_id: Mapped[str] = mapped_column(
        String(256), ForeignKey("profile_users.user_id", ondelete="CASCADE"), primary_key=True
    )
    snapshot_key: Mapped[str] = mapped_column(String(64))  # the settings it was built with
    snapshot: Mapped[bytes] = mapped_column(LargeBinary)  # the Profile message


class ChangeRow(Base):
    """A write that changed what GetProfile answers for a user, not yet in the user's snapshot."""

    __tablename__ = "profile_changes"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(
        String(256), ForeignKey("profile_users.user_id", ondelete="CASCADE"), index=True
    )


class PopularityRow(Base):
    __tablename__ = "profile_popularity"

    target_type: Mapped[str] = mapped_column(String(8), primary_key=True)
    target_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    day: Mapped[int] = mapped_column(Integer, primary_key=True)  # days since the Unix epoch
    event_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class AnonymousEventIdRow(Base):
    __tablename__ = "profile_anonymous_event_ids"

    event_key: Mapped[str] = mapped_column(String(64), primary_key=True)  # HMAC-SHA-256 hex of the event id
    day: Mapped[int] = mapped_column(Integer, index=True)


class BehaviourRow(Base):
    """An accepted event, anonymously (behaviour.py). `txid` is the writing transaction's id on
    PostgreSQL (0 on SQLite, whose writers commit in `seq` order): readers page by (txid, seq)
    below the oldest transaction still running, so a row committed late is never skipped."""

    __tablename__ = "profile_behaviour_log"
    __table_args__ = (Index("ix_profile_behaviour_log_position", "txid", "seq"), {"sqlite_autoincrement": True})

    seq: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    txid: Mapped[int] = mapped_column(BigInteger)  # set by the database: migration 0003's default
    target_type: Mapped[str] = mapped_column(String(8))
    target_id: Mapped[str] = mapped_column(String(256))
    event_type: Mapped[str] = mapped_column(String(16))
    occurred_at_us: Mapped[int] = mapped_column(BigInteger)
    # the same user's previous targets: [[target_type, target_id, event_type, distance], ...]
    partners: Mapped[list[list[str | int]]] = mapped_column(JSON)
    logged_at_us: Mapped[int] = mapped_column(BigInteger, index=True)


class ExposureRow(Base):
    """A page the gateway served (exposures.py): its bundles as JSON, its requester as a keyed
    hash only when they may be linked ("" otherwise)."""

    __tablename__ = "profile_exposures"
    __table_args__ = ({"sqlite_autoincrement": True},)

    seq: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    recommendation_id: Mapped[str] = mapped_column(String(256), unique=True)
    requester: Mapped[str] = mapped_column(String(64), index=True)
    variant: Mapped[str] = mapped_column(String(64))
    variant_share: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(256))
    placement: Mapped[str] = mapped_column(String(32))
    personalized: Mapped[bool] = mapped_column(Boolean)
    degraded: Mapped[bool] = mapped_column(Boolean)
    served_at_us: Mapped[int] = mapped_column(BigInteger, index=True)
    segment: Mapped[str] = mapped_column(String(128))  # what the page was about (exposures.py)
    # [[position, bundle_id, [item ids], [item prices], kind], ...]
    bundles: Mapped[list[list[object]]] = mapped_column(JSON)


class OutcomeRow(Base):
    """An accepted event that came back with a recommendation id (no user column): attributed to
    its page when read, so it may arrive before the page is recorded."""

    __tablename__ = "profile_outcomes"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    recommendation_id: Mapped[str] = mapped_column(String(256), index=True)
    target_type: Mapped[str] = mapped_column(String(8))
    target_id: Mapped[str] = mapped_column(String(256))
    event_type: Mapped[str] = mapped_column(String(16))
    occurred_at_us: Mapped[int] = mapped_column(BigInteger, index=True)


class BundleOutcomeRow(Base):
    """Anonymous counts per catalogue bundle and page segment ("": all its pages): pages that showed
    it ("shown") and pages where it was engaged with or bought, what exploration samples from (no
    user or page column)."""

    __tablename__ = "profile_bundle_outcomes"

    bundle_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    segment: Mapped[str] = mapped_column(String(128), primary_key=True)
    measure: Mapped[str] = mapped_column(String(16), primary_key=True)  # shown, engaged, purchased
    count: Mapped[int] = mapped_column(BigInteger)
