"""The one notifier every transition ends with (Zulip's `send_event_on_commit`).

In the transaction of the change it: shapes the live message (`realtime.messages`), hands the
change to the webhook outbox by an explicit call (which writes a delivery row when the job asked
for one), and arranges the publish to the channel layer, with the metrics' counters
(`tasks_app.metrics`) in the same write, after commit, never before.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from django.db import transaction

from .. import metrics, schedule_selectors
from ..models import Job, JobEvent, Schedule
from ..realtime import messages, publish
from . import webhooks


def job_changed_on_commit(job: Job, event: str, entry: JobEvent | None = None) -> None:
    """`job` changed (`event`: created, status, progress, log, cancel_requested), recording
    `entry` in its history, if any. Call inside the transaction of the change."""
    message = messages.job_changed(job, event, entry)
    webhooks.webhook_outbox_for_change(job, event, message["job"])
    counted = metrics.job_change_commands(job, event)
    transaction.on_commit(partial(publish.publish_job_message, job.owner_id, message, extra=counted))


def jobs_created_on_commit(owner_id: Any, jobs: list[Job]) -> None:
    """The batch twin for a bulk submission: one publish, in order, after commit. (A new job
    has no webhook to send: deliveries report status changes.)"""
    batch = [messages.job_changed(job, "created") for job in jobs]
    counted = metrics.jobs_created_commands(jobs)
    transaction.on_commit(partial(publish.publish_job_messages, owner_id, batch, extra=counted))


def schedule_changed_on_commit(schedule: Schedule, event: str) -> None:
    """`schedule` changed or fired (`event`: created, updated, paused, resumed, fired, deleted).
    Call inside the transaction of the change; the message is shaped now (a deleted schedule is
    gone after commit) and published after commit."""
    recent = schedule_selectors.schedule_recent_jobs([schedule.pk])[schedule.pk]
    message = messages.schedule_changed(schedule, event, recent_jobs=recent)
    transaction.on_commit(partial(publish.publish_schedule_message, schedule.owner_id, message))
