"""Live fan-out: 500 WebSocket clients over two Daphne processes, each subscribed to one of 50
running jobs, while those jobs report 100 progress updates a second in all (each client gets
2 a second, far below its rate limit). Reports the delay from publish to receipt (p50, p99), the
messages lost (target 0) and the servers' memory; the baseline is the raw channel layer: the same
number of receivers on `RedisPubSubChannelLayer` in this process, fed the same way."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from typing import Any

from harness import Env, Result, percentile

RATE = 100  # progress updates per second, across all jobs
JOBS = 50


class Receivers:
    """`count` receivers on one event loop thread: WebSocket clients, or channel-layer channels."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.received: dict[int, dict[int, float]] = defaultdict(dict)  # client -> version -> time
        self.tasks: list[Any] = []

    def run(self, coroutine: Any, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def websockets(self, urls: list[str], token: str, jobs: list[str]) -> None:
        import websockets

        opened = []

        async def client(index: int) -> None:
            url = urls[index % len(urls)]
            job = jobs[index % len(jobs)]
            async with websockets.connect(
                url, additional_headers={"Authorization": f"Token {token}"}, max_queue=None
            ) as socket:
                await socket.send(json.dumps({"action": "subscribe", "job": job}))
                async for raw in socket:
                    message = json.loads(raw)
                    if message.get("type") == "job":
                        self.received[index][message["version"]] = time.perf_counter()
                    elif message.get("type") == "snapshot":
                        opened.append(index)  # subscribed: from now on nothing is missed

        self.tasks = [asyncio.ensure_future(client(i)) for i in range(self.count)]
        while len(opened) < self.count:
            failed = [task for task in self.tasks if task.done()]
            if failed:
                failed[0].result()
            await asyncio.sleep(0.05)

    async def channels(self, jobs: list[str]) -> None:
        from channels.layers import get_channel_layer

        from tasks_app.realtime.publish import job_group

        layer = get_channel_layer()

        async def receiver(index: int) -> None:
            channel = await layer.new_channel()
            await layer.group_add(job_group(jobs[index % len(jobs)]), channel)
            ready.append(index)
            while True:
                message = await layer.receive(channel)
                self.received[index][message["version"]] = time.perf_counter()

        ready: list[int] = []
        self.tasks = [asyncio.ensure_future(receiver(i)) for i in range(self.count)]
        while len(ready) < self.count:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def drive(publish: Any, jobs: list[str], seconds: float) -> dict[tuple[str, int], float]:
    """`publish(job_index)` RATE times a second for `seconds`; returns (job, version) -> time."""
    sent: dict[tuple[str, int], float] = {}
    interval = 1 / RATE
    start = time.perf_counter()
    for tick in range(int(seconds * RATE)):
        due = start + tick * interval
        if (pause := due - time.perf_counter()) > 0:
            time.sleep(pause)
        index = tick % len(jobs)
        version = publish(index)
        sent[(jobs[index], version)] = time.perf_counter()
    time.sleep(1.0)  # stragglers
    return sent


def measure(
    receivers: Receivers, sent: dict[tuple[str, int], float], jobs: list[str]
) -> tuple[list[float], int]:
    delays, lost = [], 0
    for client in range(receivers.count):
        job = jobs[client % len(jobs)]
        got = receivers.received.get(client, {})
        for (sent_job, version), at in sent.items():
            if sent_job != job:
                continue
            if version in got:
                delays.append(max(0.0, got[version] - at) * 1000)
            else:
                lost += 1
    return delays, lost


def run(env: Env) -> list[Result]:
    import psutil
    from django.contrib.auth import get_user_model

    from tasks_app.realtime import messages
    from tasks_app.realtime.publish import publish_job_message
    from tasks_app.services import execution, submission

    clients = 100 if env.quick else 500
    seconds = 3.0 if env.quick else 10.0
    owner = get_user_model().objects.get(pk=env.user_id)
    worker = "bench:fanout"
    from unittest import mock

    from tasks_app.services import dispatch

    with mock.patch.object(dispatch, "job_dispatch"):  # the jobs are "run" by this process
        jobs = [submission.job_create(owner=owner, type="sleep").pk for _ in range(JOBS)]
    for job_id in jobs:
        execution.job_claim(job_id=job_id, worker=worker)
    job_ids = [str(job_id) for job_id in jobs]
    progress = {job_id: 0 for job_id in job_ids}

    def via_longrun(index: int) -> int:
        job_id = job_ids[index]
        progress[job_id] = (progress[job_id] + 1) % 100
        execution.job_progress(job_id=job_id, worker=worker, percent=progress[job_id])
        from tasks_app.models import Job

        return int(Job.objects.filter(pk=job_id).values_list("version", flat=True)[0])

    stack = env.processes("fanout")
    try:
        bases = [env.start_daphne(stack, f"daphne-{n}") for n in (1, 2)]
        servers = [psutil.Process(child.process.pid) for child in stack.children]
        memory_before = sum(p.memory_info().rss for p in servers)
        sockets = Receivers(clients)
        sockets.run(sockets.websockets([f"ws://{base}/ws/jobs/" for base in bases], env.token, job_ids))
        memory_connected = sum(p.memory_info().rss for p in servers)
        sent = drive(via_longrun, job_ids, seconds)
        memory_after = sum(p.memory_info().rss for p in servers)
        delays, lost = measure(sockets, sent, job_ids)
        sockets.run(sockets.stop())
    finally:
        stack.stop_all(timeout=10)

    # Baseline: the raw layer, the same receivers and rate, messages of the same size.
    layer_receivers = Receivers(clients)
    layer_receivers.run(layer_receivers.channels(job_ids))
    from tasks_app.models import Job

    sample = messages.job_changed(Job.objects.select_related("owner").get(pk=jobs[0]), "progress")
    versions = {job_id: 10_000 for job_id in job_ids}

    def via_layer(index: int) -> int:
        job_id = job_ids[index]
        versions[job_id] += 1
        message = {**sample, "version": versions[job_id], "job": {**sample["job"], "id": job_id}}
        publish_job_message(env.user_id, message)
        return versions[job_id]

    raw_sent = drive(via_layer, job_ids, seconds)
    raw_delays, raw_lost = measure(layer_receivers, raw_sent, job_ids)
    layer_receivers.run(layer_receivers.stop())
    for job_id in job_ids:  # leave nothing running
        execution.job_succeed(job_id=job_id, worker=worker, result={})

    note = f"{clients} clients on 2 Daphne processes, {RATE} updates/s over {JOBS} jobs for {seconds:.0f} s"
    mb = 1024 * 1024
    return [
        Result("fan-out", "delay p50", percentile(delays, 50), "ms", percentile(raw_delays, 50), "raw channel layer", higher_is_better=False, note=note),
        Result("fan-out", "delay p99", percentile(delays, 99), "ms", percentile(raw_delays, 99), "raw channel layer", higher_is_better=False),
        Result("fan-out", "messages lost", lost, "msgs", raw_lost, "raw channel layer", limit=0,
               note=f"{len(delays)} delivered, {len(sent)} published"),
        Result("fan-out", "server memory", memory_after / mb, "MiB",
               note=f"two Daphne processes: {memory_before / mb:.0f} MiB idle, {memory_connected / mb:.0f} MiB with the sockets open"),
    ]  # fmt: skip


if __name__ == "__main__":
    import sys

    from harness import Table, environment

    with environment(quick="--quick" in sys.argv) as bench_env:
        table = Table()
        table.add(*run(bench_env))
        print(table.render())
