"""Worker presence (`services.workers`) and what the selectors make of it: states, running jobs,
the queues that have a live worker."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tasks_app import selectors
from tasks_app.conf import JOB_QUEUE, MAINTENANCE_QUEUE, WEBHOOK_QUEUE
from tasks_app.models import Job, WorkerNode, WorkerState
from tasks_app.services import workers
from tests.helpers import with_longrun

from .helpers import new_job, running_job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]


def register(
    name: str = "jobs@host-a", pid: int = 101, queues=(JOB_QUEUE,), concurrency: int = 2
) -> WorkerNode:
    return workers.worker_register(name=name, host="host-a", pid=pid, queues=queues, concurrency=concurrency)


def silent_for(node: WorkerNode, seconds: float) -> None:
    WorkerNode.objects.filter(pk=node.pk).update(last_seen_at=timezone.now() - timedelta(seconds=seconds))


def state(name: str) -> str:
    return selectors.worker_state(WorkerNode.objects.get(name=name))


def test_a_registered_worker_is_online_with_its_queues_and_concurrency():
    node = register(queues=[WEBHOOK_QUEUE, JOB_QUEUE], concurrency=4)
    assert node.queues == [JOB_QUEUE, WEBHOOK_QUEUE]
    assert node.concurrency == 4
    assert state(node.name) == WorkerState.ONLINE


def test_a_silent_worker_is_lost_and_a_beat_brings_it_back(settings):
    with_longrun(settings, WORKER_LOST_AFTER=30)
    node = register()
    silent_for(node, 31)
    assert state(node.name) == WorkerState.LOST
    assert workers.worker_seen(name=node.name, pid=node.pid) is True
    assert state(node.name) == WorkerState.ONLINE


def test_a_stopped_worker_stays_stopped_until_it_registers_again():
    node = register()
    assert workers.worker_stopped(name=node.name, pid=node.pid) is True
    assert state(node.name) == WorkerState.STOPPED
    assert workers.worker_seen(name=node.name, pid=node.pid) is False  # a late beat changes nothing
    assert state(node.name) == WorkerState.STOPPED
    register(pid=202)  # the same node name, restarted
    assert state(node.name) == WorkerState.ONLINE
    assert WorkerNode.objects.get(name=node.name).pid == 202


def test_a_beat_from_an_old_process_of_the_same_name_does_not_count():
    register(pid=101)
    register(pid=202)
    assert workers.worker_seen(name="jobs@host-a", pid=101) is False
    assert workers.worker_stopped(name="jobs@host-a", pid=101) is False
    assert state("jobs@host-a") == WorkerState.ONLINE


def test_rows_of_workers_gone_for_long_are_forgotten():
    old, stopped, live = register("a@h"), register("b@h"), register("c@h")
    silent_for(old, 7200)
    workers.worker_stopped(name=stopped.name, pid=stopped.pid)
    silent_for(stopped, 7200)
    assert workers.workers_forget_stopped(older_than=3600) == 2
    assert list(WorkerNode.objects.values_list("name", flat=True)) == [live.name]


def test_workers_list_names_the_jobs_each_runs(user):
    register("jobs@host-a")
    register("jobs@host-b")
    job = running_job(user, worker="jobs@host-a:4242")
    listed = {w["name"]: w for w in selectors.workers_list()}
    assert listed["jobs@host-a"]["running"] == [str(job.pk)]
    assert listed["jobs@host-b"]["running"] == []
    counts = {node.name: node.running_jobs for node in selectors.workers_with_running_counts()}
    assert counts == {"jobs@host-a": 1, "jobs@host-b": 0}


def test_queue_consumers_count_only_online_workers(settings):
    with_longrun(settings, WORKER_LOST_AFTER=30)
    assert selectors.queue_consumers() == {JOB_QUEUE: 0, MAINTENANCE_QUEUE: 0, WEBHOOK_QUEUE: 0}
    register("a@h", queues=[JOB_QUEUE])
    lost = register("b@h", queues=[JOB_QUEUE, MAINTENANCE_QUEUE])
    silent_for(lost, 60)
    stopped = register("c@h", queues=[WEBHOOK_QUEUE])
    workers.worker_stopped(name=stopped.name, pid=stopped.pid)
    register("d@h", queues=["cpu"])
    assert selectors.queue_consumers() == {JOB_QUEUE: 1, MAINTENANCE_QUEUE: 0, WEBHOOK_QUEUE: 0, "cpu": 1}


# --- queues, and why a job waits --------------------------------------------------------------


def test_queues_overview_counts_each_status_the_oldest_wait_and_consumers(user):
    from tasks_app.services import execution

    register("jobs@h", queues=[JOB_QUEUE], concurrency=1)
    oldest = new_job(user)
    Job.objects.filter(pk=oldest.pk).update(created_at=timezone.now() - timedelta(seconds=90))
    new_job(user)
    running_job(user, worker="jobs@h:1")
    done = running_job(user, worker="jobs@h:1")
    execution.job_succeed(job_id=done.pk, worker="jobs@h:1", result={})
    by_queue = {queue["queue"]: queue for queue in selectors.queues_overview()}
    jobs_queue = by_queue[JOB_QUEUE]
    assert (jobs_queue["queued"], jobs_queue["running"], jobs_queue["finished_last_hour"]) == (2, 1, 1)
    assert 89 <= jobs_queue["oldest_queued_seconds"] < 120
    assert jobs_queue["consumers"] == 1 and "sleep" in jobs_queue["job_types"]
    assert by_queue[MAINTENANCE_QUEUE]["consumers"] == 0
    assert by_queue[WEBHOOK_QUEUE]["job_types"] == []


def test_why_a_job_waits(user):
    first = new_job(user)
    second = new_job(user)
    urgent = new_job(user, priority=9)
    assert selectors.job_wait_reason(second) == (
        f"No live worker reads queue {JOB_QUEUE}: it waits until one starts (2 jobs ahead of it)."
    )
    register("jobs@h", queues=[JOB_QUEUE], concurrency=1)
    assert selectors.job_wait_reason(urgent) == "Waiting for a worker to take it; 0 jobs ahead of it."
    running_job(user, worker="jobs@h:1")
    assert selectors.job_wait_reason(first) == (
        f"All 1 worker slots of queue {JOB_QUEUE} are busy; 1 job ahead of it."
    )
    scheduled = new_job(user, run_at=timezone.now() + timedelta(hours=1))
    assert selectors.job_wait_reason(scheduled).startswith("Scheduled: it is queued at ")
    assert selectors.job_wait_reason(Job.objects.get(status="running")) == ""


def test_a_routed_queue_is_needed_counted_and_explained_on_its_own(user, routed_job_types):
    routed_queue = routed_job_types.ROUTED_QUEUE
    register("jobs@h", queues=[JOB_QUEUE], concurrency=1)
    new_job(user)  # waits in the default queue: not ahead of a routed job
    routed = new_job(user, type="routed_echo", params={})
    assert selectors.queue_consumers()[routed_queue] == 0
    assert routed_queue in selectors.unserved_queues()
    assert selectors.job_wait_reason(routed) == (
        f"No live worker reads queue {routed_queue}: it waits until one starts (0 jobs ahead of it)."
    )
    by_queue = {queue["queue"]: queue for queue in selectors.queues_overview()}
    assert by_queue[routed_queue]["job_types"] == ["routed_echo"]
    assert "routed_echo" not in by_queue[JOB_QUEUE]["job_types"]
    assert (by_queue[routed_queue]["queued"], by_queue[JOB_QUEUE]["queued"]) == (1, 1)
    assert by_queue[routed_queue]["oldest_queued_seconds"] is not None
    # A worker for it: served, and the busy slots counted are that queue's own.
    register("routed@h", queues=[routed_queue], concurrency=1)
    running_job(user, worker="jobs@h:1")
    assert routed_queue not in selectors.unserved_queues()
    assert selectors.job_wait_reason(routed) == "Waiting for a worker to take it; 0 jobs ahead of it."
