"""Schedules at scale: 10,000 schedules (1,000 in quick mode) all due at once, fired by the sweep's
`schedules_fire_due` in its bounded batches (100 a round) until none is due, in PostgreSQL. The
baseline is the same number of jobs submitted one by one with `job_create` in the same run: what a
slot costs besides the job it creates (the conditional UPDATE that picks one sweeper, the overlap
check, the live message). Checked: exactly one job per schedule, none left due, each round bounded.
Target: firing at least 0.5x the rate of plain submissions.
"""

from __future__ import annotations

import time
from datetime import timedelta

from harness import Env, Result, percentile


def run(env: Env) -> list[Result]:
    from django.contrib.auth import get_user_model
    from django.db import connection

    from tasks_app.models import Job, Schedule
    from tasks_app.services import schedules, submission

    n = 1_000 if env.quick else 10_000
    owner = get_user_model().objects.get(pk=env.user_id)
    Schedule.objects.all().delete()
    now = schedules.database_now()
    Schedule.objects.bulk_create(
        Schedule(
            name=f"bench {i}", owner=owner, type="sleep", params={"seconds": 0, "steps": 1},
            interval=3600, created_at=now - timedelta(hours=1), next_fire_at=now - timedelta(seconds=1),
        )
        for i in range(n)
    )  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_app_schedule")

    rounds: list[float] = []
    fired = 0
    start = time.perf_counter()
    while True:
        began = time.perf_counter()
        created = schedules.schedules_fire_due()
        if not created:
            break
        rounds.append((time.perf_counter() - began) * 1000)
        fired += created
    firing = time.perf_counter() - start
    env.reset()

    start = time.perf_counter()
    for _ in range(n):
        submission.job_create(owner=owner, type="sleep", params={"seconds": 0, "steps": 1})
    plain = time.perf_counter() - start
    env.reset()

    one_each = Job.objects.filter(schedule__isnull=False).values("schedule").distinct().count()
    assert fired == n == one_each, (fired, n, one_each)
    assert not Schedule.objects.filter(enabled=True, next_fire_at__lte=schedules.database_now()).exists()
    Schedule.objects.all().delete()  # their jobs stay, as history
    return [
        Result(
            "schedules", f"{n:,} due schedules fired", n / firing, "slots/s", n / plain,
            "job_create one by one, jobs/s", target=0.5,
            note=f"{len(rounds)} sweep rounds of at most 100, each p50 {percentile(rounds, 50):.0f} ms, "
            f"p99 {percentile(rounds, 99):.0f} ms; one job per schedule",
        )
    ]  # fmt: skip


if __name__ == "__main__":
    import sys

    from harness import Table, environment

    with environment(quick="--quick" in sys.argv) as bench_env:
        table = Table()
        table.add(*run(bench_env))
        print(table.render())
