"""What every benchmark shares: a PostgreSQL database of its own, a Redis, the real processes
(Celery workers, Daphne) started the way `make run` starts them, and one way to report.

Each benchmark measures Longrun and a baseline in the same run, on the same Redis and database,
and reports the ratio against a target; `bench/run.py` (`make bench`) prints them as one table and
exits non-zero when a target is missed.

Environment:
  BENCH_DATABASE_URL  a PostgreSQL server; the database `longrun_bench` on it is (re)created
                      (default postgres://postgres@127.0.0.1:5432/postgres)
  REDIS_URL           a Redis to use (db 15 of it); without it a throwaway Redis is started
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks_app.stack import JOB_QUEUE, Child, Stack, free_port, wait_for_port  # noqa: E402

BENCH_DB = "longrun_bench"

HISTORY_SQL = """
INSERT INTO tasks_app_job (
    id, type, params, status, progress, progress_message, result, error, traceback, attempts, max_attempts,
    priority, owner_id, metadata, run_at, timeout, callback_url, webhook_events, created_at, started_at,
    finished_at, dispatched_at, worker, celery_task_id, lease_expires_at, cancel_requested_at, version
)
SELECT gen_random_uuid(), 'sleep', '{"seconds": 0, "steps": 1}'::jsonb,
       CASE WHEN n %% 10 = 0 THEN 'failed' ELSE 'succeeded' END, 100, '', '{"slept": 0}'::jsonb,
       CASE WHEN n %% 10 = 0 THEN '{"type": "DemoError", "message": "boom"}'::jsonb END, '', 1, 3, 5,
       %(owner)s, '{}'::jsonb, NULL, NULL, '', '[]'::jsonb, now() - n * interval '1 second',
       now() - n * interval '1 second', now() - n * interval '1 second', now() - n * interval '1 second',
       'bench:1', '', NULL, NULL, 3
FROM generate_series(1, %(rows)s) AS n
"""


@dataclass
class Result:
    """One line of the table: a figure, the baseline it is compared with, and the target."""

    bench: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    # ratio = value / baseline (or baseline / value when lower is better); ok when it meets `target`.
    target: float | None = None
    higher_is_better: bool = True
    # For absolute targets (latency budgets) without a baseline: value <= limit.
    limit: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0) or self.value == 0:
            return None
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value

    @property
    def ok(self) -> bool:
        if self.limit is not None and self.value > self.limit:
            return False
        if self.target is not None:
            ratio = self.ratio
            return ratio is not None and ratio >= self.target
        return True


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def prepare_database(server_url: str, *, keep: bool = False) -> str:
    """(Re)create `longrun_bench` on the server; return its URL."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        with_database(server_url, urlsplit(server_url).path.lstrip("/") or "postgres"), autocommit=True
    ) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone()
        if exists and not keep:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(BENCH_DB)))
            exists = None
        if not exists:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
    return with_database(server_url, BENCH_DB)


class Env:
    """The benchmark environment: set up once per `make bench` run (see `environment()`)."""

    def __init__(self, *, quick: bool, log_dir: Path) -> None:
        self.quick = quick
        self.log_dir = log_dir
        self.stack: Stack | None = None
        self.redis_url = ""
        self.database_url = ""
        self.token = ""
        self.user_id = 0
        self.child_env: dict[str, str] = {}

    # --- processes ------------------------------------------------------------------------------

    def processes(self, name: str) -> Stack:
        """A Stack for one benchmark's processes (stopped by the caller)."""
        return Stack(env=dict(self.child_env), cwd=ROOT, log_dir=self.log_dir / name)

    def start_worker(
        self,
        stack: Stack,
        name: str,
        *,
        queues: tuple[str, ...] = (JOB_QUEUE,),
        concurrency: int = 2,
        app: str = "project",
    ) -> Child:
        """A Celery worker, started like `make run` starts one, ready when this returns."""
        argv = [
            sys.executable, "-m", "celery", "-A", app, "worker", "-n", f"{name}@%h", "-Q", ",".join(queues),
            "--pool", "prefork", "--concurrency", str(concurrency), "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        child = stack.start(name, argv, env={"REMAP_SIGTERM": "SIGQUIT"})
        self._wait_ready(stack, child)
        return child

    def _wait_ready(self, stack: Stack, child: Child, timeout: float = 60.0) -> None:
        """Ready when it answers a ping (its log is quiet at WARNING level)."""
        from project.celery import app  # the same broker options as the workers'

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                log = (stack.log_dir / f"{child.name}.log").read_text() if stack.log_dir else ""
                raise RuntimeError(f"{child.name} exited:\n{log[-3000:]}")
            replies = app.control.ping(timeout=0.5) or []
            if any(name.startswith(f"{child.name}@") for reply in replies for name in reply):
                return
        raise TimeoutError(f"{child.name} not ready after {timeout}s")

    def start_daphne(self, stack: Stack, name: str = "daphne") -> str:
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "project.asgi:application",
        ]
        child = stack.start(name, argv)
        wait_for_port(port, process=child.process, timeout=60)
        return f"127.0.0.1:{port}"

    # --- state ------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Empty the Redis queues between runs. The job table keeps its history: a queue is
        measured as it runs in production, next to finished jobs, with planner statistics."""
        self.redis().flushdb()

    def seed_history(self, rows: int) -> None:
        """Finished jobs, as a system that has been running has them, then ANALYZE."""
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(HISTORY_SQL, {"rows": rows, "owner": self.user_id})
            cursor.execute("ANALYZE tasks_app_job")

    def redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.redis_url)


@contextmanager
def environment(*, quick: bool) -> Iterator[Env]:
    """Database, Redis, Django in this process, a user with a token; torn down afterwards."""
    log_dir = Path(tempfile.mkdtemp(prefix="longrun-bench-"))
    env = Env(quick=quick, log_dir=log_dir)
    own_redis: Stack | None = None
    try:
        server = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
        env.database_url = prepare_database(server)
        if os.environ.get("REDIS_URL"):
            base = urlsplit(os.environ["REDIS_URL"])
            env.redis_url = urlunsplit((base.scheme, base.netloc, "/15", "", ""))
        else:
            port = free_port()
            own_redis = Stack(env=dict(os.environ), cwd=ROOT, log_dir=log_dir)
            own_redis.start_redis(port, log_dir / "redis", persistent=False)
            env.redis_url = f"redis://127.0.0.1:{port}/0"
        settings_env = {
            "DATABASE_URL": env.database_url,
            "REDIS_URL": env.redis_url,
            "CELERY_BROKER_URL": env.redis_url,
            "CHANNEL_PREFIX": f"longrun-bench-{uuid.uuid4().hex[:6]}",
            # Longrun's settings, plus the baseline views (bench/urls.py) and job types.
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "LONGRUN_JOB_MODULES": "bench.job_types",
            "DEBUG": "0",
            "LONGRUN_THROTTLE_USER": "100000000/minute",
            "LONGRUN_THROTTLE_ANON": "100000000/minute",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        os.environ.update(settings_env)
        env.child_env = {**os.environ, **settings_env}
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.management import call_command
        from rest_framework.authtoken.models import Token

        call_command("migrate", verbosity=0)
        user = get_user_model().objects.create_user("bench", password="bench-password-123", is_staff=True)
        env.user_id = user.pk
        env.token = Token.objects.create(user=user).key
        env.redis().flushdb()
        env.seed_history(5_000 if quick else 50_000)
        yield env
    finally:
        from django.db import connections

        connections.close_all()
        if own_redis is not None:
            own_redis.stop_all(timeout=5)


def timed(func: Callable[[], Any]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.02, what: str = ""
) -> float:
    """Poll until true; return the elapsed seconds."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return time.perf_counter() - start


@dataclass
class Table:
    results: list[Result] = field(default_factory=list)

    def add(self, *results: Result) -> None:
        self.results.extend(results)

    def render(self) -> str:
        header = ("benchmark", "metric", "longrun", "baseline", "ratio", "target", "ok")
        rows = [header]
        for r in self.results:
            baseline = f"{r.baseline:,.2f} {r.unit} ({r.baseline_label})" if r.baseline is not None else "-"
            ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
            if r.target is not None:
                target = f">= {r.target:g}x"
            elif r.limit is not None:
                target = f"<= {r.limit:g} {r.unit}"
            else:
                target = "-"
            rows.append(
                (
                    r.bench,
                    r.metric,
                    f"{r.value:,.2f} {r.unit}",
                    baseline,
                    ratio,
                    target,
                    "yes" if r.ok else "NO",
                )
            )
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
        lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        notes = [f"  {r.bench} / {r.metric}: {r.note}" for r in self.results if r.note]
        return "\n".join(lines + (["", "notes:", *notes] if notes else []))
