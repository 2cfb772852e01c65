"""The sync publisher speaks the channel layer's own protocol: a real RedisPubSubChannelLayer
subscriber (what the WebSocket consumers use) receives what services publish, in order."""

from __future__ import annotations

import asyncio
import os
from unittest import mock

import pytest
import redis
from channels.layers import get_channel_layer

from tasks_app.realtime import publish as events
from tasks_app.realtime.publish import GroupPublisher, job_group, owner_group
from tasks_app.services import execution, submission
from tasks_app.stack import Stack, free_port

pytestmark = pytest.mark.django_db(transaction=True)


async def _collect(groups: list[str], produce, *, until, timeout: float = 10.0) -> list[dict]:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    for group in groups:
        await layer.group_add(group, channel)
    await asyncio.sleep(0.2)  # let the SUBSCRIBE reach Redis before anything is published
    producer = asyncio.create_task(asyncio.to_thread(produce))
    received: list[dict] = []
    try:
        async with asyncio.timeout(timeout):
            while not received or not until(received):
                received.append(await layer.receive(channel))
    finally:
        await producer
        for group in groups:
            await layer.group_discard(group, channel)
        await layer.flush() if hasattr(layer, "flush") else None
    return received


def test_published_group_message_reaches_a_channel_layer_subscriber():
    message = {"type": "job.event", "event": "status", "version": 7, "job": {"id": "x", "version": 7}}
    publisher = GroupPublisher()
    got = asyncio.run(
        _collect(
            ["jobs.test.one"], lambda: publisher.send(["jobs.test.one"], message), until=lambda r: len(r) >= 1
        )
    )
    assert got == [message]


def test_a_job_lifecycle_arrives_in_order_with_increasing_versions(user):
    created = {}

    def lifecycle():
        with mock.patch("tasks_app.services.dispatch.run_job.apply_async"):
            job = submission.job_create(owner=user, type="sleep", params={"seconds": 1})
        created["id"] = job.pk
        execution.job_claim(job_id=job.pk, worker="w1")
        for percent in (10, 50, 90):
            execution.job_progress(job_id=job.pk, worker="w1", percent=percent, message=f"{percent}%")
        execution.job_log(job_id=job.pk, worker="w1", message="almost done")
        execution.job_succeed(job_id=job.pk, worker="w1", result={"ok": True})

    got = asyncio.run(
        _collect([owner_group(user.pk)], lifecycle, until=lambda r: r[-1]["job"]["status"] == "succeeded")
    )
    assert [m["event"] for m in got] == [
        "created",
        "status",
        "progress",
        "progress",
        "progress",
        "log",
        "status",
    ]
    assert [m["version"] for m in got] == list(range(1, 8))
    assert [m["job"]["status"] for m in got] == [
        "queued",
        "running",
        "running",
        "running",
        "running",
        "running",
        "succeeded",
    ]
    assert [m["job"]["progress"] for m in got[2:5]] == [10, 50, 90]
    assert got[-1]["job"]["result"] == {"ok": True}
    assert all(m["job"]["id"] == str(created["id"]) for m in got)


def test_messages_go_to_the_job_owner_and_staff_groups(user):
    def create():
        with mock.patch("tasks_app.services.dispatch.run_job.apply_async"):
            created.append(submission.job_create(owner=user, type="sleep", params={}))

    created: list = []
    got = asyncio.run(_collect([events.STAFF_GROUP], create, until=lambda r: len(r) >= 1))
    assert got[0]["event"] == "created"
    assert got[0]["job"]["owner"] == "alice"


def test_publisher_keeps_one_connection_for_many_events():
    publisher = GroupPublisher()
    for n in range(200):
        assert publisher.send([job_group("conn-test")], {"type": "job.event", "n": n})
    pool = publisher.shards()[0].client.connection_pool
    assert len(pool._available_connections) + len(pool._in_use_connections) == 1


def test_an_unreachable_redis_drops_the_message_quickly_and_backs_off(settings):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }
    publisher = GroupPublisher()
    assert publisher.send(["g"], {"type": "job.event"}) is False
    with mock.patch.object(publisher.shards()[0], "writer") as connect:
        assert publisher.send(["g"], {"type": "job.event"}) is False
        connect.assert_not_called()  # backing off: no new connection attempt per event


# --- several Redis hosts ----------------------------------------------------------------------


@pytest.fixture
def two_redis(tmp_path):
    """Two Redis servers of the test's own, the channel layer configured with both."""
    stack = Stack(env=dict(os.environ), cwd=tmp_path, log_dir=tmp_path / "logs")
    ports = [free_port(), free_port()]
    servers = [stack.start_redis(port, tmp_path / f"redis-{port}", persistent=False) for port in ports]
    yield stack, servers, [f"redis://127.0.0.1:{port}/0" for port in ports]
    stack.stop_all()


def layer_on(settings, hosts: list[str]) -> None:
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": hosts, "prefix": "two-hosts"},
        }
    }


def test_with_two_redis_hosts_every_group_gets_its_messages_from_the_host_daphne_reads(settings, two_redis):
    _stack, _servers, urls = two_redis
    layer_on(settings, urls)
    publisher = GroupPublisher()
    groups = [f"jobs.job.{n}" for n in range(12)]
    # The groups spread over both hosts (channels-redis's own hash decides), so both are used.
    assert {publisher.shard_index(publisher.channel_name(group)) for group in groups} == {0, 1}
    message = {"type": "job.event", "event": "status", "version": 3}

    got = asyncio.run(
        _collect(groups, lambda: publisher.send(groups, message), until=lambda r: len(r) >= len(groups))
    )
    assert got == [message] * len(groups)  # one per group the subscriber joined, none lost
    for url in urls:  # each host carried its own share (a message on the wrong host is never seen)
        assert redis.Redis.from_url(url).info("commandstats")["cmdstat_eval"]["calls"] >= 1


def test_one_redis_host_down_drops_only_what_lives_there(settings, two_redis):
    stack, servers, urls = two_redis
    layer_on(settings, urls)
    publisher = GroupPublisher()
    on_host = {0: [], 1: []}
    for n in range(40):
        group = f"jobs.owner.{n}"
        on_host[publisher.shard_index(publisher.channel_name(group))].append(group)
    stack.stop(servers[1])
    message = {"type": "job.event", "n": 1}

    assert publisher.send([on_host[1][0]], message) is False
    assert publisher.send([on_host[0][0]], message) is True  # the live host is not held back
    listener = redis.Redis.from_url(urls[0]).pubsub()
    listener.subscribe(publisher.channel_name(on_host[0][1]))
    assert listener.get_message(timeout=5)["type"] == "subscribe"
    assert publisher.send([on_host[0][1], on_host[1][1]], message) is False  # half of it dropped ...
    received = listener.get_message(timeout=5)
    assert received is not None and received["type"] == "message"  # ... the live host's half not
    assert get_channel_layer().deserialize(received["data"]) == message
    listener.close()


def test_the_metrics_counters_ride_in_the_same_write_as_the_live_update():
    """A second write right after the first would wait for the first one's reply."""
    publisher = GroupPublisher()
    with mock.patch.object(publisher, "_write", return_value=True) as write:
        assert publisher.send([job_group("x")], {"type": "job.event"}, extra=[("HINCRBY", "k", "f", 1)])
    write.assert_called_once()
    (commands,) = write.call_args.args
    assert [command[0] for command in commands[0]] == ["EVAL", "HINCRBY"]
