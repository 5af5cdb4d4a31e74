"""Impressions in Redis, shared by every gateway replica (see impressions.py for the interface).

Everything about one requester is one hash, named by a keyed hash of the requester (no raw user
id in Redis): `c:<bundle key>` the count, `m:<bundle key>` the bundle's items (so an interaction with
one of them resets it), `id:<digest>` the impression ids already counted. One key per requester
makes every step atomic and erasure a single DEL (and keeps to one slot of a Redis Cluster):
- an impression is counted by one script (the id, the count, the items and the expiry together), so
  a failure leaves nothing half-done and a retry is counted exactly once;
- the hash expires `ttl_seconds` after the requester's last impression; one grown past its bound
  starts afresh.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Sequence
from typing import Any, cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from bundlerec.gateway.impressions import ImpressionsUnavailable, UserVector, bundle_key

log = logging.getLogger("bundlerec.gateway")

# KEYS[1] the requester's hash; ARGV: id field, bundle key, items, ttl, most fields.
# Returns 1 when counted, 0 when the id was counted before.
_RECORD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], 1) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'c:' .. ARGV[2], 1)
redis.call('HSET', KEYS[1], 'm:' .. ARGV[2], ARGV[3])
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[5]) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], ARGV[1], 1, 'c:' .. ARGV[2], 1, 'm:' .. ARGV[2], ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


class RedisImpressions:
    def __init__(
        self,
        client: redis.Redis,
        *,
        key_secret: bytes,
        rotate_after: int = 5,
        ttl_seconds: int = 7 * 86_400,
        max_fields: int = 3_000,
        prefix: str = "bundlerec:impressions:",
    ) -> None:
        if not key_secret:
            raise ValueError("key_secret is required: without it the key names could be reversed to user ids")
        self.client = client
        self.key_secret = key_secret
        self.rotate_after = rotate_after
        self.ttl_seconds = ttl_seconds
        self.max_fields = max_fields  # ids and two fields per bundle: about 1,000 bundles' worth
        self.prefix = prefix
        self._record = client.register_script(_RECORD)

    @classmethod
    def connect(cls, url: str, *, timeout_seconds: float, **options: Any) -> RedisImpressions:
        client = redis.Redis.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds, decode_responses=True
        )
        return cls(client, **options)

    def _name(self, requester: str) -> str:
        digest = hmac.new(self.key_secret, requester.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
        return f"{self.prefix}{digest}"

    async def record(self, requester: str, impression_id: str, bundle_key: str, item_ids: Iterable[str]) -> bool:
        field = "id:" + hashlib.sha256(impression_id.encode("utf-8")).hexdigest()[:24]
        args: list[str | int] = [field, bundle_key, "\t".join(item_ids), self.ttl_seconds, self.max_fields]
        try:
            return bool(await self._record(keys=[self._name(requester)], args=args))
        except (RedisError, OSError) as error:
            raise ImpressionsUnavailable(type(error).__name__) from None

    async def interacted(self, requester: str, target_ids: Iterable[str]) -> None:
        targets = set(target_ids)
        if not targets:
            return
        name = self._name(requester)
        as_bundles = {bundle_key(t, ()) for t in targets}
        try:
            fields = cast(dict[str, str], await self.client.hgetall(name))  # decode_responses: text
            stale: list[str] = []
            for field, value in fields.items():
                if field.startswith("m:") and (field[2:] in as_bundles or targets.intersection(value.split("\t"))):
                    stale += [f"c:{field[2:]}", field]
            if stale:
                await self.client.hdel(name, *stale)
        except (RedisError, OSError) as error:
            raise ImpressionsUnavailable(type(error).__name__) from None

    async def overexposed(self, requester: str, bundle_keys: Sequence[str]) -> set[str]:
        if self.rotate_after <= 0 or not bundle_keys:
            return set()
        try:
            counts = await self.client.hmget(self._name(requester), [f"c:{k}" for k in bundle_keys])
        except (RedisError, OSError) as error:  # the page goes on without rotation
            log.warning("impressions not read", extra={"fields": {"reason": type(error).__name__}})
            return set()
        return {k for k, count in zip(bundle_keys, counts, strict=True) if count and int(count) >= self.rotate_after}

    async def holds(self, requester: str) -> bool:
        try:
            return bool(await self.client.exists(self._name(requester)))
        except (RedisError, OSError) as error:
            raise ImpressionsUnavailable(type(error).__name__) from None

    async def forget(self, requester: str) -> bool:
        try:
            return bool(await self.client.delete(self._name(requester)))
        except (RedisError, OSError) as error:
            raise ImpressionsUnavailable(type(error).__name__) from None

    async def user_vector(self, requester: str) -> UserVector | None:
        try:
            stored = await self.client.hget(self._name(requester), "uv")
        except (RedisError, OSError) as error:  # the page goes on without the two-tower source
            log.warning("user vector not read", extra={"fields": {"reason": type(error).__name__}})
            return None
        if not stored:
            return None
        version, _, values = cast(str, stored).partition("\t")
        return UserVector(version, tuple(float(v) for v in values.split(",") if v))

    async def keep_user_vector(self, requester: str, vector: UserVector) -> None:
        name = self._name(requester)
        text = vector.model_version + "\t" + ",".join(f"{v:.6g}" for v in vector.values)
        try:
            await self.client.hset(name, "uv", text)
            await self.client.expire(name, self.ttl_seconds)
        except (RedisError, OSError) as error:  # only the next page's two-tower source is missed
            log.warning("user vector not kept", extra={"fields": {"reason": type(error).__name__}})

    async def close(self) -> None:
        await self.client.aclose()
