"""Publishing job changes to the channel layer from synchronous code.

`async_to_sync(channel_layer.group_send)` builds and tears down an event loop and a Redis
connection per call (about 12 ms from a Celery task here; channels_redis issues 125 and 332).
`RedisPubSubChannelLayer.group_send` is a single Redis PUBLISH of the layer's own serialization
on the group's channel name, so sync code does exactly that over one long-lived connection pool
per process (redis-py's pool reconnects after a fork). `tests/realtime/test_publish.py` proves
that a real channel-layer subscriber receives what this sends, and `bench/bench_publish.py`
measures both.

Commands are written without waiting for their replies (read at the next send), so publishing
costs no round trip. Delivery is at-most-once, like the layer itself: if Redis is unreachable the
message is dropped (and the next attempts are skipped for a moment, so a dead Redis costs the
request path nothing). Clients detect the gap from the job `version` and resync over REST.
"""

from __future__ import annotations

import logging
import os
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


# PUBLISH one message on several channels with one command.
_PUBLISH_EACH = "for _, channel in ipairs(KEYS) do redis.call('PUBLISH', channel, ARGV[1]) end"


class GroupPublisher:
    """Sends channel-layer group messages from sync code over one Redis connection per process.

    Commands are written without waiting for their replies: the replies of one send are read at
    the next (by then they have arrived), so a worker or request never waits a round trip on
    Redis to publish. An error reply is logged and skipped; a broken connection is replaced."""

    # After a failure, skip publishing for this long instead of paying a connect timeout per event.
    BACKOFF_SECONDS = 2.0

    def __init__(self, alias: str = "default") -> None:
        self.alias = alias
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._connection: Any = None
        self._pid = 0
        self._unread = 0

    def _config(self) -> dict[str, Any]:
        layers: dict[str, Any] = settings.CHANNEL_LAYERS
        config: dict[str, Any] = layers[self.alias].get("CONFIG", {})
        return config

    def _redis(self) -> redis.Redis:
        if self._client is None:
            hosts = self._config().get("hosts") or ["redis://127.0.0.1:6379/0"]
            if len(hosts) != 1:
                raise NotImplementedError("GroupPublisher supports a single Redis host")
            host = hosts[0]
            url = host if isinstance(host, str) else host["address"]
            self._client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2)
        return self._client

    def _writer(self) -> Any:
        """This process's connection (a forked child opens its own, never its parent's)."""
        if self._connection is None or self._pid != os.getpid():
            self._connection = self._redis().connection_pool.get_connection()
            self._pid = os.getpid()
            self._unread = 0
        return self._connection

    def channel_name(self, group: str) -> str:
        # Mirrors RedisPubSubLoopLayer._get_group_channel_name (covered by the publish tests).
        return f"{self._config().get('prefix', 'asgi')}__group__{group}"

    def send(self, groups: list[str], message: dict[str, Any]) -> bool:
        """Publish `message` to every group (one command: a script that publishes it on each
        group's channel). Returns False if it was dropped."""
        return self.send_many([(groups, message)])

    def send_many(self, batch: list[tuple[list[str], dict[str, Any]]]) -> bool:
        """Publish several messages, in order, in one write."""
        if time.monotonic() < self._down_until:
            return False
        layer = get_channel_layer(self.alias)
        commands = []
        for groups, message in batch:
            channels = [self.channel_name(group) for group in groups]
            commands.append(("EVAL", _PUBLISH_EACH, len(channels), *channels, layer.serialize(message)))
        with self._lock:
            try:
                connection = self._writer()
                self._read_replies(connection)
                connection.send_packed_command(connection.pack_commands(commands), check_health=False)
                self._unread += len(commands)
            except (redis.RedisError, OSError) as exc:
                self._discard_connection()
                return self._dropped(exc)
        self._down_until = 0.0
        return True

    def flush(self) -> None:
        """Read the replies still outstanding (tests, and a process about to exit)."""
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                try:
                    self._read_replies(self._connection)
                except (redis.RedisError, OSError):
                    self._discard_connection()

    def _read_replies(self, connection: Any) -> None:
        while self._unread:
            self._unread -= 1
            try:
                connection.read_response()
            except redis.ResponseError as exc:  # the server refused one command: the rest stand
                logger.warning("live update refused by Redis: %s", exc)

    def _discard_connection(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            self._connection.disconnect()
        self._connection = None
        self._unread = 0

    def _dropped(self, exc: Exception) -> bool:
        self._down_until = time.monotonic() + self.BACKOFF_SECONDS
        logger.warning("live update dropped, Redis unreachable: %s", exc)
        return False


publisher = GroupPublisher()


def _groups(owner_id: Any, message: dict[str, Any]) -> list[str]:
    return [job_group(message["job"]["id"]), owner_group(owner_id), STAFF_GROUP]


def publish_job_message(owner_id: Any, message: dict[str, Any]) -> bool:
    """Send one change (a `realtime.messages.job_changed` message) to everyone who may see it."""
    return publisher.send(_groups(owner_id, message), message)


def publish_job_messages(owner_id: Any, messages: list[dict[str, Any]]) -> bool:
    """Several changes of one owner's jobs, in order, in one round trip."""
    return publisher.send_many([(_groups(owner_id, message), message) for message in messages])
