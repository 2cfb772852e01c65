"""`GET /api/workers/`: staff who may view every job see every worker."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tasks_app.conf import JOB_QUEUE
from tasks_app.services import execution, submission, workers
from tests.helpers import assert_problem, token_client

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]


@pytest.fixture
def node():
    return workers.worker_register(
        name="jobs@host-a", host="host-a", pid=7, queues=[JOB_QUEUE], concurrency=2
    )


def test_staff_see_every_worker_and_what_it_runs(staff_api, user, node):
    job = submission.job_create(owner=user, type="sleep")
    execution.job_claim(job_id=job.pk, worker="jobs@host-a:99")
    response = staff_api.get("/api/workers/")
    assert response.status_code == 200
    [listed] = response.json()
    assert listed["name"] == "jobs@host-a"
    assert listed["state"] == "online"
    assert listed["queues"] == [JOB_QUEUE]
    assert listed["concurrency"] == 2
    assert listed["running"] == [str(job.pk)]
    assert listed["stopped_at"] is None


def test_users_and_staff_without_the_view_permission_may_not(api, django_user_model, node):
    assert_problem(api.get("/api/workers/"), 403)
    bare = django_user_model.objects.create_user("bare", password="bare-password-123", is_staff=True)
    assert_problem(token_client(bare).get("/api/workers/"), 403)
    assert_problem(APIClient().get("/api/workers/"), 401)


def test_view_only_staff_may(viewing_staff_user, node):
    assert token_client(viewing_staff_user).get("/api/workers/").status_code == 200


def test_queues_for_staff_only(staff_api, api, user, node):
    submission.job_create(owner=user, type="sleep")
    response = staff_api.get("/api/queues/")
    assert response.status_code == 200
    jobs_queue = next(queue for queue in response.json() if queue["queue"] == JOB_QUEUE)
    assert jobs_queue["queued"] == 1 and jobs_queue["consumers"] == 1
    assert_problem(api.get("/api/queues/"), 403)
