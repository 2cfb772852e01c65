"""Throughput: trivial jobs through the REST API until every row is `succeeded` and its terminal
event has been published, against raw Celery no-op tasks with the same worker settings (prefork,
concurrency 2, acks_late, prefetch 1) on the same Redis, in the same run.

Two ways in: `POST /api/jobs/bulk/` (1,000 per request) and single `POST /api/jobs/` from 8
concurrent clients. Target: at least 0.6x raw Celery.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from harness import Env, Result, median, wait_until

from tasks_app.conf import JOB_QUEUE

TARGET = 0.6
TRIVIAL = {"type": "sleep", "params": {"seconds": 0, "steps": 1}}


class TerminalEvents:
    """Counts the terminal status messages on the staff group, as a dashboard would see them."""

    def __init__(self, env: Env) -> None:
        from channels.layers import get_channel_layer

        from tasks_app.realtime.publish import STAFF_GROUP, publisher

        self.layer = get_channel_layer()
        self.channel = publisher.channel_name(STAFF_GROUP)
        self.pubsub = env.redis().pubsub()
        self.pubsub.subscribe(self.channel)
        self.pubsub.get_message(timeout=1)  # the subscribe confirmation
        self.done: set[str] = set()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        while not self.stopped.is_set():
            message = self.pubsub.get_message(timeout=0.1)
            if message and message["type"] == "message":
                data = self.layer.deserialize(message["data"])
                if data["job"]["status"] in ("succeeded", "failed", "cancelled"):
                    self.done.add(data["job"]["id"])

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=2)
        self.pubsub.close()


def raw_celery(env: Env, n: int) -> float:
    """Jobs per second of raw Celery no-op tasks, one producer, until all have run."""
    from bench.celery_noop import app, noop

    key = f"bench-noop-{uuid.uuid4().hex}"
    counter = env.redis()
    start = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            noop.apply_async(args=[key], producer=producer, queue="bench.noop", retry=False)
    wait_until(lambda: int(counter.get(key) or 0) >= n, timeout=600, what="raw celery")
    return n / (time.perf_counter() - start)


def _all_done(n: int, events: TerminalEvents, ids: set[str]) -> bool:
    from tasks_app.models import Job, JobStatus

    if len(events.done & ids) < n:
        return False
    return Job.objects.filter(pk__in=list(ids), status=JobStatus.SUCCEEDED).count() >= n


def longrun_bulk(env: Env, base: str, n: int) -> float:
    import requests

    env.reset()
    events = TerminalEvents(env)
    session = requests.Session()
    session.headers["Authorization"] = f"Token {env.token}"
    ids: set[str] = set()
    try:
        start = time.perf_counter()
        for offset in range(0, n, 1000):
            count = min(1000, n - offset)
            response = session.post(
                f"http://{base}/api/jobs/bulk/", json={"jobs": [TRIVIAL] * count}, timeout=120
            )
            response.raise_for_status()
            ids.update(job["id"] for job in response.json()["jobs"])
        wait_until(lambda: _all_done(n, events, ids), timeout=900, interval=0.05, what="bulk jobs")
        return n / (time.perf_counter() - start)
    finally:
        events.close()


def longrun_single(env: Env, base: str, n: int, clients: int = 8) -> float:
    import requests

    env.reset()
    events = TerminalEvents(env)
    ids: set[str] = set()
    lock = threading.Lock()

    def submit(count: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {env.token}"
        for _ in range(count):
            response = session.post(f"http://{base}/api/jobs/", json=TRIVIAL, timeout=60)
            response.raise_for_status()
            with lock:
                ids.add(response.json()["id"])

    try:
        start = time.perf_counter()
        shares = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(submit, shares))
        wait_until(lambda: _all_done(n, events, ids), timeout=900, interval=0.05, what="single jobs")
        return n / (time.perf_counter() - start)
    finally:
        events.close()


def run(env: Env) -> list[Result]:
    n = 400 if env.quick else 2000
    reps = 1 if env.quick else 3
    stack = env.processes("throughput")
    raw: list[float] = []
    bulk: list[float] = []
    single: list[float] = []
    try:
        env.start_worker(stack, "noop", queues=("bench.noop",), app="bench.celery_noop")
        env.start_worker(stack, "jobs", queues=(JOB_QUEUE,))
        base = env.start_daphne(stack)
        raw_celery(env, min(n, 200))  # warm up both
        longrun_bulk(env, base, min(n, 200))
        for _ in range(reps):  # interleaved: the machine's noise hits both alike
            raw.append(raw_celery(env, n))
            bulk.append(longrun_bulk(env, base, n))
            raw.append(raw_celery(env, n))
            single.append(longrun_single(env, base, n))
    finally:
        stack.stop_all(timeout=10)
    baseline = median(raw)
    detail: dict[str, Any] = {"n": n, "runs": reps, "raw": [round(x) for x in raw]}
    return [
        Result(
            "throughput", f"bulk, {n} jobs", median(bulk), "jobs/s", baseline, "raw Celery no-op", TARGET,
            note=f"runs {[round(x) for x in bulk]}, raw {detail['raw']}",
        ),
        Result(
            "throughput", f"8 clients, {n} jobs", median(single), "jobs/s", baseline, "raw Celery no-op", TARGET,
            note=f"runs {[round(x) for x in single]}",
        ),
    ]  # fmt: skip


if __name__ == "__main__":
    import sys

    from harness import Table, environment

    with environment(quick="--quick" in sys.argv) as bench_env:
        table = Table()
        table.add(*run(bench_env))
        print(table.render())
