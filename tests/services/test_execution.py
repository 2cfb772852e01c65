"""`services.execution`, one worker transition at a time: who wins, who loses, what is recorded
and what is published (only after commit); and real races over separate connections."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection

from tasks_app.conf import MAX_PROGRESS_MESSAGE
from tasks_app.exceptions import JobStateError
from tasks_app.models import Job, JobEvent, JobEventKind, JobStatus
from tasks_app.services import control, execution

from .helpers import W1, W2, history, job_in, new_job, row, running_job, sent

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]


# --- job_claim ------------------------------------------------------------------------------


def test_claim_moves_queued_to_running(user, published, commit):
    job = new_job(user)
    with commit():
        claimed = execution.job_claim(job_id=job.pk, worker=W1, celery_task_id="task-123")
        published.assert_not_called()

    assert claimed.status == JobStatus.RUNNING
    stored = Job.objects.get(pk=job.pk)
    assert stored.status == JobStatus.RUNNING
    assert stored.worker == W1
    assert stored.celery_task_id == "task-123"
    assert stored.attempts == 1
    assert stored.version == 2
    assert stored.started_at is not None
    assert stored.finished_at is None
    assert stored.progress == 0
    expected_lease = stored.started_at + timedelta(seconds=settings.LONGRUN["LEASE_SECONDS"])
    assert abs((stored.lease_expires_at - expected_lease).total_seconds()) < 1
    assert claimed.version == stored.version

    assert history(job) == [(1, "created", "queued"), (2, "status", "running")]
    event = JobEvent.objects.get(job=job, seq=2)
    assert event.message == f"Running on {W1} (attempt 1 of 3)."
    assert event.actor is None
    assert sent(published) == [("status", 2, "running")]
    assert published.call_args.args[1]["job"]["started_at"] is not None


def test_claim_twice_the_second_loses(user, published, commit):
    job = new_job(user)
    assert execution.job_claim(job_id=job.pk, worker=W1) is not None
    before = row(job)
    with commit() as callbacks:
        assert execution.job_claim(job_id=job.pk, worker=W2) is None
    assert row(job) == before  # still W1's, attempts not counted twice
    assert row(job)["worker"] == W1
    assert history(job) == [(1, "created", "queued"), (2, "status", "running")]
    assert callbacks == []


@pytest.mark.parametrize(
    "status", [JobStatus.SCHEDULED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]
)
def test_claim_of_a_job_not_queued_loses(user, status, commit):
    job = job_in(user, status)
    before, events_before = row(job), history(job)
    with commit() as callbacks:
        assert execution.job_claim(job_id=job.pk, worker=W2) is None
    assert row(job) == before
    assert history(job) == events_before
    assert callbacks == []


def test_claim_of_a_missing_job_loses():
    assert execution.job_claim(job_id=uuid.uuid4(), worker=W1) is None


# --- job_progress ---------------------------------------------------------------------------


def test_progress_is_stored_and_published_but_not_an_event(user, published, commit):
    job = running_job(user)
    with commit():
        assert execution.job_progress(job_id=job.pk, worker=W1, percent=42, message="almost half") is True
        published.assert_not_called()
    stored = Job.objects.get(pk=job.pk)
    assert (stored.progress, stored.progress_message, stored.version) == (42, "almost half", job.version + 1)
    assert history(job) == [(1, "created", "queued"), (2, "status", "running")]
    assert sent(published) == [("progress", job.version + 1, "running")]
    assert published.call_args.args[1]["job"]["progress"] == 42


@pytest.mark.parametrize(("given", "stored"), [(150, 100), (-5, 0), (42.9, 42), (100, 100), (0, 0)])
def test_progress_is_clamped_to_0_100(user, given, stored):
    job = running_job(user)
    assert execution.job_progress(job_id=job.pk, worker=W1, percent=given)
    assert Job.objects.get(pk=job.pk).progress == stored


def test_progress_message_is_truncated(user):
    job = running_job(user)
    execution.job_progress(job_id=job.pk, worker=W1, percent=1, message="x" * 2000)
    assert Job.objects.get(pk=job.pk).progress_message == "x" * MAX_PROGRESS_MESSAGE


def test_each_progress_write_is_one_version(user):
    job = running_job(user)
    for percent in (10, 20, 30):
        assert execution.job_progress(job_id=job.pk, worker=W1, percent=percent)
    assert Job.objects.get(pk=job.pk).version == job.version + 3


def test_progress_from_another_worker_is_refused(user, commit):
    job = running_job(user, worker=W1)
    before = row(job)
    with commit() as callbacks:
        assert execution.job_progress(job_id=job.pk, worker=W2, percent=50) is False
    assert row(job) == before
    assert callbacks == []


@pytest.mark.parametrize(
    "status", [JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]
)
def test_progress_of_a_job_not_running_is_refused(user, status):
    job = job_in(user, status)
    before = row(job)
    assert execution.job_progress(job_id=job.pk, worker=W1, percent=50) is False
    assert row(job) == before


# --- job_log --------------------------------------------------------------------------------


def test_log_line_is_an_event_at_the_new_version(user, published, commit):
    job = running_job(user)
    with commit():
        assert execution.job_log(job_id=job.pk, worker=W1, message="fetched 10 rows") is True
        published.assert_not_called()
    stored = Job.objects.get(pk=job.pk)
    assert stored.version == job.version + 1
    event = JobEvent.objects.get(job=job, seq=stored.version)
    assert (event.kind, event.status) == (JobEventKind.LOG, JobStatus.RUNNING)
    assert event.message == "fetched 10 rows"
    assert event.actor is None
    assert sent(published) == [("log", stored.version, "running")]


def test_log_from_another_worker_or_a_finished_job_is_refused(user, commit):
    job = running_job(user)
    with commit() as callbacks:
        assert execution.job_log(job_id=job.pk, worker=W2, message="intruder") is False
    assert callbacks == []
    done = job_in(user, JobStatus.SUCCEEDED)
    before = row(done)
    assert execution.job_log(job_id=done.pk, worker=W1, message="too late") is False
    assert row(done) == before
    assert not JobEvent.objects.filter(kind=JobEventKind.LOG).exists()
    assert row(job)["version"] == job.version


# --- job_succeed ----------------------------------------------------------------------------


def test_succeed_stores_the_result(user, published, commit):
    job = running_job(user)
    execution.job_progress(job_id=job.pk, worker=W1, percent=60, message="step 6")
    with commit():
        done = execution.job_succeed(job_id=job.pk, worker=W1, result={"answer": 42, "items": [1, 2]})
        published.assert_not_called()
    stored = Job.objects.get(pk=job.pk)
    assert done.status == stored.status == JobStatus.SUCCEEDED
    assert stored.result == {"answer": 42, "items": [1, 2]}
    assert stored.progress == 100
    assert stored.finished_at is not None and stored.finished_at >= stored.started_at
    assert stored.lease_expires_at is None
    assert stored.version == job.version + 2  # progress, then succeed
    event = JobEvent.objects.get(job=job, seq=stored.version)
    assert (event.kind, event.status, event.message) == ("status", "succeeded", "Succeeded.")
    assert sent(published) == [("status", stored.version, "succeeded")]
    assert published.call_args.args[1]["job"]["result"] == {"answer": 42, "items": [1, 2]}


@pytest.mark.parametrize("result", [None, 0, "text", [1, "a"], {"nested": {"x": [None]}}])
def test_succeed_accepts_any_json_result(user, result):
    job = running_job(user)
    execution.job_succeed(job_id=job.pk, worker=W1, result=result)
    assert Job.objects.get(pk=job.pk).result == result


def test_succeed_twice_the_second_loses(user, commit):
    job = running_job(user)
    execution.job_succeed(job_id=job.pk, worker=W1, result=1)
    before, events_before = row(job), history(job)
    with commit() as callbacks:
        assert execution.job_succeed(job_id=job.pk, worker=W1, result=2) is None
    assert row(job) == before
    assert history(job) == events_before
    assert callbacks == []


def test_another_worker_cannot_succeed_a_job_claimed_by_someone_else(user, commit):
    job = running_job(user, worker=W1)
    before = row(job)
    with commit() as callbacks:
        assert execution.job_succeed(job_id=job.pk, worker=W2, result={"stolen": True}) is None
    assert row(job) == before
    assert callbacks == []
    # The rightful worker still can.
    assert (
        execution.job_succeed(job_id=job.pk, worker=W1, result={"mine": True}).status == JobStatus.SUCCEEDED
    )


def test_another_worker_cannot_succeed_even_when_a_cancel_was_requested(user):
    job = running_job(user, worker=W1)
    control.job_cancel(job_id=job.pk, actor=user)
    before = row(job)
    assert execution.job_succeed(job_id=job.pk, worker=W2, result=1) is None
    assert row(job) == before


def test_succeed_of_a_queued_job_is_refused(user):
    job = new_job(user)
    before = row(job)
    assert execution.job_succeed(job_id=job.pk, worker=W1, result=1) is None
    assert row(job) == before


def test_succeed_after_a_cancel_request_ends_cancelled(user, published, commit):
    job = running_job(user)
    requested = control.job_cancel(job_id=job.pk, actor=user)
    with commit():
        outcome = execution.job_succeed(job_id=job.pk, worker=W1, result={"finished": "anyway"})
    stored = Job.objects.get(pk=job.pk)
    assert outcome.status == stored.status == JobStatus.CANCELLED
    assert stored.result is None  # the cancel won; the result is not kept
    assert stored.finished_at is not None
    assert stored.lease_expires_at is None
    assert stored.version == requested.version + 1  # one change, not two
    event = JobEvent.objects.get(job=job, seq=stored.version)
    assert (event.kind, event.status, event.message) == ("status", "cancelled", "Cancelled while running.")
    assert sent(published) == [("status", stored.version, "cancelled")]


# --- job_fail -------------------------------------------------------------------------------


def test_fail_stores_error_and_traceback(user, published, commit):
    job = running_job(user)
    error = {"type": "ValueError", "message": "bad input"}
    with commit():
        tb = "Traceback...\nValueError: bad input"
        outcome = execution.job_fail(job_id=job.pk, worker=W1, error=error, traceback=tb)
        published.assert_not_called()
    stored = Job.objects.get(pk=job.pk)
    assert outcome.status == stored.status == JobStatus.FAILED
    assert stored.error == error
    assert stored.traceback.endswith("ValueError: bad input")
    assert stored.result is None
    assert stored.finished_at is not None and stored.lease_expires_at is None
    assert stored.version == job.version + 1
    event = JobEvent.objects.get(job=job, seq=stored.version)
    assert (event.kind, event.status) == ("status", "failed")
    assert event.message == "Failed: ValueError: bad input"
    assert event.data == {"error": error}
    assert sent(published) == [("status", stored.version, "failed")]
    message_job = published.call_args.args[1]["job"]
    assert message_job["error"] == error


def test_fail_after_a_cancel_request_ends_cancelled(user):
    job = running_job(user)
    requested = control.job_cancel(job_id=job.pk, actor=None)
    outcome = execution.job_fail(
        job_id=job.pk, worker=W1, error={"type": "X", "message": "y"}, traceback="tb"
    )
    stored = Job.objects.get(pk=job.pk)
    assert outcome.status == stored.status == JobStatus.CANCELLED
    assert stored.error is None and stored.traceback == ""
    assert stored.version == requested.version + 1
    assert history(job)[-1] == (stored.version, "status", "cancelled")


def test_another_worker_cannot_fail_the_job(user):
    job = running_job(user, worker=W1)
    before = row(job)
    assert execution.job_fail(job_id=job.pk, worker=W2, error={"type": "X", "message": "y"}) is None
    assert row(job) == before


@pytest.mark.parametrize(
    "status", [JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]
)
def test_fail_of_a_job_not_running_is_refused(user, status):
    job = job_in(user, status)
    before, events_before = row(job), history(job)
    assert execution.job_fail(job_id=job.pk, worker=W1, error={"type": "X", "message": "y"}) is None
    assert row(job) == before
    assert history(job) == events_before


# --- job_acknowledge_cancel -----------------------------------------------------------------


def test_acknowledge_cancel_ends_the_job_cancelled(user, published, commit):
    job = running_job(user)
    requested = control.job_cancel(job_id=job.pk, actor=user)
    with commit():
        outcome = execution.job_acknowledge_cancel(job_id=job.pk, worker=W1)
        published.assert_not_called()
    stored = Job.objects.get(pk=job.pk)
    assert outcome.status == stored.status == JobStatus.CANCELLED
    assert stored.finished_at is not None and stored.lease_expires_at is None
    assert stored.version == requested.version + 1
    assert history(job)[-1] == (stored.version, "status", "cancelled")
    assert sent(published) == [("status", stored.version, "cancelled")]


def test_acknowledge_cancel_without_a_request_is_refused(user):
    job = running_job(user)
    before = row(job)
    assert execution.job_acknowledge_cancel(job_id=job.pk, worker=W1) is None
    assert row(job) == before
    assert row(job)["status"] == JobStatus.RUNNING


def test_acknowledge_cancel_by_another_worker_is_refused(user):
    job = running_job(user, worker=W1)
    control.job_cancel(job_id=job.pk, actor=user)
    before = row(job)
    assert execution.job_acknowledge_cancel(job_id=job.pk, worker=W2) is None
    assert row(job) == before


def test_acknowledge_cancel_twice_the_second_loses(user):
    job = running_job(user)
    control.job_cancel(job_id=job.pk, actor=user)
    assert execution.job_acknowledge_cancel(job_id=job.pk, worker=W1) is not None
    before = row(job)
    assert execution.job_acknowledge_cancel(job_id=job.pk, worker=W1) is None
    assert row(job) == before


# --- real races (separate connections, real commits) ----------------------------------------


def _race(n: int, func) -> list:
    """Run func(i) in n threads released together; return results (or exceptions)."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i):
        try:
            barrier.wait(timeout=10)
            results[i] = func(i)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_exactly_one_wins(user):
    job = new_job(user)
    results = _race(6, lambda i: execution.job_claim(job_id=job.pk, worker=f"w{i}"))
    errors = [r for r in results if isinstance(r, Exception)]
    assert errors == []
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    stored = Job.objects.get(pk=job.pk)
    assert stored.worker == winners[0].worker
    assert (stored.attempts, stored.version) == (1, 2)
    assert history(job) == [(1, "created", "queued"), (2, "status", "running")]


@pytest.mark.django_db(transaction=True)
def test_concurrent_succeed_and_cancel_agree(user):
    """Cancel racing completion, many times: exactly one terminal state, and the history says
    the same (one terminal entry, matching the row)."""
    for _ in range(25):
        job = running_job(user)

        def act(i, job=job):
            if i == 0:
                return execution.job_succeed(job_id=job.pk, worker=W1, result={"done": True})
            return control.job_cancel(job_id=job.pk, actor=user)

        done, cancel = _race(2, act)
        stored = Job.objects.get(pk=job.pk)
        assert not isinstance(done, Exception), done
        if isinstance(cancel, JobStateError):
            # The succeed committed first; the cancel came too late.
            assert stored.status == JobStatus.SUCCEEDED and stored.result == {"done": True}
        else:
            assert not isinstance(cancel, Exception), cancel
            # The cancel request committed first; the cancel wins.
            assert stored.status == JobStatus.CANCELLED and stored.result is None
        seqs = [seq for seq, _, _ in history(job)]
        assert seqs == sorted(set(seqs))
        assert seqs[-1] == stored.version
        terminal_entries = [
            status for _, _, status in history(job) if status in ("succeeded", "failed", "cancelled")
        ]
        assert terminal_entries == [stored.status]
