"""The job admin on a large table: time per page of the change list, ours against a default one.

Needs PostgreSQL (DATABASE_URL=postgres://...). Works in a database of its own, `longrun_bench`,
on the same server (created here; dropped and re-created unless --reuse), loads --rows jobs with
one INSERT ... SELECT FROM generate_series, and times, with Django's test client logged in as a
superuser (median of --runs after a warm-up), the same pages on two admin sites in one run:

  ours:     tasks_app.admin.jobs.JobAdmin (capped counts, registered-type filter, owner joined)
  baseline: a plain ModelAdmin for Job on a second AdminSite, with Django's defaults (Paginator
            with a full COUNT(*), show_full_result_count=True, list_filter on the type field,
            list_select_related left alone) and the same kind of columns and 50 rows a page

It prints ours (ms), baseline (ms) and their ratio per page; then, ours only, a few pages an
operator reaches easily (a search that matches nothing, a sort on a column, the last page; median
of --hard-runs); EXPLAIN (ANALYZE) summaries for the status-filter page; and, for any page over
--slow ms, its slowest query with its plan. About 3-4 minutes on a 2-core machine.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test .venv/bin/python bench/bench_admin.py \
        [--rows 1000000] [--runs 5] [--hard-runs 3] [--reuse]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
import types
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BENCH_DB = "longrun_bench"
USERS = 20
CUSTOMERS = 50  # metadata {"customer": ...}: "acme" and 49 others, about 2% of the jobs each


def refuse(message: str) -> None:
    print(f"bench_admin: {message}", file=sys.stderr)
    raise SystemExit(2)


def server_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if urlsplit(url).scheme not in ("postgres", "postgresql", "pgsql"):
        refuse(
            "this benchmark needs PostgreSQL: set DATABASE_URL=postgres://user@host:port/dbname "
            f"(got {url or 'nothing'}). It works in a database of its own, {BENCH_DB}, on that server."
        )
    return url


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    scheme = "postgresql" if parts.scheme == "pgsql" else parts.scheme
    return urlunsplit((scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def prepare_database(url: str, *, reuse: bool) -> bool:
    """Create longrun_bench on the server (drop it first unless reusing). True if it existed."""
    import psycopg
    from psycopg import sql

    try:
        admin = psycopg.connect(
            with_database(url, urlsplit(url).path.lstrip("/") or "postgres"), autocommit=True
        )
    except psycopg.Error as exc:
        refuse(f"cannot connect to {url}: {exc}")
    with admin:
        exists = (
            admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone() is not None
        )
        if exists and not reuse:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(BENCH_DB)))
            exists = False
        if not exists:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
    return exists


LOAD_SQL = """
INSERT INTO tasks_app_job (
    id, type, params, status, progress, progress_message, result, error, traceback, attempts, max_attempts,
    priority, owner_id, metadata, run_at, timeout, callback_url, created_at, started_at, finished_at,
    dispatched_at, worker, celery_task_id, lease_expires_at, cancel_requested_at, version
)
SELECT
    gen_random_uuid(), type, '{}'::jsonb, status,
    CASE status WHEN 'succeeded' THEN 100 WHEN 'running' THEN (r_progress * 100)::int ELSE 0 END,
    '',
    CASE WHEN status = 'succeeded' THEN '{"ok": true}'::jsonb END,
    CASE WHEN status = 'failed' THEN '{"type": "DemoError", "message": "boom"}'::jsonb END,
    '',
    CASE WHEN started IS NOT NULL THEN 1 ELSE 0 END, 3,
    (r_priority * 10)::int %% 10,
    owners[1 + (r_owner * array_length(owners, 1))::int %% array_length(owners, 1)],
    jsonb_build_object('customer', CASE WHEN customer = 0 THEN 'acme' ELSE 'customer-' || customer END),
    CASE WHEN status = 'scheduled' THEN now() + r_duration * interval '7 days' END,
    NULL, '', created, started,
    CASE WHEN status IN ('succeeded', 'failed', 'cancelled') THEN coalesce(started, created) + r_duration * interval '300 seconds' END,
    CASE WHEN status <> 'scheduled' THEN created END,
    CASE WHEN started IS NOT NULL THEN 'bench-worker' ELSE '' END,
    '',
    CASE WHEN status = 'running' THEN now() + interval '60 seconds' END,
    CASE WHEN status = 'cancelled' THEN created END,
    CASE WHEN started IS NOT NULL THEN 3 ELSE 1 END
FROM (
    SELECT *,
        CASE WHEN status IN ('running', 'succeeded', 'failed') THEN created + r_start * interval '10 seconds' END AS started
    FROM (
        SELECT
            %(owners)s::bigint[] AS owners,
            CASE
                WHEN r_status < 0.70 THEN 'succeeded' WHEN r_status < 0.80 THEN 'failed'
                WHEN r_status < 0.85 THEN 'cancelled' WHEN r_status < 0.93 THEN 'queued'
                WHEN r_status < 0.98 THEN 'running' ELSE 'scheduled'
            END AS status,
            CASE WHEN r_type < 0.6 THEN 'sleep' WHEN r_type < 0.9 THEN 'primes' ELSE 'fail' END AS type,
            now() - r_created * interval '90 days' AS created,
            (r_customer * %(customers)s)::int %% %(customers)s AS customer,
            r_owner, r_priority, r_progress, r_duration, r_start
        FROM (
            SELECT random() AS r_status, random() AS r_type, random() AS r_created, random() AS r_customer,
                   random() AS r_owner, random() AS r_priority, random() AS r_progress, random() AS r_duration,
                   random() AS r_start
            FROM generate_series(1, %(rows)s)
        ) AS draws
    ) AS picked
) AS jobs
"""


def load_rows(rows: int, owners: list[int]) -> float:
    """Replace the jobs with `rows` generated ones. The secondary indexes are dropped for the load
    and built again afterwards (much faster than maintaining them row by row). Returns seconds."""
    from django.db import connection

    start = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE tasks_app_job CASCADE")
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'tasks_app_job' AND indexname NOT IN "
            "(SELECT conname FROM pg_constraint WHERE conrelid = 'tasks_app_job'::regclass)"
        )
        indexes = cursor.fetchall()
        cursor.execute("SET maintenance_work_mem = '256MB'")
        cursor.execute("SET synchronous_commit = off")
        cursor.execute("SELECT setseed(0.4242)")
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        cursor.execute(LOAD_SQL, {"owners": owners, "rows": rows, "customers": CUSTOMERS})
        for _, definition in indexes:
            cursor.execute(definition)
    return time.perf_counter() - start


def vacuum_analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:  # autocommit: VACUUM cannot run in a transaction
        cursor.execute("VACUUM (ANALYZE) tasks_app_job")


def one_line(sql: str) -> str:
    return re.sub(r"\s+", " ", sql)


def short_sql(sql: str) -> str:
    """One line, with a list of all the columns elided."""
    sql = one_line(sql)
    match = re.match(r"SELECT (.*?) FROM (.*)", sql)
    if match and match.group(1).count(",") > 5:
        sql = f"SELECT … FROM {match.group(2)}"
    return sql


def slowest(queries: list[dict]) -> dict:
    return max(queries, key=lambda q: float(q["time"]))


def sql_ms(queries: list[dict]) -> float:
    return sum(float(q["time"]) for q in queries) * 1000


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def page_count(body: str) -> str:
    """What the page says about how many rows matched ("1000000 jobs", "10001 jobs", ...)."""
    paginator = re.search(r'<p class="paginator">(.*?)</p>', body, re.S)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", paginator.group(1))).strip() if paginator else ""
    match = re.search(r"(\d+) (?:job|jobs)\b", text)
    return match.group(1) if match else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--runs", type=int, default=5, help="timed runs per page (median); one warm-up before"
    )
    parser.add_argument(
        "--reuse", action="store_true", help=f"keep {BENCH_DB} and its rows if it has --rows of them"
    )
    parser.add_argument("--slow", type=float, default=500.0, help="explain pages slower than this many ms")
    parser.add_argument(
        "--hard-runs", type=int, default=3, help="runs per page of the ours-only set (0: skip it)"
    )
    parser.add_argument(
        "--explain-over", type=float, default=100.0, help="explain our queries slower than this"
    )
    args = parser.parse_args()

    url = server_url()
    existed = prepare_database(url, reuse=args.reuse)
    os.environ["DATABASE_URL"] = with_database(url, BENCH_DB)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.setdefault("CHANNEL_PREFIX", "longrun-bench")
    import django

    django.setup()
    from django.conf import settings
    from django.contrib import admin
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, override_settings
    from django.urls import path
    from django.utils import timezone

    from tasks_app.admin.common import COUNT_CAP
    from tasks_app.admin.jobs import JobAdmin
    from tasks_app.models import Job

    assert connection.vendor == "postgresql" and settings.DATABASES["default"]["NAME"] == BENCH_DB
    call_command("migrate", verbosity=0)

    User = get_user_model()
    owners = []
    for i in range(USERS):
        owner, _ = User.objects.get_or_create(username=f"bench-user-{i:02d}")
        owners.append(owner.pk)
    superuser, created = User.objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM tasks_app_job")
        present = cursor.fetchone()[0]
    if existed and present == args.rows:
        print(f"reusing {BENCH_DB}: {present:,} jobs")
    else:
        seconds = load_rows(args.rows, owners)
        print(f"loaded {args.rows:,} jobs into {BENCH_DB} in {seconds:.1f} s (indexes built after the load)")
        vacuum_analyze()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_size_pretty(pg_total_relation_size('tasks_app_job'))")
        size = cursor.fetchone()[0]
        cursor.execute("SELECT id FROM tasks_app_job TABLESAMPLE SYSTEM (1) LIMIT 1")
        some_id = str(cursor.fetchone()[0])
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = 'tasks_app_job'::regclass")
        estimate = cursor.fetchone()[0]
        cursor.execute("SELECT version()")
        server = cursor.fetchone()[0].split(" on ")[0]

    # --- the baseline: a default ModelAdmin on a site of its own ------------------------------

    baseline_site = admin.AdminSite(name="baseline")

    class BaselineJobAdmin(admin.ModelAdmin):
        list_display = [
            "id",
            "type",
            "owner",
            "status",
            "progress",
            "attempts",
            "priority",
            "created_at",
            "finished_at",
        ]
        list_filter = ["status", "type", "owner", "created_at"]
        date_hierarchy = "created_at"
        search_fields = ["id__exact", "type", "metadata"]
        list_per_page = 50  # the same page size as ours (Django's default is 100)

    baseline_site.register(Job, BaselineJobAdmin)
    urls = types.ModuleType("bench_admin_urls")
    urls.urlpatterns = [path("admin/", admin.site.urls), path("baseline/", baseline_site.urls)]
    sys.modules[urls.__name__] = urls

    mid = timezone.now() - timedelta(days=45)
    pages = [
        # name, our query string, the baseline's (its own filter parameter where it differs)
        ("change list", {}, {}),
        ("status filter", {"status__exact": "failed"}, {"status__exact": "failed"}),
        ("type filter", {"type": "fail"}, {"type__exact": "fail"}),
        ("search: job id", {"q": some_id}, {"q": some_id}),
        ("search: customer:acme", {"q": "customer:acme"}, {"q": "customer:acme"}),
        (
            "date drill-down (month)",
            {"created_at__year": mid.year, "created_at__month": mid.month},
            {"created_at__year": mid.year, "created_at__month": mid.month},
        ),
    ]

    priority_column = list(JobAdmin.list_display).index("priority") + 1  # 0 is the action checkbox
    hard_pages = [
        ("search: no match (zzz)", {"q": "zzz"}),
        ("search: customer:nobody", {"q": "customer:nobody"}),
        ("search: type prefix (fai)", {"q": "fai"}),
        ("status + type filters", {"status__exact": "running", "type": "fail"}),
        ("sorted by priority", {"o": str(priority_column)}),
        # The deepest page the admin links to (its paginator stops at COUNT_CAP rows).
        (
            "last page (unfiltered)",
            {"p": str(min(-(-estimate // JobAdmin.list_per_page), COUNT_CAP // JobAdmin.list_per_page))},
        ),
    ]

    results = []
    slow: list[tuple[str, str, float, str]] = []
    explain_status: dict[str, list[str]] = {}
    with override_settings(ROOT_URLCONF=urls.__name__, ALLOWED_HOSTS=["testserver"], DEBUG=False):
        client = Client()
        client.force_login(superuser)

        def run(url: str, runs: int) -> tuple[float, str, list[dict]]:
            with CaptureQueriesContext(connection) as captured:  # the warm-up, and what the page says
                response = client.get(url)
            queries = list(captured.captured_queries)  # read now: the next request clears the log
            assert response.status_code == 200, (url, response.status_code, response.content[:500])
            body = response.content.decode()
            samples = []
            for _ in range(runs):
                start = time.perf_counter()
                response = client.get(url)
                samples.append(time.perf_counter() - start)
                assert response.status_code == 200
            return median_ms(samples), page_count(body), queries

        for name, ours_qs, base_qs in pages:
            ours_url = "/admin/tasks_app/job/" + ("?" + urlencode(ours_qs) if ours_qs else "")
            base_url = "/baseline/tasks_app/job/" + ("?" + urlencode(base_qs) if base_qs else "")
            ours_ms, ours_count, ours_queries = run(ours_url, args.runs)
            base_ms, base_count, base_queries = run(base_url, args.runs)
            results.append((name, ours_ms, base_ms, ours_count, base_count, ours_queries, base_queries))
            for who, ms, queries in (("ours", ours_ms, ours_queries), ("baseline", base_ms, base_queries)):
                if ms > args.slow:
                    slow.append((name, who, ms, slowest(queries)["sql"]))
            if name == "status filter":
                for who, queries in (("ours", ours_queries), ("baseline", base_queries)):
                    explain_status[who] = [q["sql"] for q in queries if "tasks_app_job" in q["sql"]]

        # Pages an operator reaches easily that the comparison above leaves out; ours only.
        harder = []
        if args.hard_runs:
            for name, query in hard_pages:
                ms, count, queries = run("/admin/tasks_app/job/?" + urlencode(query), args.hard_runs)
                harder.append((name, ms, count, queries))

    def show_plan(sql: str, label: str) -> None:
        """EXPLAIN (ANALYZE): the top plan line, how the table is read, and the execution time."""
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
            lines = [row[0] for row in cursor.fetchall()]
        scan = next(
            (line.strip().lstrip("-> ") for line in lines[1:] if re.search(r"Scan (using|on)", line)), ""
        )
        total = next((line for line in lines if line.startswith("Execution Time")), "")
        print(f"  {label}{short_sql(sql)[:150]}")
        print(f"      plan:  {lines[0].strip()}")
        if scan:
            print(f"      reads: {scan}")
        print(f"      {total}")

    print(
        f"server: {server}; table tasks_app_job: {size}; {args.runs} runs per page, median, after a warm-up"
    )
    print(
        f"{'page':<24} {'ours ms':>8} {'baseline ms':>12} {'ratio':>7}   {'ours count':>10} {'base count':>10}"
        f"   {'queries':>7}  {'SQL ms ours/base':>16}"
    )
    for name, ours_ms, base_ms, ours_count, base_count, ours_q, base_q in results:
        print(
            f"{name:<24} {ours_ms:>8.1f} {base_ms:>12.1f} {base_ms / ours_ms:>6.1f}x   "
            f"{ours_count:>10} {base_count:>10}   {len(ours_q):>3}/{len(base_q):<3}  "
            f"{sql_ms(ours_q):>7.0f}/{sql_ms(base_q):<7.0f}"
        )
    print("ratio = baseline / ours. count = the number the page shows (ours stops counting at 10001 when")
    print("filtered; unfiltered it shows PostgreSQL's estimate). SQL ms = time spent in the database by one")
    print("request of the page, ms resolution (the rest is Python: the admin, the templates).")

    print(f"\nthe slowest query of each of our pages (EXPLAIN ANALYZE when over {args.explain_over:.0f} ms):")
    for name, _, _, _, _, ours_q, _ in results:
        worst = slowest(ours_q)
        ms = float(worst["time"]) * 1000
        print(f"  {name:<24} {ms:>5.0f} ms  {short_sql(worst['sql'])[:110]}")
        if ms > args.explain_over:
            show_plan(worst["sql"], "    ")

    if harder:
        print(f"\nharder pages, ours only ({args.hard_runs} runs, median), with their slowest query:")
        for name, ms, count, queries in harder:
            worst = slowest(queries)
            worst_ms = float(worst["time"]) * 1000
            print(
                f"  {name:<26} {ms:>7.1f} ms  count {count:>7}  SQL {sql_ms(queries):>5.0f} ms; slowest {worst_ms:.0f} ms"
            )
            if ms > args.slow:
                show_plan(worst["sql"], "    ")

    print("\nEXPLAIN (ANALYZE) of the status-filter page's queries on tasks_app_job:")
    for who, sqls in explain_status.items():
        for sql in sqls:
            show_plan(sql, f"{who}: ")

    if slow:
        print(f"\npages over {args.slow:.0f} ms, and their slowest query:")
        for name, who, ms, sql in slow:
            show_plan(sql, f"{name} ({who}, {ms:.0f} ms): ")
    else:
        print(f"\nno page over {args.slow:.0f} ms")


if __name__ == "__main__":
    main()
