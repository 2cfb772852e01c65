"""The REST API, in process: authentication, submission and validation, ownership, listing and
filtering, cancel, retry, history, job types, session auth and CSRF.

No broker is needed: the Celery publish (`run_job.apply_async`) and the live-update publish are
replaced by mocks for every test, and dispatch is checked by running the on-commit callbacks."""

from __future__ import annotations

import uuid
from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import pytest
from django.conf import settings
from django.middleware.csrf import CSRF_ALLOWED_CHARS
from django.utils import timezone
from django.utils.crypto import get_random_string
from rest_framework.test import APIClient

from tasks_app.models import Job, JobEvent, JobEventKind, JobStatus
from tasks_app.services import control
from tests.helpers import (
    cancelled_job,
    detail_url,
    failed_job,
    make_job,
    page_ids,
    post_job,
    problem_asserts,
    running_job,
    succeeded_job,
    token_client,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]

JOB_FIELDS = {
    "id",
    "type",
    "params",
    "status",
    "progress",
    "progress_message",
    "result",
    "error",
    "attempts",
    "max_attempts",
    "priority",
    "owner",
    "created_at",
    "started_at",
    "finished_at",
    "version",
    "links",
}


# --- helpers --------------------------------------------------------------------------------


assert_problem, assert_invalid = problem_asserts(
    filled=("title", "detail"), error_members=True, error_text=True
)


# --- authentication -------------------------------------------------------------------------


def _every_endpoint(job_id):
    return [
        ("get", "/api/jobs/"),
        ("post", "/api/jobs/"),
        ("get", detail_url(job_id)),
        ("post", f"/api/jobs/{job_id}/cancel/"),
        ("post", f"/api/jobs/{job_id}/retry/"),
        ("get", f"/api/jobs/{job_id}/events/"),
        ("get", "/api/job-types/"),
    ]


@pytest.mark.parametrize(
    "credentials",
    [{}, {"HTTP_AUTHORIZATION": "Token " + "0" * 40}, {"HTTP_AUTHORIZATION": "Bearer nonsense"}],
    ids=["anonymous", "unknown-token", "other-scheme"],
)
def test_every_endpoint_answers_401_without_valid_credentials(user, credentials):
    job = cancelled_job(user)
    client = APIClient()
    client.credentials(**credentials)
    count = Job.objects.count()
    for method, url in _every_endpoint(job.pk):
        kwargs = {"format": "json"} if method == "post" else {}
        data = {"type": "sleep", "params": {}} if url == "/api/jobs/" and method == "post" else None
        response = getattr(client, method)(url, data, **kwargs)
        body = assert_problem(response, 401)
        assert body["code"] in {"not_authenticated", "authentication_failed"}, (method, url, body)
        assert response["WWW-Authenticate"] == "Token", (method, url)
    # Nothing was created and the cancelled job was not retried.
    assert Job.objects.count() == count
    assert Job.objects.get(pk=job.pk).status == JobStatus.CANCELLED


# --- submission -----------------------------------------------------------------------------


def test_submit_answers_202_with_location_and_the_job(api, user, broker, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post_job(api, {"type": "sleep", "params": {"seconds": 2, "steps": 4}, "priority": 7})
        # Nothing is published before the transaction commits.
        broker.apply_async.assert_not_called()
        broker.publish.assert_not_called()
    assert response.status_code == 202, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert JOB_FIELDS <= set(body), JOB_FIELDS - set(body)

    job_id = body["id"]
    job = Job.objects.get(pk=job_id)
    assert str(uuid.UUID(job_id)) == job_id
    assert urlparse(response["Location"]).path == f"/api/jobs/{job_id}/"
    assert body["type"] == "sleep"
    assert body["params"] == {"seconds": 2, "steps": 4}
    assert body["status"] == "queued"
    assert body["progress"] == 0
    assert body["progress_message"] == ""
    assert body["result"] is None
    assert body["error"] is None
    assert body["attempts"] == 0
    assert body["max_attempts"] == settings.LONGRUN["DEFAULT_MAX_ATTEMPTS"]
    assert body["priority"] == 7
    assert body["owner"] == "alice"
    assert body["created_at"] and body["started_at"] is None and body["finished_at"] is None
    assert body["version"] == 1
    assert body["links"] == {
        "self": f"/api/jobs/{job_id}/",
        "cancel": f"/api/jobs/{job_id}/cancel/",
        "retry": f"/api/jobs/{job_id}/retry/",
        "events": f"/api/jobs/{job_id}/events/",
    }
    assert job.owner == user and job.status == JobStatus.QUEUED and job.priority == 7

    # Dispatched exactly once, after commit, with the priority mapped for kombu (9 runs first).
    assert len(callbacks) == 2
    broker.apply_async.assert_called_once()
    call = broker.apply_async.call_args
    assert call.kwargs["args"] == [job_id]
    assert call.kwargs["priority"] == 9 - 7
    job.refresh_from_db()
    assert job.dispatched_at is not None
    # The live update carries the same representation.
    broker.publish.assert_called_once()
    owner_id, message = broker.publish.call_args.args
    assert owner_id == user.pk
    assert message["event"] == "created" and message["job"]["id"] == job_id
    # The history starts with a "created" event by the submitter.
    event = JobEvent.objects.get(job=job)
    assert (event.seq, event.kind, event.actor) == (1, JobEventKind.CREATED, user)


def test_submit_fills_in_schema_defaults(api):
    response = post_job(api, {"type": "sleep"})
    assert response.status_code == 202, response.content
    assert response.json()["params"] == {"seconds": 5, "steps": 10}
    assert response.json()["priority"] == 5
    assert Job.objects.get().params == {"seconds": 5, "steps": 10}


def test_location_header_resolves_to_the_job(api):
    response = post_job(api, {"type": "primes", "params": {"n": 100}})
    assert response.status_code == 202, response.content
    detail = api.get(urlparse(response["Location"]).path)
    assert detail.status_code == 200
    assert detail.json() == response.json()


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        pytest.param({"type": "nope"}, ["type"], id="unknown-type"),
        pytest.param({"params": {}}, ["type"], id="missing-type"),
        pytest.param({"type": None}, ["type"], id="null-type"),
        pytest.param({"type": "sleep", "params": {"seconds": "soon"}}, ["params.seconds"], id="params-type"),
        pytest.param({"type": "sleep", "params": {"seconds": -1}}, ["params.seconds"], id="params-minimum"),
        pytest.param({"type": "sleep", "params": {"steps": 0}}, ["params.steps"], id="params-steps-minimum"),
        pytest.param(
            {"type": "sleep", "params": {"seconds": "x", "steps": 0}},
            ["params.seconds", "params.steps"],
            id="params-two-errors",
        ),
        pytest.param({"type": "sleep", "params": {"bogus": 1}}, ["params.bogus"], id="params-unknown-key"),
        pytest.param({"type": "fail", "params": {"error": "KeyError"}}, ["params.error"], id="params-enum"),
        pytest.param({"type": "sleep", "params": [1, 2]}, ["params"], id="params-list"),
        pytest.param({"type": "sleep", "params": "seconds=1"}, ["params"], id="params-string"),
        pytest.param({"type": "sleep", "params": None}, ["params"], id="params-null"),
        pytest.param({"type": "sleep", "priority": 10}, ["priority"], id="priority-too-high"),
        pytest.param({"type": "sleep", "priority": -1}, ["priority"], id="priority-negative"),
        pytest.param({"type": "sleep", "priority": "high"}, ["priority"], id="priority-not-int"),
        pytest.param({}, ["type"], id="empty-object"),
        pytest.param([], [""], id="json-array"),
        pytest.param("sleep", [""], id="json-string"),
    ],
)
def test_invalid_submission_is_400_and_writes_nothing(api, body, fields, django_capture_on_commit_callbacks):
    before = (Job.objects.count(), JobEvent.objects.count())
    with django_capture_on_commit_callbacks() as callbacks:
        response = post_job(api, body)
    assert_invalid(response, *fields)
    assert (Job.objects.count(), JobEvent.objects.count()) == before
    assert callbacks == []


def test_unknown_type_error_names_the_known_types(api):
    errors = assert_invalid(post_job(api, {"type": "nope"}), "type")
    assert "'nope'" in errors[0]["message"]
    for name in ("sleep", "primes", "fail"):
        assert name in errors[0]["message"]


@pytest.mark.parametrize(
    "extra", [{"bogus": 1}, {"owner": "bob"}, {"status": "succeeded"}, {"attempts": 0}, {"id": "x"}]
)
def test_unknown_top_level_field_is_refused_by_name(api, extra):
    response = post_job(api, {"type": "sleep", **extra})
    errors = assert_invalid(response, *extra)
    assert errors[0]["message"] == "Unknown field."
    assert Job.objects.count() == 0


def test_unknown_params_key_is_reported_as_unknown_field(api):
    errors = assert_invalid(post_job(api, {"type": "sleep", "params": {"secs": 1}}), "params.secs")
    assert errors[0]["message"] == "Unknown field."


def test_body_that_is_not_json_is_400(api):
    response = api.post("/api/jobs/", data=b'{"type": "sleep",', content_type="application/json")
    assert_problem(response, 400, "parse_error")
    assert Job.objects.count() == 0


@pytest.mark.parametrize("content_type", ["application/json", None], ids=["json", "no-content-type"])
def test_empty_body_is_400_type_required(api, content_type):
    kwargs = {"content_type": content_type} if content_type else {}
    response = api.post("/api/jobs/", **kwargs)
    errors = assert_invalid(response, "type")
    assert errors[0]["code"] == "required"
    assert Job.objects.count() == 0


def test_form_encoded_body_is_415(api):
    response = api.post("/api/jobs/", {"type": "sleep"})  # multipart, the test client's default
    assert_problem(response, 415, "unsupported_media_type")
    assert Job.objects.count() == 0


def test_oversized_body_is_refused_with_413_problem(api, settings):
    # settings.py: "Request bodies larger than this are refused with 413"; api_errors.py: one
    # error format for every 4xx.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = '{"type": "sleep", "params": {}}' + " " * 2000  # valid JSON, just too long
    response = api.post("/api/jobs/", data=body, content_type="application/json")
    assert Job.objects.count() == 0
    assert_problem(response, 413)


# --- ownership ------------------------------------------------------------------------------


def test_list_shows_only_the_users_own_jobs(api, other_api, user, other_user):
    mine = {str(make_job(user).pk), str(make_job(user).pk)}
    theirs = {str(make_job(other_user).pk)}
    assert set(page_ids(api.get("/api/jobs/"))) == mine
    assert set(page_ids(other_api.get("/api/jobs/"))) == theirs


@pytest.mark.parametrize(
    ("method", "action", "make"),
    [
        ("get", "", make_job),
        ("get", "events/", make_job),
        ("post", "cancel/", make_job),
        ("post", "retry/", failed_job),
    ],
    ids=["detail", "events", "cancel", "retry"],
)
def test_another_users_job_is_404_and_unchanged(other_api, user, method, action, make):
    job = make(user)
    status, version = job.status, job.version
    response = getattr(other_api, method)(f"/api/jobs/{job.pk}/{action}")
    assert_problem(response, 404, "not_found")
    job.refresh_from_db()
    assert (job.status, job.version) == (status, version)


def test_staff_see_every_job(staff_api, user, other_user, staff_user):
    ids = {str(make_job(user).pk), str(make_job(other_user).pk), str(make_job(staff_user).pk)}
    assert set(page_ids(staff_api.get("/api/jobs/"))) == ids
    job = make_job(user)
    detail = staff_api.get(detail_url(job.pk))
    assert detail.status_code == 200
    assert detail.json()["owner"] == "alice"
    assert staff_api.get(f"/api/jobs/{job.pk}/events/").status_code == 200


def test_staff_can_cancel_another_users_job(staff_api, api, user, staff_user):
    job = make_job(user)
    response = staff_api.post(f"/api/jobs/{job.pk}/cancel/")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"
    assert response.json()["owner"] == "alice"
    event = JobEvent.objects.filter(job=job).order_by("-seq").first()
    assert event.actor == staff_user
    # The owner sees who did it.
    events = api.get(f"/api/jobs/{job.pk}/events/").json()
    assert events[-1]["actor"] == "carol"


# Django's model permissions, as in the admin: staff need view_job to see every job and
# change_job to cancel or retry anyone's (issue 12: view-only staff could cancel through the API).


@pytest.mark.parametrize(
    ("action", "make"), [("cancel", running_job), ("retry", failed_job)], ids=["cancel", "retry"]
)
def test_staff_who_may_only_view_jobs_cannot_change_others_jobs(viewing_staff_user, user, action, make):
    job = make(user)
    status, version = job.status, job.version
    viewer = token_client(viewing_staff_user)
    assert viewer.get(detail_url(job.pk)).status_code == 200
    response = viewer.post(f"/api/jobs/{job.pk}/{action}/")
    body = assert_problem(response, 403, "permission_denied")
    assert "change_job" in body["detail"]
    job.refresh_from_db()
    assert (job.status, job.version) == (status, version)
    # Their own jobs they may still cancel and retry, like anyone.
    own = make(viewing_staff_user)
    assert viewer.post(f"/api/jobs/{own.pk}/{action}/").status_code in (200, 202)


def test_view_only_staff_bulk_cancel_reaches_only_their_own_jobs(viewing_staff_user, user):
    theirs, own = make_job(user), make_job(viewing_staff_user)
    viewer = token_client(viewing_staff_user)
    response = viewer.post("/api/jobs/cancel/", {"status": ["queued"]}, format="json")
    assert response.status_code == 200, response.content
    theirs.refresh_from_db()
    own.refresh_from_db()
    assert (theirs.status, own.status) == (JobStatus.QUEUED, JobStatus.CANCELLED)


def test_staff_without_the_view_permission_see_only_their_own_jobs(django_user_model, user):
    bare = django_user_model.objects.create_user("erin", password="erin-password-123", is_staff=True)
    others, own = make_job(user), make_job(bare)
    client = token_client(bare)
    assert page_ids(client.get("/api/jobs/")) == [str(own.pk)]
    assert_problem(client.get(detail_url(others.pk)), 404, "not_found")
    assert_problem(client.get("/api/jobs/", {"owner": "alice"}), 403, "permission_denied")


def test_a_superuser_has_every_permission(django_user_model, user):
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-password-123")
    job = running_job(user)
    assert token_client(root).post(f"/api/jobs/{job.pk}/cancel/").status_code == 200


# --- detail ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["not-a-uuid", "12345", "0" * 31, "g" * 32, "00000000-0000-0000-0000-00000000000x"]
)
def test_detail_with_a_malformed_id_is_404(api, path):
    response = api.get(f"/api/jobs/{path}/")
    assert response.status_code == 404
    for action in ("cancel", "retry"):
        assert api.post(f"/api/jobs/{path}/{action}/").status_code == 404


def test_detail_of_an_unknown_uuid_is_404_problem(api):
    assert_problem(api.get(detail_url(uuid.uuid4())), 404, "not_found")


def test_detail_accepts_the_uuid_without_dashes_or_in_upper_case(api, user):
    job = make_job(user)
    for form in (job.pk.hex, str(job.pk).upper()):
        response = api.get(f"/api/jobs/{form}/")
        assert response.status_code == 200, (form, response.content)
        assert response.json()["id"] == str(job.pk)


def test_jobs_cannot_be_changed_or_deleted_through_the_detail_url(api, user):
    job = make_job(user)
    for method in ("put", "patch", "delete"):
        response = getattr(api, method)(detail_url(job.pk), {"status": "succeeded"}, format="json")
        assert_problem(response, 405, "method_not_allowed")
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED


# --- list, pagination and filters -----------------------------------------------------------


def _with_created_at(jobs):
    """Give the jobs distinct creation times, oldest first, one minute apart."""
    base = timezone.now() - timedelta(hours=1)
    for index, job in enumerate(jobs):
        Job.objects.filter(pk=job.pk).update(created_at=base + timedelta(minutes=index))
    return [str(job.pk) for job in jobs]


def test_list_is_newest_first_and_cursor_paginated(api, user):
    oldest_first = _with_created_at([make_job(user) for _ in range(5)])
    newest_first = oldest_first[::-1]

    first = api.get("/api/jobs/", {"page_size": 2})
    assert first.status_code == 200
    body = first.json()
    assert set(body) == {"results", "next", "previous"}
    assert body["previous"] is None
    assert "cursor" in parse_qs(urlparse(body["next"]).query)
    assert [item["id"] for item in body["results"]] == newest_first[:2]
    assert JOB_FIELDS <= set(body["results"][0])

    seen = [item["id"] for item in body["results"]]
    next_url = body["next"]
    pages = 1
    while next_url:
        page = api.get(next_url).json()
        assert page["previous"] is not None
        seen += [item["id"] for item in page["results"]]
        next_url = page["next"]
        pages += 1
    assert seen == newest_first
    assert pages == 3

    # Going back from the second page gives the first again.
    second = api.get(body["next"]).json()
    back = api.get(second["previous"]).json()
    assert [item["id"] for item in back["results"]] == newest_first[:2]


def test_list_without_page_size_returns_everything_newest_first(api, user):
    oldest_first = _with_created_at([make_job(user) for _ in range(3)])
    body = api.get("/api/jobs/").json()
    assert [item["id"] for item in body["results"]] == oldest_first[::-1]
    assert body["next"] is None and body["previous"] is None


def test_list_with_a_forged_cursor_is_400_not_500(api, user):
    make_job(user)
    response = api.get("/api/jobs/", {"cursor": "garbage"})
    assert_problem(response, 400, "invalid")
    assert [e["field"] for e in response.json()["errors"]] == ["cursor"]


def test_list_filters_by_several_statuses_and_by_type(api, user):
    queued = make_job(user)
    cancelled = cancelled_job(user)
    running = running_job(user)
    failed = failed_job(user, type="fail", params={})
    primes = make_job(user, type="primes", params={"n": 100})

    def ids(**query):
        return set(page_ids(api.get("/api/jobs/", query)))

    assert ids(status=["queued", "cancelled"]) == {str(queued.pk), str(cancelled.pk), str(primes.pk)}
    assert ids(status="running") == {str(running.pk)}
    assert ids(status="failed") == {str(failed.pk)}
    assert ids(status="succeeded") == set()
    assert ids(type="primes") == {str(primes.pk)}
    assert ids(type="fail") == {str(failed.pk)}
    assert ids(type="sleep", status="queued") == {str(queued.pk)}
    assert ids(type="nope") == set()


def test_list_status_filter_keeps_ownership(api, user, other_user):
    make_job(other_user)
    mine = make_job(user)
    assert page_ids(api.get("/api/jobs/", {"status": "queued"})) == [str(mine.pk)]


@pytest.mark.parametrize("query", ["status=bogus", "status=queued&status=bogus", "status=QUEUED"])
def test_list_with_an_invalid_status_is_400_not_500(api, user, query):
    make_job(user)
    assert_invalid(api.get(f"/api/jobs/?{query}"), "status")


# --- cancel ---------------------------------------------------------------------------------


def test_cancel_a_queued_job(api, user, broker, django_capture_on_commit_callbacks):
    job = make_job(user)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"/api/jobs/{job.pk}/cancel/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "cancelled"
    assert body["finished_at"] is not None
    assert body["version"] == 2
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.cancel_requested_at is not None
    event = JobEvent.objects.get(job=job, seq=2)
    assert (event.kind, event.status, event.actor) == (JobEventKind.STATUS, JobStatus.CANCELLED, user)
    assert "alice" in event.message
    # A cancelled job is not sent to the workers.
    broker.apply_async.assert_not_called()
    assert broker.publish.call_args.args[1]["job"]["status"] == "cancelled"


@pytest.mark.parametrize(
    "make", [succeeded_job, failed_job, cancelled_job], ids=["succeeded", "failed", "cancelled"]
)
def test_cancel_a_terminal_job_is_409(api, user, make):
    job = make(user)
    status, version = job.status, job.version
    events = JobEvent.objects.filter(job=job).count()
    body = assert_problem(api.post(f"/api/jobs/{job.pk}/cancel/"), 409, "invalid_state")
    assert status in body["detail"]
    job.refresh_from_db()
    assert (job.status, job.version) == (status, version)
    assert JobEvent.objects.filter(job=job).count() == events


def test_cancel_a_running_job_requests_it(api, user):
    job = running_job(user)
    response = api.post(f"/api/jobs/{job.pk}/cancel/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "running"
    assert body["cancel_requested_at"] is not None
    assert body["version"] == job.version + 1
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.cancel_requested_at is not None
    event = JobEvent.objects.filter(job=job).order_by("-seq").first()
    assert (event.kind, event.actor) == (JobEventKind.CANCEL_REQUESTED, user)

    # Asking again changes nothing and is not an error.
    again = api.post(f"/api/jobs/{job.pk}/cancel/")
    assert again.status_code == 200
    assert again.json()["version"] == body["version"]
    assert again.json()["cancel_requested_at"] == body["cancel_requested_at"]
    assert JobEvent.objects.filter(job=job, kind=JobEventKind.CANCEL_REQUESTED).count() == 1


def test_cancel_ignores_a_body(api, user):
    job = make_job(user)
    response = api.post(f"/api/jobs/{job.pk}/cancel/", {"reason": "x"}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"


# --- retry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [failed_job, cancelled_job], ids=["failed", "cancelled"])
def test_retry_a_failed_or_cancelled_job(api, user, make, broker, django_capture_on_commit_callbacks):
    job = make(user)
    attempts = job.attempts
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"/api/jobs/{job.pk}/retry/")
        broker.apply_async.assert_not_called()
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["id"] == str(job.pk)
    assert body["status"] == "queued"
    assert body["attempts"] == attempts
    assert body["max_attempts"] >= attempts + 1
    assert body["error"] is None and body["result"] is None
    assert body["started_at"] is None and body["finished_at"] is None
    assert body["cancel_requested_at"] is None
    assert body["version"] == job.version + 1
    event = JobEvent.objects.filter(job=job).order_by("-seq").first()
    assert (event.kind, event.status, event.actor) == (JobEventKind.RETRY, JobStatus.QUEUED, user)
    # Sent to the workers again, after commit.
    broker.apply_async.assert_called_once()
    assert broker.apply_async.call_args.kwargs["args"] == [str(job.pk)]
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.dispatched_at is not None


def test_retry_after_the_last_attempt_allows_one_more(api, user):
    job = failed_job(user, max_attempts=1)
    assert job.attempts == 1
    body = api.post(f"/api/jobs/{job.pk}/retry/").json()
    assert (body["attempts"], body["max_attempts"]) == (1, 2)


@pytest.mark.parametrize(
    "make", [make_job, running_job, succeeded_job], ids=["queued", "running", "succeeded"]
)
def test_retry_any_other_status_is_409(api, user, make, django_capture_on_commit_callbacks):
    job = make(user)
    status, version = job.status, job.version
    with django_capture_on_commit_callbacks() as callbacks:
        response = api.post(f"/api/jobs/{job.pk}/retry/")
    body = assert_problem(response, 409, "invalid_state")
    assert status in body["detail"]
    job.refresh_from_db()
    assert (job.status, job.version) == (status, version)
    assert callbacks == []


# --- events ---------------------------------------------------------------------------------


def test_events_in_seq_order_and_after(api, user):
    job = failed_job(user)  # created, running, failed
    control.job_retry(job_id=job.pk, actor=user)  # retry
    events = api.get(f"/api/jobs/{job.pk}/events/")
    assert events.status_code == 200
    body = events.json()
    assert [e["seq"] for e in body] == [1, 2, 3, 4]
    assert [e["kind"] for e in body] == ["created", "status", "status", "retry"]
    assert [e["status"] for e in body] == ["queued", "running", "failed", "queued"]
    assert [e["actor"] for e in body] == ["alice", None, None, "alice"]
    assert set(body[0]) == {"seq", "kind", "status", "message", "data", "actor", "created_at"}
    assert body[2]["data"] == {"error": {"type": "DemoError", "message": "boom"}}

    after = api.get(f"/api/jobs/{job.pk}/events/", {"after": 2}).json()
    assert [e["seq"] for e in after] == [3, 4]
    assert api.get(f"/api/jobs/{job.pk}/events/", {"after": 0}).json() == body
    assert api.get(f"/api/jobs/{job.pk}/events/", {"after": 4}).json() == []


def test_events_do_not_mix_jobs(api, user):
    one, two = make_job(user), make_job(user)
    control.job_cancel(job_id=two.pk, actor=user)
    assert [e["seq"] for e in api.get(f"/api/jobs/{one.pk}/events/").json()] == [1]
    assert [e["seq"] for e in api.get(f"/api/jobs/{two.pk}/events/").json()] == [1, 2]


@pytest.mark.parametrize("after", ["abc", "-1", "1.5", ""])
def test_events_with_an_invalid_after_is_400(api, user, after):
    job = make_job(user)
    assert_invalid(api.get(f"/api/jobs/{job.pk}/events/", {"after": after}), "after")


def test_events_of_an_unknown_job_is_404(api):
    assert_problem(api.get(f"/api/jobs/{uuid.uuid4()}/events/"), 404, "not_found")


# --- job types ------------------------------------------------------------------------------


def test_job_types_lists_the_built_in_types(api):
    response = api.get("/api/job-types/")
    assert response.status_code == 200
    types = {t["name"]: t for t in response.json()}
    assert {"sleep", "primes", "fail"} <= set(types)
    for item in response.json():
        assert set(item) == {"name", "description", "params_schema", "queue"}
        assert isinstance(item["description"], str) and item["description"]
        assert item["params_schema"]["type"] == "object"
    assert set(types["sleep"]["params_schema"]["properties"]) == {"seconds", "steps"}
    assert set(types["primes"]["params_schema"]["properties"]) == {"n", "chunk"}
    assert "DemoError" in types["fail"]["params_schema"]["properties"]["error"]["enum"]
    assert [t["name"] for t in response.json()] == sorted(types)
    assert types["sleep"]["queue"] == "longrun.jobs"


def test_job_types_name_the_queue_of_a_routed_type(api, routed_job_types):
    types = {t["name"]: t for t in api.get("/api/job-types/").json()}
    assert types["routed_echo"]["queue"] == routed_job_types.ROUTED_QUEUE


# --- session authentication and CSRF --------------------------------------------------------


def test_session_client_can_read(client, user):
    job = make_job(user)
    client.force_login(user)
    response = client.get("/api/jobs/")
    assert response.status_code == 200
    assert [item["id"] for item in response.json()["results"]] == [str(job.pk)]
    assert client.get(detail_url(job.pk)).status_code == 200
    assert client.get("/api/job-types/").status_code == 200


def test_session_post_without_csrf_token_is_403(user):
    job = make_job(user)
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    before = Job.objects.count()
    body = assert_problem(post_job(client, {"type": "sleep"}), 403, "permission_denied")
    assert "CSRF" in body["detail"]
    assert_problem(client.post(f"/api/jobs/{job.pk}/cancel/"), 403, "permission_denied")
    assert Job.objects.count() == before
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED


def test_session_post_with_csrf_token_is_accepted(user):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    secret = get_random_string(32, allowed_chars=CSRF_ALLOWED_CHARS)
    client.cookies[settings.CSRF_COOKIE_NAME] = secret
    response = post_job(client, {"type": "sleep"}, HTTP_X_CSRFTOKEN=secret)
    assert response.status_code == 202, response.content
    assert Job.objects.get().owner == user


def test_token_auth_needs_no_csrf_token(user):
    client = token_client(user)
    client.handler.enforce_csrf_checks = True
    assert post_job(client, {"type": "sleep"}).status_code == 202


# --- Server-Sent Events without the live front (one-shot opening frames) -----------------------


def sse_frames(response) -> list[dict]:
    frames = []
    for block in response.content.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if fields:
            frames.append(fields)
    return frames


def test_the_sse_fallbacks_send_the_opening_frames_and_no_internal_headers(api, user):
    job = make_job(user)
    one = api.get(f"/api/jobs/{job.pk}/stream/")
    assert one.status_code == 200 and one["Content-Type"].startswith("text/event-stream")
    frames = sse_frames(one)
    assert [(f["event"], f["id"]) for f in frames] == [("job", str(job.version))]
    assert '"event":"snapshot"' in frames[0]["data"]
    every = api.get("/api/jobs/stream/")
    assert [f["id"] for f in sse_frames(every)] == [f"{job.pk}:{job.version}"]
    for response in (one, every):
        assert [name for name in response.headers if name.lower().startswith("x-job")] == []
        assert response["Cache-Control"] == "no-cache"
