"""Celery tasks: thin callers that take ids, never objects, and are safe to deliver twice.

Nothing imports this module to send a task: `services.dispatch` publishes them by name
(`conf.RUN_JOB_TASK`...). Celery finds them here (`autodiscover_tasks`)."""

from __future__ import annotations

import os
from typing import Any

from celery import shared_task

from .conf import DELIVER_WEBHOOK_TASK, RUN_JOB_TASK, SWEEP_TASK
from .models import JobId
from .services import maintenance
from .worker import runner, webhook_sender


@shared_task(name=RUN_JOB_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self: Any, job_id: JobId) -> str:
    """Run one job. A duplicate delivery finds the job claimed already and does nothing."""
    worker = f"{self.request.hostname}:{os.getpid()}"
    return runner.execute_job(job_id, worker=worker, celery_task_id=self.request.id or "")


@shared_task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> dict[str, int]:
    """Periodic maintenance (Celery beat): scheduled jobs, lost dispatches, leases, deadlines,
    webhook deliveries that are due, old idempotency keys."""
    return maintenance.sweep()


@shared_task(name=DELIVER_WEBHOOK_TASK, ignore_result=True, acks_late=True)
def deliver_webhook(delivery_id: int) -> str:
    """Send one webhook delivery attempt (its own queue and worker). Safe to deliver twice:
    only one sender claims a due delivery."""
    return webhook_sender.send(delivery_id)
