"""`services.control`: cancel and retry as users ask for them, and the state errors they meet."""

from __future__ import annotations

import uuid

import pytest

from tasks_app.exceptions import JobStateError
from tasks_app.models import Job, JobEvent, JobStatus
from tasks_app.services import control, dispatch, execution, maintenance

from .helpers import W1, W2, history, job_in, new_job, row, running_job, sent

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]


# --- job_cancel -----------------------------------------------------------------------------


def test_cancel_of_a_queued_job_is_immediate_and_it_never_runs(user, published, apply_async, commit):
    job = new_job(user)
    with commit():
        cancelled = control.job_cancel(job_id=job.pk, actor=user)
        published.assert_not_called()
    stored = Job.objects.get(pk=job.pk)
    assert cancelled.status == stored.status == JobStatus.CANCELLED
    assert stored.cancel_requested_at is not None
    assert stored.finished_at is not None
    assert stored.version == 2
    event = JobEvent.objects.get(job=job, seq=2)
    assert (event.kind, event.status) == ("status", "cancelled")
    assert event.message == "Cancelled by alice before it ran."
    assert event.actor == user
    assert sent(published) == [("status", 2, "cancelled")]
    apply_async.assert_not_called()  # nothing to dispatch
    assert execution.job_claim(job_id=job.pk, worker=W1) is None  # a late delivery does nothing
    assert dispatch.job_dispatch(job_id=job.pk) is False


def test_cancel_of_a_scheduled_job_is_immediate(user):
    job = job_in(user, JobStatus.SCHEDULED)
    cancelled = control.job_cancel(job_id=job.pk, actor=user)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.version == job.version + 1
    assert history(job)[-1] == (cancelled.version, "status", "cancelled")


def test_cancel_of_a_running_job_requests_it(user, published, commit):
    job = running_job(user)
    with commit():
        requested = control.job_cancel(job_id=job.pk, actor=user)
        published.assert_not_called()
    stored = Job.objects.get(pk=job.pk)
    assert requested.status == stored.status == JobStatus.RUNNING  # it stops at its next check
    assert stored.cancel_requested_at is not None
    assert stored.finished_at is None
    assert stored.version == job.version + 1
    event = JobEvent.objects.get(job=job, seq=stored.version)
    assert (event.kind, event.status) == ("cancel_requested", "running")
    assert event.message == "Cancel requested by alice."
    assert event.actor == user
    assert sent(published) == [("cancel_requested", stored.version, "running")]
    assert published.call_args.args[1]["job"]["cancel_requested_at"] is not None


def test_cancel_requested_twice_changes_nothing_the_second_time(user, commit):
    job = running_job(user)
    control.job_cancel(job_id=job.pk, actor=user)
    before, events_before = row(job), history(job)
    with commit() as callbacks:
        again = control.job_cancel(job_id=job.pk, actor=user)
    assert again.status == JobStatus.RUNNING
    assert again.version == before["version"]
    assert row(job) == before
    assert history(job) == events_before
    assert callbacks == []


def test_cancel_by_the_system_has_no_actor(user):
    job = running_job(user)
    control.job_cancel(job_id=job.pk, actor=None)
    event = JobEvent.objects.filter(job=job).last()
    assert event.message == "Cancel requested."
    assert event.actor is None


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_cancel_of_a_finished_job_is_a_state_error_and_changes_nothing(user, status, commit):
    job = job_in(user, status)
    before, events_before = row(job), history(job)
    with commit() as callbacks:
        with pytest.raises(JobStateError) as excinfo:
            control.job_cancel(job_id=job.pk, actor=user)
    assert excinfo.value.status == status
    assert excinfo.value.code == "invalid_state"
    assert status in excinfo.value.message
    assert row(job) == before
    assert history(job) == events_before
    assert callbacks == []


def test_cancel_of_a_missing_job_raises_does_not_exist():
    with pytest.raises(Job.DoesNotExist):
        control.job_cancel(job_id=uuid.uuid4(), actor=None)


# --- job_retry ------------------------------------------------------------------------------


def test_retry_of_a_failed_job_queues_a_new_attempt(user, other_user, published, apply_async, commit):
    job = job_in(user, JobStatus.FAILED)
    failed = Job.objects.get(pk=job.pk)
    with commit():
        retried = control.job_retry(job_id=job.pk, actor=other_user)
        published.assert_not_called()
        apply_async.assert_not_called()
    stored = Job.objects.get(pk=job.pk)
    assert retried.status == stored.status == JobStatus.QUEUED
    assert stored.attempts == 1  # attempts go on counting
    assert stored.max_attempts == 3
    assert stored.result is None and stored.error is None and stored.traceback == ""
    assert stored.progress == 0 and stored.progress_message == ""
    assert stored.started_at is None and stored.finished_at is None
    assert stored.cancel_requested_at is None
    assert stored.worker == "" and stored.lease_expires_at is None
    assert stored.version == failed.version + 1
    event = JobEvent.objects.get(job=job, seq=stored.version)
    assert (event.kind, event.status, event.message) == ("retry", "queued", "Retried by bob.")
    assert event.actor == other_user
    assert sent(published) == [("status", stored.version, "queued")]
    # Dispatched again after commit.
    apply_async.assert_called_once()
    assert apply_async.call_args.kwargs["args"] == [str(job.pk)]
    assert stored.dispatched_at is not None

    claimed = execution.job_claim(job_id=job.pk, worker=W2)
    assert claimed.attempts == 2
    assert claimed.worker == W2


def test_retry_clears_the_old_dispatch_mark(user, apply_async):
    job = new_job(user)
    dispatch.job_dispatch(job_id=job.pk)
    execution.job_claim(job_id=job.pk, worker=W1)
    execution.job_fail(job_id=job.pk, worker=W1, error={"type": "X", "message": "y"})
    control.job_retry(job_id=job.pk, actor=user)  # no commit here: its on-commit dispatch never runs
    assert Job.objects.get(pk=job.pk).dispatched_at is None
    apply_async.reset_mock()
    assert maintenance.jobs_dispatch_pending(older_than=0) == 1  # the relay finds it


def test_retry_of_a_cancelled_job(user):
    job = job_in(user, JobStatus.CANCELLED)
    retried = control.job_retry(job_id=job.pk, actor=None)
    assert retried.status == JobStatus.QUEUED
    assert retried.cancel_requested_at is None
    assert JobEvent.objects.get(job=job, seq=retried.version).message == "Retried."


def test_retry_of_a_job_cancelled_before_it_ran(user):
    job = new_job(user)
    control.job_cancel(job_id=job.pk, actor=user)
    retried = control.job_retry(job_id=job.pk, actor=user)
    assert retried.status == JobStatus.QUEUED
    assert retried.attempts == 0 and retried.max_attempts == 3


def test_retry_when_attempts_are_used_up_allows_one_more(user):
    job = new_job(user, max_attempts=1)
    execution.job_claim(job_id=job.pk, worker=W1)
    execution.job_fail(job_id=job.pk, worker=W1, error={"type": "X", "message": "y"})
    retried = control.job_retry(job_id=job.pk, actor=user)
    assert (retried.attempts, retried.max_attempts) == (1, 2)
    execution.job_claim(job_id=job.pk, worker=W1)
    execution.job_fail(job_id=job.pk, worker=W1, error={"type": "X", "message": "y"})
    retried = control.job_retry(job_id=job.pk, actor=user)
    assert (retried.attempts, retried.max_attempts) == (2, 3)


@pytest.mark.parametrize(
    "status", [JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.SUCCEEDED]
)
def test_retry_of_a_job_not_failed_or_cancelled_is_a_state_error(user, status, commit):
    job = job_in(user, status)
    before, events_before = row(job), history(job)
    with commit() as callbacks:
        with pytest.raises(JobStateError) as excinfo:
            control.job_retry(job_id=job.pk, actor=user)
    assert excinfo.value.status == status
    assert row(job) == before
    assert history(job) == events_before
    assert callbacks == []


def test_retry_twice_the_second_is_a_state_error(user):
    job = job_in(user, JobStatus.FAILED)
    control.job_retry(job_id=job.pk, actor=user)
    with pytest.raises(JobStateError):
        control.job_retry(job_id=job.pk, actor=user)
