"""`services.maintenance`: the job counters kept by database triggers and folded by the sweep."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connection

from tasks_app import selectors
from tasks_app.models import Job, JobCount, JobCountChange, JobStatus
from tasks_app.services import control, execution, maintenance, submission

from .helpers import W1, new_job, running_job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]


def live_counts(user=None) -> dict[tuple[str, str], int]:
    jobs = Job.objects.all() if user is None else Job.objects.filter(owner=user)
    return dict(Counter(jobs.values_list("type", "status")))


def some_history(user, other_user) -> None:
    """Jobs in every status, made every way a job is made or changed."""
    new_job(user)  # queued
    submission.jobs_create_bulk(owner=user, submissions=[{"type": "primes"}, {"type": "fail"}] * 3)
    running = running_job(user)
    done = running_job(user)
    execution.job_succeed(job_id=done.pk, worker=W1, result={})
    failed = running_job(other_user)
    execution.job_fail(job_id=failed.pk, worker=W1, error={"type": "E", "message": "x"})
    control.job_retry(job_id=failed.pk, actor=other_user)  # failed -> queued again
    control.job_cancel(job_id=new_job(other_user).pk, actor=other_user)
    control.job_cancel(job_id=running.pk, actor=user)  # a request: the status stays running
    Job.objects.filter(pk=new_job(user).pk).delete()  # gone: counted out


def test_the_counters_match_the_jobs_before_and_after_folding(user, other_user, staff_user):
    some_history(user, other_user)
    assert JobCountChange.objects.exists()
    assert selectors.job_counts(staff_user) == live_counts()
    assert selectors.job_counts(user) == live_counts(user)
    assert selectors.job_counts(other_user) == live_counts(other_user)

    folded = maintenance.job_counts_fold()
    assert folded > 0 and not JobCountChange.objects.exists()
    assert selectors.job_counts(staff_user) == live_counts()
    assert selectors.job_counts(user) == live_counts(user)

    running_job(user)  # changes after a fold add to the folded counters
    assert selectors.job_counts(user) == live_counts(user)
    assert maintenance.job_counts_fold() > 0
    assert {(c.type, c.status): c.n for c in JobCount.objects.filter(owner_id=user.pk) if c.n} == live_counts(
        user
    )


def test_stats_come_from_the_counters(api, user, other_user):
    some_history(user, other_user)
    maintenance.job_counts_fold()
    stats = api.get("/api/stats/").json()
    expected = live_counts(user)
    assert stats["by_status"]["running"] == sum(n for (_, s), n in expected.items() if s == JobStatus.RUNNING)
    assert stats["by_type"] == dict(_by_type(expected))
    assert sum(stats["by_status"].values()) == Job.objects.filter(owner=user).count()


def _by_type(counts: dict[tuple[str, str], int]) -> Counter:
    total: Counter = Counter()
    for (job_type, _), n in counts.items():
        total[job_type] += n
    return total


def test_a_user_sees_only_their_own_counts_and_an_anonymous_one_none(user, other_user):
    new_job(other_user)
    assert selectors.job_counts(user) == {}
    from django.contrib.auth.models import AnonymousUser

    assert selectors.job_counts(AnonymousUser()) == {}


def test_folding_with_nothing_to_fold_does_nothing(db):
    assert maintenance.job_counts_fold() == 0
    assert maintenance.sweep()["counts_folded"] == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_folds_count_each_change_once(user):
    for _ in range(30):
        new_job(user)
    results: list[int] = []

    def fold() -> None:
        try:
            results.append(maintenance.job_counts_fold())
        finally:
            connection.close()

    threads = [threading.Thread(target=fold) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    maintenance.job_counts_fold()
    assert sum(results) <= 30
    assert selectors.job_counts(user) == {("sleep", "queued"): 30}
    assert JobCount.objects.get(owner_id=user.pk, type="sleep", status="queued").n == 30
