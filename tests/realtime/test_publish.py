"""The sync publisher speaks the channel layer's own protocol: a real RedisPubSubChannelLayer
subscriber (what the WebSocket consumers use) receives what services publish, in order."""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest
from channels.layers import get_channel_layer

from tasks_app.realtime import publish as events
from tasks_app.realtime.publish import GroupPublisher, job_group, owner_group
from tasks_app.services import execution, submission

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
    pool = publisher._redis().connection_pool
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
    with mock.patch.object(publisher, "_redis") as client:
        assert publisher.send(["g"], {"type": "job.event"}) is False
        client.assert_not_called()  # backing off: no new connection attempt per event
