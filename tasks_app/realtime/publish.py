"""Publishing job changes to the channel layer from synchronous code.

`async_to_sync(channel_layer.group_send)` builds and tears down an event loop and a Redis
connection per call (about 12 ms from a Celery task here; channels_redis issues 125 and 332).
`RedisPubSubChannelLayer.group_send` is a single Redis PUBLISH of the layer's own serialization
on the group's channel name, so sync code does exactly that over one long-lived connection pool
per process (redis-py's pool reconnects after a fork). `tests/realtime/test_publish.py` proves
that a real channel-layer subscriber receives what this sends, and `bench/bench_publish.py`
measures both.

Delivery is at-most-once, like the layer itself: if Redis is unreachable the message is dropped
(and the next attempts are skipped for a moment, so a dead Redis costs the request path nothing).
Clients detect the gap from the job `version` and resync over REST.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from channels.layers import get_channel_layer
from django.conf import settings

from ..models import JobId

logger = logging.getLogger(__name__)

STAFF_GROUP = "jobs.staff"


def job_group(job_id: JobId) -> str:
    return f"jobs.job.{job_id}"


def owner_group(user_id: Any) -> str:
    return f"jobs.owner.{user_id}"


class GroupPublisher:
    """Sends channel-layer group messages from sync code with one Redis pool per process."""

    # After a failure, skip publishing for this long instead of paying a connect timeout per event.
    BACKOFF_SECONDS = 2.0

    def __init__(self, alias: str = "default") -> None:
        self.alias = alias
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0

    def _config(self) -> dict[str, Any]:
        layers: dict[str, Any] = settings.CHANNEL_LAYERS
        config: dict[str, Any] = layers[self.alias].get("CONFIG", {})
        return config

    def _redis(self) -> redis.Redis:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    hosts = self._config().get("hosts") or ["redis://127.0.0.1:6379/0"]
                    if len(hosts) != 1:
                        raise NotImplementedError("GroupPublisher supports a single Redis host")
                    host = hosts[0]
                    url = host if isinstance(host, str) else host["address"]
                    self._client = redis.Redis.from_url(
                        url, socket_connect_timeout=0.5, socket_timeout=2, health_check_interval=30
                    )
        return self._client

    def channel_name(self, group: str) -> str:
        # Mirrors RedisPubSubLoopLayer._get_group_channel_name (covered by the publish tests).
        return f"{self._config().get('prefix', 'asgi')}__group__{group}"

    def send(self, groups: list[str], message: dict[str, Any]) -> bool:
        """Publish `message` to every group in one round trip. Returns False if it was dropped."""
        return self.send_many([(groups, message)])

    def send_many(self, batch: list[tuple[list[str], dict[str, Any]]]) -> bool:
        """Publish several messages, in order, in one round trip."""
        if time.monotonic() < self._down_until:
            return False
        layer = get_channel_layer(self.alias)
        try:
            pipe = self._redis().pipeline(transaction=False)
            for groups, message in batch:
                data = layer.serialize(message)
                for group in groups:
                    pipe.publish(self.channel_name(group), data)
            pipe.execute()
        except redis.RedisError as exc:
            self._down_until = time.monotonic() + self.BACKOFF_SECONDS
            logger.warning("live update dropped, Redis unreachable: %s", exc)
            return False
        self._down_until = 0.0
        return True


publisher = GroupPublisher()


def _groups(owner_id: Any, message: dict[str, Any]) -> list[str]:
    return [job_group(message["job"]["id"]), owner_group(owner_id), STAFF_GROUP]


def publish_job_message(owner_id: Any, message: dict[str, Any]) -> bool:
    """Send one change (a `realtime.messages.job_changed` message) to everyone who may see it."""
    return publisher.send(_groups(owner_id, message), message)


def publish_job_messages(owner_id: Any, messages: list[dict[str, Any]]) -> bool:
    """Several changes of one owner's jobs, in order, in one round trip."""
    return publisher.send_many([(_groups(owner_id, message), message) for message in messages])
