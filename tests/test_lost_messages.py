"""Jobs whose broker message is lost still run (`maintenance.jobs_redispatch_stranded`), against
the real thing: a Redis of the test's own, Celery workers, the maintenance worker and beat, and
Daphne for submissions. The bound is LONGRUN_REDISPATCH_AFTER (2 s here) after a worker is free,
plus a sweep or two; without the recovery these jobs would wait for ever (a flush) or for the
broker's visibility timeout (6 hours, a killed worker's prefetched messages)."""

from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
import requests
from rest_framework.authtoken.models import Token

from tasks_app.models import DeliveryStatus, Job, JobStatus, WebhookDelivery
from tasks_app.stack import JOB_QUEUE, MAINTENANCE_QUEUE, WEBHOOK_QUEUE, free_port
from tests.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.django_db(transaction=True)]

REDISPATCH_AFTER = 2.0
# What the recovery may take once a worker is free: two runs of empty readings (the first may
# have begun just before the loss), a sweep each side, and the worker's start-up and the job.
BOUND = 2 * REDISPATCH_AFTER + 2 * 0.5 + 8.0


class System:
    def __init__(self, stack: Any, redis_port: int, base: str, token: str) -> None:
        self.stack = stack
        self.redis = redis.Redis(port=redis_port)
        self.base = base
        self.headers = {"Authorization": f"Token {token}"}

    def submit(self, **body: Any) -> str:
        body.setdefault("type", "sleep")
        response = requests.post(f"{self.base}/api/jobs/", json=body, headers=self.headers, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def submit_many(self, n: int, **job: Any) -> None:
        for start in range(0, n, 1000):
            jobs = [job] * min(1000, n - start)
            response = requests.post(
                f"{self.base}/api/jobs/bulk/", json={"jobs": jobs}, headers=self.headers, timeout=120
            )
            assert response.status_code == 202, response.text

    def waiting(self) -> int:
        """Messages in the job queue (every priority band), not counting those workers hold."""
        return sum(self.redis.llen(key) for key in self.redis.scan_iter(f"{JOB_QUEUE}*"))

    def held(self) -> int:
        """Messages workers have taken and not acknowledged (Redis keeps them for the
        visibility timeout)."""
        return int(self.redis.hlen("unacked"))

    def sweeps(self) -> str:
        """The maintenance worker's sweeps that did something, for failure messages."""
        log = self.stack.log_tail("maintenance", size=10**7).splitlines()
        busy = re.compile(r"'(dispatched|redispatched|recovered|promoted)': [1-9]")
        return "\n".join(line for line in log if busy.search(line))[-3000:]

    def republished(self) -> int:
        log = self.stack.log_tail("maintenance", size=10**7)
        return sum(
            int(line.split("published ")[-1].split()[0]) for line in log.splitlines() if "again" in line
        )


@pytest.fixture
def system(stack, tmp_path, free_tcp_port, user) -> System:
    """Redis (ours), the maintenance worker, beat and Daphne; no job worker yet."""
    redis_port = free_port()
    stack.start_redis(redis_port, tmp_path / "redis", persistent=False)
    stack.env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    stack.env.update(
        {
            "LONGRUN_REDISPATCH_AFTER": str(REDISPATCH_AFTER),
            # The default: the suite's 1 s would let the outbox relay race the on-commit publish
            # of a 1,000-job bulk submission (a harmless duplicate, but this counts them).
            "LONGRUN_DISPATCH_GRACE": "10",
            "LONGRUN_SWEEP_INTERVAL": "0.5",
            "LONGRUN_LEASE_SECONDS": "4",
            "LONGRUN_HEARTBEAT_SECONDS": "1",
            "LONGRUN_WEBHOOK_ALLOWED_PRIVATE_HOSTS": "localhost",
        }
    )
    stack.start_ready_worker("maintenance", queues=[MAINTENANCE_QUEUE], pool="solo")
    stack.start_beat(tmp_path / "beat-schedule")
    stack.start_daphne(free_tcp_port)
    return System(stack, redis_port, f"http://127.0.0.1:{free_tcp_port}", Token.objects.create(user=user).key)


def finished(job_id: str, timeout: float) -> Job:
    return wait_for(
        lambda: (job := Job.objects.get(pk=job_id)).is_terminal and job, timeout=timeout, what=f"job {job_id}"
    )


def test_a_message_lost_to_a_flush_is_published_again_and_the_job_runs_once(system):
    job_id = system.submit(params={"seconds": 0.1, "steps": 1})
    assert Job.objects.get(pk=job_id).dispatched_at is not None
    assert system.waiting() == 1
    system.redis.flushall()  # what a restart without persistence, or an eviction, does

    system.stack.start_ready_worker("worker", queues=[JOB_QUEUE], concurrency=2)
    free_at = time.monotonic()
    job = finished(job_id, timeout=BOUND + 30)
    took = time.monotonic() - free_at
    assert job.status == JobStatus.SUCCEEDED, system.stack.log_tail("worker")
    assert job.attempts == 1
    assert took < BOUND, f"the lost job ran {took:.1f} s after a worker was free (bound {BOUND} s)"
    assert system.republished() == 1


def test_messages_a_killed_worker_had_prefetched_run_within_the_bound(system):
    """A worker taking several messages at a time (prefetch) is SIGKILLed while running one job:
    the running job comes back through its lease; the ones it held but had not started would
    wait in Redis's unacknowledged set for the visibility timeout, and run within the bound."""
    greedy = system.stack.start_ready_worker(
        "greedy", queues=[JOB_QUEUE], concurrency=1, extra=["--prefetch-multiplier", "4"]
    )
    running = system.submit(params={"seconds": 3, "steps": 30})
    wait_for(
        lambda: Job.objects.get(pk=running).status == JobStatus.RUNNING, timeout=30, what="the first job"
    )
    held = [system.submit(params={"seconds": 0.1, "steps": 1}) for _ in range(3)]
    wait_for(lambda: system.held() == 4 and system.waiting() == 0, timeout=30, what="the worker to prefetch")

    system.stack.kill(greedy)
    system.stack.start_ready_worker("worker", queues=[JOB_QUEUE], concurrency=2)
    free_at = time.monotonic()
    for job_id in held:
        job = finished(job_id, timeout=BOUND + 30)
        assert job.status == JobStatus.SUCCEEDED and job.attempts == 1, system.stack.log_tail("worker")
    took = time.monotonic() - free_at
    assert took < BOUND, f"the prefetched jobs ran {took:.1f} s after a worker was free (bound {BOUND} s)"
    job = finished(running, timeout=60)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 2  # its lease, not a copy
    assert system.held() == 4  # the dead worker's messages, still waiting for the visibility timeout


def test_a_webhook_delivery_whose_message_is_lost_is_sent_again(system, tmp_path):
    received: list[str] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append(self.headers["webhook-id"])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        system.stack.start_ready_worker("worker", queues=[JOB_QUEUE], concurrency=2)
        url = f"http://localhost:{server.server_port}/hook"
        job_id = system.submit(params={"seconds": 0, "steps": 1}, callback_url=url)
        assert finished(job_id, timeout=30).status == JobStatus.SUCCEEDED
        delivery = WebhookDelivery.objects.get(job_id=job_id)
        wait_for(lambda: system.redis.llen(WEBHOOK_QUEUE) == 1, timeout=10, what="the delivery's message")
        system.redis.flushall()

        system.stack.start_ready_worker("webhooks", queues=[WEBHOOK_QUEUE], pool="threads", concurrency=2)
        free_at = time.monotonic()
        wait_for(lambda: received, timeout=BOUND + 30, what="the delivery")
        took = time.monotonic() - free_at
        assert received == [delivery.webhook_id]
        assert took < BOUND, f"the lost delivery came {took:.1f} s after a sender was free (bound {BOUND} s)"
        wait_for(
            lambda: WebhookDelivery.objects.get(pk=delivery.pk).status == DeliveryStatus.SUCCEEDED,
            timeout=10,
            what="the delivery to be recorded",
        )
    finally:
        server.shutdown()


@pytest.mark.slow
def test_ten_thousand_jobs_waiting_behind_a_busy_worker_are_not_published_again(system):
    """While the queue holds messages nothing is re-published, however long the jobs wait."""
    system.stack.start_ready_worker("worker", queues=[JOB_QUEUE], concurrency=1)
    busy = system.submit(params={"seconds": 120, "steps": 120})
    wait_for(lambda: Job.objects.get(pk=busy).status == JobStatus.RUNNING, timeout=30, what="the busy job")
    system.submit_many(10_000, type="sleep", params={"seconds": 0, "steps": 1})
    waiting = Job.objects.filter(status=JobStatus.QUEUED)
    assert waiting.count() == 10_000
    assert system.waiting() == 10_000, system.sweeps()
    first = waiting.order_by("created_at").values_list("dispatched_at", flat=True).first()

    time.sleep(5 * REDISPATCH_AFTER)  # ten sweeps, each well past the setting for every job
    assert system.waiting() == 10_000
    assert system.republished() == 0
    assert waiting.order_by("created_at").values_list("dispatched_at", flat=True).first() == first
