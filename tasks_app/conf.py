"""Longrun's settings and limits: one home for each number.

- **Limits** are part of the API contract (priority 0-9, metadata rules, bulk size...): plain
  constants here, read by the serializers, the services, the schema, the consumers and the pages.
- **Settings** are what a deployment tunes (leases, intervals, webhook schedule...): read from
  Django's `LONGRUN` dict at the moment they are used, falling back to the defaults below, so a
  test's `settings` fixture or a host project's override takes effect without a reload.

    from tasks_app.conf import app_settings
    app_settings.LEASE_SECONDS      # float, typed
"""

from __future__ import annotations

import re
from typing import Any, Final

from django.conf import settings as django_settings

# --- limits -----------------------------------------------------------------------------------

PRIORITY_MIN: Final = 0
PRIORITY_MAX: Final = 9
DEFAULT_PRIORITY: Final = 5
# The most attempts a job may ask for.
MAX_ATTEMPTS_LIMIT: Final = 20
# Most jobs one bulk request may submit or cancel.
BULK_LIMIT: Final = 1000

# Metadata follows Stripe's rules: up to 50 string keys of up to 40 characters, string values of
# up to 500. Keys start with a letter or "_": an all-digit key would read as an array index in
# JSON paths.
METADATA_MAX_KEYS: Final = 50
METADATA_KEY_MAX: Final = 40
METADATA_VALUE_MAX: Final = 500
METADATA_KEY_PATTERN: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")

MAX_PROGRESS_MESSAGE: Final = 500

# Webhook events: the final one is always sent; these are opt-in per job.
OPTIONAL_WEBHOOK_EVENTS: Final = ("job.progress", "job.started")

# How many of the newest jobs a WebSocket snapshot, the all-jobs SSE stream and the dashboard show.
SNAPSHOT_LIMIT: Final = 50

# Long-poll: `GET /api/jobs/{id}/?wait=N`, N seconds at most (0 answers at once).
MAX_WAIT_SECONDS: Final = 30

# Celery queues. Jobs, the maintenance sweep and webhook deliveries each have their own, so a
# slow receiver or a long sweep never holds a job worker.
# Schedules: how many due schedules one sweep fires (the most overdue first; the next sweep takes
# the rest), how many missed slots catch-up "all" fires at most, and how many coming fire times
# a schedule's representation lists.
SCHEDULE_FIRE_BATCH: Final = 100
SCHEDULE_CATCHUP_LIMIT: Final = 100
SCHEDULE_NEXT_TIMES: Final = 5
# How many of its last jobs a schedule's representation shows (the strip of outcomes).
SCHEDULE_RECENT_JOBS: Final = 20
# How many schedules a live subscription (WebSocket scope "schedules", SSE) starts with.
SCHEDULES_SNAPSHOT_LIMIT: Final = 200

JOB_QUEUE: Final = "longrun.jobs"
MAINTENANCE_QUEUE: Final = "longrun.maintenance"
WEBHOOK_QUEUE: Final = "longrun.webhooks"
# How often the Workers page asks for the workers again, seconds.
WORKERS_REFRESH_SECONDS: Final = 5
# Every queue Longrun needs a live worker on: jobs, the sweep, webhook deliveries.
LONGRUN_QUEUES: Final = (JOB_QUEUE, MAINTENANCE_QUEUE, WEBHOOK_QUEUE)

# Prometheus histogram buckets, seconds: from submission (or run_at) to start, and from start to end.
QUEUE_WAIT_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)
RUN_TIME_BUCKETS: Final = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0)
# An ASGI process refreshes its count of open connections this often; it expires after 3 misses.
CONNECTIONS_REFRESH_SECONDS: Final = 15.0

# Celery task names: the dispatch seam publishes by name, so nothing imports tasks.py to send one.
RUN_JOB_TASK: Final = "longrun.run_job"
SWEEP_TASK: Final = "longrun.sweep"
DELIVER_WEBHOOK_TASK: Final = "longrun.deliver_webhook"


# --- settings ---------------------------------------------------------------------------------


class AppSettings:
    """Typed view of `settings.LONGRUN`; every attribute is read at use time.

    The class attributes are the defaults; `project/settings.py` fills the dict from the
    environment (the README's "Settings" table)."""

    # A running job's lease, renewed by its worker's heartbeat; when it lapses the sweep takes
    # the job back. Seconds.
    LEASE_SECONDS: float = 30.0
    HEARTBEAT_SECONDS: float = 5.0
    # After a cancel request, how long a running job may take to stop before its worker process
    # is terminated. Seconds.
    CANCEL_GRACE: float = 10.0
    # Between the soft timeout (the job may clean up) and the hard one. Seconds.
    TIMEOUT_GRACE: float = 10.0
    # Retry backoff for retryable errors: base * 2**(attempt-1), capped, jittered. Seconds.
    RETRY_BACKOFF_BASE: float = 2.0
    RETRY_BACKOFF_MAX: float = 600.0
    # Webhooks: seconds per attempt in all (at most 15), hosts allowed to resolve to private
    # addresses, how long a rotated-out secret stays valid, job.progress throttle, retry schedule.
    WEBHOOK_TIMEOUT: float = 15.0
    WEBHOOK_ALLOWED_PRIVATE_HOSTS: list[str] = []  # noqa: RUF012 (read-only default)
    WEBHOOK_SECRET_GRACE: int = 24 * 3600
    WEBHOOK_PROGRESS_INTERVAL: float = 10.0
    WEBHOOK_RETRY_SCHEDULE: list[float] = [  # noqa: RUF012 (read-only default)
        5.0,
        30.0,
        120.0,
        600.0,
        1800.0,
        3600.0,
        7200.0,
        14400.0,
        28800.0,
        28800.0,
    ]
    # Extra modules with @job_type functions, imported at start-up.
    JOB_MODULES: list[str] = []  # noqa: RUF012 (read-only default)
    # The user who owns the schedules declared in code (created, unable to sign in, if missing).
    SCHEDULES_OWNER: str = "longrun"
    # Seconds between maintenance sweeps; a queued job not dispatched after DISPATCH_GRACE is
    # re-published by the sweep.
    SWEEP_INTERVAL: float = 5.0
    DISPATCH_GRACE: float = 10.0
    # A queued job whose broker message is gone is published again once the job queue has been
    # seen empty for this long, seconds (`maintenance.jobs_redispatch_stranded`).
    REDISPATCH_AFTER: float = 60.0
    # Finished jobs are deleted (with their history and deliveries) this many days after they
    # ended; 0 keeps them for ever.
    RETENTION_DAYS: int = 30
    # A worker renews its row (`models.WorkerNode`) every WORKER_HEARTBEAT_SECONDS; one silent for
    # WORKER_LOST_AFTER seconds is shown lost; rows of workers gone for a day are dropped.
    WORKER_HEARTBEAT_SECONDS: float = 10.0
    WORKER_LOST_AFTER: float = 30.0
    WORKER_FORGET_AFTER: float = 24 * 3600.0
    # Minimum seconds between two progress writes of one job (the latest value always lands).
    PROGRESS_INTERVAL: float = 0.25
    # Attempts for a job whose submitter does not say (at most MAX_ATTEMPTS_LIMIT).
    DEFAULT_MAX_ATTEMPTS: int = 3
    # The longest timeout a job may ask for, seconds; kept below the broker's visibility timeout.
    MAX_TIMEOUT: int = 6 * 3600
    # Idempotency keys are kept at least this long, seconds.
    IDEMPOTENCY_TTL: int = 24 * 3600
    # DRF throttle rates ("N/second|minute|hour|day").
    THROTTLE_USER: str = "1200/minute"
    THROTTLE_ANON: str = "60/minute"
    # Failed sign-ins allowed per address and, separately, per username.
    THROTTLE_LOGIN: str = "10/minute"
    # Reverse proxies in front of the web servers whose X-Forwarded-For is believed (0: none).
    TRUSTED_PROXIES: int = 0
    # Whether the OpenAPI schema and Swagger UI are served without a login.
    PUBLIC_API_DOCS: bool = False
    # The bearer token a Prometheus scraper sends to `GET /metrics` ("": staff sessions only).
    METRICS_TOKEN: str = ""

    def __getattribute__(self, name: str) -> Any:
        if name.isupper():
            overrides = getattr(django_settings, "LONGRUN", None) or {}
            if name in overrides:
                return overrides[name]
        return super().__getattribute__(name)

    @classmethod
    def names(cls) -> set[str]:
        return {name for name in vars(cls) if name.isupper()}


app_settings: Final = AppSettings()
