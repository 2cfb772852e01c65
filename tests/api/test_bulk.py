"""Bulk endpoints: POST /api/jobs/bulk/ (submit up to 1,000 jobs, all or nothing, one INSERT,
one dispatch over one broker connection) and POST /api/jobs/cancel/ (cancel by ids, status and
type, scoped to what the user may see).

No broker is needed: the Celery publish and the live-update publishes are mocks; dispatch is
checked by running the on-commit callbacks."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks_app.models import Job, JobEvent, JobEventKind, JobStatus
from tasks_app.services import control, execution
from tests.helpers import assert_invalid, assert_problem, make_job, running_job, succeeded_job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]

JOB_INSERT = re.compile(r'^\s*INSERT\s+INTO\s+"tasks_app_job"\s', re.IGNORECASE)
EVENT_INSERT = re.compile(r'^\s*INSERT\s+INTO\s+"tasks_app_jobevent"\s', re.IGNORECASE)


# --- helpers --------------------------------------------------------------------------------


def bulk(client, jobs):
    return client.post("/api/jobs/bulk/", {"jobs": jobs}, format="json")


def cancel(client, body):
    return client.post("/api/jobs/cancel/", body, format="json")


def snapshot() -> tuple[int, int]:
    return Job.objects.count(), JobEvent.objects.count()


def state(job: Job) -> tuple[str, int, bool]:
    job = Job.objects.get(pk=job.pk)
    return job.status, job.version, job.cancel_requested_at is not None


# --- bulk submit ----------------------------------------------------------------------------


def test_bulk_submit_answers_202_with_count_and_jobs(api, user):
    submissions = [
        {"type": "sleep", "params": {"seconds": 1}},
        {"type": "primes", "params": {"n": 100}, "priority": 8, "metadata": {"batch": "b1"}},
        {"type": "fail"},
    ]
    response = bulk(api, submissions)
    assert response.status_code == 202, response.content
    body = response.json()
    assert set(body) == {"count", "jobs"}
    assert body["count"] == 3 == len(body["jobs"])
    # In the order submitted, with the type's defaults filled in.
    assert [j["type"] for j in body["jobs"]] == ["sleep", "primes", "fail"]
    assert body["jobs"][0]["params"] == {"seconds": 1, "steps": 10}
    assert body["jobs"][1]["params"] == {"n": 100, "chunk": 100_000}
    assert body["jobs"][1]["priority"] == 8 and body["jobs"][1]["metadata"] == {"batch": "b1"}
    for item in body["jobs"]:
        assert item["status"] == "queued" and item["owner"] == "alice" and item["version"] == 1
        assert item["links"]["self"] == f"/api/jobs/{item['id']}/"
    ids = [j["id"] for j in body["jobs"]]
    assert len(set(ids)) == 3
    assert set(map(str, Job.objects.filter(owner=user).values_list("pk", flat=True))) == set(ids)
    # Each has its "created" event.
    for job_id in ids:
        event = JobEvent.objects.get(job_id=job_id)
        assert (event.seq, event.kind, event.actor) == (1, JobEventKind.CREATED, user)
    # The list shows them.
    assert api.get(f"/api/jobs/{ids[1]}/").json()["type"] == "primes"


def test_bulk_insert_is_one_statement_and_dispatch_publishes_every_job(
    api, user, broker, django_capture_on_commit_callbacks
):
    submissions = [{"type": "sleep", "params": {"seconds": i}, "priority": i % 10} for i in range(12)]
    with CaptureQueriesContext(connection) as queries:
        with django_capture_on_commit_callbacks(execute=True):
            response = bulk(api, submissions)
            # Nothing is published before commit.
            broker.apply_async.assert_not_called()
            broker.publish_many.assert_not_called()
    assert response.status_code == 202, response.content
    sql = [q["sql"] for q in queries.captured_queries]
    assert sum(bool(JOB_INSERT.match(s)) for s in sql) == 1, [s[:80] for s in sql]
    assert sum(bool(EVENT_INSERT.match(s)) for s in sql) == 1, [s[:80] for s in sql]

    ids = [j["id"] for j in response.json()["jobs"]]
    calls = broker.apply_async.call_args_list
    assert len(calls) == 12
    # In submission order, one message per job, the priority mapped for kombu (9 runs first).
    assert [c.kwargs["args"] for c in calls] == [[i] for i in ids]
    assert [c.kwargs["priority"] for c in calls] == [9 - (i % 10) for i in range(12)]
    # Over one producer (one broker connection).
    producers = {id(c.kwargs["producer"]) for c in calls}
    assert len(producers) == 1 and calls[0].kwargs["producer"] is not None
    assert len({c.kwargs["task_id"] for c in calls}) == 12
    # All marked dispatched.
    assert Job.objects.filter(pk__in=ids, dispatched_at__isnull=False).count() == 12
    # The live updates go out in one batch: one "created" message per job.
    broker.publish_many.assert_called_once()
    owner_id, messages = broker.publish_many.call_args.args
    assert owner_id == user.pk
    assert [m["job"]["id"] for m in messages] == ids
    assert {m["event"] for m in messages} == {"created"}
    broker.publish.assert_not_called()


def test_bulk_query_count_does_not_grow_with_the_number_of_jobs(api, django_capture_on_commit_callbacks):
    def queries_for(n: int) -> int:
        with CaptureQueriesContext(connection) as queries:
            with django_capture_on_commit_callbacks(execute=True):
                response = bulk(api, [{"type": "sleep"} for _ in range(n)])
        assert response.status_code == 202, response.content
        return len(queries.captured_queries)

    assert queries_for(2) == queries_for(30)


def test_bulk_with_a_future_run_at_is_scheduled_and_not_dispatched(
    api, broker, django_capture_on_commit_callbacks
):
    later = (timezone.now() + timedelta(hours=2)).isoformat()
    earlier = (timezone.now() - timedelta(minutes=5)).isoformat()
    with django_capture_on_commit_callbacks(execute=True):
        response = bulk(
            api,
            [{"type": "sleep"}, {"type": "sleep", "run_at": later}, {"type": "primes", "run_at": earlier}],
        )
    assert response.status_code == 202, response.content
    now_id, later_id, past_id = (j["id"] for j in response.json()["jobs"])
    assert [j["status"] for j in response.json()["jobs"]] == ["queued", "scheduled", "queued"]
    assert [c.kwargs["args"] for c in broker.apply_async.call_args_list] == [[now_id], [past_id]]
    scheduled = Job.objects.get(pk=later_id)
    assert scheduled.status == JobStatus.SCHEDULED and scheduled.dispatched_at is None
    assert Job.objects.get(pk=now_id).dispatched_at is not None
    # Every job, scheduled ones included, is announced.
    assert len(broker.publish_many.call_args.args[1]) == 3


def test_bulk_of_only_scheduled_jobs_dispatches_nothing(api, broker, django_capture_on_commit_callbacks):
    later = (timezone.now() + timedelta(days=1)).isoformat()
    with django_capture_on_commit_callbacks(execute=True):
        response = bulk(api, [{"type": "sleep", "run_at": later}] * 3)
    assert response.status_code == 202, response.content
    assert Job.objects.filter(status=JobStatus.SCHEDULED).count() == 3
    broker.apply_async.assert_not_called()


@pytest.mark.parametrize(
    ("bad", "fields"),
    [
        ({"type": "primes", "params": {"n": 1}}, ["jobs.3.params.n"]),
        (
            {"type": "sleep", "params": {"seconds": "x", "steps": 0}},
            ["jobs.3.params.seconds", "jobs.3.params.steps"],
        ),
        ({"type": "nope"}, ["jobs.3.type"]),
        ({"type": "sleep", "priority": 10}, ["jobs.3.priority"]),
        ({"type": "sleep", "bogus": 1}, ["jobs.3.bogus"]),
        ({"type": "sleep", "metadata": {"bad key": "x"}}, ["jobs.3.metadata.bad key"]),
        ({"params": {}}, ["jobs.3.type"]),
    ],
    ids=[
        "params-minimum",
        "two-params",
        "unknown-type",
        "priority",
        "unknown-field",
        "metadata-key",
        "no-type",
    ],
)
def test_one_invalid_job_refuses_the_whole_bulk_and_writes_nothing(
    api, broker, bad, fields, django_capture_on_commit_callbacks
):
    submissions = [
        {"type": "sleep"},
        {"type": "primes", "params": {"n": 10}},
        {"type": "fail"},
        bad,
        {"type": "sleep"},
    ]
    before = snapshot()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = bulk(api, submissions)
    assert_invalid(response, *fields)
    assert snapshot() == before == (0, 0)
    assert callbacks == []
    broker.apply_async.assert_not_called()
    broker.publish_many.assert_not_called()


def test_errors_in_several_jobs_are_all_reported(api):
    submissions = [
        {"type": "sleep"},
        {"type": "nope"},
        {"type": "sleep"},
        {"type": "primes", "params": {"n": 0}},
    ]
    assert_invalid(bulk(api, submissions), "jobs.1.type", "jobs.3.params.n")
    assert snapshot() == (0, 0)


def test_more_than_1000_jobs_is_400(api):
    response = bulk(api, [{"type": "sleep"}] * 1001)
    errors = assert_invalid(response, "jobs")
    assert "1000" in errors[0]["message"]
    assert snapshot() == (0, 0)


def test_exactly_1000_jobs_is_accepted(api):
    response = bulk(api, [{"type": "sleep", "params": {"seconds": 0}}] * 1000)
    assert response.status_code == 202, response.content[:300]
    assert response.json()["count"] == 1000
    assert snapshot() == (1000, 1000)


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"jobs": []}, ["jobs"]),
        ({}, ["jobs"]),
        ({"jobs": None}, ["jobs"]),
        ({"jobs": {"type": "sleep"}}, ["jobs"]),
        ({"jobs": [{"type": "sleep"}], "dry_run": True}, ["dry_run"]),
        ({"jobs": [{"type": "sleep"}], "owner": "bob"}, ["owner"]),
        ({"jobs": ["sleep"]}, ["jobs.0"]),
    ],
    ids=["empty-list", "missing", "null", "object", "unknown-top-level", "owner", "not-objects"],
)
def test_malformed_bulk_body_is_400(api, body, fields):
    response = api.post("/api/jobs/bulk/", body, format="json")
    errors = assert_invalid(response, *fields)
    if fields == ["dry_run"] or fields == ["owner"]:
        assert errors[0]["message"] == "Unknown field."
    assert snapshot() == (0, 0)


def test_bulk_needs_authentication(user):
    from rest_framework.test import APIClient

    response = APIClient().post("/api/jobs/bulk/", {"jobs": [{"type": "sleep"}]}, format="json")
    assert_problem(response, 401)
    assert snapshot() == (0, 0)


# --- bulk cancel ----------------------------------------------------------------------------


@pytest.fixture
def alice_jobs(user):
    """Alice's jobs in every status."""
    jobs = {
        "queued": make_job(user),
        "queued_primes": make_job(user, type="primes", params={"n": 100}),
        "scheduled": make_job(user, run_at=timezone.now() + timedelta(hours=1)),
        "running": running_job(user),
        "succeeded": succeeded_job(user, result={}),
        "cancelled": control.job_cancel(job_id=make_job(user).pk, actor=user),
    }
    failed = running_job(user, type="fail", params={})
    jobs["failed"] = execution.job_fail(job_id=failed.pk, worker="w1", error={"type": "E", "message": "m"})
    return jobs


@pytest.mark.parametrize(
    "body",
    [{}, {"ids": None}, {"status": None}],
    ids=["empty", "null-ids", "null-status"],
)
def test_cancel_needs_a_filter(api, alice_jobs, body):
    before = {name: state(job) for name, job in alice_jobs.items()}
    response = cancel(api, body)
    assert response.status_code == 400, response.content
    assert_problem(response, 400, "invalid")
    assert {name: state(job) for name, job in alice_jobs.items()} == before


def test_cancel_with_no_filter_says_so(api, alice_jobs):
    errors = assert_invalid(cancel(api, {}), "")
    assert (
        "ids" in errors[0]["message"] and "status" in errors[0]["message"] and "type" in errors[0]["message"]
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": ["succeeded"]}, "status.0"),
        ({"ids": ["not-a-uuid"]}, "ids.0"),
        ({"type": 5}, "type"),
        ({"type": "sleep", "owner": "bob"}, "owner"),
    ],
    ids=["terminal-status", "bad-id", "type-not-string", "unknown-field"],
)
def test_cancel_with_an_invalid_filter_is_400(api, alice_jobs, body, field):
    assert_invalid(cancel(api, body), field)
    assert state(alice_jobs["queued"])[0] == JobStatus.QUEUED


def test_cancel_by_status_cancels_waiting_jobs_and_flags_running_ones(api, user, alice_jobs, broker):
    response = cancel(api, {"status": ["queued", "scheduled", "running"]})
    assert response.status_code == 200, response.content
    assert response.json() == {"matched": 4, "cancelled": 3, "cancel_requested": 1, "already_finished": 0}
    for name in ("queued", "queued_primes", "scheduled"):
        job = Job.objects.get(pk=alice_jobs[name].pk)
        assert job.status == JobStatus.CANCELLED and job.finished_at is not None, name
        last = JobEvent.objects.filter(job=job).order_by("-seq").first()
        assert (last.kind, last.actor) == (JobEventKind.STATUS, user)
    running = Job.objects.get(pk=alice_jobs["running"].pk)
    assert running.status == JobStatus.RUNNING and running.cancel_requested_at is not None
    assert JobEvent.objects.filter(job=running, kind=JobEventKind.CANCEL_REQUESTED, actor=user).count() == 1
    # Terminal jobs are untouched.
    for name in ("succeeded", "failed", "cancelled"):
        job = alice_jobs[name]
        assert state(job)[:2] == (job.status, job.version), name


def test_cancel_by_one_status_only(api, alice_jobs):
    response = cancel(api, {"status": ["scheduled"]})
    assert response.json() == {"matched": 1, "cancelled": 1, "cancel_requested": 0, "already_finished": 0}
    assert state(alice_jobs["scheduled"])[0] == JobStatus.CANCELLED
    assert state(alice_jobs["queued"])[0] == JobStatus.QUEUED
    assert state(alice_jobs["running"]) == (JobStatus.RUNNING, alice_jobs["running"].version, False)


def test_cancel_by_type(api, alice_jobs):
    response = cancel(api, {"type": "primes"})
    assert response.json() == {"matched": 1, "cancelled": 1, "cancel_requested": 0, "already_finished": 0}
    assert state(alice_jobs["queued_primes"])[0] == JobStatus.CANCELLED
    assert state(alice_jobs["queued"])[0] == JobStatus.QUEUED


def test_cancel_filters_must_all_match(api, alice_jobs):
    ids = [str(alice_jobs["queued"].pk), str(alice_jobs["running"].pk)]
    response = cancel(api, {"ids": ids, "status": ["running"], "type": "sleep"})
    assert response.json() == {"matched": 1, "cancelled": 0, "cancel_requested": 1, "already_finished": 0}
    assert state(alice_jobs["queued"])[0] == JobStatus.QUEUED
    assert state(alice_jobs["running"])[2] is True


def test_cancel_does_not_match_terminal_jobs(api, alice_jobs):
    terminal = [alice_jobs[n] for n in ("succeeded", "failed", "cancelled")]
    before = [state(job) for job in terminal]
    response = cancel(api, {"ids": [str(job.pk) for job in terminal]})
    assert response.status_code == 200, response.content
    assert response.json() == {"matched": 0, "cancelled": 0, "cancel_requested": 0, "already_finished": 0}
    assert [state(job) for job in terminal] == before


def test_cancel_of_unknown_ids_matches_nothing(api, alice_jobs):
    response = cancel(api, {"ids": [str(uuid.uuid4())]})
    assert response.json() == {"matched": 0, "cancelled": 0, "cancel_requested": 0, "already_finished": 0}


def test_non_staff_cancel_only_reaches_their_own_jobs(api, user, other_user):
    mine = make_job(user)
    theirs = make_job(other_user)
    theirs_running = running_job(other_user)
    response = cancel(api, {"ids": [str(mine.pk), str(theirs.pk), str(theirs_running.pk)]})
    assert response.json() == {"matched": 1, "cancelled": 1, "cancel_requested": 0, "already_finished": 0}
    assert state(mine)[0] == JobStatus.CANCELLED
    assert state(theirs) == (JobStatus.QUEUED, theirs.version, False)
    assert state(theirs_running) == (JobStatus.RUNNING, theirs_running.version, False)
    # A status-only filter does not reach them either.
    response = cancel(api, {"status": ["queued", "running"]})
    assert response.json()["matched"] == 0
    assert state(theirs)[0] == JobStatus.QUEUED and state(theirs_running)[2] is False


def test_staff_can_cancel_anyones_jobs(staff_api, user, other_user, staff_user):
    alice = make_job(user)
    bob = running_job(other_user)
    carol = make_job(staff_user)
    response = staff_api.post("/api/jobs/cancel/", {"ids": [str(alice.pk), str(bob.pk)]}, format="json")
    assert response.json() == {"matched": 2, "cancelled": 1, "cancel_requested": 1, "already_finished": 0}
    assert state(alice)[0] == JobStatus.CANCELLED
    bob_status, _, bob_cancel_requested = state(bob)
    assert (bob_status, bob_cancel_requested) == (JobStatus.RUNNING, True)
    assert state(carol)[0] == JobStatus.QUEUED
    last = JobEvent.objects.filter(job=alice).order_by("-seq").first()
    assert last.actor == staff_user
    # And by status across every owner.
    response = staff_api.post("/api/jobs/cancel/", {"status": ["queued"]}, format="json")
    assert response.json() == {"matched": 1, "cancelled": 1, "cancel_requested": 0, "already_finished": 0}
    assert state(carol)[0] == JobStatus.CANCELLED


def test_cancel_publishes_each_change_after_commit(api, user, broker, django_capture_on_commit_callbacks):
    jobs = [make_job(user) for _ in range(3)]
    broker.publish.reset_mock()
    with django_capture_on_commit_callbacks(execute=True):
        response = cancel(api, {"ids": [str(j.pk) for j in jobs]})
        broker.publish.assert_not_called()
    assert response.json()["cancelled"] == 3
    published = {c.args[1]["job"]["id"]: c.args[1]["job"]["status"] for c in broker.publish.call_args_list}
    assert published == {str(j.pk): "cancelled" for j in jobs}
    broker.apply_async.assert_not_called()


def test_jobs_cancel_counts_jobs_that_ended_meanwhile(user):
    """The view scopes the ids first; a job that ends before its turn is counted, not changed."""
    queued = make_job(user)
    running = running_job(user)
    done = succeeded_job(user, result={})
    counts = control.jobs_cancel(job_ids=[queued.pk, running.pk, done.pk], actor=user)
    assert counts == {"cancelled": 1, "cancel_requested": 1, "already_finished": 1}
    assert state(done) == (JobStatus.SUCCEEDED, done.version, False)
