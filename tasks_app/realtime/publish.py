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
from collections.abc import Sequence
from typing import Any

import redis
from channels.layers import get_channel_layer
from channels_redis.utils import _consistent_hash, decode_hosts
from django.conf import settings
from django.core.signals import setting_changed

from ..models import JobId

logger = logging.getLogger(__name__)

STAFF_GROUP = "jobs.staff"
SCHEDULES_STAFF_GROUP = "schedules.staff"


def job_group(job_id: JobId) -> str:
    return f"jobs.job.{job_id}"


def owner_group(user_id: Any) -> str:
    return f"jobs.owner.{user_id}"


def schedules_owner_group(user_id: Any) -> str:
    return f"schedules.owner.{user_id}"


# A Redis command as redis-py packs it: ("HINCRBY", key, field, 1).
Command = tuple[Any, ...]

# PUBLISH one message on several channels with one command.
_PUBLISH_EACH = "for _, channel in ipairs(KEYS) do redis.call('PUBLISH', channel, ARGV[1]) end"


def client_options(host: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """A channel-layer host entry (`channels_redis.utils.decode_hosts`) as redis-py takes it:
    (URL or None, keyword arguments), with short timeouts: a live update is never worth a wait."""
    options: dict[str, Any] = {"socket_connect_timeout": 0.5, "socket_timeout": 2, **host}
    if "master_name" in options:
        raise NotImplementedError("live updates: Redis Sentinel hosts are not supported; give addresses")
    return options.pop("address", None), options


def layer_hosts(alias: str = "default") -> list[dict[str, Any]]:
    layers: dict[str, Any] = settings.CHANNEL_LAYERS
    hosts: list[dict[str, Any]] = decode_hosts(layers[alias].get("CONFIG", {}).get("hosts"))
    return hosts


class _Shard:
    """One Redis of the layer: its client, this process's connection to it, the replies still
    to read on that connection, and until when it is skipped after a failure."""

    def __init__(self, host: dict[str, Any]) -> None:
        address, options = client_options(host)
        self.client = redis.Redis.from_url(address, **options) if address else redis.Redis(**options)
        self.connection: Any = None
        self.pid = 0
        self.unread = 0
        self.down_until = 0.0

    def writer(self) -> Any:
        """This process's connection (a forked child opens its own, never its parent's)."""
        if self.connection is None or self.pid != os.getpid():
            self.connection = self.client.connection_pool.get_connection()
            self.pid = os.getpid()
            self.unread = 0
        return self.connection

    def read_replies(self) -> None:
        while self.unread:
            self.unread -= 1
            try:
                self.connection.read_response()
            except redis.ResponseError as exc:  # the server refused one command: the rest stand
                logger.warning("live update refused by Redis: %s", exc)

    def discard_connection(self) -> None:
        if self.connection is not None and self.pid == os.getpid():
            self.connection.disconnect()
        self.connection = None
        self.unread = 0


class GroupPublisher:
    """Sends channel-layer group messages from sync code over one Redis connection per process
    and per Redis of the layer.

    With several Redis hosts (the layer's `hosts` list), each group's channel lives on the host
    channels-redis picks for it (its own consistent hash, `channels_redis.utils._consistent_hash`,
    so Daphne subscribes where this publishes); a message for groups on two hosts is one command
    on each. Commands are written without waiting for their replies: the replies of one send are
    read at the next (by then they have arrived), so a worker or request never waits a round
    trip on Redis to publish. An error reply is logged and skipped; a broken connection is
    replaced, and that host alone is skipped for a moment."""

    # After a failure, skip a host for this long instead of paying a connect timeout per event.
    BACKOFF_SECONDS = 2.0

    def __init__(self, alias: str = "default") -> None:
        self.alias = alias
        self._shards: list[_Shard] | None = None
        self._lock = threading.Lock()

    def _config(self) -> dict[str, Any]:
        layers: dict[str, Any] = settings.CHANNEL_LAYERS
        config: dict[str, Any] = layers[self.alias].get("CONFIG", {})
        return config

    def shards(self) -> list[_Shard]:
        if self._shards is None:
            self._shards = [_Shard(host) for host in layer_hosts(self.alias)]
        return self._shards

    def forget_hosts(self) -> None:
        with self._lock:
            for shard in self._shards or []:
                shard.discard_connection()
            self._shards = None

    def channel_name(self, group: str) -> str:
        # Mirrors RedisPubSubLoopLayer._get_group_channel_name (covered by the publish tests).
        return f"{self._config().get('prefix', 'asgi')}__group__{group}"

    def shard_index(self, channel: str) -> int:
        return _consistent_hash(channel, len(self.shards()))

    def send(self, groups: list[str], message: dict[str, Any], *, extra: Sequence[Command] = ()) -> bool:
        """Publish `message` to every group (one command per Redis host: a script that
        publishes it on each of that host's group channels). Returns False if it was dropped
        (on any host)."""
        return self.send_many([(groups, message)], extra=extra)

    def send_many(
        self, batch: list[tuple[list[str], dict[str, Any]]], *, extra: Sequence[Command] = ()
    ) -> bool:
        """Publish several messages, in order, in one write per Redis host; `extra` commands
        (the metrics' counters) go to the first host in the same write, so they cost no second
        send (a second send right after the first would wait for the first one's reply)."""
        layer = get_channel_layer(self.alias)
        shards = self.shards()
        commands: list[list[Command]] = [[] for _ in shards]
        for groups, message in batch:
            by_shard: dict[int, list[str]] = {}
            for group in groups:
                channel = self.channel_name(group)
                by_shard.setdefault(self.shard_index(channel), []).append(channel)
            payload = layer.serialize(message)
            for index, channels in by_shard.items():
                commands[index].append(("EVAL", _PUBLISH_EACH, len(channels), *channels, payload))
        commands[0].extend(extra)
        return self._write(commands)

    def send_commands(self, commands: Sequence[Command]) -> bool:
        """Write raw Redis commands to the layer's first host, replies unread, like a publish
        (the metrics counters, `tasks_app.metrics`). Returns False if they were dropped."""
        return self._write([list(commands), *([[]] * (len(self.shards()) - 1))])

    def _write(self, commands: list[list[Command]]) -> bool:
        """Write each host's commands to it in one send; a host that fails is skipped for a
        moment and the rest are not held back."""
        delivered = True
        now = time.monotonic()
        with self._lock:
            for shard, shard_commands in zip(self.shards(), commands, strict=True):
                if not shard_commands:
                    continue
                if now < shard.down_until:
                    delivered = False
                    continue
                try:
                    connection = shard.writer()
                    shard.read_replies()
                    connection.send_packed_command(
                        connection.pack_commands(shard_commands), check_health=False
                    )
                    shard.unread += len(shard_commands)
                    shard.down_until = 0.0
                except (redis.RedisError, OSError) as exc:
                    shard.discard_connection()
                    shard.down_until = time.monotonic() + self.BACKOFF_SECONDS
                    logger.warning("live update dropped, Redis unreachable: %s", exc)
                    delivered = False
        return delivered

    def flush(self) -> None:
        """Read the replies still outstanding (tests, and a process about to exit)."""
        with self._lock:
            for shard in self._shards or []:
                if shard.connection is not None and shard.pid == os.getpid():
                    try:
                        shard.read_replies()
                    except (redis.RedisError, OSError):
                        shard.discard_connection()


publisher = GroupPublisher()


def _forget_hosts(*, setting: str, **kwargs: Any) -> None:
    """A changed CHANNEL_LAYERS (tests) takes effect at the next publish, as in channels."""
    if setting == "CHANNEL_LAYERS":
        publisher.forget_hosts()


setting_changed.connect(_forget_hosts)


def _groups(owner_id: Any, message: dict[str, Any]) -> list[str]:
    return [job_group(message["job"]["id"]), owner_group(owner_id), STAFF_GROUP]


def publish_job_message(owner_id: Any, message: dict[str, Any], *, extra: Sequence[Command] = ()) -> bool:
    """Send one change (a `realtime.messages.job_changed` message) to everyone who may see it,
    with `extra` Redis commands in the same write."""
    return publisher.send(_groups(owner_id, message), message, extra=extra)


def publish_job_messages(
    owner_id: Any, messages: list[dict[str, Any]], *, extra: Sequence[Command] = ()
) -> bool:
    """Several changes of one owner's jobs, in order, in one write."""
    return publisher.send_many([(_groups(owner_id, message), message) for message in messages], extra=extra)


def publish_schedule_message(owner_id: Any, message: dict[str, Any]) -> bool:
    """Send a schedule's change to its owner's and the staff's schedule streams."""
    return publisher.send([schedules_owner_group(owner_id), SCHEDULES_STAFF_GROUP], message)
