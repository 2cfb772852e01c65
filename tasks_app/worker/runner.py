"""Running one job inside a worker: claim, run the job type's code, record the outcome.

No database transaction is held while the job's code runs; each progress write, log line and
the final outcome is its own short transaction through `services.execution`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import traceback

from celery.exceptions import SoftTimeLimitExceeded

from .. import logs, registry
from ..exceptions import JobCancelled, JobLeaseLost
from ..models import Job, JobId
from ..services import execution
from ..services.common import has_nul
from .context import JobContext
from .heartbeat import heartbeat
from .retry import with_db_retry

logger = logging.getLogger(__name__)


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _error_of(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)[:2000]}


def execute_job(job_id: JobId, *, worker: str | None = None, celery_task_id: str = "") -> str:
    """Claim and run one job. Safe to call twice for the same job: only one claim wins.

    Returns what happened, for logs and tests: "skipped", "lost" or the job's final status.
    """
    worker = worker or worker_identity()
    job = with_db_retry(
        lambda: execution.job_claim(job_id=job_id, worker=worker, celery_task_id=celery_task_id)
    )
    if job is None:
        logger.info("job %s not claimed (duplicate delivery, cancelled or already running)", job_id)
        return "skipped"
    # Every line logged while it runs (the job's own code included) names the job.
    with logs.bound(job_id=str(job.pk), job_type=job.type, attempt=job.attempts, worker=worker):
        return _run_claimed(job, worker)


def _run_claimed(job: Job, worker: str) -> str:
    context = JobContext(job, worker=worker)
    beat = heartbeat()
    beat.watch(context)
    job_type = None
    try:
        job_type = registry.get_job_type(job.type)
        result = job_type.func(context, **job.params)
        last_report = context.take_pending_progress()
        # A result must be strict JSON (PostgreSQL refuses NaN); a TypeError or ValueError here
        # fails the job with a clear error.
        if has_nul(result):
            raise ValueError("The job's result contains a NUL character (\\u0000), which cannot be stored.")
        json.dumps(result, allow_nan=False)
    except JobCancelled:
        outcome = with_db_retry(lambda: execution.job_acknowledge_cancel(job_id=job.pk, worker=worker))
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
            lambda: execution.job_fail(job_id=job.pk, worker=worker, error=error, traceback=details)
        )
    except Exception as exc:
        context.discard_pending_progress()
        retryable = job_type is not None and bool(job_type.retry_on) and isinstance(exc, job_type.retry_on)
        details, failure = traceback.format_exc(), _error_of(exc)
        outcome = with_db_retry(
            lambda: execution.job_fail_or_retry(
                job_id=job.pk, worker=worker, error=failure, traceback=details, retryable=retryable
            )
        )
    else:
        message = last_report[1] if last_report is not None else None
        outcome = with_db_retry(
            lambda: execution.job_succeed(
                job_id=job.pk, worker=worker, result=result, progress_message=message
            )
        )
    finally:
        beat.unwatch(context)
    return outcome.status if outcome is not None else "lost"
