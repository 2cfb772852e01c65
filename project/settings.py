"""Longrun settings.

Every setting that differs between machines comes from an environment variable with a safe
default; each is documented in the README's "Settings" table.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("LONGRUN_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)

# A development key is generated once and kept under var/ so sessions survive restarts; production
# must set SECRET_KEY (check --deploy flags a short or insecure key).
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    _key_file = VAR_DIR / "secret_key"
    if not _key_file.exists():
        from django.utils.crypto import get_random_string

        _key_file.write_text(get_random_string(64))
        _key_file.chmod(0o600)
    SECRET_KEY = _key_file.read_text().strip()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "tasks_app",
]

MIDDLEWARE = [
    # First, so every log line of the request carries its id (X-Request-ID in and out).
    "tasks_app.web.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Before anything reads the request: NUL in a URL, query or form is a 400, not a database error.
    "tasks_app.web.middleware.RejectNulMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Too many failed sign-ins from an address or for a username: 429 with Retry-After.
    "tasks_app.web.middleware.LoginThrottleMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------------
# Default: a SQLite file under var/ in WAL mode with a busy timeout, so the web server and a
# worker can write at once. Production: DATABASE_URL=postgres://...
SQLITE_PATH = VAR_DIR / "longrun.sqlite3"
DATABASE_URL = os.environ.get("DATABASE_URL", f"sqlite:///{SQLITE_PATH}")
# Under ASGI each request may run on a different thread; persistent connections would pile up,
# so connections are closed after each request (and after each Celery task by Celery's fixup).
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # IMMEDIATE takes the write lock at BEGIN, so two writers queue on the busy timeout
        # instead of one failing with "database is locked" when upgrading a read lock.
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not :memory:, so worker processes started by integration tests share it; one per
    # test run, so two runs on one checkout don't share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test_longrun_{os.getpid()}.sqlite3")}
else:
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", 5)
    # A connection pool per process (psycopg_pool, Django 5.1+): under ASGI each request may run on
    # another thread, so persistent connections are off (CONN_MAX_AGE=0), and without a pool every
    # request and every live-update read would open a new PostgreSQL connection (milliseconds).
    if env_int("DB_POOL_MAX_SIZE", 10) > 0:
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": env_int("DB_POOL_MIN_SIZE", 1),
            "max_size": env_int("DB_POOL_MAX_SIZE", 10),
            "timeout": env_float("DB_POOL_TIMEOUT", 10.0),
        }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Static files are served by the ASGI app itself in every mode (DEBUG off included) straight
# from the finders, so no collectstatic step is needed to run.
SERVESTATIC_USE_FINDERS = True
SERVESTATIC_AUTOREFRESH = DEBUG

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

# --- Security (driven by the environment; `check --deploy` passes with DEBUG off) -------------
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG and SECURE_SSL_REDIRECT)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG and SECURE_SSL_REDIRECT)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", SECURE_HSTS_SECONDS > 0)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

# Request bodies larger than this are refused with 413 (DRF >= 3.17.2 enforces it on JSON).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("LONGRUN_MAX_REQUEST_BYTES", 1024 * 1024)

# --- Redis, channel layer, Celery -------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_db(url: str, offset: int) -> str:
    """The same Redis server, another database number (the broker's own db is never flushed)."""
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0)
    return urlunsplit((parts.scheme, parts.netloc, f"/{(db + offset) % 16}", parts.query, parts.fragment))


# Shared by every process: request throttles and failed-login counts must be the same for all the
# web servers. By default the next database number of REDIS_URL's server.
CACHES = {
    "default": {
        "BACKEND": "tasks_app.cache.RedisWithLocalFallback",
        "LOCATION": os.environ.get("CACHE_URL") or _redis_db(REDIS_URL, 1),
        "KEY_PREFIX": os.environ.get("CHANNEL_PREFIX", "longrun"),
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 2},
    }
}

CHANNEL_LAYERS = {
    "default": {
        # Pub/sub layer: measured ~8x the fan-out throughput of RedisChannelLayer here. Delivery
        # is at-most-once; clients resync from REST using the job version (see README).
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        # Several Redis servers share the load (channels-redis shards group channels over them by
        # a hash of the name; the workers' publisher shards the same way): CHANNEL_REDIS_URLS.
        "CONFIG": {
            "hosts": env_list("CHANNEL_REDIS_URLS", [REDIS_URL]),
            "prefix": os.environ.get("CHANNEL_PREFIX", "longrun"),
        },
    }
}

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
# RabbitMQ (amqp://) instead of Redis: priorities are the queues' own (x-max-priority, highest
# first), declared on every queue Celery creates; Redis emulates them with sub-queues (below).
BROKER_IS_AMQP = CELERY_BROKER_URL.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")
if BROKER_IS_AMQP:
    CELERY_TASK_QUEUE_MAX_PRIORITY = 9  # tasks_app.conf.PRIORITY_MAX
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# The job row is the result store; Celery's own results are not kept.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A running job goes on when the broker connection drops: its message, which can then not be
# acknowledged, comes back one day as a duplicate that the conditional claim ignores. Celery's
# alternative kills every running job on any Redis blip (each losing an attempt and waiting for its
# lease), and crashes a threads-pool worker outright ("does not implement kill_job"): both seen in
# the chaos soak.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = env_bool(
    "CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS", False
)
# SIGTERM: stop taking jobs and let running ones finish for this long, then stop them (their
# jobs go back to the queue when their lease lapses).
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = env_float("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", 30.0)
# An idle worker stops at once (Longrun schedules nothing as Celery ETAs, so an idle worker holds
# nothing that the soft shutdown would need to protect).
CELERY_WORKER_ENABLE_SOFT_SHUTDOWN_ON_IDLE = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fix-up closes the database connection before and after every task unless told
# to reuse it: with it, a worker process keeps its connection for this many tasks instead of
# paying a new PostgreSQL connection (milliseconds) per job. A connection broken by a database
# restart is dropped and reopened by the worker's retry (tasks_app/worker/retry.py).
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000)
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", os.cpu_count() or 2)
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_TASK_DEFAULT_QUEUE = "longrun.jobs"  # tasks_app.conf.JOB_QUEUE
CELERY_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 6 * 3600)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Longer than the longest allowed job, so Redis never redelivers a healthy running job; a
    # dead worker's job is recovered by the lease sweep long before this.
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    # Broker priorities: ten sub-queues, popped highest first (kombu: 0 is the highest).
    "priority_steps": list(range(10)),
    "sep": ":",
    "queue_order_strategy": "priority",
    # Bounded publishing: the request path must never hang on a dead broker (kombu's default
    # reconnect loop sleeps 2 s); an undelivered dispatch is retried by the sweep instead.
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
    "socket_connect_timeout": 1,
    "socket_timeout": 5,
}
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY = False

# --- Longrun ----------------------------------------------------------------------------------
# Read through tasks_app.conf.app_settings, which also holds the defaults and the fixed limits.
LONGRUN: dict[str, Any] = {
    # A running job's lease, renewed by its worker's heartbeat; when it lapses (the worker died)
    # the sweep takes the job back. Seconds.
    "LEASE_SECONDS": env_float("LONGRUN_LEASE_SECONDS", 30.0),
    "HEARTBEAT_SECONDS": env_float("LONGRUN_HEARTBEAT_SECONDS", 5.0),
    # After a cancel request, how long a running job may take to stop by itself before its
    # worker process is terminated. Seconds.
    "CANCEL_GRACE": env_float("LONGRUN_CANCEL_GRACE", 10.0),
    # After the soft timeout (the job gets TimeoutError-like SoftTimeLimitExceeded and may clean
    # up), how long until the hard limit kills it. Seconds.
    "TIMEOUT_GRACE": env_float("LONGRUN_TIMEOUT_GRACE", 10.0),
    # Retry backoff for retryable errors: base * 2**(attempt-1), capped, with full jitter. Seconds.
    "RETRY_BACKOFF_BASE": env_float("LONGRUN_RETRY_BACKOFF_BASE", 2.0),
    "RETRY_BACKOFF_MAX": env_float("LONGRUN_RETRY_BACKOFF_MAX", 600.0),
    # Webhooks: total seconds per delivery attempt (at most 15), host names allowed to resolve to
    # private addresses (development and tests only; empty by default), and how long a rotated
    # signing secret stays valid.
    "WEBHOOK_TIMEOUT": min(env_float("LONGRUN_WEBHOOK_TIMEOUT", 15.0), 15.0),
    "WEBHOOK_ALLOWED_PRIVATE_HOSTS": [
        h.lower() for h in env_list("LONGRUN_WEBHOOK_ALLOWED_PRIVATE_HOSTS", [])
    ],
    "WEBHOOK_SECRET_GRACE": env_int("LONGRUN_WEBHOOK_SECRET_GRACE", 24 * 3600),
    # Opted-in job.progress deliveries: at most one per this many seconds per job.
    "WEBHOOK_PROGRESS_INTERVAL": env_float("LONGRUN_WEBHOOK_PROGRESS_INTERVAL", 10.0),
    # Seconds between delivery attempts after a failure (with +-20% jitter): about a day in all.
    "WEBHOOK_RETRY_SCHEDULE": [
        float(x)
        for x in env_list(
            "LONGRUN_WEBHOOK_RETRY_SCHEDULE", "5,30,120,600,1800,3600,7200,14400,28800,28800".split(",")
        )
    ],
    # Extra modules with @job_type functions, imported at start-up (comma-separated).
    "JOB_MODULES": env_list("LONGRUN_JOB_MODULES", []),
    "SCHEDULES_OWNER": os.environ.get("LONGRUN_SCHEDULES_OWNER", "longrun"),
    # How often the maintenance sweep runs (dispatch, lease expiry, scheduled jobs), seconds.
    "SWEEP_INTERVAL": env_float("LONGRUN_SWEEP_INTERVAL", 5.0),
    # A queued job whose on-commit dispatch has not happened after this long is re-published.
    "DISPATCH_GRACE": env_float("LONGRUN_DISPATCH_GRACE", 10.0),
    # A queued job whose broker message was lost (Redis restarted without persistence, a
    # flush, a killed worker's prefetched message) is published again once the job queue has
    # been seen empty for this long, seconds.
    "REDISPATCH_AFTER": env_float("LONGRUN_REDISPATCH_AFTER", 60.0),
    # Finished jobs older than this many days are deleted by the sweep, with their history and
    # webhook deliveries (0: kept for ever); `manage.py jobs purge` does it by hand.
    "RETENTION_DAYS": env_int("LONGRUN_RETENTION_DAYS", 30),
    # Each worker renews its row every WORKER_HEARTBEAT_SECONDS; one silent for WORKER_LOST_AFTER
    # seconds is shown lost (and its queues unserved); rows of workers gone that long are dropped.
    "WORKER_HEARTBEAT_SECONDS": env_float("LONGRUN_WORKER_HEARTBEAT_SECONDS", 10.0),
    "WORKER_LOST_AFTER": env_float("LONGRUN_WORKER_LOST_AFTER", 30.0),
    "WORKER_FORGET_AFTER": env_float("LONGRUN_WORKER_FORGET_AFTER", 24 * 3600.0),
    # Minimum seconds between two progress writes of one job (the latest value always lands).
    "PROGRESS_INTERVAL": env_float("LONGRUN_PROGRESS_INTERVAL", 0.25),
    # Default attempts for a new job when the client does not say (at most 20).
    "DEFAULT_MAX_ATTEMPTS": env_int("LONGRUN_DEFAULT_MAX_ATTEMPTS", 3),
    # The longest timeout a job may ask for, seconds; kept below the broker visibility timeout.
    "MAX_TIMEOUT": min(env_int("LONGRUN_MAX_TIMEOUT", 6 * 3600), CELERY_VISIBILITY_TIMEOUT - 300),
    # Idempotency keys are kept at least this long, seconds.
    "IDEMPOTENCY_TTL": env_int("LONGRUN_IDEMPOTENCY_TTL", 24 * 3600),
    # DRF throttle rates ("N/second|minute|hour|day"); 429 with Retry-After beyond them.
    "THROTTLE_USER": os.environ.get("LONGRUN_THROTTLE_USER", "1200/minute"),
    "THROTTLE_ANON": os.environ.get("LONGRUN_THROTTLE_ANON", "60/minute"),
    # Failed sign-ins (site and admin) allowed per address and, separately, per username.
    "THROTTLE_LOGIN": os.environ.get("LONGRUN_THROTTLE_LOGIN", "10/minute"),
    # How many reverse proxies stand in front of the web servers: X-Forwarded-For is believed
    # for that many hops only (0: never; the peer's address is the client's).
    "TRUSTED_PROXIES": env_int("LONGRUN_TRUSTED_PROXIES", 0),
    # The OpenAPI schema (/api/schema/) and Swagger UI (/api/docs/) need a login, like the rest
    # of the API, unless this makes both public.
    "PUBLIC_API_DOCS": env_bool("LONGRUN_PUBLIC_API_DOCS", False),
    # Bearer token for GET /metrics (Prometheus); empty: only staff sessions may read it.
    "METRICS_TOKEN": os.environ.get("LONGRUN_METRICS_TOKEN", ""),
}

# --- REST framework ---------------------------------------------------------------------------
REST_FRAMEWORK: dict[str, Any] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["tasks_app.api.parsers.SafeJSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "tasks_app.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append("rest_framework.renderers.BrowsableAPIRenderer")

SPECTACULAR_SETTINGS = {
    "TITLE": "Longrun API",
    "DESCRIPTION": "Submit long-running jobs, follow them, cancel and retry them.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # 3.1 is JSON Schema 2020-12, like the job types' params schemas (and it has propertyNames).
    "OAS_VERSION": "3.1.0",
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "tasks_app.models.JobStatus",
        "CancellableStatusEnum": "tasks_app.models.CANCELLABLE_STATUS_CHOICES",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "tasks_app.api.schema.job_type_variants",
        "tasks_app.api.schema.nul_refused_everywhere",
        "tasks_app.api.schema.problem_media_type",
    ],
}

# JSON lines (one object per line: time, level, logger, message and the bound fields) when the
# output is not a terminal, plain text when it is; LOG_FORMAT=json|plain decides instead.
LOG_FORMAT = os.environ.get("LOG_FORMAT") or ("plain" if sys.stderr.isatty() else "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "tasks_app.logs.ContextFilter"}},
    "formatters": {
        "plain": {
            "()": "tasks_app.logs.PlainFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
        },
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(job_id)s %(job_type)s "
            "%(attempt)s %(worker)s %(process)d",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
# Celery's workers log through the configuration above (same format, same fields), not their own.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

CELERY_TASK_ROUTES = {
    # tasks_app.conf.SWEEP_TASK -> MAINTENANCE_QUEUE
    "longrun.sweep": {"queue": "longrun.maintenance"},
    # Webhooks have their own queue and worker: a slow receiver never holds a job worker.
    # tasks_app.conf.DELIVER_WEBHOOK_TASK -> WEBHOOK_QUEUE
    "longrun.deliver_webhook": {"queue": "longrun.webhooks"},
}
CELERY_BEAT_SCHEDULE = {
    "longrun-sweep": {
        "task": "longrun.sweep",
        "schedule": LONGRUN["SWEEP_INTERVAL"],
        # A sweep that could not run in time is pointless: the next one is already queued.
        "options": {"expires": LONGRUN["SWEEP_INTERVAL"] * 2},
    }
}
