"""End to end with a real Daphne, a real Celery worker and a real Redis: live updates over
WebSocket and Server-Sent Events for a job submitted over REST."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import requests
import websockets
from rest_framework.authtoken.models import Token

from tasks_app.models import Job, JobStatus
from tests.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def live_system(stack, free_tcp_port, user):
    stack.start_ready_worker("worker", concurrency=2)
    stack.start_daphne(free_tcp_port)
    token = Token.objects.create(user=user).key
    return {
        "base": f"http://127.0.0.1:{free_tcp_port}",
        "ws": f"ws://127.0.0.1:{free_tcp_port}/ws/jobs/",
        "token": token,
    }


def test_a_websocket_client_sees_a_job_from_queued_to_succeeded(live_system):
    headers = {"Authorization": f"Token {live_system['token']}"}

    async def scenario():
        async with websockets.connect(live_system["ws"], additional_headers=headers) as socket:
            await socket.send(json.dumps({"action": "subscribe", "scope": "mine"}))
            assert json.loads(await socket.recv())["type"] == "snapshot"
            response = await asyncio.to_thread(
                requests.post,
                f"{live_system['base']}/api/jobs/",
                json={"type": "sleep", "params": {"seconds": 1.5, "steps": 5}},
                headers=headers,
                timeout=10,
            )
            assert response.status_code == 202
            job_id = response.json()["id"]
            messages = []
            async with asyncio.timeout(30):
                while not messages or messages[-1]["job"]["status"] != "succeeded":
                    message = json.loads(await socket.recv())
                    if message.get("type") == "job" and message["job"]["id"] == job_id:
                        messages.append(message)
            return messages

    messages = asyncio.run(scenario())
    statuses = [m["job"]["status"] for m in messages]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded"
    assert "running" in statuses
    assert [m["event"] for m in messages].count("progress") >= 2
    progress = [m["job"]["progress"] for m in messages if m["event"] == "progress"]
    assert progress == sorted(progress) and progress[-1] > 0
    versions = [m["version"] for m in messages]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    # At-most-once over the layer, but here nothing was lost: every version arrived, in order.
    assert versions == list(range(1, versions[-1] + 1))
    assert messages[-1]["job"]["result"] == {"slept": 1.5}


def read_sse(response, *, until) -> list[dict]:
    """Parse SSE frames from a streaming requests response until `until(frames)` is true. The
    line iterator is kept on the response, so a second call goes on where the first stopped."""
    if not hasattr(response, "sse_lines"):
        response.sse_lines = response.iter_lines(decode_unicode=True)
    frames, current = [], {}
    for line in response.sse_lines:
        if line == "":
            if "data" in current:
                current["data"] = json.loads(current["data"])
                frames.append(current)
                if until(frames):
                    break
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            current[name] = value
    return frames


def test_an_sse_client_reconnecting_with_last_event_id_gets_exactly_what_it_missed(live_system):
    headers = {"Authorization": f"Token {live_system['token']}"}
    base = live_system["base"]
    job_id = requests.post(
        f"{base}/api/jobs/",
        json={"type": "fail", "params": {"delay": 2, "message": "late"}},
        headers=headers,
        timeout=10,
    ).json()["id"]
    wait_for(lambda: Job.objects.get(pk=job_id).status == JobStatus.RUNNING, what="the job to run")

    # First connection: read the snapshot, then leave.
    with requests.get(f"{base}/api/jobs/{job_id}/stream/", headers=headers, stream=True, timeout=30) as first:
        assert first.headers["Content-Type"].startswith("text/event-stream")
        frames = read_sse(first, until=lambda f: len(f) >= 1)
    seen = int(frames[-1]["id"])
    assert frames[-1]["event"] == "job" and frames[-1]["data"]["job"]["status"] == "running"

    wait_for(lambda: Job.objects.get(pk=job_id).is_terminal, timeout=30, what="the job to end while away")
    missed = requests.get(
        f"{base}/api/jobs/{job_id}/events/", params={"after": seen}, headers=headers, timeout=10
    ).json()
    assert missed, "the job must have changed while the client was away"

    with requests.get(
        f"{base}/api/jobs/{job_id}/stream/",
        headers={**headers, "Last-Event-ID": str(seen)},
        stream=True,
        timeout=30,
    ) as again:
        frames = read_sse(again, until=lambda f: False)  # the stream closes: the job has ended
    history = [f for f in frames if f["event"] == "history"]
    assert [int(f["id"]) for f in history] == [e["seq"] for e in missed]
    assert [f["data"]["message"] for f in history] == [e["message"] for e in missed]
    assert frames[-1]["event"] == "job" and frames[-1]["data"]["job"]["status"] == "failed"
    assert int(frames[-1]["id"]) == Job.objects.get(pk=job_id).version


def test_an_open_sse_stream_follows_the_job_live_and_closes_when_it_ends(live_system):
    headers = {"Authorization": f"Token {live_system['token']}"}
    base = live_system["base"]
    job_id = requests.post(
        f"{base}/api/jobs/",
        json={"type": "sleep", "params": {"seconds": 1.5, "steps": 3}},
        headers=headers,
        timeout=10,
    ).json()["id"]
    started = time.monotonic()
    with requests.get(
        f"{base}/api/jobs/{job_id}/stream/", headers=headers, stream=True, timeout=30
    ) as response:
        frames = read_sse(response, until=lambda f: False)
    assert time.monotonic() - started < 25
    jobs = [f["data"]["job"] for f in frames if f["event"] == "job"]
    assert jobs[-1]["status"] == "succeeded"
    assert [int(f["id"]) for f in frames] == sorted(int(f["id"]) for f in frames)
    log_entries = [f["data"]["entry"] for f in frames if "entry" in f["data"]]
    assert any(entry["status"] == "succeeded" for entry in log_entries)


def test_streams_refuse_anonymous_and_foreign_jobs(live_system, other_user):
    base = live_system["base"]
    headers = {"Authorization": f"Token {live_system['token']}"}
    job_id = requests.post(f"{base}/api/jobs/", json={"type": "sleep"}, headers=headers, timeout=10).json()[
        "id"
    ]
    assert requests.get(f"{base}/api/jobs/{job_id}/stream/", timeout=10).status_code == 401
    assert requests.get(f"{base}/api/jobs/stream/", timeout=10).status_code == 401
    other = {"Authorization": f"Token {Token.objects.create(user=other_user).key}"}
    response = requests.get(f"{base}/api/jobs/{job_id}/stream/", headers=other, timeout=10)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/problem+json"


def test_the_all_my_jobs_stream_opens_with_a_snapshot_and_follows_new_jobs(live_system):
    base = live_system["base"]
    headers = {"Authorization": f"Token {live_system['token']}"}
    first = requests.post(
        f"{base}/api/jobs/", json={"type": "sleep", "params": {"seconds": 0}}, headers=headers, timeout=10
    )
    with requests.get(f"{base}/api/jobs/stream/", headers=headers, stream=True, timeout=30) as response:
        frames = read_sse(response, until=lambda f: len(f) >= 1)
        assert frames[0]["data"]["job"]["id"] == first.json()["id"]
        second = requests.post(
            f"{base}/api/jobs/", json={"type": "sleep", "params": {"seconds": 0}}, headers=headers, timeout=10
        )
        more = read_sse(
            response, until=lambda f: any(x["data"]["job"]["id"] == second.json()["id"] for x in f)
        )
    assert any(f["id"].startswith(second.json()["id"] + ":") for f in more)


def test_the_schedules_stream_opens_with_my_schedules_and_follows_their_changes(live_system):
    base = live_system["base"]
    headers = {"Authorization": f"Token {live_system['token']}"}
    created = requests.post(
        f"{base}/api/schedules/",
        json={"name": "hourly", "type": "sleep", "params": {"seconds": 0}, "cron": "0 * * * *"},
        headers=headers,
        timeout=10,
    )
    assert created.status_code == 201, created.text
    schedule_id = created.json()["id"]
    assert requests.get(f"{base}/api/schedules/stream/", timeout=10).status_code == 401
    with requests.get(f"{base}/api/schedules/stream/", headers=headers, stream=True, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        opening = read_sse(response, until=lambda f: len(f) >= 1)
        assert opening[0]["event"] == "snapshot"
        assert [s["id"] for s in opening[0]["data"]["schedules"]] == [schedule_id]
        requests.post(f"{base}/api/schedules/{schedule_id}/pause/", headers=headers, timeout=10)
        changes = read_sse(response, until=lambda f: any(x["event"] == "schedule" for x in f))
    change = next(f["data"] for f in changes if f["event"] == "schedule")
    assert (change["event"], change["schedule"]["id"], change["schedule"]["enabled"]) == (
        "paused",
        schedule_id,
        False,
    )
