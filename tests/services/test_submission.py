"""`services.submission`: validation, and a job with its first event written in one transaction,
published and dispatched only after commit.

The broker and the live channel are faked for the whole module (`broker` in conftest); tests
that look at them ask for `published` / `apply_async`.
"""

from __future__ import annotations

import uuid

import pytest
from django.db import transaction

from tasks_app.exceptions import JobValidationError
from tasks_app.models import Job, JobEvent, JobEventKind, JobStatus
from tasks_app.serializers import serialize_job
from tasks_app.services import submission

from .helpers import as_json

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]


# --- job_create -----------------------------------------------------------------------------


def test_create_persists_a_queued_job_with_defaults_and_a_created_event(user):
    job = submission.job_create(owner=user, type="sleep", params={"seconds": 2}, priority=7)

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
    job = submission.job_create(owner=user, type="primes")
    assert Job.objects.get(pk=job.pk).params == {"n": 1_000_000, "chunk": 100_000}


def test_create_with_explicit_max_attempts(user):
    job = submission.job_create(owner=user, type="fail", max_attempts=7)
    assert Job.objects.get(pk=job.pk).max_attempts == 7


def test_create_publishes_and_dispatches_only_after_commit(user, published, apply_async, commit):
    with commit() as callbacks:
        job = submission.job_create(owner=user, type="sleep", params={"seconds": 1}, priority=2)
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
                submission.job_create(owner=user, type="sleep")
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
            submission.job_create(owner=user, type="no-such-type", params={})
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
            submission.job_create(owner=user, type=type_, params=params)
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
            submission.job_create(owner=user, type="sleep", **extra)
    assert field in excinfo.value.errors
    assert callbacks == []
    assert Job.objects.count() == 0 and JobEvent.objects.count() == 0


def test_validate_reports_every_bad_field(user):
    with pytest.raises(JobValidationError) as excinfo:
        submission.job_validate(type="sleep", params={"seconds": -1, "steps": "x", "extra": True})
    assert set(excinfo.value.errors) == {"params.seconds", "params.steps", "params.extra"}
    assert excinfo.value.errors["params.extra"] == ["Unknown field."]
