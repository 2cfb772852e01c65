"""Celery tasks: thin callers that take ids, never objects, and are safe to deliver twice."""

from __future__ import annotations

import logging
import os

from celery import shared_task

from . import runner, services, webhook_sender

logger = logging.getLogger(__name__)


@shared_task(name="longrun.run_job", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self, job_id: str) -> str:
    """Run one job. A duplicate delivery finds the job claimed already and does nothing."""
    worker = f"{self.request.hostname}:{os.getpid()}"
    return runner.execute_job(job_id, worker=worker, celery_task_id=self.request.id or "")


@shared_task(name="longrun.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    """Periodic maintenance (Celery beat): scheduled jobs, lost dispatches, old keys."""
    return services.sweep()


@shared_task(name="longrun.deliver_webhook", ignore_result=True, acks_late=True)
def deliver_webhook(delivery_id: int) -> str:
    """Send one webhook delivery attempt (its own queue and worker). Safe to deliver twice:
    only one sender claims a due delivery."""
    return webhook_sender.send(delivery_id)


def terminate_task(celery_task_id: str) -> None:
    """Have the worker process running a task killed (a forced cancel or a blown deadline).
    Best effort: if the broker is down the job has already been ended in the database."""
    if not celery_task_id:
        return
    try:
        run_job.app.control.revoke(celery_task_id, terminate=True, signal="SIGKILL")
    except Exception:  # noqa: BLE001
        logger.warning("could not ask workers to terminate task %s", celery_task_id, exc_info=True)
