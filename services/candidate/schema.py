"""Tables of the catalogue store. Changes need an Alembic migration (migrations/)."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, LargeBinary, String, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bundlerec.db import new_metadata


class Base(DeclarativeBase):
    metadata = new_metadata()


class ItemRow(Base):
    __tablename__ = "catalogue_items"

    item_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    title: Mapped[str] = mapped_column(String(1024))
    category: Mapped[str] = mapped_column(String(512))
    brand: Mapped[str] = mapped_column(String(256))
    price: Mapped[float | None] = mapped_column(Float, nullable=True)
    attributes: Mapped[list[str]] = mapped_column(JSON)
    in_stock: Mapped[bool] = mapped_column(Boolean)
    stock_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # float32 little-endian bytes: the caller's external vector, and the text embedding computed
    # at upsert (kept so an index rebuild never re-runs the encoder).
    external_vector: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    text_vector: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    updated_at_us: Mapped[int] = mapped_column(BigInteger)


class BundleRow(Base):
    __tablename__ = "catalogue_bundles"

    bundle_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    title: Mapped[str] = mapped_column(String(1024))
    updated_at_us: Mapped[int] = mapped_column(BigInteger)


class BundleItemRow(Base):
    __tablename__ = "catalogue_bundle_items"

    bundle_id: Mapped[str] = mapped_column(
        String(256), ForeignKey("catalogue_bundles.bundle_id", ondelete="CASCADE"), primary_key=True
    )
    item_id: Mapped[str] = mapped_column(
        String(256), ForeignKey("catalogue_items.item_id", ondelete="CASCADE"), primary_key=True, index=True
    )
    position: Mapped[int] = mapped_column(Integer)


class ItemStatsRow(Base):
    """Behaviour statistics of an item, written by imports and aggregation jobs."""

    __tablename__ = "catalogue_item_stats"

    item_id: Mapped[str] = mapped_column(
        String(256), ForeignKey("catalogue_items.item_id", ondelete="CASCADE"), primary_key=True
    )
    popularity: Mapped[float] = mapped_column(Float)  # time-decayed, event-type weighted


class CoOccurrenceRow(Base):
    """How often two items were bought or bundled together (time-decayed weight), both ways."""

    __tablename__ = "catalogue_cooccurrence"

    item_id: Mapped[str] = mapped_column(
        String(256), ForeignKey("catalogue_items.item_id", ondelete="CASCADE"), primary_key=True
    )
    other_id: Mapped[str] = mapped_column(
        String(256), ForeignKey("catalogue_items.item_id", ondelete="CASCADE"), primary_key=True
    )
    weight: Mapped[float] = mapped_column(Float)


class BundleCoOccurrenceRow(Base):
    """How often two bundles were bought together by one user (time-decayed weight), both ways."""

    __tablename__ = "catalogue_bundle_cooccurrence"

    bundle_id: Mapped[str] = mapped_column(
        String(256), ForeignKey("catalogue_bundles.bundle_id", ondelete="CASCADE"), primary_key=True
    )
    other_id: Mapped[str] = mapped_column(
        String(256), ForeignKey("catalogue_bundles.bundle_id", ondelete="CASCADE"), primary_key=True
    )
    weight: Mapped[float] = mapped_column(Float)


class CatalogueMetaRow(Base):
    """Counters of the catalogue. `generation` grows with every change of items or bundles, so a
    saved vector index can tell whether it still matches the catalogue; `sequence` with every write
    of any kind (availability too), numbering the change feed (CatalogueChangeRow)."""

    __tablename__ = "catalogue_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class CatalogueChangeRow(Base):
    """The change feed every replica follows: one row per catalogue write, numbered by the
    `sequence` counter, which the writing transaction holds locked until it commits, so rows become
    visible in sequence order. The JSON lists name what changed (followers read those rows' current
    state); an `import` row replaces too much to list: followers rebuild their index. Old rows are
    trimmed: a follower left behind the oldest kept row rebuilds too."""

    __tablename__ = "catalogue_changes"

    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))  # "write", "statistics" or "import"
    items: Mapped[list[str]] = mapped_column(JSON)  # items stored or deleted (statistics: counted)
    bundles: Mapped[list[str]] = mapped_column(JSON)  # bundles stored or deleted (or losing a member)
    availability: Mapped[list[str]] = mapped_column(JSON)  # items whose stock alone changed
    at_us: Mapped[int] = mapped_column(BigInteger)


class CatalogueCursorRow(Base):
    """Where this catalogue has read up to in a log of another service: `behaviour`, the profile
    service's behaviour log (ReadBehaviour), whose entries are in the statistics up to here."""

    __tablename__ = "catalogue_cursors"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    cursor: Mapped[str] = mapped_column(String(512))


# The tables as SQLAlchemy Core sees them, for the store modules (catalogue.py, feed.py, stats_store.py).
items_t: Table = ItemRow.__table__  # type: ignore[assignment]
bundles_t: Table = BundleRow.__table__  # type: ignore[assignment]
members_t: Table = BundleItemRow.__table__  # type: ignore[assignment]
stats_t: Table = ItemStatsRow.__table__  # type: ignore[assignment]
cooccurrence_t: Table = CoOccurrenceRow.__table__  # type: ignore[assignment]
bundle_cooccurrence_t: Table = BundleCoOccurrenceRow.__table__  # type: ignore[assignment]
meta_t: Table = CatalogueMetaRow.__table__  # type: ignore[assignment]
changes_t: Table = CatalogueChangeRow.__table__  # type: ignore[assignment]
cursors_t: Table = CatalogueCursorRow.__table__  # type: ignore[assignment]
