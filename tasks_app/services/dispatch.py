"""The only module that talks to the Celery broker.

Tasks are published by name (`conf.RUN_JOB_TASK`...), through Celery's `send_task`, which takes
the same options as `apply_async`: nothing in the services imports `tasks.py`, so the worker side
(`tasks -> worker -> services`) never comes back up. Every publish happens after commit; the
database row is the outbox (`Job.dispatched_at`, `WebhookDelivery.locked_until`), so a publish
lost to a dead broker is retried by the sweep.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from celery import current_app
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from .. import registry
from ..conf import DELIVER_WEBHOOK_TASK, PRIORITY_MAX, RUN_JOB_TASK, WEBHOOK_QUEUE, app_settings
from ..models import Job, JobId, JobStatus

logger = logging.getLogger(__name__)


class TaskByName:
    """A Celery task known only by its name: `apply_async` publishes it without importing it.
    Also the one seam tests fake (`tests/conftest.py`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def apply_async(self, **options: Any) -> Any:
        return current_app.send_task(self.name, **options)

    def __repr__(self) -> str:
        return f"TaskByName({self.name!r})"


run_job = TaskByName(RUN_JOB_TASK)
deliver_webhook = TaskByName(DELIVER_WEBHOOK_TASK)


# What a job's Celery message needs: its id, type (which names its queue), priority and timeout.
Dispatch = tuple[JobId, str, int, int | None]


def dispatch_on_commit(job: Job) -> None:
    """Publish a queued job's message once the transaction that queued it has committed."""
    transaction.on_commit(partial(_publish, [(job.pk, job.type, job.priority, job.timeout)]))


def jobs_dispatch_on_commit(jobs: Sequence[Job]) -> None:
    rows = [(job.pk, job.type, job.priority, job.timeout) for job in jobs]
    transaction.on_commit(partial(_publish, rows))


def job_dispatch(*, job_id: JobId) -> bool:
    """Publish the Celery message for one queued job; see `jobs_dispatch`."""
    return jobs_dispatch(job_ids=[job_id]) == 1


def jobs_dispatch(*, job_ids: Sequence[JobId]) -> int:
    """Publish the Celery messages for the given jobs that are still queued, over one broker
    connection, in the order given (oldest first), and mark them dispatched. Returns how many
    were published. The sweep's way (`maintenance.jobs_dispatch_pending`)."""
    position = {str(job_id): index for index, job_id in enumerate(job_ids)}
    rows = sorted(
        Job.objects.filter(pk__in=job_ids, status=JobStatus.QUEUED).values_list(
            "pk", "type", "priority", "timeout"
        ),
        key=lambda row: position[str(row[0])],
    )
    return _publish(rows)


def broker_priority(priority: int, *, amqp: bool | None = None) -> int:
    """Our priority (0-9, 9 first) as the broker's: RabbitMQ's priority queues also run the
    highest first; kombu's Redis sub-queues run 0 first. `amqp`: whether the broker is
    RabbitMQ, if the caller already knows."""
    if amqp is None:
        amqp = broker_is_amqp()
    return priority if amqp else PRIORITY_MAX - priority


def broker_is_amqp() -> bool:
    """Whether Celery's broker (its first, in a fail-over list) is RabbitMQ."""
    url = str(current_app.conf.broker_url)
    return url.split(";")[0].split("://", 1)[0] in ("amqp", "amqps", "pyamqp")


def _publish(jobs: Sequence[Dispatch]) -> int:
    """Publish, then mark dispatched. Called after commit and by the sweep. A broker outage
    leaves `dispatched_at` empty, so the sweep tries again; a crash after publishing but before
    marking publishes twice, which the conditional claim turns into a no-op (so does a message
    for a job cancelled in between)."""
    published: list[Any] = []
    amqp = broker_is_amqp()  # once per batch, not per message
    try:
        with current_app.producer_or_acquire() as producer:
            for job_id, type_name, priority, timeout in jobs:
                limits = {}
                if timeout:
                    # Soft: the job gets SoftTimeLimitExceeded and may clean up; hard: killed.
                    limits = {"soft_time_limit": timeout, "time_limit": timeout + app_settings.TIMEOUT_GRACE}
                run_job.apply_async(
                    args=[str(job_id)],
                    queue=registry.queue_of(type_name),
                    task_id=str(uuid.uuid4()),
                    priority=broker_priority(priority, amqp=amqp),
                    retry=False,
                    producer=producer,
                    **limits,
                )
                published.append(job_id)
    except Exception as exc:  # kombu raises several unrelated types for a dead broker
        logger.warning(
            "dispatch of %d job(s) deferred to the sweep, broker unavailable: %s",
            len(jobs) - len(published),
            exc,
        )
    if published:
        Job.objects.filter(pk__in=published, status=JobStatus.QUEUED, dispatched_at__isnull=True).update(
            dispatched_at=timezone.now()
        )
    return len(published)


def queue_waiting(queue: str) -> int | None:
    """How many messages wait in a broker queue, not counting those workers have taken; None when
    the broker cannot say (down). A queue the broker does not know (deleted, flushed) holds none.
    One cheap call: LLEN per priority band on Redis, a passive declare on RabbitMQ."""
    try:
        with current_app.connection_for_read() as connection:
            channel = connection.channel()
            try:
                return int(channel.queue_declare(queue=queue, passive=True).message_count)
            except connection.channel_errors:
                return 0
            finally:
                channel.close()
    except Exception as exc:  # kombu raises several unrelated types for a dead broker
        logger.warning("could not read the depth of queue %s: %s", queue, exc)
        return None


def queue_empty_since(queue: str, *, at_least: float) -> datetime | None:
    """Read the queue's depth once (the sweep's reading) and return when its current run of empty
    readings began, if that run has lasted `at_least` seconds; else None. A message published
    before that moment has been taken by a worker, which claims its row at once, or is lost.
    Once a run has been reported a new one begins, so a message lost later (while the queue
    stays empty) is judged by the next run. The run's start is kept in the shared cache, so
    every sweeper sees the same."""
    key = f"longrun:queue-empty-since:{queue}"
    observed_at = timezone.now()
    waiting = queue_waiting(queue)
    if waiting is None:
        return None  # the broker is down: nothing could be published anyway
    if waiting:
        cache.delete(key)
        return None
    cache.add(key, observed_at.timestamp(), timeout=None)
    since = datetime.fromtimestamp(cache.get(key, observed_at.timestamp()), tz=UTC)
    if (observed_at - since).total_seconds() < at_least:
        return None
    cache.delete(key)
    return since


def webhooks_dispatch_on_commit(delivery_ids: list[int]) -> None:
    transaction.on_commit(partial(webhooks_dispatch, delivery_ids=delivery_ids))


def webhooks_dispatch(*, delivery_ids: list[int]) -> int:
    """Queue delivery tasks on their own queue. A lost message is re-sent by the sweep once the
    delivery's `locked_until` has passed."""
    sent = 0
    for delivery_id in delivery_ids:
        try:
            deliver_webhook.apply_async(args=[delivery_id], queue=WEBHOOK_QUEUE, retry=False)
            sent += 1
        except Exception as exc:  # broker down: the sweep tries again
            logger.warning("webhook delivery %s deferred to the sweep: %s", delivery_id, exc)
            break
    return sent


def terminate_on_commit(celery_task_id: str) -> None:
    transaction.on_commit(partial(task_terminate, celery_task_id=celery_task_id))


def task_terminate(*, celery_task_id: str) -> None:
    """Have the worker process running a task killed (a forced cancel or a blown deadline).
    Best effort: if the broker is down the job has already been ended in the database."""
    if not celery_task_id:
        return
    try:
        current_app.control.revoke(celery_task_id, terminate=True, signal="SIGKILL")
    except Exception:
        logger.warning("could not ask workers to terminate task %s", celery_task_id, exc_info=True)
