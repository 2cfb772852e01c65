"""Management commands: `createtoken` (print, reuse, rotate a user's API token), `ensureadmin`
(create the first superuser, keep its password under VAR_DIR, print the login and a token) and
`runstack` (`make run`)."""

from __future__ import annotations

import io
import re
import signal
import stat
import subprocess
import sys
import time

import pytest
import requests
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tasks_app import selectors
from tasks_app.conf import JOB_QUEUE, LONGRUN_QUEUES
from tasks_app.models import Job, JobStatus
from tasks_app.services import submission
from tasks_app.stack import free_port
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db

TOKEN = re.compile(r"^[0-9a-f]{40}$")


@pytest.fixture
def var_dir(settings, tmp_path):
    """ensureadmin writes its password file under settings.VAR_DIR: keep it out of the checkout."""
    settings.VAR_DIR = tmp_path
    return tmp_path


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def api_status(key: str, url: str = "/api/jobs/") -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client.get(url).status_code


# --- createtoken ----------------------------------------------------------------------------


def test_createtoken_prints_a_token_that_authenticates(user):
    output = run("createtoken", "alice")
    key = output.strip()
    assert TOKEN.match(key), output
    assert output == key + "\n"  # just the token: easy to capture in a script
    assert Token.objects.get(user=user).key == key
    assert api_status(key) == 200
    assert api_status(key, "/api/stats/") == 200


def test_createtoken_again_prints_the_same_token(user):
    first = run("createtoken", "alice").strip()
    second = run("createtoken", "alice").strip()
    assert first == second
    assert Token.objects.filter(user=user).count() == 1
    assert api_status(second) == 200


def test_createtoken_prints_an_existing_token(user):
    existing = Token.objects.create(user=user)
    assert run("createtoken", "alice").strip() == existing.key


def test_createtoken_rotate_replaces_the_token(user):
    old = run("createtoken", "alice").strip()
    new = run("createtoken", "alice", "--rotate").strip()
    assert TOKEN.match(new)
    assert new != old
    assert Token.objects.filter(user=user).count() == 1
    assert api_status(new) == 200
    assert api_status(old) == 401  # the old token stops working at once
    # And the rotated one is what later calls print.
    assert run("createtoken", "alice").strip() == new


def test_createtoken_rotate_without_a_token_creates_one(user):
    key = run("createtoken", "alice", "--rotate").strip()
    assert TOKEN.match(key)
    assert api_status(key) == 200


def test_createtoken_tokens_are_per_user(user, other_user):
    alice = run("createtoken", "alice").strip()
    bob = run("createtoken", "bob").strip()
    assert alice != bob
    run("createtoken", "bob", "--rotate")
    assert api_status(alice) == 200  # rotating bob's token leaves alice's alone


def test_createtoken_for_an_unknown_user_is_a_command_error(user):
    with pytest.raises(CommandError, match="nobody"):
        run("createtoken", "nobody")
    assert Token.objects.count() == 0


def test_createtoken_needs_a_username():
    with pytest.raises(CommandError):
        run("createtoken")


# --- ensureadmin ----------------------------------------------------------------------------


def _parse_ensureadmin(output: str) -> tuple[str, str, str]:
    login = re.search(r"admin login:\s*(\S+)\s*/\s*(.+?)\s*$", output, re.MULTILINE)
    token = re.search(r"API token:\s*([0-9a-f]{40})\s*$", output, re.MULTILINE)
    assert login and token, output
    return login.group(1), login.group(2), token.group(1)


def test_ensureadmin_creates_an_admin_superuser_and_keeps_its_password(var_dir, client):
    User = get_user_model()
    assert not User.objects.filter(is_superuser=True).exists()
    output = run("ensureadmin")
    username, password, key = _parse_ensureadmin(output)

    admin = User.objects.get(is_superuser=True)
    assert username == admin.get_username() == "admin"
    assert admin.is_staff and admin.is_active
    assert len(password) >= 12
    assert admin.check_password(password)

    password_file = var_dir / "admin-password"
    assert password_file.read_text().strip() == password
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600

    # The token works against the API, and the password logs in.
    assert Token.objects.get(user=admin).key == key
    assert api_status(key) == 200
    assert client.login(username="admin", password=password)


def test_ensureadmin_twice_creates_no_second_user(var_dir):
    User = get_user_model()
    first = _parse_ensureadmin(run("ensureadmin"))
    users = User.objects.count()
    second = _parse_ensureadmin(run("ensureadmin"))
    assert User.objects.count() == users == 1
    assert User.objects.filter(is_superuser=True).count() == 1
    assert second == first  # same login, same password (from the file), same token
    assert (var_dir / "admin-password").read_text().strip() == first[1]


def test_ensureadmin_leaves_an_existing_superuser_alone(var_dir, django_user_model):
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-password-123")
    output = run("ensureadmin")
    username, password, key = _parse_ensureadmin(output)
    assert username == "root"
    assert "root-password-123" not in output
    # No password is known: it says so rather than inventing (or generating) one.
    assert not re.fullmatch(r"[A-Za-z0-9]{20}", password), password
    assert not django_user_model.objects.filter(username="admin").exists()
    assert django_user_model.objects.count() == 1
    assert not (var_dir / "admin-password").exists()
    assert Token.objects.get(user=root).key == key
    assert api_status(key) == 200


def test_ensureadmin_reuses_the_token_createtoken_made(var_dir):
    _, _, key = _parse_ensureadmin(run("ensureadmin"))
    assert run("createtoken", "admin").strip() == key
    rotated = run("createtoken", "admin", "--rotate").strip()
    assert _parse_ensureadmin(run("ensureadmin"))[2] == rotated


def test_ensureadmin_with_a_plain_user_named_admin_does_not_crash(var_dir, django_user_model):
    """A non-superuser called "admin" (made by hand, say) must not turn the command, which
    `runstack` runs at every start, into an IntegrityError traceback."""
    django_user_model.objects.create_user("admin", password="plain-password-123")
    try:
        output = run("ensureadmin")
    except CommandError:
        return  # refusing with a clear message is fine
    except IntegrityError as exc:
        pytest.fail(f"ensureadmin crashed: IntegrityError: {exc}")
    username, password, key = _parse_ensureadmin(output)
    superuser = django_user_model.objects.get(is_superuser=True)
    assert superuser.get_username() == username
    assert superuser.check_password(password)
    assert api_status(key) == 200
    # The ordinary "admin" was neither promoted nor given a new password.
    plain = django_user_model.objects.get(username="admin")
    assert plain.pk != superuser.pk
    assert not plain.is_superuser and not plain.is_staff
    assert plain.check_password("plain-password-123")
    # And a second run still finds the superuser it made.
    assert _parse_ensureadmin(run("ensureadmin"))[0] == username
    assert django_user_model.objects.filter(is_superuser=True).count() == 1


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_runstack_says_it_is_running_only_once_every_queue_has_a_ready_worker_and_stops_when_jobs_end(
    process_env, tmp_path, user
):
    """`make run`'s command, as a person runs it; Ctrl+C (SIGINT) during a job stops everything
    as soon as the job has finished (a warm shutdown), not after the whole grace."""
    env = {**process_env, "LONGRUN_VAR_DIR": str(tmp_path), "CELERY_WORKER_CONCURRENCY": "1"}
    env.pop("REDIS_URL", None)  # as on a fresh machine: it starts a Redis of its own
    port = free_port()
    runstack = subprocess.Popen(
        [sys.executable, "manage.py", "runstack", "--port", str(port), "--shutdown-grace", "60"],
        cwd=django_settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = runstack.stdout.readline()
            assert line, "runstack exited:\n" + "".join(lines)
            lines.append(line)
            if "Longrun is running" in line:
                break
        else:
            pytest.fail("runstack did not say it was running:\n" + "".join(lines))
        serving = selectors.queue_consumers()
        assert all(serving[queue] >= 1 for queue in LONGRUN_QUEUES), serving

        token = Token.objects.create(user=user).key
        response = requests.post(
            f"http://127.0.0.1:{port}/api/jobs/",
            json={"type": "sleep", "params": {"seconds": 5, "steps": 5}},
            headers={"Authorization": f"Token {token}"},
            timeout=10,
        )
        job_id = response.json()["id"]
        wait_for(
            lambda: Job.objects.get(pk=job_id).status == JobStatus.RUNNING, timeout=30, what="the job to run"
        )
    finally:
        asked_at = time.monotonic()
        runstack.send_signal(signal.SIGINT)
        output, _ = runstack.communicate(timeout=120)
    took = time.monotonic() - asked_at
    assert runstack.returncode == 0, output
    assert "Stopped." in output
    assert "Cold shutdown" not in output, output[-3000:]
    assert Job.objects.get(pk=job_id).status == JobStatus.SUCCEEDED  # it was let finish ...
    assert took < 25, f"{took:.1f} s"  # ... and the stop came once it had, not after 60 s of grace


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_warm_stopped_worker_still_busy_after_the_grace_is_stopped_cold(stack, user, commit):
    """The other half of `runstack`'s grace: a job longer than it does not hold the stop."""
    worker = stack.start_ready_worker("warm", queues=[JOB_QUEUE], concurrency=1, warm_stop=True)
    with commit():
        job = submission.job_create(owner=user, type="sleep", params={"seconds": 60, "steps": 60})
    wait_for(
        lambda: Job.objects.get(pk=job.pk).status == JobStatus.RUNNING, timeout=30, what="the job to run"
    )
    asked_at = time.monotonic()
    stack.stop(worker, timeout=2, escalate=signal.SIGQUIT)
    took = time.monotonic() - asked_at
    assert took < 12, f"{took:.1f} s"  # 2 s of grace, then a cold shutdown: not the job's 60 s
    assert "Cold shutdown" in stack.log_tail("warm")
    assert Job.objects.get(pk=job.pk).status == JobStatus.RUNNING  # its lease brings it back
