"""Impressions in Redis, shared by every gateway replica (see impressions.py for the interface).

Per requester one hash, named by a keyed hash of the requester (no raw user id in Redis keys):
field `c:<bundle key>` holds the count, `m:<bundle key>` the bundle's items (so an interaction with
one of them resets it). The hash expires `ttl_seconds` after the requester was last shown
something; a requester over `max_per_requester` bundles starts afresh. Impression ids, for
idempotent retries, are `SET NX` keys with the same expiry, listed in a per-requester set so that
erasure finds them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Sequence

import redis.asyncio as redis
from redis.exceptions import RedisError

from bundlerec.gateway.impressions import ImpressionsUnavailable, bundle_key

log = logging.getLogger("bundlerec.gateway")


class RedisImpressions:
    def __init__(
        self,
        client: redis.Redis,
        *,
        key_secret: bytes,
        rotate_after: int = 5,
        ttl_seconds: int = 7 * 86_400,
        max_per_requester: int = 500,
        prefix: str = "bundlerec:impressions:",
    ) -> None:
        self.client = client
        self.key_secret = key_secret
        self.rotate_after = rotate_after
        self.ttl_seconds = ttl_seconds
        self.max_per_requester = max_per_requester
        self.prefix = prefix

    @classmethod
    def connect(cls, url: str, *, timeout_seconds: float, **options: object) -> RedisImpressions:
        client = redis.Redis.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds, decode_responses=True
        )
        return cls(client, **options)  # type: ignore[arg-type]

    def _name(self, requester: str, kind: str) -> str:
        digest = hmac.new(self.key_secret, requester.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
        return f"{self.prefix}{kind}:{digest}"

    async def first_time(self, requester: str, impression_id: str) -> bool:
        ids = self._name(requester, "ids")
        seen = f"{ids}:{hashlib.sha256(impression_id.encode('utf-8')).hexdigest()[:24]}"
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(seen, 1, nx=True, ex=self.ttl_seconds)
                pipe.sadd(ids, seen)
                pipe.expire(ids, self.ttl_seconds)
                fresh, _, _ = await pipe.execute()
        except (RedisError, OSError) as error:
            raise ImpressionsUnavailable(type(error).__name__) from None
        return bool(fresh)

    async def shown(self, requester: str, bundle_key: str, item_ids: Iterable[str]) -> None:
        name = self._name(requester, "shown")
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hincrby(name, f"c:{bundle_key}", 1)
                pipe.hset(name, f"m:{bundle_key}", "\t".join(item_ids))
                pipe.expire(name, self.ttl_seconds)
                pipe.hlen(name)
                *_, fields = await pipe.execute()
            if fields > 2 * self.max_per_requester:
                await self.client.delete(name)
        except (RedisError, OSError) as error:
            raise ImpressionsUnavailable(type(error).__name__) from None

    async def interacted(self, requester: str, target_ids: Iterable[str]) -> None:
        targets = set(target_ids)
        if not targets:
            return
        name = self._name(requester, "shown")
        try:
            fields = await self.client.hgetall(name)
            stale: list[str] = []
            for field, value in fields.items():
                if not field.startswith("m:"):
                    continue
                key = field[2:]
                if key in {bundle_key(t, ()) for t in targets} or targets.intersection(value.split("\t")):
                    stale += [f"c:{key}", field]
            if stale:
                await self.client.hdel(name, *stale)
        except (RedisError, OSError) as error:
            raise ImpressionsUnavailable(type(error).__name__) from None

    async def overexposed(self, requester: str, bundle_keys: Sequence[str]) -> set[str]:
        if self.rotate_after <= 0 or not bundle_keys:
            return set()
        try:
            counts = await self.client.hmget(self._name(requester, "shown"), [f"c:{k}" for k in bundle_keys])
        except (RedisError, OSError) as error:  # the page goes on without rotation
            log.warning("impressions not read", extra={"fields": {"reason": type(error).__name__}})
            return set()
        return {k for k, count in zip(bundle_keys, counts, strict=True) if count and int(count) >= self.rotate_after}

    async def forget(self, requester: str) -> bool:
        shown, ids = self._name(requester, "shown"), self._name(requester, "ids")
        try:
            seen = list(await self.client.smembers(ids))
            removed = await self.client.delete(shown, ids, *seen)
        except (RedisError, OSError) as error:
            raise ImpressionsUnavailable(type(error).__name__) from None
        return removed > 0

    async def close(self) -> None:
        await self.client.aclose()

    async def holds(self, requester: str) -> bool:
        """Whether anything about the requester is kept (for erasure checks)."""
        return bool(await self.client.exists(self._name(requester, "shown"), self._name(requester, "ids")))
