"""`manage.py jobs ...` (the command line) and the retention it shares with the sweep."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import timedelta
from unittest import mock

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from tasks_app import selectors
from tasks_app.conf import JOB_QUEUE
from tasks_app.models import Job, JobEvent, JobStatus, WebhookDelivery
from tasks_app.services import execution, maintenance, retention, workers
from tests.helpers import failed_job, make_job, succeeded_job, with_longrun

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "root-password-123")


def jobs(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("jobs", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_list_shows_what_the_user_may_see(root, user, other_user):
    mine, theirs = make_job(user, type="primes", params={"n": 10}), make_job(other_user)
    text, _ = jobs("--user", "alice", "list")
    assert str(mine.pk) in text and "primes" in text and str(theirs.pk) not in text
    everyone, _ = jobs("list")  # the first superuser by default
    assert str(mine.pk) in everyone and str(theirs.pk) in everyone
    data = json.loads(jobs("--json", "list", "--status", "queued")[0])
    assert {job["id"] for job in data} == {str(mine.pk), str(theirs.pk)}
    assert set(data[0]) >= {"id", "status", "progress", "params", "links"}


def test_show_prints_the_job_and_its_history(root, user):
    job = failed_job(user)
    text, _ = jobs("show", str(job.pk))
    assert "status: failed" in text and "error: DemoError: boom" in text and "history:" in text
    assert json.loads(jobs("--json", "show", str(job.pk))[0])["id"] == str(job.pk)


@pytest.mark.parametrize("job_id", ["nope", "00000000-0000-0000-0000-000000000000"])
def test_show_of_an_unknown_job_is_a_clear_error(root, job_id):
    with pytest.raises(CommandError, match="job"):
        jobs("show", job_id)


def test_another_users_job_is_not_found(user, other_user):
    theirs = make_job(other_user)
    with pytest.raises(CommandError, match="may see"):
        jobs("--user", "alice", "show", str(theirs.pk))


def test_submit_parses_params_and_prints_the_id(root, apply_async):
    out, _ = jobs("submit", "primes", "--param", "n=1000", "--priority", "9")
    job = Job.objects.get(pk=out.strip())
    assert job.params["n"] == 1000 and job.priority == 9 and job.owner == root


def test_submit_with_bad_params_says_which_and_writes_nothing(root):
    with pytest.raises(CommandError, match="params.n"):
        jobs("submit", "primes", "--param", "n=-5")
    with pytest.raises(CommandError, match="KEY=VALUE"):
        jobs("submit", "primes", "--param", "n")
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("finish", "code"),
    [
        (lambda job_id: execution.job_succeed(job_id=job_id, worker="w1", result={"ok": 1}), 0),
        (
            lambda job_id: execution.job_fail(
                job_id=job_id, worker="w1", error={"type": "E", "message": "m"}
            ),
            1,
        ),
    ],
)
def test_submit_follow_shows_progress_and_exits_with_the_outcome(root, apply_async, finish, code):
    steps = iter(["claim", "progress", "finish"])

    def the_worker_moves_on(seconds: float) -> None:
        job = Job.objects.get()
        step = next(steps, None)
        if step == "claim":
            execution.job_claim(job_id=job.pk, worker="w1")
        elif step == "progress":
            execution.job_progress(job_id=job.pk, worker="w1", percent=50, message="half way")
        elif step == "finish":
            finish(job.pk)

    with mock.patch("tasks_app.management.commands.jobs.time.sleep", the_worker_moves_on):
        with pytest.raises(SystemExit) as exited:
            jobs("submit", "sleep", "--param", "seconds=1", "--follow")
    assert exited.value.code == code


def test_cancel_and_retry_record_who_did_it(root, user):
    job = failed_job(user)
    out, _ = jobs("retry", str(job.pk))
    assert out.strip() == f"{job.pk}: queued"
    out, _ = jobs("cancel", str(job.pk))
    assert out.strip() == f"{job.pk}: cancelled"
    assert JobEvent.objects.filter(job=job, actor=root).count() == 2
    with pytest.raises(CommandError, match="already"):
        jobs("cancel", str(job.pk))


def test_workers_lists_them_and_warns_about_unserved_queues(root):
    workers.worker_register(name="jobs@host-a", host="host-a", pid=1, queues=[JOB_QUEUE], concurrency=2)
    out, err = jobs("workers")
    assert "jobs@host-a" in out and "online" in out and "0/2 running" in out
    assert "No live worker reads: longrun.maintenance, longrun.webhooks" in err
    assert json.loads(jobs("--json", "workers")[0])[0]["name"] == "jobs@host-a"


# --- retention ------------------------------------------------------------------------------


def ended_ago(job: Job, days: float) -> Job:
    Job.objects.filter(pk=job.pk).update(finished_at=timezone.now() - timedelta(days=days))
    return job


def test_purge_deletes_only_finished_jobs_past_the_age_with_their_history(root, user):
    old = ended_ago(succeeded_job(user), 40)
    WebhookDelivery.objects.create(
        job=old, n=1, event_type="job.succeeded", webhook_id="msg_1", url="http://x/", payload={}
    )
    recent = ended_ago(succeeded_job(user), 5)
    running = make_job(user)
    Job.objects.filter(pk=running.pk).update(finished_at=timezone.now() - timedelta(days=90))  # not terminal
    counts_before = selectors.job_counts(user)

    out, _ = jobs("purge", "--older-than", "30d", "--dry-run")
    assert out.startswith("1 finished job(s)")
    assert Job.objects.count() == 3

    out, _ = jobs("purge", "--older-than", "30d")
    assert out.startswith("Deleted 1 job(s)")
    assert set(Job.objects.values_list("pk", flat=True)) == {recent.pk, running.pk}
    assert not JobEvent.objects.filter(job_id=old.pk).exists()
    assert not WebhookDelivery.objects.exists()
    after = selectors.job_counts(user)
    assert after[("sleep", JobStatus.SUCCEEDED)] == counts_before[("sleep", JobStatus.SUCCEEDED)] - 1


@pytest.mark.parametrize("age", ["30", "d", "-3d", "3w"])
def test_purge_needs_an_age_with_a_unit(root, age):
    with pytest.raises(CommandError, match="older-than"):
        jobs("purge", "--older-than", age)


def test_the_sweep_purges_one_batch_past_the_retention_and_none_when_it_is_zero(user, settings, monkeypatch):
    monkeypatch.setattr(retention, "PURGE_BATCH", 2)
    for _ in range(3):
        ended_ago(succeeded_job(user), 40)
    with_longrun(settings, RETENTION_DAYS=0)
    assert maintenance.sweep()["purged"] == 0
    with_longrun(settings, RETENTION_DAYS=30)
    assert maintenance.sweep()["purged"] == 2
    assert maintenance.sweep()["purged"] == 1
    assert not Job.objects.exists()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("job", "code", "says"),
    [(["sleep", "--param", "seconds=0.5"], 0, "succeeded"), (["fail"], 1, "failed: DemoError")],
)
def test_submit_follow_at_a_terminal_with_a_real_worker(shared_worker, process_env, root, job, code, says):
    """As a person runs it: a separate process, a real worker; the exit code tells the outcome."""
    done = subprocess.run(
        [sys.executable, "manage.py", "jobs", "submit", *job, "--follow"],
        cwd=settings.BASE_DIR,
        env=process_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == code, done.stderr
    assert says in done.stdout
    assert "Submitted" in done.stderr and "%" in done.stderr
