"""Reads of catalogue rows for the read RPCs and the index's follower: items (with or without
their text vectors), bundles with their members, pages of either. Mixed into CatalogueStore
(catalogue.py), which writes them."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bundlerec import db
from bundlerec.candidate.model import Bundle, Item
from bundlerec.candidate.schema import bundles_t, items_t, members_t


def from_bytes(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, dtype="<f4")


@dataclass(frozen=True, slots=True)
class StoredItem:
    item: Item
    text_vector: np.ndarray | None


def item_from_row(row: Any) -> Item:
    external = from_bytes(row.external_vector)
    return Item(
        item_id=row.item_id,
        title=row.title,
        category=row.category,
        brand=row.brand,
        price=row.price,
        attributes=tuple(row.attributes or ()),
        in_stock=row.in_stock,
        stock_count=row.stock_count,
        external_vector=tuple(float(x) for x in external) if external is not None else (),
    )


class CatalogueRows:
    engine: AsyncEngine

    async def get_items(self, item_ids: Sequence[str]) -> dict[str, Item]:
        async def work(conn: AsyncConnection) -> dict[str, Item]:
            rows = await conn.execute(select(items_t).where(items_t.c.item_id.in_(list(item_ids))))
            return {r.item_id: item_from_row(r) for r in rows}

        return await db.read(self.engine, work)

    async def stored_items(self, item_ids: Collection[str]) -> dict[str, StoredItem]:
        """Items with their text vectors, as the index takes them."""

        async def work(conn: AsyncConnection) -> dict[str, StoredItem]:
            found: dict[str, StoredItem] = {}
            wanted = list(item_ids)
            for start in range(0, len(wanted), 500):
                rows = await conn.execute(select(items_t).where(items_t.c.item_id.in_(wanted[start : start + 500])))
                found.update((r.item_id, StoredItem(item_from_row(r), from_bytes(r.text_vector))) for r in rows)
            return found

        return await db.read(self.engine, work)

    async def text_vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The sentence encoder's vectors of those of `item_ids` that have text of their own (an
        item without title, category or brand is embedded from "" and has none)."""

        async def work(conn: AsyncConnection) -> dict[str, np.ndarray]:
            columns = (items_t.c.item_id, items_t.c.title, items_t.c.category, items_t.c.brand, items_t.c.text_vector)
            query = select(*columns).where(items_t.c.item_id.in_(list(item_ids)), items_t.c.text_vector.is_not(None))
            return {
                r.item_id: from_bytes(r.text_vector)
                for r in await conn.execute(query)
                if r.title.strip() or r.category.strip() or r.brand.strip()
            }

        return await db.read(self.engine, work)

    async def get_bundles(self, bundle_ids: Sequence[str]) -> dict[str, Bundle]:
        async def work(conn: AsyncConnection) -> dict[str, Bundle]:
            heads = {
                r.bundle_id: r.title
                for r in await conn.execute(select(bundles_t).where(bundles_t.c.bundle_id.in_(list(bundle_ids))))
            }
            members: dict[str, list[str]] = {b: [] for b in heads}
            rows = await conn.execute(
                select(members_t)
                .where(members_t.c.bundle_id.in_(list(heads)))
                .order_by(members_t.c.bundle_id, members_t.c.position)
            )
            for r in rows:
                members[r.bundle_id].append(r.item_id)
            return {b: Bundle(b, tuple(members[b]), title) for b, title in heads.items()}

        return await db.read(self.engine, work)

    async def list_items(self, after_id: str, limit: int) -> list[Item]:
        async def work(conn: AsyncConnection) -> list[Item]:
            rows = await conn.execute(
                select(items_t).where(items_t.c.item_id > after_id).order_by(items_t.c.item_id).limit(limit)
            )
            return [item_from_row(r) for r in rows]

        return await db.read(self.engine, work)

    async def list_bundle_ids(self, after_id: str, limit: int) -> list[str]:
        async def work(conn: AsyncConnection) -> list[str]:
            query = select(bundles_t.c.bundle_id).where(bundles_t.c.bundle_id > after_id)
            return list((await conn.execute(query.order_by(bundles_t.c.bundle_id).limit(limit))).scalars())

        return await db.read(self.engine, work)
