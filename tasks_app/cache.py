"""The cache every process shares (request throttles, failed sign-ins): Django's Redis cache,
falling back to a per-process memory cache while Redis is unreachable, so a Redis outage never
fails a request (throttles then count per process until Redis is back)."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache

logger = logging.getLogger(__name__)

# The cache operations that go to Redis when it answers and to the local cache when it doesn't.
_FALLBACK_OPERATIONS = (
    "get",
    "set",
    "add",
    "delete",
    "touch",
    "incr",
    "has_key",
    "get_many",
    "set_many",
    "delete_many",
)


class RedisWithLocalFallback(RedisCache):
    # After a failure, use the local cache for this long before trying Redis again.
    BACKOFF_SECONDS = 2.0

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._local = LocMemCache("longrun-cache-fallback", {"OPTIONS": {"MAX_ENTRIES": 10_000}})
        self._down_until = 0.0

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if time.monotonic() >= self._down_until:
            try:
                return getattr(super(), name)(*args, **kwargs)
            except (redis.RedisError, OSError) as exc:
                self._down_until = time.monotonic() + self.BACKOFF_SECONDS
                logger.warning("cache unavailable, counting in this process meanwhile: %s", exc)
        return getattr(self._local, name)(*args, **kwargs)

    def clear(self) -> None:
        """Delete this cache's keys only (Django's RedisCache.clear() flushes the whole database,
        which another deployment or test run sharing it may be using)."""
        self._local.clear()
        if not self.key_prefix:
            self._call("clear")
            return
        client = self._cache.get_client(write=True)  # type: ignore[attr-defined]
        try:
            keys = list(client.scan_iter(match=f"{self.key_prefix}:*", count=1000))
            if keys:
                client.unlink(*keys)
        except (redis.RedisError, OSError) as exc:
            logger.warning("cache unavailable, cleared the local cache only: %s", exc)


def _forward(name: str) -> Any:
    def operation(self: RedisWithLocalFallback, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)

    operation.__name__ = name
    return operation


for _name in _FALLBACK_OPERATIONS:
    setattr(RedisWithLocalFallback, _name, _forward(_name))
