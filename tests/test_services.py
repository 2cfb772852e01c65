"""The services, one state change at a time: who wins, who loses, what is recorded and what is
published (only after commit).

Live publishing and the Celery publish are mocked for the whole module (autouse), so no test
here talks to Redis; tests that look at them ask for the `published` / `apply_async` mocks.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from unittest import mock

import pytest
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError

from tasks_app import services
from tasks_app.exceptions import JobStateError, JobValidationError
from tasks_app.models import Job, JobEvent, JobEventKind, JobStatus
from tasks_app.serializers import serialize_job

pytestmark = pytest.mark.django_db

W1 = "host-a:101"
W2 = "host-b:202"


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def published():
    """`events.publish_job_message`, mocked: what would go to the live channels."""
    with mock.patch("tasks_app.events.publish_job_message", autospec=True) as m:
        yield m


@pytest.fixture(autouse=True)
def apply_async():
    """`run_job.apply_async`, mocked: what would go to the Celery broker."""
    from tasks_app.tasks import run_job

    with mock.patch.object(run_job, "apply_async") as m:
        yield m


@pytest.fixture
def commit(django_capture_on_commit_callbacks):
    """Run the block as if it committed: on-commit callbacks run when the block exits."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def sent(published) -> list[tuple[str, int, str]]:
    """(event, version, status) of every live message published so far."""
    out = []
    for call in published.call_args_list:
        owner_id, message = call.args
        out.append((message["event"], message["version"], message["job"]["status"]))
    return out


def row(job) -> dict:
    return Job.objects.filter(pk=job.pk).values().get()


def history(job) -> list[tuple[int, str, str]]:
    return list(JobEvent.objects.filter(job_id=job.pk).order_by("seq").values_list("seq", "kind", "status"))


def new_job(owner, **kwargs) -> Job:
    kwargs.setdefault("type", "sleep")
    kwargs.setdefault("params", {"seconds": 0.01, "steps": 1})
    return services.job_create(owner=owner, **kwargs)


def running_job(owner, worker: str = W1, **kwargs) -> Job:
    job = new_job(owner, **kwargs)
    claimed = services.job_claim(job.pk, worker=worker, celery_task_id="celery-1")
    assert claimed is not None
    return claimed


def job_in(owner, status: str) -> Job:
    """A job brought to `status` through the services (scheduled: set directly, no service makes it)."""
    if status == JobStatus.QUEUED:
        return new_job(owner)
    if status == JobStatus.SCHEDULED:
        job = new_job(owner)
        later = timezone.now() + timedelta(hours=1)
        Job.objects.filter(pk=job.pk).update(status=JobStatus.SCHEDULED, run_at=later)
        return Job.objects.get(pk=job.pk)
    job = running_job(owner)
    if status == JobStatus.RUNNING:
        return job
    if status == JobStatus.SUCCEEDED:
        return services.job_succeed(job.pk, worker=W1, result={"ok": True})
    if status == JobStatus.FAILED:
        error = {"type": "ValueError", "message": "boom"}
        return services.job_fail(job.pk, worker=W1, error=error, traceback="tb")
    if status == JobStatus.CANCELLED:
        services.job_cancel(job.pk, actor=None)
        return services.job_acknowledge_cancel(job.pk, worker=W1)
    raise AssertionError(status)


def as_json(data):
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


# --- job_create -----------------------------------------------------------------------------


def test_create_persists_a_queued_job_with_defaults_and_a_created_event(user):
    job = services.job_create(owner=user, type="sleep", params={"seconds": 2}, priority=7)

    stored = Job.objects.get(pk=job.pk)
    assert stored.type == "sleep"
    assert stored.status == JobStatus.QUEUED
    assert stored.params == {"seconds": 2, "steps": 10}  # defaults filled in
    assert stored.priority == 7
    assert stored.max_attempts == 3
    assert stored.attempts == 0
    assert stored.version == 1
    assert stored.owner == user
    assert stored.dispatched_at is None  # only after commit
    assert stored.started_at is None and stored.finished_at is None

    event = JobEvent.objects.get(job=stored)
    assert (event.seq, event.kind, event.status) == (1, JobEventKind.CREATED, JobStatus.QUEUED)
    assert event.actor == user
    assert event.message == "Submitted by alice."


def test_create_with_no_params_uses_all_defaults(user):
    job = services.job_create(owner=user, type="primes")
    assert Job.objects.get(pk=job.pk).params == {"n": 1_000_000, "chunk": 100_000}


def test_create_with_explicit_max_attempts(user):
    job = services.job_create(owner=user, type="fail", max_attempts=7)
    assert Job.objects.get(pk=job.pk).max_attempts == 7


def test_create_publishes_and_dispatches_only_after_commit(user, published, apply_async, commit):
    with commit() as callbacks:
        job = services.job_create(owner=user, type="sleep", params={"seconds": 1}, priority=2)
        # Still inside the transaction: nothing has left the process.
        published.assert_not_called()
        apply_async.assert_not_called()
        assert Job.objects.get(pk=job.pk).dispatched_at is None

    assert len(callbacks) == 2
    published.assert_called_once()
    owner_id, message = published.call_args.args
    assert owner_id == user.pk
    assert set(message) == {"type", "event", "version", "job", "entry"}
    assert message["entry"]["seq"] == 1 and message["entry"]["kind"] == "created"
    assert message["type"] == "job.event"
    assert message["event"] == "created"
    assert message["version"] == 1
    stored = Job.objects.get(pk=job.pk)
    # The REST representation at version 1, as plain JSON.
    assert message["job"] == as_json(serialize_job(stored))
    assert message["job"]["id"] == str(job.pk)
    assert message["job"]["status"] == "queued"
    assert message["job"]["owner"] == "alice"
    assert message["job"]["params"] == {"seconds": 1, "steps": 10}
    assert message["job"]["version"] == 1
    assert message["job"]["links"]["self"].endswith(f"{job.pk}/")

    apply_async.assert_called_once()
    kwargs = apply_async.call_args.kwargs
    assert kwargs["args"] == [str(job.pk)]
    assert kwargs["priority"] == 9 - 2
    assert kwargs["retry"] is False
    uuid.UUID(kwargs["task_id"])
    assert stored.dispatched_at is not None


def test_create_rolled_back_publishes_and_dispatches_nothing(user, published, apply_async, commit):
    with commit() as callbacks:
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                services.job_create(owner=user, type="sleep")
                raise RuntimeError("the caller's transaction fails")
    assert callbacks == []
    published.assert_not_called()
    apply_async.assert_not_called()
    assert Job.objects.count() == 0
    assert JobEvent.objects.count() == 0


def test_create_unknown_type_is_a_validation_error_and_writes_nothing(
    user, commit, django_assert_num_queries
):
    with commit() as callbacks, django_assert_num_queries(0):
        with pytest.raises(JobValidationError) as excinfo:
            services.job_create(owner=user, type="no-such-type", params={})
    assert list(excinfo.value.errors) == ["type"]
    reason = excinfo.value.errors["type"][0]
    assert "no-such-type" in reason
    assert "sleep" in reason and "primes" in reason  # lists the known types
    assert callbacks == []
    assert Job.objects.count() == 0 and JobEvent.objects.count() == 0


@pytest.mark.parametrize(
    ("type_", "params", "path"),
    [
        ("sleep", {"seconds": -1}, "params.seconds"),
        ("sleep", {"seconds": "five"}, "params.seconds"),
        ("sleep", {"steps": 0}, "params.steps"),
        ("sleep", {"bogus": 1}, "params.bogus"),
        ("primes", {"n": 0}, "params.n"),
        ("fail", {"error": "KeyError"}, "params.error"),
        ("sleep", ["not", "an", "object"], "params"),
        ("sleep", "seconds=5", "params"),
    ],
)
def test_create_invalid_params_are_reported_by_field_path_and_write_nothing(
    user, commit, django_assert_num_queries, type_, params, path
):
    with commit() as callbacks, django_assert_num_queries(0):
        with pytest.raises(JobValidationError) as excinfo:
            services.job_create(owner=user, type=type_, params=params)
    assert list(excinfo.value.errors) == [path]
    assert excinfo.value.errors[path] and all(isinstance(r, str) for r in excinfo.value.errors[path])
    assert callbacks == []
    assert Job.objects.count() == 0 and JobEvent.objects.count() == 0


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"priority": 10}, "priority"), ({"priority": -1}, "priority"), ({"max_attempts": 0}, "max_attempts")],
)
def test_create_out_of_range_options_are_validation_errors(user, commit, extra, field):
    with commit() as callbacks:
        with pytest.raises(JobValidationError) as excinfo:
            services.job_create(owner=user, type="sleep", **extra)
    assert field in excinfo.value.errors
    assert callbacks == []
    assert Job.objects.count() == 0 and JobEvent.objects.count() == 0


def test_validate_reports_every_bad_field(user):
    with pytest.raises(JobValidationError) as excinfo:
        services.job_validate(type="sleep", params={"seconds": -1, "steps": "x", "extra": True})
    assert set(excinfo.value.errors) == {"params.seconds", "params.steps", "params.extra"}
    assert excinfo.value.errors["params.extra"] == ["Unknown field."]


# --- job_dispatch / jobs_dispatch_pending ---------------------------------------------------


def test_dispatch_publishes_and_marks_the_job(user, apply_async):
    job = new_job(user, priority=9)
    assert services.job_dispatch(job.pk) is True
    apply_async.assert_called_once()
    assert apply_async.call_args.kwargs["args"] == [str(job.pk)]
    assert apply_async.call_args.kwargs["priority"] == 0  # ours: 9 first; kombu's: 0 first
    assert apply_async.call_args.kwargs["retry"] is False
    assert Job.objects.get(pk=job.pk).dispatched_at is not None


def test_dispatch_priority_zero_maps_to_broker_priority_nine(user, apply_async):
    job = new_job(user, priority=0)
    services.job_dispatch(job.pk)
    assert apply_async.call_args.kwargs["priority"] == 9


def test_dispatch_twice_publishes_again_but_keeps_the_first_mark(user, apply_async):
    job = new_job(user)
    assert services.job_dispatch(job.pk)
    first = Job.objects.get(pk=job.pk).dispatched_at
    assert services.job_dispatch(job.pk)
    assert apply_async.call_count == 2
    assert Job.objects.get(pk=job.pk).dispatched_at == first


@pytest.mark.parametrize(
    "status", [JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.CANCELLED, JobStatus.SCHEDULED]
)
def test_dispatch_of_a_job_not_queued_publishes_nothing(user, apply_async, status):
    job = job_in(user, status)
    before = row(job)
    assert services.job_dispatch(job.pk) is False
    apply_async.assert_not_called()
    assert row(job) == before


def test_dispatch_of_a_missing_job_publishes_nothing(apply_async):
    assert services.job_dispatch(uuid.uuid4()) is False
    apply_async.assert_not_called()


def test_broker_down_leaves_the_job_undispatched_and_the_relay_publishes_it_later(user, apply_async, commit):
    apply_async.side_effect = OperationalError("Error 111 connecting to redis: Connection refused.")
    with commit():
        job = new_job(user)  # the on-commit dispatch hits the dead broker
    assert apply_async.call_count == 1
    stored = Job.objects.get(pk=job.pk)
    assert stored.status == JobStatus.QUEUED
    assert stored.dispatched_at is None

    # Broker still down: the relay tries once, gives up, nothing marked.
    assert services.jobs_dispatch_pending(older_than=0) == 0
    assert Job.objects.get(pk=job.pk).dispatched_at is None

    apply_async.side_effect = None
    apply_async.reset_mock()
    assert services.jobs_dispatch_pending(older_than=0) == 1
    apply_async.assert_called_once()
    assert apply_async.call_args.kwargs["args"] == [str(job.pk)]
    assert Job.objects.get(pk=job.pk).dispatched_at is not None

    # Done: nothing left to relay.
    apply_async.reset_mock()
    assert services.jobs_dispatch_pending(older_than=0) == 0
    apply_async.assert_not_called()


@pytest.mark.parametrize("exc", [ConnectionRefusedError("refused"), OSError("network down"), TimeoutError()])
def test_dispatch_survives_other_broker_errors(user, apply_async, exc):
    job = new_job(user)
    apply_async.side_effect = exc
    assert services.job_dispatch(job.pk) is False
    assert Job.objects.get(pk=job.pk).dispatched_at is None


def test_relay_only_picks_queued_undispatched_jobs(user, apply_async):
    pending = new_job(user)
    dispatched = new_job(user)
    services.job_dispatch(dispatched.pk)
    cancelled = job_in(user, JobStatus.CANCELLED)
    running = job_in(user, JobStatus.RUNNING)
    scheduled = job_in(user, JobStatus.SCHEDULED)
    apply_async.reset_mock()

    assert services.jobs_dispatch_pending(older_than=0) == 1
    assert [c.kwargs["args"] for c in apply_async.call_args_list] == [[str(pending.pk)]]
    for other in (cancelled, running, scheduled):
        assert Job.objects.get(pk=other.pk).dispatched_at is None


def test_relay_leaves_young_jobs_to_their_own_on_commit_dispatch(user, apply_async, settings):
    settings.LONGRUN = {**settings.LONGRUN, "DISPATCH_GRACE": 3600}
    new_job(user)
    assert services.jobs_dispatch_pending() == 0
    assert services.jobs_dispatch_pending(older_than=3600) == 0
    apply_async.assert_not_called()
    assert services.jobs_dispatch_pending(older_than=0) == 1


def _aged(jobs, ages):
    now = timezone.now()
    for job, age in zip(jobs, ages):
        Job.objects.filter(pk=job.pk).update(created_at=now - timedelta(seconds=age))


def test_relay_takes_the_oldest_first_and_respects_the_limit(user, apply_async):
    jobs = [new_job(user) for _ in range(3)]
    _aged(jobs, (20, 10, 30))  # oldest: jobs[2], then jobs[0], then jobs[1]

    assert services.jobs_dispatch_pending(older_than=0, limit=2) == 2
    assert {c.kwargs["args"][0] for c in apply_async.call_args_list} == {str(jobs[2].pk), str(jobs[0].pk)}
    assert Job.objects.get(pk=jobs[1].pk).dispatched_at is None
    assert services.jobs_dispatch_pending(older_than=0, limit=2) == 1
    assert Job.objects.get(pk=jobs[1].pk).dispatched_at is not None


def test_relay_publishes_in_submission_order(user, apply_async):
    """After an outage the backlog should reach the queue oldest first (FIFO within a priority),
    not in the order of the ids. The ages are chosen so that id order is the reverse."""
    jobs = sorted((new_job(user) for _ in range(6)), key=lambda j: str(j.pk), reverse=True)
    _aged(jobs, (60, 50, 40, 30, 20, 10))  # the highest id is the oldest

    assert services.jobs_dispatch_pending(older_than=0) == 6
    assert [c.kwargs["args"][0] for c in apply_async.call_args_list] == [str(j.pk) for j in jobs]


def test_relay_stops_at_the_first_broker_failure(user, apply_async):
    for _ in range(3):
        new_job(user)
    apply_async.side_effect = OperationalError("down")
    assert services.jobs_dispatch_pending(older_than=0) == 0
    assert apply_async.call_count == 1  # no connect timeout paid per job
    assert Job.objects.filter(dispatched_at__isnull=True).count() == 3


def test_relay_goes_on_when_a_pending_job_is_cancelled_meanwhile(user, apply_async):
    """A job cancelled between the relay's query and its turn is not a broker failure: the
    jobs after it must still be dispatched in this pass."""
    first, second, third = (new_job(user) for _ in range(3))
    _aged((first, second, third), (30, 20, 10))

    def cancel_second(*args, **kwargs):
        if kwargs["args"] == [str(first.pk)]:
            services.job_cancel(second.pk, actor=user)

    apply_async.side_effect = cancel_second
    services.jobs_dispatch_pending(older_than=0)
    cancelled = Job.objects.get(pk=second.pk)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.dispatched_at is None  # only queued jobs are marked
    assert Job.objects.get(pk=first.pk).dispatched_at is not None
    assert Job.objects.get(pk=third.pk).dispatched_at is not None, "the relay stopped at the cancelled job"
    assert services.jobs_dispatch_pending(older_than=0) == 0


# --- job_claim ------------------------------------------------------------------------------


def test_claim_moves_queued_to_running(user, published, commit):
    job = new_job(user)
    with commit():
        claimed = services.job_claim(job.pk, worker=W1, celery_task_id="task-123")
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
    assert services.job_claim(job.pk, worker=W1) is not None
    before = row(job)
    with commit() as callbacks:
        assert services.job_claim(job.pk, worker=W2) is None
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
        assert services.job_claim(job.pk, worker=W2) is None
    assert row(job) == before
    assert history(job) == events_before
    assert callbacks == []


def test_claim_of_a_missing_job_loses():
    assert services.job_claim(uuid.uuid4(), worker=W1) is None


# --- job_progress ---------------------------------------------------------------------------


def test_progress_is_stored_and_published_but_not_an_event(user, published, commit):
    job = running_job(user)
    with commit():
        assert services.job_progress(job.pk, worker=W1, percent=42, message="almost half") is True
        published.assert_not_called()
    stored = Job.objects.get(pk=job.pk)
    assert (stored.progress, stored.progress_message, stored.version) == (42, "almost half", job.version + 1)
    assert history(job) == [(1, "created", "queued"), (2, "status", "running")]
    assert sent(published) == [("progress", job.version + 1, "running")]
    assert published.call_args.args[1]["job"]["progress"] == 42


@pytest.mark.parametrize(("given", "stored"), [(150, 100), (-5, 0), (42.9, 42), (100, 100), (0, 0)])
def test_progress_is_clamped_to_0_100(user, given, stored):
    job = running_job(user)
    assert services.job_progress(job.pk, worker=W1, percent=given)
    assert Job.objects.get(pk=job.pk).progress == stored


def test_progress_message_is_truncated(user):
    job = running_job(user)
    services.job_progress(job.pk, worker=W1, percent=1, message="x" * 2000)
    assert Job.objects.get(pk=job.pk).progress_message == "x" * services.MAX_PROGRESS_MESSAGE


def test_each_progress_write_is_one_version(user):
    job = running_job(user)
    for percent in (10, 20, 30):
        assert services.job_progress(job.pk, worker=W1, percent=percent)
    assert Job.objects.get(pk=job.pk).version == job.version + 3


def test_progress_from_another_worker_is_refused(user, commit):
    job = running_job(user, worker=W1)
    before = row(job)
    with commit() as callbacks:
        assert services.job_progress(job.pk, worker=W2, percent=50) is False
    assert row(job) == before
    assert callbacks == []


@pytest.mark.parametrize(
    "status", [JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]
)
def test_progress_of_a_job_not_running_is_refused(user, status):
    job = job_in(user, status)
    before = row(job)
    assert services.job_progress(job.pk, worker=W1, percent=50) is False
    assert row(job) == before


# --- job_log --------------------------------------------------------------------------------


def test_log_line_is_an_event_at_the_new_version(user, published, commit):
    job = running_job(user)
    with commit():
        assert services.job_log(job.pk, worker=W1, message="fetched 10 rows") is True
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
        assert services.job_log(job.pk, worker=W2, message="intruder") is False
    assert callbacks == []
    done = job_in(user, JobStatus.SUCCEEDED)
    before = row(done)
    assert services.job_log(done.pk, worker=W1, message="too late") is False
    assert row(done) == before
    assert not JobEvent.objects.filter(kind=JobEventKind.LOG).exists()
    assert row(job)["version"] == job.version


# --- job_succeed ----------------------------------------------------------------------------


def test_succeed_stores_the_result(user, published, commit):
    job = running_job(user)
    services.job_progress(job.pk, worker=W1, percent=60, message="step 6")
    with commit():
        done = services.job_succeed(job.pk, worker=W1, result={"answer": 42, "items": [1, 2]})
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
    services.job_succeed(job.pk, worker=W1, result=result)
    assert Job.objects.get(pk=job.pk).result == result


def test_succeed_twice_the_second_loses(user, commit):
    job = running_job(user)
    services.job_succeed(job.pk, worker=W1, result=1)
    before, events_before = row(job), history(job)
    with commit() as callbacks:
        assert services.job_succeed(job.pk, worker=W1, result=2) is None
    assert row(job) == before
    assert history(job) == events_before
    assert callbacks == []


def test_another_worker_cannot_succeed_a_job_claimed_by_someone_else(user, commit):
    job = running_job(user, worker=W1)
    before = row(job)
    with commit() as callbacks:
        assert services.job_succeed(job.pk, worker=W2, result={"stolen": True}) is None
    assert row(job) == before
    assert callbacks == []
    # The rightful worker still can.
    assert services.job_succeed(job.pk, worker=W1, result={"mine": True}).status == JobStatus.SUCCEEDED


def test_another_worker_cannot_succeed_even_when_a_cancel_was_requested(user):
    job = running_job(user, worker=W1)
    services.job_cancel(job.pk, actor=user)
    before = row(job)
    assert services.job_succeed(job.pk, worker=W2, result=1) is None
    assert row(job) == before


def test_succeed_of_a_queued_job_is_refused(user):
    job = new_job(user)
    before = row(job)
    assert services.job_succeed(job.pk, worker=W1, result=1) is None
    assert row(job) == before


def test_succeed_after_a_cancel_request_ends_cancelled(user, published, commit):
    job = running_job(user)
    requested = services.job_cancel(job.pk, actor=user)
    with commit():
        outcome = services.job_succeed(job.pk, worker=W1, result={"finished": "anyway"})
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
        outcome = services.job_fail(job.pk, worker=W1, error=error, traceback=tb)
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
    requested = services.job_cancel(job.pk, actor=None)
    outcome = services.job_fail(job.pk, worker=W1, error={"type": "X", "message": "y"}, traceback="tb")
    stored = Job.objects.get(pk=job.pk)
    assert outcome.status == stored.status == JobStatus.CANCELLED
    assert stored.error is None and stored.traceback == ""
    assert stored.version == requested.version + 1
    assert history(job)[-1] == (stored.version, "status", "cancelled")


def test_another_worker_cannot_fail_the_job(user):
    job = running_job(user, worker=W1)
    before = row(job)
    assert services.job_fail(job.pk, worker=W2, error={"type": "X", "message": "y"}) is None
    assert row(job) == before


@pytest.mark.parametrize(
    "status", [JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]
)
def test_fail_of_a_job_not_running_is_refused(user, status):
    job = job_in(user, status)
    before, events_before = row(job), history(job)
    assert services.job_fail(job.pk, worker=W1, error={"type": "X", "message": "y"}) is None
    assert row(job) == before
    assert history(job) == events_before


# --- job_acknowledge_cancel -----------------------------------------------------------------


def test_acknowledge_cancel_ends_the_job_cancelled(user, published, commit):
    job = running_job(user)
    requested = services.job_cancel(job.pk, actor=user)
    with commit():
        outcome = services.job_acknowledge_cancel(job.pk, worker=W1)
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
    assert services.job_acknowledge_cancel(job.pk, worker=W1) is None
    assert row(job) == before
    assert row(job)["status"] == JobStatus.RUNNING


def test_acknowledge_cancel_by_another_worker_is_refused(user):
    job = running_job(user, worker=W1)
    services.job_cancel(job.pk, actor=user)
    before = row(job)
    assert services.job_acknowledge_cancel(job.pk, worker=W2) is None
    assert row(job) == before


def test_acknowledge_cancel_twice_the_second_loses(user):
    job = running_job(user)
    services.job_cancel(job.pk, actor=user)
    assert services.job_acknowledge_cancel(job.pk, worker=W1) is not None
    before = row(job)
    assert services.job_acknowledge_cancel(job.pk, worker=W1) is None
    assert row(job) == before


# --- job_cancel -----------------------------------------------------------------------------


def test_cancel_of_a_queued_job_is_immediate_and_it_never_runs(user, published, apply_async, commit):
    job = new_job(user)
    with commit():
        cancelled = services.job_cancel(job.pk, actor=user)
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
    assert services.job_claim(job.pk, worker=W1) is None  # a late delivery does nothing
    assert services.job_dispatch(job.pk) is False


def test_cancel_of_a_scheduled_job_is_immediate(user):
    job = job_in(user, JobStatus.SCHEDULED)
    cancelled = services.job_cancel(job.pk, actor=user)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.version == job.version + 1
    assert history(job)[-1] == (cancelled.version, "status", "cancelled")


def test_cancel_of_a_running_job_requests_it(user, published, commit):
    job = running_job(user)
    with commit():
        requested = services.job_cancel(job.pk, actor=user)
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
    services.job_cancel(job.pk, actor=user)
    before, events_before = row(job), history(job)
    with commit() as callbacks:
        again = services.job_cancel(job.pk, actor=user)
    assert again.status == JobStatus.RUNNING
    assert again.version == before["version"]
    assert row(job) == before
    assert history(job) == events_before
    assert callbacks == []


def test_cancel_by_the_system_has_no_actor(user):
    job = running_job(user)
    services.job_cancel(job.pk, actor=None)
    event = JobEvent.objects.filter(job=job).last()
    assert event.message == "Cancel requested."
    assert event.actor is None


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_cancel_of_a_finished_job_is_a_state_error_and_changes_nothing(user, status, commit):
    job = job_in(user, status)
    before, events_before = row(job), history(job)
    with commit() as callbacks:
        with pytest.raises(JobStateError) as excinfo:
            services.job_cancel(job.pk, actor=user)
    assert excinfo.value.status == status
    assert excinfo.value.code == "invalid_state"
    assert status in excinfo.value.message
    assert row(job) == before
    assert history(job) == events_before
    assert callbacks == []


def test_cancel_of_a_missing_job_raises_does_not_exist():
    with pytest.raises(Job.DoesNotExist):
        services.job_cancel(uuid.uuid4(), actor=None)


# --- job_retry ------------------------------------------------------------------------------


def test_retry_of_a_failed_job_queues_a_new_attempt(user, other_user, published, apply_async, commit):
    job = job_in(user, JobStatus.FAILED)
    failed = Job.objects.get(pk=job.pk)
    with commit():
        retried = services.job_retry(job.pk, actor=other_user)
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

    claimed = services.job_claim(job.pk, worker=W2)
    assert claimed.attempts == 2
    assert claimed.worker == W2


def test_retry_clears_the_old_dispatch_mark(user, apply_async):
    job = new_job(user)
    services.job_dispatch(job.pk)
    services.job_claim(job.pk, worker=W1)
    services.job_fail(job.pk, worker=W1, error={"type": "X", "message": "y"})
    services.job_retry(job.pk, actor=user)  # no commit here: its on-commit dispatch never runs
    assert Job.objects.get(pk=job.pk).dispatched_at is None
    apply_async.reset_mock()
    assert services.jobs_dispatch_pending(older_than=0) == 1  # the relay finds it


def test_retry_of_a_cancelled_job(user):
    job = job_in(user, JobStatus.CANCELLED)
    retried = services.job_retry(job.pk, actor=None)
    assert retried.status == JobStatus.QUEUED
    assert retried.cancel_requested_at is None
    assert JobEvent.objects.get(job=job, seq=retried.version).message == "Retried."


def test_retry_of_a_job_cancelled_before_it_ran(user):
    job = new_job(user)
    services.job_cancel(job.pk, actor=user)
    retried = services.job_retry(job.pk, actor=user)
    assert retried.status == JobStatus.QUEUED
    assert retried.attempts == 0 and retried.max_attempts == 3


def test_retry_when_attempts_are_used_up_allows_one_more(user):
    job = new_job(user, max_attempts=1)
    services.job_claim(job.pk, worker=W1)
    services.job_fail(job.pk, worker=W1, error={"type": "X", "message": "y"})
    retried = services.job_retry(job.pk, actor=user)
    assert (retried.attempts, retried.max_attempts) == (1, 2)
    services.job_claim(job.pk, worker=W1)
    services.job_fail(job.pk, worker=W1, error={"type": "X", "message": "y"})
    retried = services.job_retry(job.pk, actor=user)
    assert (retried.attempts, retried.max_attempts) == (2, 3)


@pytest.mark.parametrize(
    "status", [JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.SUCCEEDED]
)
def test_retry_of_a_job_not_failed_or_cancelled_is_a_state_error(user, status, commit):
    job = job_in(user, status)
    before, events_before = row(job), history(job)
    with commit() as callbacks:
        with pytest.raises(JobStateError) as excinfo:
            services.job_retry(job.pk, actor=user)
    assert excinfo.value.status == status
    assert row(job) == before
    assert history(job) == events_before
    assert callbacks == []


def test_retry_twice_the_second_is_a_state_error(user):
    job = job_in(user, JobStatus.FAILED)
    services.job_retry(job.pk, actor=user)
    with pytest.raises(JobStateError):
        services.job_retry(job.pk, actor=user)


# --- the whole history ----------------------------------------------------------------------


def test_every_change_is_one_version_and_events_carry_their_version(user, published, commit):
    with commit():
        job = new_job(user)
    with commit():
        services.job_claim(job.pk, worker=W1)
    with commit():
        services.job_log(job.pk, worker=W1, message="hello")
    with commit():
        services.job_progress(job.pk, worker=W1, percent=50)
    with commit():
        services.job_cancel(job.pk, actor=user)
    with commit():
        services.job_succeed(job.pk, worker=W1, result=1)  # -> cancelled
    with commit():
        services.job_retry(job.pk, actor=user)
    with commit():
        services.job_claim(job.pk, worker=W2)
    with commit():
        services.job_progress(job.pk, worker=W2, percent=99)
    with commit():
        services.job_fail(job.pk, worker=W2, error={"type": "E", "message": "m"})

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
    results = _race(6, lambda i: services.job_claim(job.pk, worker=f"w{i}"))
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
                return services.job_succeed(job.pk, worker=W1, result={"done": True})
            return services.job_cancel(job.pk, actor=user)

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
