"""Webhook delivery state: the outbox rows written in the transaction of the change they
report, each attempt's record, redelivery, and the users' signing secrets. The HTTP mechanics
(signing, the SSRF guard, the client) are in `tasks_app.webhooks`; one attempt is sent by
`worker.webhook_sender`."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from .. import metrics, webhooks
from ..conf import WEBHOOK_QUEUE, app_settings
from ..exceptions import JobStateError
from ..models import DeliveryStatus, Job, JobStatus, SigningSecret, WebhookAttempt, WebhookDelivery
from . import dispatch
from .common import storable_text

if TYPE_CHECKING:
    from django.contrib.auth.models import User

# How long a delivery handed to the broker is left to its sender before the sweep may send it
# again (if its message turns out lost: `webhooks_dispatch_due`).
QUEUED_HOLD = timedelta(seconds=60)

# The event a final status sends; every job with a callback_url gets it.
FINAL_EVENTS = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}


def webhook_outbox_for_change(job: Job, event: str, job_data: dict[str, Any]) -> None:
    """Decide whether a change of `job` is a webhook event its submitter asked for and, if so,
    write the delivery (an outbox row, sent after commit). Called by `notify` in the
    transaction of the change."""
    if not job.callback_url:
        return
    if event == "status" and job.is_terminal:
        _webhook_outbox(job, job_data, FINAL_EVENTS[JobStatus(job.status)])
    elif event == "status" and job.status == JobStatus.RUNNING and "job.started" in job.webhook_events:
        _webhook_outbox(job, job_data, "job.started")
    elif event == "progress" and "job.progress" in job.webhook_events and _progress_hook_due(job):
        _webhook_outbox(job, job_data, "job.progress")


def _progress_hook_due(job: Job) -> bool:
    """job.progress deliveries are throttled: at most one per LONGRUN_WEBHOOK_PROGRESS_INTERVAL."""
    since = timezone.now() - timedelta(seconds=app_settings.WEBHOOK_PROGRESS_INTERVAL)
    return not WebhookDelivery.objects.filter(
        job=job, event_type="job.progress", created_at__gte=since
    ).exists()


def _webhook_outbox(job: Job, job_data: dict[str, Any], event_type: str) -> None:
    """In the transaction of the change it reports: the delivery row (an outbox), sent after
    commit and, if that is lost, by the sweep."""
    gone = WebhookDelivery.objects.filter(
        job__owner_id=job.owner_id, url=job.callback_url, status=DeliveryStatus.GONE
    ).exists()
    if gone:
        return  # the receiver answered 410 Gone: no more deliveries to that URL
    n = (WebhookDelivery.objects.filter(job=job).aggregate(last=Max("n"))["last"] or 0) + 1
    now = timezone.now()
    delivery = WebhookDelivery.objects.create(
        job=job,
        n=n,
        event_type=event_type,
        webhook_id=f"msg_{uuid.uuid4().hex}",
        url=job.callback_url,
        payload={"type": event_type, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": job_data},
        next_attempt_at=now,
        locked_until=now + QUEUED_HOLD,
    )
    dispatch.webhooks_dispatch_on_commit([delivery.pk])


def webhooks_dispatch_due(*, limit: int = 500) -> int:
    """The sweep's part: pending deliveries that are due and were never handed to the broker (new,
    or a retry whose time has come), deliveries whose sender vanished mid-attempt, and deliveries
    whose message was lost: handed over before the webhook queue was seen empty for
    REDISPATCH_AFTER seconds and still pending (the rule of `maintenance.jobs_redispatch_stranded`,
    so deliveries waiting behind a busy sender are not sent twice)."""
    now = timezone.now()
    WebhookDelivery.objects.filter(status=DeliveryStatus.SENDING, locked_until__lt=now).update(
        status=DeliveryStatus.PENDING, locked_until=None
    )
    pending = WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
    due = list(
        pending.filter(locked_until__isnull=True)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    handed_over = pending.filter(locked_until__isnull=False)
    lost: list[int] = []
    if handed_over.exists():
        empty_since = dispatch.queue_empty_since(WEBHOOK_QUEUE, at_least=app_settings.REDISPATCH_AFTER)
        if empty_since is not None:
            lost = list(
                handed_over.filter(locked_until__lt=empty_since + QUEUED_HOLD).values_list("pk", flat=True)[
                    :limit
                ]
            )
    if not due and not lost:
        return 0
    WebhookDelivery.objects.filter(pk__in=due + lost).update(locked_until=now + QUEUED_HOLD)
    return dispatch.webhooks_dispatch(delivery_ids=due + lost)


def webhook_claim(*, delivery_id: int) -> WebhookDelivery | None:
    """pending (and due) -> sending for one sender; None if another has it or it is not due."""
    now = timezone.now()
    hold = now + timedelta(seconds=app_settings.WEBHOOK_TIMEOUT + 30)
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now
    ).update(status=DeliveryStatus.SENDING, locked_until=hold)
    if not claimed:
        return None
    return WebhookDelivery.objects.select_related("job").get(pk=delivery_id)


# What an attempt came to, for the metrics: the delivery's status after it.
ATTEMPT_RESULTS = {
    DeliveryStatus.SUCCEEDED: "delivered",
    DeliveryStatus.PENDING: "retrying",
    DeliveryStatus.FAILED: "failed",
    DeliveryStatus.GONE: "gone",
}


def webhook_record_attempt(
    *, delivery: WebhookDelivery, outcome: webhooks.Outcome, started_at: datetime
) -> WebhookDelivery:
    """Record one attempt and decide what comes next: delivered (2xx), gone for good (410: no
    more deliveries to that URL), another try after a backoff, or failed after the schedule."""
    schedule = app_settings.WEBHOOK_RETRY_SCHEDULE
    code = outcome.status_code
    with transaction.atomic():
        WebhookAttempt.objects.create(
            delivery=delivery,
            started_at=started_at,
            duration_ms=outcome.duration_ms,
            status_code=code,
            error=outcome.error[:500],
            response_body=storable_text(outcome.body)[:1024],
        )
        attempts = delivery.attempts + 1
        changes: dict[str, Any] = {
            "attempts": attempts,
            "last_status_code": code,
            "last_error": outcome.error[:500],
            "locked_until": None,
        }
        if code is not None and 200 <= code < 300:
            changes.update(status=DeliveryStatus.SUCCEEDED, delivered_at=timezone.now(), next_attempt_at=None)
        elif code == 410:
            changes.update(status=DeliveryStatus.GONE, next_attempt_at=None)
            WebhookDelivery.objects.filter(
                job__owner_id=delivery.job.owner_id, url=delivery.url, status=DeliveryStatus.PENDING
            ).exclude(pk=delivery.pk).update(status=DeliveryStatus.GONE, next_attempt_at=None)
        elif attempts > len(schedule):
            changes.update(status=DeliveryStatus.FAILED, next_attempt_at=None)
        else:
            delay = schedule[attempts - 1] * random.uniform(0.8, 1.2)
            changes.update(
                status=DeliveryStatus.PENDING, next_attempt_at=timezone.now() + timedelta(seconds=delay)
            )
        WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.SENDING).update(**changes)
        result = ATTEMPT_RESULTS[changes["status"]]
        transaction.on_commit(partial(metrics.record, metrics.webhook_attempt_commands(result)))
    delivery.refresh_from_db()
    return delivery


def webhook_redeliver(*, delivery_id: int) -> WebhookDelivery:
    """Send a delivery again now (same webhook-id). JobStateError while it is being sent."""
    now = timezone.now()
    with transaction.atomic():
        changed = (
            WebhookDelivery.objects.filter(pk=delivery_id)
            .exclude(status=DeliveryStatus.SENDING)
            .update(status=DeliveryStatus.PENDING, next_attempt_at=now, locked_until=now + QUEUED_HOLD)
        )
        if not changed:
            raise JobStateError("This delivery is being sent right now; try again in a moment.")
        dispatch.webhooks_dispatch_on_commit([delivery_id])
    return WebhookDelivery.objects.get(pk=delivery_id)


def signing_secrets(*, owner: User) -> list[SigningSecret]:
    """The user's valid signing secrets, newest first; the first is created on first use."""
    now = timezone.now()
    valid = list(
        SigningSecret.objects.filter(owner=owner).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
    )
    if not valid:
        valid = [SigningSecret.objects.create(owner=owner, secret=webhooks.new_secret())]
    return valid


def signing_secret_rotate(*, owner: User) -> list[SigningSecret]:
    """A new secret; the current ones stay valid for LONGRUN_WEBHOOK_SECRET_GRACE seconds."""
    with transaction.atomic():
        grace = timezone.now() + timedelta(seconds=app_settings.WEBHOOK_SECRET_GRACE)
        SigningSecret.objects.filter(owner=owner).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=grace)
        ).update(expires_at=grace)
        SigningSecret.objects.create(owner=owner, secret=webhooks.new_secret())
    return signing_secrets(owner=owner)
