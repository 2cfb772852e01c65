"""Write amplification: one job calls `ctx.progress` 100,000 times (as fast as it can) and then
holds its last report. Database writes (each is a version of the job) and channel messages must
stay at a few dozen per second of its run (target: at most 50/s each), and the last value must
be the stored one while the job still runs. The baseline is what an unthrottled job would cost:
one write and one message per call."""

from __future__ import annotations

import threading
import time

from harness import Env, Result, wait_until

from tasks_app.conf import JOB_QUEUE

LIMIT_PER_SECOND = 50.0


def run(env: Env) -> list[Result]:
    import requests

    from tasks_app.models import Job, JobStatus
    from tasks_app.realtime.publish import job_group, publisher

    calls = 20_000 if env.quick else 100_000
    stack = env.processes("progress")
    try:
        env.start_worker(stack, "jobs", queues=(JOB_QUEUE,))
        base = env.start_daphne(stack)
        session = requests.Session()
        session.headers["Authorization"] = f"Token {env.token}"
        job_id = session.post(
            f"http://{base}/api/jobs/",
            json={"type": "bench-chatty", "params": {"calls": calls, "hold": 2}},
            timeout=30,
        ).json()["id"]
        pubsub = env.redis().pubsub()
        pubsub.subscribe(publisher.channel_name(job_group(job_id)))
        counted = {"messages": 0}
        stopped = threading.Event()

        def listen() -> None:
            while not stopped.is_set():
                if (message := pubsub.get_message(timeout=0.1)) and message["type"] == "message":
                    counted["messages"] += 1

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        wait_until(
            lambda: Job.objects.get(pk=job_id).status == JobStatus.RUNNING,
            timeout=60,
            what="the job to start",
        )
        # While it holds its last report, the stored progress must be that report.
        wait_until(
            lambda: Job.objects.get(pk=job_id).progress_message == f"item {calls}",
            timeout=120,
            what="the last report",
        )
        held = Job.objects.get(pk=job_id)
        wait_until(
            lambda: Job.objects.get(pk=job_id).status == JobStatus.SUCCEEDED,
            timeout=60,
            what="the job to end",
        )
        time.sleep(0.5)
        stopped.set()
        listener.join(timeout=2)
        job = Job.objects.get(pk=job_id)
    finally:
        stack.stop_all(timeout=10)
    assert job.started_at and job.finished_at
    run_seconds = (job.finished_at - job.started_at).total_seconds() - 2  # minus the hold
    writes = job.version - 3  # minus created, claimed, succeeded
    exact = held.progress == 99 and held.progress_message == f"item {calls}"
    note = f"{calls:,} calls in {run_seconds:.2f} s; last report stored while running: {'yes' if exact else 'NO'}"
    return [
        Result("progress", "database writes/s", writes / run_seconds, "/s", calls / run_seconds, "one write per call",
               higher_is_better=False, limit=LIMIT_PER_SECOND if exact else -1.0, note=note),
        Result("progress", "channel messages/s", counted["messages"] / run_seconds, "/s", calls / run_seconds,
               "one message per call", higher_is_better=False, limit=LIMIT_PER_SECOND),
    ]  # fmt: skip


if __name__ == "__main__":
    import sys

    from harness import Table, environment

    with environment(quick="--quick" in sys.argv) as bench_env:
        table = Table()
        table.add(*run(bench_env))
        print(table.render())
