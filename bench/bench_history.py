"""Scale of history: reads against a large job table (1,000,000 rows; 50,000 in quick mode) in
PostgreSQL, through Daphne: the job list filtered by status, the stats, and the dashboard's first
page, for a staff user (who sees every job). Target: p99 < 100 ms each. The baseline is the
same request's floor on the same server: `GET /api/job-types/` (authentication, DRF, no job rows).
"""

from __future__ import annotations

import time

from harness import Env, Result, percentile

LIMIT_MS = 100.0

LOAD_SQL = """
INSERT INTO tasks_app_job (
    id, type, params, status, progress, progress_message, result, error, traceback, attempts, max_attempts,
    priority, owner_id, metadata, run_at, timeout, callback_url, webhook_events, created_at, started_at,
    finished_at, dispatched_at, worker, celery_task_id, lease_expires_at, cancel_requested_at, version
)
SELECT gen_random_uuid(), (ARRAY['sleep', 'primes', 'fail'])[1 + n %% 3], '{}'::jsonb, status,
       CASE WHEN status = 'succeeded' THEN 100 ELSE 0 END, '',
       CASE WHEN status = 'succeeded' THEN '{"ok": true}'::jsonb END,
       CASE WHEN status = 'failed' THEN '{"type": "DemoError", "message": "boom"}'::jsonb END,
       '', 1, 3, n %% 10, %(owner)s, jsonb_build_object('customer', 'c' || (n %% 100)),
       CASE WHEN status = 'scheduled' THEN now() + interval '1 day' END, NULL, '', '[]'::jsonb,
       created, CASE WHEN status <> 'queued' THEN created END,
       CASE WHEN status IN ('succeeded', 'failed', 'cancelled') THEN created + interval '2 seconds' END,
       created, 'bench:1', '', NULL, NULL, 3
FROM (
    SELECT n, now() - (n * interval '2 seconds') AS created,
           CASE WHEN n %% 100 < 85 THEN 'succeeded' WHEN n %% 100 < 95 THEN 'failed'
                WHEN n %% 100 < 98 THEN 'cancelled' WHEN n %% 100 < 99 THEN 'queued' ELSE 'scheduled' END AS status
    FROM generate_series(1, %(rows)s) AS n
) AS picked
"""


def load(env: Env, rows: int) -> float:
    from django.db import connection

    start = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(LOAD_SQL, {"rows": rows, "owner": env.user_id})
        cursor.execute("VACUUM (ANALYZE) tasks_app_job")
    return time.perf_counter() - start


def timings(session: object, url: str, n: int) -> list[float]:
    samples = []
    for _ in range(n + 3):
        start = time.perf_counter()
        response = session.get(url, timeout=60)  # type: ignore[attr-defined]
        samples.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (url, response.status_code, response.text[:300])
    return samples[3:]  # after a warm-up


def run(env: Env) -> list[Result]:
    import requests
    from django.db import connection

    rows = 50_000 if env.quick else 1_000_000
    n = 30 if env.quick else 100
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM tasks_app_job")
        existing = cursor.fetchone()[0]
    loaded = load(env, max(0, rows - existing))
    from tasks_app.services import maintenance

    maintenance.job_counts_fold()  # what the sweep does every few seconds (no beat runs here)
    stack = env.processes("history")
    try:
        base = "http://" + env.start_daphne(stack)
        api = requests.Session()
        api.headers["Authorization"] = f"Token {env.token}"
        browser = requests.Session()
        browser.get(f"{base}/accounts/login/", timeout=30)
        browser.post(
            f"{base}/accounts/login/",
            data={"username": "bench", "password": "bench-password-123", "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
            headers={"Referer": f"{base}/accounts/login/"},
            timeout=30,
        )  # fmt: skip
        floor = percentile(timings(api, f"{base}/api/job-types/", n), 99)
        reads = {
            "GET /api/jobs/?status=failed": (api, "/api/jobs/?status=failed"),
            "GET /api/jobs/?status=queued": (api, "/api/jobs/?status=queued"),
            "GET /api/stats/": (api, "/api/stats/"),
            "dashboard first page": (browser, "/"),
        }
        results = []
        for name, (session, path) in reads.items():
            samples = timings(session, base + path, n)
            p99 = percentile(samples, 99)
            results.append(
                Result(
                    "history", f"{name}, p99", p99, "ms", floor, "p99 of /api/job-types/", higher_is_better=False,
                    limit=LIMIT_MS,
                    note=f"p50 {percentile(samples, 50):.1f} ms; {rows:,} jobs (loaded in {loaded:.0f} s), {n} requests",
                )
            )  # fmt: skip
        return results
    finally:
        stack.stop_all(timeout=10)


if __name__ == "__main__":
    import sys

    from harness import Table, environment

    with environment(quick="--quick" in sys.argv) as bench_env:
        table = Table()
        table.add(*run(bench_env))
        print(table.render())
