"""The primitives every transition shares (`services.common`): one version per change, events
carrying their version, the job in each message the representation at that version."""

from __future__ import annotations

import pytest

from tasks_app.models import Job
from tasks_app.services import control, execution

from .helpers import W1, W2, history, new_job, sent

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]


# --- the whole history ----------------------------------------------------------------------


def test_every_change_is_one_version_and_events_carry_their_version(user, published, commit):
    with commit():
        job = new_job(user)
    with commit():
        execution.job_claim(job_id=job.pk, worker=W1)
    with commit():
        execution.job_log(job_id=job.pk, worker=W1, message="hello")
    with commit():
        execution.job_progress(job_id=job.pk, worker=W1, percent=50)
    with commit():
        control.job_cancel(job_id=job.pk, actor=user)
    with commit():
        execution.job_succeed(job_id=job.pk, worker=W1, result=1)  # -> cancelled
    with commit():
        control.job_retry(job_id=job.pk, actor=user)
    with commit():
        execution.job_claim(job_id=job.pk, worker=W2)
    with commit():
        execution.job_progress(job_id=job.pk, worker=W2, percent=99)
    with commit():
        execution.job_fail(job_id=job.pk, worker=W2, error={"type": "E", "message": "m"})

    assert [e for e, _, _ in sent(published)] == [
        "created",
        "status",
        "log",
        "progress",
        "cancel_requested",
        "status",
        "status",
        "status",
        "progress",
        "status",
    ]
    versions = [v for _, v, _ in sent(published)]
    assert versions == list(range(1, 11))  # every change published once, +1 each
    final = Job.objects.get(pk=job.pk)
    assert final.version == 10
    # Every change except progress is in the history, at the version it produced.
    assert history(job) == [
        (1, "created", "queued"),
        (2, "status", "running"),
        (3, "log", "running"),
        (5, "cancel_requested", "running"),
        (6, "status", "cancelled"),
        (7, "retry", "queued"),
        (8, "status", "running"),
        (10, "status", "failed"),
    ]
    for _, message in (c.args for c in published.call_args_list):
        assert message["job"]["version"] == message["version"]
