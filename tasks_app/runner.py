"""Running one job inside a worker: claim, run the job type's code, record the outcome.

No database transaction is held while the job's code runs; each progress write, log line and
the final outcome is its own short transaction through the services.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from . import registry, selectors, services
from .exceptions import JobCancelled
from .models import Job

logger = logging.getLogger(__name__)

T = TypeVar("T")


# How long a worker keeps retrying a database write the job's state depends on (a database
# restart takes seconds); past that the lease lapses and the sweep takes the job back.
DB_RETRY_SECONDS = 30.0


def with_db_retry(write: Callable[[], T], *, seconds: float = DB_RETRY_SECONDS) -> T:
    """Run a database write, reconnecting and retrying while the database is unreachable."""
    deadline = time.monotonic() + seconds
    delay = 0.2
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError):
            connection.close()
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("database unavailable; retrying in %.1f s", delay, exc_info=True)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class JobContext:
    """What a job's code can do: report progress, write log lines, see a cancel request."""

    # How often `cancel_requested` asks the database at most.
    CANCEL_CHECK_INTERVAL = 0.5

    def __init__(self, job: Job, *, worker: str) -> None:
        self.job_id = job.pk
        self.attempt: int = job.attempts
        self.params: dict[str, Any] = job.params
        self.worker = worker
        self._progress_interval: float = settings.LONGRUN["PROGRESS_INTERVAL"]
        self._last_progress_write = 0.0
        self._pending_progress: tuple[int, str] | None = None
        self._progress_lock = threading.Lock()
        self._last_cancel_check = 0.0
        self._cancel_requested = job.cancel_requested_at is not None

    def progress(self, percent: float, message: str = "") -> None:
        """Report progress (0-100). Writes are throttled; the latest value always lands."""
        self._pending_progress = (max(0, min(100, int(percent))), message)
        if time.monotonic() - self._last_progress_write >= self._progress_interval:
            self.flush_progress()

    def flush_progress(self) -> None:
        """Write the pending progress, if any. Also called by the heartbeat thread, so a job that
        reports 50% and then blocks still shows 50%; the lock keeps the two writers in order."""
        with self._progress_lock:
            if self._pending_progress is None:
                return
            percent, message = self._pending_progress
            self._pending_progress = None
            self._write_progress(percent, message)

    def _write_progress(self, percent: int, message: str) -> None:
        self._last_progress_write = time.monotonic()
        try:
            services.job_progress(self.job_id, worker=self.worker, percent=percent, message=message)
        except (OperationalError, InterfaceError):
            # Progress is not worth failing a job over: keep it for the next write.
            connection.close()
            if self._pending_progress is None:
                self._pending_progress = (percent, message)

    def log(self, message: str) -> None:
        """Append a line to the job's history (its events)."""
        self.flush_progress()
        with_db_retry(lambda: services.job_log(self.job_id, worker=self.worker, message=str(message)))

    @property
    def cancel_requested(self) -> bool:
        """True once somebody asked to cancel this job; the code should stop soon after."""
        now = time.monotonic()
        if not self._cancel_requested and now - self._last_cancel_check >= self.CANCEL_CHECK_INTERVAL:
            self._last_cancel_check = now
            try:
                self._cancel_requested = selectors.job_cancel_requested(self.job_id)
            except (OperationalError, InterfaceError):
                connection.close()  # ask again at the next check
        return self._cancel_requested

    def raise_if_cancelled(self) -> None:
        """Stop here (cleanly) if a cancel was requested, or if the job is no longer this
        worker's to run (its lease was lost)."""
        if self.lease_lost:
            raise JobLeaseLost()
        if self.cancel_requested:
            raise JobCancelled()

    # Set by the heartbeat thread.
    lease_lost = False


class JobLeaseLost(Exception):
    """The sweep took the job back (this worker's heartbeat stopped for too long)."""


class Heartbeat(threading.Thread):
    """Renews the running job's lease every few seconds, from its own thread, so a job busy in
    a long computation or a C call keeps its lease; also tells the job about a cancel request."""

    def __init__(self, context: JobContext) -> None:
        super().__init__(name=f"heartbeat-{context.job_id}", daemon=True)
        self.context = context
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = settings.LONGRUN["HEARTBEAT_SECONDS"]
        try:
            while not self.stopped.wait(interval):
                try:
                    ours, cancel = services.job_heartbeat(self.context.job_id, worker=self.context.worker)
                except Exception:  # a database blip: the lease outlasts a few missed beats
                    logger.warning("heartbeat of job %s failed", self.context.job_id, exc_info=True)
                    connection.close()
                    continue
                if cancel:
                    self.context._cancel_requested = True
                self.context.flush_progress()
                if not ours:
                    self.context.lease_lost = True
                    return
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()


def _error_of(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)[:2000]}


def execute_job(job_id: str, *, worker: str | None = None, celery_task_id: str = "") -> str:
    """Claim and run one job. Safe to call twice for the same job: only one claim wins.

    Returns what happened, for logs and tests: "skipped" or the job's final status.
    """
    worker = worker or worker_identity()
    job = with_db_retry(lambda: services.job_claim(job_id, worker=worker, celery_task_id=celery_task_id))
    if job is None:
        logger.info("job %s not claimed (duplicate delivery, cancelled or already running)", job_id)
        return "skipped"

    context = JobContext(job, worker=worker)
    heartbeat = Heartbeat(context)
    heartbeat.start()
    jt = None
    try:
        jt = registry.get_job_type(job.type)
        result = jt.func(context, **job.params)
        context.flush_progress()
        # A result must be strict JSON (PostgreSQL refuses NaN); a TypeError or ValueError here
        # fails the job with a clear error.
        if services.has_nul(result):
            raise ValueError("The job's result contains a NUL character (\\u0000), which cannot be stored.")
        json.dumps(result, allow_nan=False)
    except JobCancelled:
        outcome = with_db_retry(lambda: services.job_acknowledge_cancel(job.pk, worker=worker))
    except JobLeaseLost:
        logger.warning("job %s was taken back from this worker; its outcome is dropped", job.pk)
        outcome = None
    except SoftTimeLimitExceeded:
        error = {
            "type": "TimeoutError",
            "message": f"The job ran longer than its timeout of {job.timeout} s.",
        }
        details = traceback.format_exc()
        outcome = with_db_retry(
            lambda: services.job_fail(job.pk, worker=worker, error=error, traceback=details)
        )
    except Exception as exc:
        context._pending_progress = None
        retryable = jt is not None and bool(jt.retry_on) and isinstance(exc, jt.retry_on)
        details, failure = traceback.format_exc(), _error_of(exc)
        outcome = with_db_retry(
            lambda: services.job_fail_or_retry(
                job.pk, worker=worker, error=failure, traceback=details, retryable=retryable
            )
        )
    else:
        outcome = with_db_retry(lambda: services.job_succeed(job.pk, worker=worker, result=result))
    finally:
        heartbeat.stop()
    return outcome.status if outcome is not None else "lost"
