"""`/api/schedules/`: create, read, change, pause, resume, run now, delete; who sees and changes
what; bad input as 400s naming the field; a job's `schedule` and `scheduled_for`."""

from __future__ import annotations

from datetime import datetime

import pytest

from tasks_app.models import Job, Schedule
from tasks_app.services import schedules
from tests.helpers import assert_problem

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]

REPORT = {
    "name": "weekday report",
    "type": "sleep",
    "params": {"seconds": 1},
    "cron": "0 9 * * 1-5",
    "timezone": "Europe/Paris",
    "metadata": {"team": "finance"},
}


def create(client, **changes):
    return client.post("/api/schedules/", {**REPORT, **changes}, format="json")


def test_a_schedule_is_created_with_its_next_five_fire_times_in_words(api, user):
    response = create(api)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["description"] == "At 09:00, Monday through Friday, Europe/Paris"
    assert body["owner"] == user.username and body["enabled"] is True and body["managed"] is False
    assert body["params"] == {"seconds": 1, "steps": 10}  # the type's defaults filled in
    times = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in body["next_fire_times"]]
    assert len(times) == 5 and times == sorted(times)
    assert body["next_fire_at"] == body["next_fire_times"][0]
    assert body["recent_jobs"] == [] and body["links"]["run"].endswith(f"/api/schedules/{body['id']}/run/")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cron": "0 25 * * *"}, "cron"),
        ({"timezone": "Europe/Atlantis"}, "timezone"),
        ({"params": {"seconds": "soon"}}, "params.seconds"),
        ({"cron": "", "interval": 0}, "interval"),
        ({"type": "nope"}, "type"),
        ({"overlap": "maybe"}, "overlap"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_input_is_400_naming_the_field(api, changes, field):
    problem = assert_problem(create(api, **changes), 400)
    assert field in {error["field"] for error in problem["errors"]}, problem
    assert not Schedule.objects.exists()


def test_owners_see_their_own_staff_see_all(api, other_api, staff_api):
    mine = create(api).json()
    create(other_api)
    assert [s["id"] for s in api.get("/api/schedules/").json()["results"]] == [mine["id"]]
    assert other_api.get(f"/api/schedules/{mine['id']}/").status_code == 404
    assert other_api.post(f"/api/schedules/{mine['id']}/pause/").status_code == 404
    assert staff_api.get("/api/schedules/").json()["count"] == 2


def test_patch_changes_the_expression_and_the_next_fire_times(api):
    created = create(api).json()
    response = api.patch(f"/api/schedules/{created['id']}/", {"cron": "30 7 * * *"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["cron"] == "30 7 * * *" and body["description"] == "At 07:30, Europe/Paris"
    assert body["metadata"] == {"team": "finance"}  # untouched
    assert body["next_fire_times"] != created["next_fire_times"] and body["version"] == created["version"] + 1
    problem = assert_problem(
        api.patch(f"/api/schedules/{created['id']}/", {"cron": "nope"}, format="json"), 400
    )
    assert problem["errors"][0]["field"] == "cron"


def test_pause_resume_run_now_and_the_schedules_jobs(api, user):
    created = create(api).json()
    paused = api.post(f"/api/schedules/{created['id']}/pause/").json()
    assert paused["enabled"] is False and paused["next_fire_times"] == [] and paused["next_fire_at"] is None
    assert api.post(f"/api/schedules/{created['id']}/resume/").json()["enabled"] is True
    run = api.post(f"/api/schedules/{created['id']}/run/")
    assert run.status_code == 202
    job = run.json()
    assert job["schedule"] == created["id"] and job["scheduled_for"] is None
    assert [j["id"] for j in api.get(f"/api/schedules/{created['id']}/jobs/").json()["results"]] == [
        job["id"]
    ]
    assert [j["id"] for j in api.get("/api/jobs/", {"schedule": created["id"]}).json()["results"]] == [
        job["id"]
    ]
    recent = api.get(f"/api/schedules/{created['id']}/").json()["recent_jobs"]
    assert [(r["id"], r["status"]) for r in recent] == [(job["id"], "queued")]


def test_delete_keeps_the_jobs(api):
    created = create(api).json()
    job_id = api.post(f"/api/schedules/{created['id']}/run/").json()["id"]
    assert api.delete(f"/api/schedules/{created['id']}/").status_code == 204
    assert not Schedule.objects.exists()
    assert api.get(f"/api/jobs/{job_id}/").json()["schedule"] is None


def test_a_schedule_declared_in_code_may_be_paused_not_edited_or_deleted(staff_api, user):
    managed = schedules.schedule_create(owner=user, managed=True, name="sync", type="sleep", cron="0 3 * * *")
    problem = assert_problem(
        staff_api.patch(f"/api/schedules/{managed.pk}/", {"cron": "0 4 * * *"}, format="json"), 400
    )
    assert "change it there" in problem["errors"][0]["message"]
    assert_problem(staff_api.delete(f"/api/schedules/{managed.pk}/"), 409)
    assert staff_api.post(f"/api/schedules/{managed.pk}/pause/").json()["enabled"] is False


def test_staff_who_may_only_view_cannot_change(viewing_staff_user, api):
    from tests.helpers import token_client

    created = create(api).json()
    viewer = token_client(viewing_staff_user)
    assert viewer.get(f"/api/schedules/{created['id']}/").status_code == 200
    assert_problem(viewer.post(f"/api/schedules/{created['id']}/pause/"), 403)


def test_a_fired_job_carries_its_schedule_and_slot(api, user):
    created = create(api).json()
    Schedule.objects.filter(pk=created["id"]).update(next_fire_at=schedules.database_now())
    assert schedules.schedules_fire_due() == 1
    job = Job.objects.get(schedule_id=created["id"])
    body = api.get(f"/api/jobs/{job.pk}/").json()
    assert body["schedule"] == created["id"] and body["scheduled_for"] is not None


def test_the_schema_lists_the_schedule_endpoints(api):
    paths = api.get("/api/schema/", HTTP_ACCEPT="application/json").json()["paths"]
    for path in (
        "/api/schedules/",
        "/api/schedules/{id}/",
        "/api/schedules/{id}/run/",
        "/api/schedules/{id}/jobs/",
    ):
        assert path in paths, sorted(paths)


def test_preview_shows_when_a_timing_would_fire_without_saving(api):
    answer = api.get("/api/schedules/preview/", {"cron": "30 2 * * *", "timezone": "Europe/Paris"})
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["description"] == "At 02:30, Europe/Paris" and len(body["next_fire_times"]) == 5
    problem = assert_problem(
        api.get("/api/schedules/preview/", {"cron": "30 2 * *", "timezone": "Mars"}), 400
    )
    assert {error["field"] for error in problem["errors"]} == {"cron", "timezone"}
    assert not Schedule.objects.exists()
