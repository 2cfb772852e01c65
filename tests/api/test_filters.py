"""GET /api/jobs/ query parameters: status (several at once), type, created_after/created_before,
owner (staff only), metadata=key:value, ordering, and cursor pagination over orderings with
repeated values.

No broker is needed: the Celery publish and the live-update publish are mocks."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from urllib.parse import urlencode

import pytest
from django.utils import timezone

from tasks_app.models import Job, JobStatus
from tasks_app.services import control, execution
from tests.helpers import make_job, page_ids, problem_asserts, running_job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]

T0 = datetime(2030, 5, 17, 12, 0, 0, tzinfo=dt_timezone.utc)


# --- helpers --------------------------------------------------------------------------------


assert_problem, assert_invalid = problem_asserts(filled=("detail",))


def set_times(job: Job, **fields) -> None:
    Job.objects.filter(pk=job.pk).update(**fields)


def list_ids(client, **query) -> list[str]:
    return page_ids(client.get("/api/jobs/", query))


def walk(client, **query) -> tuple[list[str], int]:
    """Follow `next` links from the first page; returns every id seen (in order) and the page count."""
    response = client.get("/api/jobs/", query)
    seen = page_ids(response)
    pages = 1
    next_url = response.json()["next"]
    while next_url:
        response = client.get(next_url)
        seen += page_ids(response)
        pages += 1
        assert pages < 500, "pagination does not end"
        next_url = response.json()["next"]
    return seen, pages


# --- status and type ------------------------------------------------------------------------


def test_several_statuses_at_once(api, user):
    queued = make_job(user)
    scheduled = make_job(user, run_at=timezone.now() + timedelta(hours=1))
    running = running_job(user)
    cancelled = control.job_cancel(job_id=make_job(user).pk, actor=user)
    succeeded = running_job(user)
    execution.job_succeed(job_id=succeeded.pk, worker="w1", result={})

    assert set(list_ids(api, status=["queued", "running"])) == {str(queued.pk), str(running.pk)}
    assert set(list_ids(api, status=["scheduled", "cancelled", "succeeded"])) == {
        str(scheduled.pk),
        str(cancelled.pk),
        str(succeeded.pk),
    }
    assert list_ids(api, status="scheduled") == [str(scheduled.pk)]
    assert list_ids(api, status=["failed"]) == []
    assert len(list_ids(api, status=list(JobStatus.values))) == 5


def test_invalid_status_is_400_naming_the_field(api, user):
    make_job(user)
    assert_invalid(api.get("/api/jobs/", {"status": ["queued", "done"]}), "status")


def test_type_filter(api, user):
    sleep = make_job(user)
    primes = make_job(user, type="primes", params={"n": 100})
    fail = make_job(user, type="fail", params={})
    assert list_ids(api, type="primes") == [str(primes.pk)]
    assert list_ids(api, type="fail") == [str(fail.pk)]
    assert list_ids(api, type="sleep") == [str(sleep.pk)]
    assert list_ids(api, type="unknown") == []
    assert list_ids(api, type="primes", status="cancelled") == []


# --- created_after / created_before ---------------------------------------------------------


@pytest.fixture
def dated(user):
    """Four jobs created at T0 - 2 days, T0 - 1 hour, T0 and T0 + 1 day."""
    jobs = {}
    for name, delta in (
        ("days_ago", -timedelta(days=2)),
        ("hour_ago", -timedelta(hours=1)),
        ("at_t0", timedelta(0)),
        ("day_after", timedelta(days=1)),
    ):
        job = make_job(user)
        set_times(job, created_at=T0 + delta)
        jobs[name] = str(job.pk)
    return jobs


def test_created_after_is_inclusive(api, dated):
    assert set(list_ids(api, created_after="2030-05-17T12:00:00Z")) == {dated["at_t0"], dated["day_after"]}
    assert set(list_ids(api, created_after="2030-05-17T10:30:00Z")) == {
        dated["hour_ago"],
        dated["at_t0"],
        dated["day_after"],
    }
    assert list_ids(api, created_after="2030-06-01T00:00:00Z") == []


def test_created_before_is_exclusive(api, dated):
    assert set(list_ids(api, created_before="2030-05-17T12:00:00Z")) == {dated["days_ago"], dated["hour_ago"]}
    assert list_ids(api, created_before="2030-05-14T00:00:00Z") == []


def test_created_range_and_offsets(api, dated):
    # The same instant written with a +02:00 offset; the test client URL-encodes the "+".
    assert list_ids(
        api, created_after="2030-05-17T13:30:00+02:00", created_before="2030-05-17T14:00:01+02:00"
    ) == [dated["at_t0"]]
    assert set(
        list_ids(api, created_after="2030-05-15T00:00:00Z", created_before="2030-05-18T00:00:00Z")
    ) == {
        dated["days_ago"],
        dated["hour_ago"],
        dated["at_t0"],
    }
    # With microseconds.
    assert (
        list_ids(api, created_after="2030-05-17T12:00:00.000001Z", created_before="2030-05-18T00:00:00Z")
        == []
    )


def test_offsets_postgresql_cannot_store_are_compared_in_utc(api, dated):
    """ISO 8601 allows offsets up to 23:59; PostgreSQL stops at 15:59 (found by schemathesis)."""
    # T0 (12:00Z) written as 2030-05-17T12:00-16:22 is 2030-05-18T04:22Z.
    assert list_ids(api, created_after="2030-05-17T11:38:00-16:22") == [dated["day_after"]]
    assert list_ids(api, created_before="0164-09-20T19:22:06-16:22") == []


@pytest.mark.parametrize("field", ["created_after", "created_before"])
def test_a_date_that_leaves_the_calendar_in_utc_is_400(api, user, field):
    make_job(user)
    assert_invalid(api.get("/api/jobs/", {field: "0001-01-01T00:00:00+15:00"}), field)


@pytest.mark.parametrize("field", ["created_after", "created_before"])
@pytest.mark.parametrize("value", ["yesterday", "2030-13-01T00:00:00Z", "2030-05-17T25:00:00Z", "17/05/2030"])
def test_invalid_date_is_400_naming_the_field(api, user, field, value):
    make_job(user)
    assert_invalid(api.get("/api/jobs/", {field: value}), field)


# --- owner ----------------------------------------------------------------------------------


def test_staff_filter_by_owner(staff_api, user, other_user, staff_user):
    alice = {str(make_job(user).pk), str(make_job(user).pk)}
    bob = {str(make_job(other_user).pk)}
    make_job(staff_user)
    assert set(list_ids(staff_api, owner="alice")) == alice
    assert set(list_ids(staff_api, owner="bob")) == bob
    assert list_ids(staff_api, owner="nobody") == []
    assert len(list_ids(staff_api)) == 4
    assert list_ids(staff_api, owner="alice", type="primes") == []


@pytest.mark.parametrize("owner", ["bob", "alice"])
def test_non_staff_filtering_by_owner_is_403(api, user, other_user, owner):
    make_job(user)
    make_job(other_user)
    body = assert_problem(api.get("/api/jobs/", {"owner": owner}), 403, "permission_denied")
    assert "staff" in body["detail"].lower()


def test_non_staff_empty_owner_never_reveals_other_users_jobs(api, user, other_user):
    mine = make_job(user)
    make_job(other_user)
    response = api.get("/api/jobs/?owner=")
    if response.status_code == 403:
        assert_problem(response, 403, "permission_denied")
    else:
        assert page_ids(response) == [str(mine.pk)]


# --- metadata -------------------------------------------------------------------------------


def test_metadata_filter(api, user, other_user):
    acme = make_job(user, metadata={"customer": "acme"})
    acme_gold = make_job(user, metadata={"customer": "acme", "tier": "gold"})
    globex = make_job(user, metadata={"customer": "globex"})
    make_job(user)
    make_job(other_user, metadata={"customer": "acme"})  # not visible to alice

    assert set(list_ids(api, metadata="customer:acme")) == {str(acme.pk), str(acme_gold.pk)}
    assert list_ids(api, metadata="customer:globex") == [str(globex.pk)]
    assert list_ids(api, metadata="tier:gold") == [str(acme_gold.pk)]
    assert list_ids(api, metadata="customer:ACME") == []  # exact, case-sensitive
    assert list_ids(api, metadata="customer:acm") == []
    assert list_ids(api, metadata="region:acme") == []
    assert list_ids(api, metadata="customer:acme", status="cancelled") == []


def test_metadata_value_may_contain_colons_and_be_empty(api, user):
    url = make_job(user, metadata={"source": "https://example.com:8443/x"})
    empty = make_job(user, metadata={"note": ""})
    assert list_ids(api, metadata="source:https://example.com:8443/x") == [str(url.pk)]
    assert list_ids(api, metadata="note:") == [str(empty.pk)]


@pytest.mark.parametrize("key", ["customer-id", "customer.id", "customer_id", "A1"])
def test_metadata_filter_on_keys_with_punctuation(api, user, key):
    job = make_job(user, metadata={key: "v"})
    make_job(user, metadata={"other": "v"})
    assert list_ids(api, metadata=f"{key}:v") == [str(job.pk)]


@pytest.mark.parametrize(
    "key",
    ["order__id", "contains", "exact", "isnull", "in"],
    ids=["double-underscore", "lookup-contains", "lookup-exact", "lookup-isnull", "lookup-in"],
)
def test_metadata_filter_finds_every_key_the_submission_accepts(api, user, key):
    """Any key that POST /api/jobs/ accepts in metadata must be searchable with ?metadata=key:v;
    the key is a literal JSON key, not a Django lookup path."""
    job = make_job(user, metadata={key: "v"})
    make_job(user, metadata={"x": "v"})
    response = api.get("/api/jobs/", {"metadata": f"{key}:v"})
    assert response.status_code == 200, response.content
    assert page_ids(response) == [str(job.pk)]


def test_an_all_digit_metadata_key_is_refused_at_submission(api):
    """It would read as an array index in a JSON path, so it could never be searched."""
    response = api.post("/api/jobs/", {"type": "sleep", "metadata": {"2024": "v"}}, format="json")
    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == ["metadata.2024"]


@pytest.mark.parametrize("value", ["nocolon", ":acme", "bad key:acme", "clé:x", "a/b:c", "2024:v"])
def test_malformed_metadata_filter_is_400(api, user, value):
    make_job(user, metadata={"customer": "acme"})
    assert_invalid(api.get("/api/jobs/", {"metadata": value}), "metadata")


# --- ordering -------------------------------------------------------------------------------


@pytest.fixture
def prioritized(user):
    """Jobs with priorities 3, 9, 0, 5, created one minute apart in that order."""
    jobs = []
    for index, priority in enumerate((3, 9, 0, 5)):
        job = make_job(user, priority=priority)
        set_times(job, created_at=T0 + timedelta(minutes=index))
        jobs.append(str(job.pk))
    return jobs


def test_default_ordering_is_newest_first(api, prioritized):
    assert list_ids(api) == prioritized[::-1]


def test_ordering_by_priority(api, prioritized):
    p3, p9, p0, p5 = prioritized
    assert list_ids(api, ordering="priority") == [p0, p3, p5, p9]
    assert list_ids(api, ordering="-priority") == [p9, p5, p3, p0]
    assert list_ids(api, ordering="created") == prioritized


def test_ordering_by_started_and_finished_excludes_nulls(api, user):
    never = make_job(user)  # queued: neither started nor finished
    jobs = []
    for _ in range(3):
        jobs.append(running_job(user))
    first, second, third = jobs
    set_times(first, started_at=T0 + timedelta(minutes=2))
    set_times(second, started_at=T0)
    set_times(third, started_at=T0 + timedelta(minutes=1))
    # Two of them finish, `first` before `third`; `second` keeps running.
    for job, minutes in ((first, 10), (third, 20)):
        assert execution.job_succeed(job_id=job.pk, worker="w1", result={}) is not None
        set_times(job, finished_at=T0 + timedelta(minutes=minutes))
    cancelled_early = control.job_cancel(job_id=make_job(user).pk, actor=user)  # finished, never started
    set_times(cancelled_early, finished_at=T0 + timedelta(minutes=5))

    started = list_ids(api, ordering="started")
    assert started == [str(second.pk), str(third.pk), str(first.pk)]
    assert list_ids(api, ordering="-started") == started[::-1]
    assert list_ids(api, ordering="-finished") == [str(third.pk), str(first.pk), str(cancelled_early.pk)]
    assert list_ids(api, ordering="finished") == [str(cancelled_early.pk), str(first.pk), str(third.pk)]
    for ordering in ("started", "-started", "finished", "-finished"):
        assert str(never.pk) not in list_ids(api, ordering=ordering)


@pytest.mark.parametrize("ordering", ["bogus", "created_at", "-status", "priority,owner", "", "priority,"])
def test_unknown_ordering_is_400(api, user, ordering):
    make_job(user)
    response = api.get(f"/api/jobs/?ordering={ordering}")
    # An empty value too: the schema lists the orderings, and "" is not one (leave it out instead).
    assert_invalid(response, "ordering")


# --- cursor pagination ----------------------------------------------------------------------


def _bulk_jobs(owner, priorities, *, created_at=None) -> list[Job]:
    jobs = Job.objects.bulk_create(
        [Job(type="sleep", params={"seconds": 1, "steps": 1}, owner=owner, priority=p) for p in priorities]
    )
    if created_at is not None:
        Job.objects.filter(pk__in=[j.pk for j in jobs]).update(created_at=created_at)
    return list(Job.objects.filter(pk__in=[j.pk for j in jobs]))


@pytest.mark.parametrize("same_created_at", [False, True], ids=["distinct-times", "same-time"])
def test_cursor_walk_by_descending_priority_has_no_duplicates_or_gaps(api, user, same_created_at):
    priorities = [5] * 7 + [8] * 4 + [2] * 3 + [9] + [0] * 2
    jobs = _bulk_jobs(user, priorities, created_at=T0 if same_created_at else None)
    expected = [
        str(j.pk)
        for j in sorted(
            jobs, key=lambda j: (-j.priority, -j.created_at.timestamp(), -uuid.UUID(str(j.pk)).int)
        )
    ]
    seen, pages = walk(api, ordering="-priority", page_size=2)
    assert len(seen) == len(set(seen)), "duplicates across pages"
    assert set(seen) == set(expected), "gaps across pages"
    assert pages == 9
    by_id = {str(j.pk): j.priority for j in jobs}
    assert [by_id[i] for i in seen] == sorted(priorities, reverse=True)
    assert seen == expected


def test_cursor_walk_by_ascending_priority_and_back(api, user):
    priorities = [1, 1, 1, 4, 4, 4, 4, 7, 7, 1]
    jobs = _bulk_jobs(user, priorities)
    seen, _ = walk(api, ordering="priority", page_size=3)
    assert sorted(seen) == sorted(str(j.pk) for j in jobs) and len(seen) == len(jobs)
    by_id = {str(j.pk): j.priority for j in jobs}
    assert [by_id[i] for i in seen] == sorted(priorities)
    # `previous` from the second page is the first page again.
    first = api.get("/api/jobs/", {"ordering": "priority", "page_size": 3}).json()
    second = api.get(first["next"]).json()
    back = api.get(second["previous"]).json()
    assert [item["id"] for item in back["results"]] == [item["id"] for item in first["results"]]


def test_cursor_walk_by_started(api, user):
    jobs = _bulk_jobs(user, [5] * 7)
    for index, job in enumerate(jobs):
        # Pairs share a start time.
        set_times(job, status=JobStatus.RUNNING, started_at=T0 + timedelta(seconds=index // 2))
    _bulk_jobs(user, [5, 5])  # never started: not listed
    seen, _ = walk(api, ordering="-started", page_size=2)
    assert len(seen) == len(set(seen)) == 7
    assert set(seen) == {str(j.pk) for j in jobs}
    started = dict(Job.objects.values_list("pk", "started_at"))
    times = [started[uuid.UUID(i)] for i in seen]
    assert times == sorted(times, reverse=True)


def test_page_size_is_capped_at_200(api, user):
    _bulk_jobs(user, [5] * 205)
    full = api.get("/api/jobs/", {"page_size": 200})
    assert len(page_ids(full)) == 200
    rest = api.get(full.json()["next"])
    assert len(page_ids(rest)) == 5
    assert set(page_ids(full)).isdisjoint(page_ids(rest))
    # Asking for more never returns more than 200: capped, or refused naming page_size.
    for too_many in (201, 1000):
        response = api.get("/api/jobs/", {"page_size": too_many})
        if response.status_code == 400:
            assert_invalid(response, "page_size")
        else:
            assert len(page_ids(response)) == 200
            assert response.json()["next"] is not None
    # The default page is 50.
    assert len(list_ids(api)) == 50
    assert len(list_ids(api, page_size=7)) == 7


def _cursor(position: str) -> str:
    return base64.b64encode(urlencode({"p": position}).encode()).decode()


@pytest.mark.parametrize(
    ("ordering", "position"),
    [
        ("priority", "abc"),  # not an integer (was a 500)
        ("-priority", "99999999999999999999"),  # past the column's range
        ("priority", "1.5"),
        ("created", "yesterday"),
        ("-started", "2026-13-45T99:00:00"),
        ("created", "2026-01-01\x00"),
    ],
)
def test_a_cursor_whose_position_does_not_fit_the_ordering_is_400(api, user, ordering, position):
    _bulk_jobs(user, [1, 2, 3])
    response = api.get("/api/jobs/", {"ordering": ordering, "cursor": _cursor(position)})
    assert_invalid(response, "cursor")


def test_the_cursor_from_issue_12_is_400(api, user):
    _bulk_jobs(user, [1, 2])
    assert_invalid(api.get("/api/jobs/?ordering=priority&cursor=cD1hYmM="), "cursor")
