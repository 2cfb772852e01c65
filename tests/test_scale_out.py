"""Past one machine: job types routed to workers of their own queue, and two worker nodes behind
two Daphne processes sharing one PostgreSQL and one Redis (each node a separate process with its
own name, as on separate hosts)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest
import requests
import websockets
from rest_framework.authtoken.models import Token

from tasks_app.models import Job, JobStatus
from tasks_app.stack import JOB_QUEUE, MAINTENANCE_QUEUE, free_port
from tests.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.broker, pytest.mark.django_db(transaction=True)]

JOB_MODULES = "tests.fault_job_types,tests.routed_job_types"


def submit_bulk(base: str, token: str, jobs: list[dict]) -> list[str]:
    response = requests.post(
        f"{base}/api/jobs/bulk/", json={"jobs": jobs}, headers={"Authorization": f"Token {token}"}, timeout=30
    )
    assert response.status_code == 202, response.text
    return [job["id"] for job in response.json()["jobs"]]


def test_a_routed_type_runs_only_on_the_workers_of_its_queue(
    stack, own_broker, user, routed_job_types, free_tcp_port
):
    routed_queue = routed_job_types.ROUTED_QUEUE
    stack.env["LONGRUN_JOB_MODULES"] = JOB_MODULES
    stack.start_ready_worker("general", queues=[JOB_QUEUE], concurrency=2)
    stack.start_daphne(free_tcp_port)
    token = Token.objects.create(user=user).key
    base = f"http://127.0.0.1:{free_tcp_port}"
    routed = submit_bulk(base, token, [{"type": "routed_echo", "params": {"tag": str(n)}} for n in range(4)])
    plain = submit_bulk(
        base, token, [{"type": "sleep", "params": {"seconds": 0, "steps": 1}} for _ in range(4)]
    )

    wait_for(
        lambda: Job.objects.filter(pk__in=plain, status=JobStatus.SUCCEEDED).count() == 4, what="plain jobs"
    )
    # Nobody reads the routed queue yet: its jobs wait, and say why.
    assert set(Job.objects.filter(pk__in=routed).values_list("status", flat=True)) == {JobStatus.QUEUED}
    readiness = requests.get(f"{base}/readyz", timeout=10).json()
    assert readiness["checks"][f"queue:{routed_queue}"]["ok"] is False

    stack.start_ready_worker("routed", queues=[routed_queue], concurrency=1)
    wait_for(
        lambda: Job.objects.filter(pk__in=routed, status=JobStatus.SUCCEEDED).count() == 4, what="routed jobs"
    )
    assert {
        worker.split("@")[0] for worker in Job.objects.filter(pk__in=routed).values_list("worker", flat=True)
    } == {"routed"}
    assert {
        worker.split("@")[0] for worker in Job.objects.filter(pk__in=plain).values_list("worker", flat=True)
    } == {"general"}
    assert requests.get(f"{base}/readyz", timeout=10).json()["checks"][f"queue:{routed_queue}"]["ok"] is True


async def watch_then_submit(ws_url: str, token: str, submit) -> tuple[list[str], dict[str, list[dict]]]:
    """Subscribe on one WebSocket, then call `submit` (returns job ids) and collect every live
    message about those jobs until each has ended."""
    seen: dict[str, list[dict]] = {}
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Token {token}"}) as socket:
        await socket.send(json.dumps({"action": "subscribe", "scope": "mine"}))
        assert json.loads(await socket.recv())["type"] == "snapshot"
        job_ids = await asyncio.to_thread(submit)
        ended: set[str] = set()
        async with asyncio.timeout(90):
            while not ended.issuperset(job_ids):
                message = json.loads(await socket.recv())
                if message.get("type") != "job":
                    continue
                job = message["job"]
                seen.setdefault(job["id"], []).append(message)
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    ended.add(job["id"])
    return job_ids, seen


@pytest.mark.slow
def test_two_worker_nodes_and_two_daphnes_share_the_work_and_the_live_updates(
    stack, own_broker, user, tmp_path
):
    stack.env.update(
        {"LONGRUN_LEASE_SECONDS": "4", "LONGRUN_HEARTBEAT_SECONDS": "1", "LONGRUN_SWEEP_INTERVAL": "1"}
    )
    node_a = stack.start_ready_worker("node-a", queues=[JOB_QUEUE], concurrency=2)
    stack.start_ready_worker("node-b", queues=[JOB_QUEUE], concurrency=2)
    stack.start_ready_worker("maintenance", queues=[MAINTENANCE_QUEUE], pool="solo")
    stack.start_beat(tmp_path / "beat-schedule")
    port_a, port_b = free_port(), free_port()
    stack.start_daphne(port_a, name="daphne-a")
    stack.start_daphne(port_b, name="daphne-b")
    token = Token.objects.create(user=user).key
    base_a, base_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"

    # 200 jobs submitted through Daphne A, watched live through Daphne B.
    jobs_spec = [{"type": "sleep", "params": {"seconds": 0.05, "steps": 2}} for _ in range(200)]
    ids, seen = asyncio.run(
        watch_then_submit(
            f"ws://127.0.0.1:{port_b}/ws/jobs/", token, lambda: submit_bulk(base_a, token, jobs_spec)
        )
    )
    jobs = Job.objects.filter(pk__in=ids)
    assert jobs.filter(status=JobStatus.SUCCEEDED).count() == 200
    assert {worker.split("@")[0] for worker in jobs.values_list("worker", flat=True)} == {"node-a", "node-b"}
    # Every job's changes reached the other Daphne's client, in order, up to its final state.
    # 200 jobs change faster than a client's 50 messages a second, so by design (README, "Live
    # updates") a backlog sends each job's latest state: versions may skip, never go back.
    final_version = {str(pk): version for pk, version in jobs.values_list("pk", "version")}
    for job_id in ids:
        versions = [message["version"] for message in seen[job_id]]
        assert versions == sorted(set(versions)) and versions[-1] == final_version[job_id], (job_id, versions)
        assert seen[job_id][-1]["job"]["status"] == "succeeded"

    # The other way round, slowly enough for every step to be sent: jobs submitted through
    # Daphne B, watched through Daphne A, while node A is SIGKILLed in the middle of its jobs.
    # They finish on node B within lease + sweep, and the client sees every version.
    def submit_then_kill_node_a() -> list[str]:
        long_jobs = submit_bulk(base_b, token, [{"type": "sleep", "params": {"seconds": 3, "steps": 3}}] * 4)
        wait_for(
            lambda: Job.objects.filter(
                pk__in=long_jobs, status="running", worker__startswith="node-a@"
            ).exists(),
            timeout=30,
            what="a job running on node A",
        )
        killed["at"] = time.monotonic()
        killed["jobs"] = list(
            Job.objects.filter(pk__in=long_jobs, worker__startswith="node-a@").values_list("pk", flat=True)
        )
        os.killpg(node_a.process.pid, signal.SIGKILL)
        return long_jobs

    killed: dict = {}
    long_jobs, seen = asyncio.run(
        watch_then_submit(f"ws://127.0.0.1:{port_a}/ws/jobs/", token, submit_then_kill_node_a)
    )
    recovered_in = time.monotonic() - killed["at"]
    assert Job.objects.filter(pk__in=long_jobs, status=JobStatus.SUCCEEDED).count() == 4
    for job in Job.objects.filter(pk__in=killed["jobs"]):
        assert job.worker.startswith("node-b@") and job.attempts == 2, (job.worker, job.attempts)
    for job in Job.objects.filter(pk__in=long_jobs):
        assert [message["version"] for message in seen[str(job.pk)]] == list(range(1, job.version + 1))
    # Lease 4 s + a sweep each second + the jobs' own 3 s each on 2 slots: well under 30 s.
    assert recovered_in < 30, recovered_in
