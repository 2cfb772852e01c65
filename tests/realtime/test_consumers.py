"""The WebSocket API with channels' WebsocketCommunicator, over the real Redis channel layer."""

from __future__ import annotations

import asyncio
import time
from unittest import mock

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.hashers import make_password  # noqa: F401 (fixtures create users)
from django.db.models import F
from rest_framework.authtoken.models import Token

from tasks_app import selectors
from tasks_app.models import Job
from tasks_app.realtime.auth import WebSocketAuthMiddleware
from tasks_app.realtime.routing import websocket_urlpatterns
from tasks_app.services import control, execution, submission

pytestmark = pytest.mark.django_db(transaction=True)

application = WebSocketAuthMiddleware(URLRouter(websocket_urlpatterns))


def token_headers(user) -> list[tuple[bytes, bytes]]:
    key = Token.objects.get_or_create(user=user)[0].key
    return [(b"authorization", f"Token {key}".encode())]


def session_headers(client, user, origin: str = "http://localhost") -> list[tuple[bytes, bytes]]:
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    return [(b"cookie", cookie.encode()), (b"origin", origin.encode()), (b"host", b"localhost")]


def submit(user, **params):
    with mock.patch("tasks_app.services.dispatch.run_job.apply_async"):
        return submission.job_create(owner=user, type="sleep", params=params or {"seconds": 1})


async def connect(headers) -> tuple[WebsocketCommunicator, bool]:
    communicator = WebsocketCommunicator(application, "/ws/jobs/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    return communicator, connected


def run(coroutine):
    return asyncio.run(coroutine)


def test_anonymous_handshake_is_refused():
    async def scenario():
        communicator, connected = await connect([])
        assert not connected

    run(scenario())


def test_a_bad_token_is_refused(user):
    async def scenario():
        communicator, connected = await connect([(b"authorization", b"Token not-a-real-token")])
        assert not connected

    run(scenario())


def test_a_token_client_needs_no_origin(user):
    headers = token_headers(user)

    async def scenario():
        communicator, connected = await connect(headers)
        assert connected
        await communicator.disconnect()

    run(scenario())


def test_a_browser_session_from_our_origin_is_accepted(client, user):
    headers = session_headers(client, user)

    async def scenario():
        communicator, connected = await connect(headers)
        assert connected
        await communicator.send_json_to({"action": "subscribe", "scope": "mine"})
        assert (await communicator.receive_json_from(timeout=5))["type"] == "snapshot"
        await communicator.disconnect()

    run(scenario())


def test_a_foreign_origin_is_refused_even_with_a_valid_session(client, user):
    headers = session_headers(client, user, origin="https://evil.example")

    async def scenario():
        communicator, connected = await connect(headers)
        assert not connected

    run(scenario())


def test_a_session_cookie_without_origin_is_not_enough(client, user):
    headers = [h for h in session_headers(client, user) if h[0] != b"origin"]

    async def scenario():
        communicator, connected = await connect(headers)
        assert not connected

    run(scenario())


def test_subscribing_to_another_users_job_is_refused(user, other_user):
    job = submit(other_user)
    headers = token_headers(user)

    async def scenario():
        communicator, connected = await connect(headers)
        assert connected
        await communicator.send_json_to({"action": "subscribe", "job": str(job.pk)})
        message = await communicator.receive_json_from(timeout=5)
        assert message["type"] == "error" and message["code"] == "not_found"
        # And nothing of that job arrives later.
        await asyncio.to_thread(control.job_cancel, job_id=job.pk, actor=None)
        assert await communicator.receive_nothing(timeout=1)
        await communicator.disconnect()

    run(scenario())


def test_scope_all_is_for_staff_only(user, staff_user):
    submit(user)

    async def scenario(headers, expect_snapshot):
        communicator, _ = await connect(headers)
        await communicator.send_json_to({"action": "subscribe", "scope": "all"})
        message = await communicator.receive_json_from(timeout=5)
        if expect_snapshot:
            assert message["type"] == "snapshot" and len(message["jobs"]) == 1
        else:
            assert message == {
                "type": "error",
                "code": "forbidden",
                "message": 'Only staff who may view jobs can subscribe to "all".',
            }
        await communicator.disconnect()

    run(scenario(token_headers(user), False))
    run(scenario(token_headers(staff_user), True))


def test_bad_messages_get_an_error_not_a_disconnect(user):
    headers = token_headers(user)

    async def scenario():
        communicator, _ = await connect(headers)
        for bad in (
            {"action": "dance"},
            {"action": "subscribe"},
            {"action": "subscribe", "scope": "everyone"},
            [1, 2],
        ):
            await communicator.send_json_to(bad)
            message = await communicator.receive_json_from(timeout=5)
            assert message["type"] == "error" and message["code"] == "bad_request", bad
        await communicator.send_json_to({"action": "subscribe", "job": "not-a-uuid"})
        assert (await communicator.receive_json_from(timeout=5))["code"] == "not_found"
        await communicator.disconnect()

    run(scenario())


def test_snapshot_then_every_change_in_order_with_versions(user):
    job = submit(user)
    headers = token_headers(user)

    def lifecycle():
        execution.job_claim(job_id=job.pk, worker="w1")
        for percent in (25, 50, 75):
            execution.job_progress(job_id=job.pk, worker="w1", percent=percent)
        execution.job_log(job_id=job.pk, worker="w1", message="nearly there")
        execution.job_succeed(job_id=job.pk, worker="w1", result={"ok": 1})

    async def scenario():
        communicator, _ = await connect(headers)
        # Subscribed twice (the job and "mine"): each change must still arrive once.
        await communicator.send_json_to({"action": "subscribe", "job": str(job.pk)})
        snapshot = await communicator.receive_json_from(timeout=5)
        assert snapshot["type"] == "snapshot" and snapshot["job"] == str(job.pk)
        assert [j["version"] for j in snapshot["jobs"]] == [1]
        await communicator.send_json_to({"action": "subscribe", "scope": "mine"})
        assert (await communicator.receive_json_from(timeout=5))["type"] == "snapshot"
        await asyncio.sleep(0.2)
        await asyncio.to_thread(lifecycle)
        received = []
        while not received or received[-1]["job"]["status"] != "succeeded":
            received.append(await communicator.receive_json_from(timeout=5))
        assert all(m["type"] == "job" for m in received)
        assert [m["version"] for m in received] == [2, 3, 4, 5, 6, 7]
        assert [m["event"] for m in received] == [
            "status",
            "progress",
            "progress",
            "progress",
            "log",
            "status",
        ]
        assert [m["job"]["progress"] for m in received[1:4]] == [25, 50, 75]
        assert all(m["job"]["version"] == m["version"] for m in received)
        assert await communicator.receive_nothing(timeout=0.5)
        await communicator.disconnect()

    run(scenario())


def test_unsubscribe_stops_the_updates(user):
    job = submit(user)
    headers = token_headers(user)

    async def scenario():
        communicator, _ = await connect(headers)
        await communicator.send_json_to({"action": "subscribe", "job": str(job.pk)})
        await communicator.receive_json_from(timeout=5)
        await communicator.send_json_to({"action": "unsubscribe", "job": str(job.pk)})
        await asyncio.sleep(0.2)
        await asyncio.to_thread(control.job_cancel, job_id=job.pk, actor=None)
        assert await communicator.receive_nothing(timeout=1)
        await communicator.disconnect()

    run(scenario())


def test_a_flood_is_coalesced_to_the_latest_state_per_job(user, monkeypatch):
    """A client can't be sent faster than it is allowed; what waits is the newest state of each
    job, so memory is bounded by the number of jobs, and the last version always arrives."""
    from tasks_app.realtime.consumers import JobsConsumer

    monkeypatch.setattr(JobsConsumer, "MAX_MESSAGES_PER_SECOND", 5)
    monkeypatch.setattr(JobsConsumer, "BURST", 5)
    job = submit(user)
    execution.job_claim(job_id=job.pk, worker="w1")
    headers = token_headers(user)

    def flood():
        for percent in range(1, 61):
            execution.job_progress(job_id=job.pk, worker="w1", percent=percent)

    async def scenario():
        communicator, _ = await connect(headers)
        await communicator.send_json_to({"action": "subscribe", "job": str(job.pk)})
        await communicator.receive_json_from(timeout=5)
        await asyncio.sleep(0.2)
        await asyncio.to_thread(flood)
        received = []
        while not received or received[-1]["job"]["progress"] != 60:
            received.append(await communicator.receive_json_from(timeout=5))
        assert len(received) < 30, len(received)  # coalesced, not all 60
        assert received[-1]["version"] == 62
        await communicator.disconnect()

    run(scenario())


# --- a hostile client (issue 12) ---------------------------------------------------------------


def test_a_change_during_a_refused_subscribe_never_reaches_the_socket(user, other_user):
    """The visibility check and the change race: the job changes while the consumer is deciding
    whether `other_user` may follow it. Checked before joining the job's group, the change has
    nowhere to go; joined first, it would be delivered with the whole job."""
    from tasks_app.realtime import messages
    from tasks_app.realtime.publish import publish_job_message

    job = submit(user)
    real_get_visible = selectors.job_get_visible

    def get_visible_while_the_job_changes(viewer, job_id):
        publish_job_message(user.pk, messages.job_changed(Job.objects.get(pk=job_id), "progress"))
        time.sleep(0.3)  # long enough for the channel layer to deliver it
        return real_get_visible(viewer, job_id)

    headers = token_headers(other_user)

    async def scenario():
        communicator, _ = await connect(headers)
        with mock.patch.object(selectors, "job_get_visible", get_visible_while_the_job_changes):
            for _ in range(3):
                await communicator.send_json_to({"action": "subscribe", "job": str(job.pk)})
                assert await communicator.receive_json_from(timeout=5) == {
                    "type": "error",
                    "code": "not_found",
                    "message": "No such job, or not yours.",
                }
        assert await communicator.receive_nothing(timeout=1)
        await communicator.disconnect()

    run(scenario())


def test_a_change_during_an_allowed_subscribe_arrives_once_and_in_order(user):
    """The owner's subscribe in the same race: the snapshot is taken after joining, so the
    change is either in it or follows it; never lost, never older than the snapshot."""
    from tasks_app.realtime import messages
    from tasks_app.realtime.publish import publish_job_message

    job = submit(user)
    real_get_visible = selectors.job_get_visible
    calls = []

    def get_visible_while_the_job_changes(viewer, job_id):
        calls.append(job_id)
        if len(calls) == 1:  # between the check and the join
            with_progress = control_progress(job_id)
            publish_job_message(user.pk, messages.job_changed(with_progress, "progress"))
            time.sleep(0.3)
        return real_get_visible(viewer, job_id)

    def control_progress(job_id):
        Job.objects.filter(pk=job_id).update(progress=40, version=F("version") + 1)
        return Job.objects.get(pk=job_id)

    headers = token_headers(user)

    async def scenario():
        communicator, _ = await connect(headers)
        with mock.patch.object(selectors, "job_get_visible", get_visible_while_the_job_changes):
            await communicator.send_json_to({"action": "subscribe", "job": str(job.pk)})
            snapshot = await communicator.receive_json_from(timeout=5)
        assert snapshot["type"] == "snapshot"
        assert snapshot["jobs"][0]["progress"] == 40  # the change is in the snapshot
        assert await communicator.receive_nothing(timeout=1)  # and not sent again
        await communicator.disconnect()

    run(scenario())


def test_staff_who_may_only_view_jobs_may_follow_every_job(user, viewing_staff_user):
    submit(user)

    headers = token_headers(viewing_staff_user)

    async def scenario():
        communicator, _ = await connect(headers)
        await communicator.send_json_to({"action": "subscribe", "scope": "all"})
        message = await communicator.receive_json_from(timeout=5)
        assert message["type"] == "snapshot" and len(message["jobs"]) == 1
        await communicator.disconnect()

    run(scenario())


def test_staff_without_the_view_permission_follow_only_their_own(user, django_user_model):
    submit(user)
    bare_staff = django_user_model.objects.create_user("erin", password="erin-password-123", is_staff=True)

    headers = token_headers(bare_staff)

    async def scenario():
        communicator, _ = await connect(headers)
        await communicator.send_json_to({"action": "subscribe", "scope": "all"})
        assert (await communicator.receive_json_from(timeout=5))["code"] == "forbidden"
        await communicator.send_json_to({"action": "subscribe", "scope": "mine"})
        assert (await communicator.receive_json_from(timeout=5))["jobs"] == []
        await communicator.disconnect()

    run(scenario())


MALFORMED_FRAMES = {
    "not JSON": {"text_data": "hello"},
    "truncated JSON": {"text_data": '{"action": "subscribe", "job": '},
    "binary": {"bytes_data": b'{"action": "subscribe", "scope": "mine"}'},
    "nested 100,000 deep": {"text_data": "[" * 100_000 + "]" * 100_000},
    "invalid UTF-16 escape": {"text_data": '{"action": "subscribe", "job": "\\ud800"}'},
    "whitespace only": {"text_data": " "},
}


@pytest.mark.parametrize("frame", MALFORMED_FRAMES.values(), ids=MALFORMED_FRAMES.keys())
def test_a_malformed_frame_is_answered_with_an_error_and_the_socket_stays_open(user, frame):
    job = submit(user)

    headers = token_headers(user)

    async def scenario():
        communicator, _ = await connect(headers)
        await communicator.send_to(**frame)
        message = await communicator.receive_json_from(timeout=5)
        assert message["type"] == "error" and message["code"] in ("bad_request", "not_found"), message
        # Still open and still working.
        await communicator.send_json_to({"action": "subscribe", "job": str(job.pk)})
        assert (await communicator.receive_json_from(timeout=5))["type"] == "snapshot"
        await communicator.disconnect()

    run(scenario())


def test_a_client_that_keeps_sending_garbage_is_closed_with_policy_violation(user):
    from tasks_app.realtime.consumers import JobsConsumer

    headers = token_headers(user)

    async def scenario():
        communicator, _ = await connect(headers)
        for _ in range(JobsConsumer.MAX_BAD_REQUESTS):
            await communicator.send_to(text_data="garbage")
            assert (await communicator.receive_json_from(timeout=5))["code"] == "bad_request"
        await communicator.send_to(text_data="garbage")
        assert await communicator.receive_json_from(timeout=5) == {
            "type": "error",
            "code": "bad_request",
            "message": "Too many bad requests; closing.",
        }
        closed = await communicator.receive_output(timeout=5)
        assert closed == {"type": "websocket.close", "code": 1008}

    run(scenario())


def test_the_schedules_scope_sends_mine_then_each_change_and_firing(user, other_user):
    from tasks_app.models import Schedule
    from tasks_app.services import schedules

    with mock.patch("tasks_app.services.dispatch.run_job.apply_async"):
        mine = schedules.schedule_create(owner=user, name="mine", type="sleep", cron="0 3 * * *")
        schedules.schedule_create(owner=other_user, name="theirs", type="sleep", cron="0 3 * * *")
    headers = token_headers(user)

    def change_and_fire():
        with mock.patch("tasks_app.services.dispatch.run_job.apply_async"):
            schedules.schedule_pause(schedule_id=mine.pk)
            schedules.schedule_resume(schedule_id=mine.pk)
            Schedule.objects.filter(pk=mine.pk).update(next_fire_at=schedules.database_now())
            schedules.schedules_fire_due()
            theirs = Schedule.objects.get(name="theirs")
            schedules.schedule_pause(schedule_id=theirs.pk)  # not for alice

    async def scenario():
        communicator, _ = await connect(headers)
        await communicator.send_json_to({"action": "subscribe", "scope": "schedules"})
        snapshot = await communicator.receive_json_from(timeout=5)
        assert snapshot["type"] == "snapshot" and snapshot["scope"] == "schedules"
        assert [s["name"] for s in snapshot["schedules"]] == ["mine"]
        await asyncio.sleep(0.2)
        await asyncio.to_thread(change_and_fire)
        received = [await communicator.receive_json_from(timeout=5) for _ in range(3)]
        assert [(m["type"], m["event"], m["schedule"]["name"]) for m in received] == [
            ("schedule", "paused", "mine"),
            ("schedule", "resumed", "mine"),
            ("schedule", "fired", "mine"),
        ]
        fired = received[-1]["schedule"]
        assert fired["last_fired_at"] is not None and len(fired["recent_jobs"]) == 1
        assert await communicator.receive_nothing(timeout=0.5)  # the other user's change never came
        await communicator.disconnect()

    run(scenario())
