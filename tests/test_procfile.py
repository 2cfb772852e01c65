"""The `Procfile` as it is, run by `honcho start` against the test database and a Redis of the
test's own: every process starts, `/readyz` turns ready (every queue has a live worker), a job
submitted over HTTP runs, and SIGTERM stops everything."""

from __future__ import annotations

import configparser
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from django.conf import settings
from rest_framework.authtoken.models import Token

from tasks_app.models import Job, JobStatus
from tasks_app.stack import free_port
from tests.helpers import wait_for


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_honcho_runs_the_procfile_as_it_is(stack, tmp_path, user):
    redis_port, web_port = free_port(), free_port()
    stack.start_redis(redis_port, tmp_path / "redis", persistent=False)
    env = {
        **stack.env,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "LONGRUN_BEAT_SCHEDULE": str(tmp_path / "beat-schedule"),
        "LONGRUN_WORKER_HEARTBEAT_SECONDS": "1",
        "CELERY_WORKER_CONCURRENCY": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    log = (tmp_path / "honcho.log").open("w")
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-p", str(web_port)],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{web_port}"
    try:

        def ready() -> bool:
            try:
                return requests.get(f"{base}/readyz", timeout=5).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(ready, timeout=90, what="/readyz to be 200")
        checks = requests.get(f"{base}/readyz", timeout=5).json()["checks"]
        assert all(check["ok"] for check in checks.values()), checks

        token = Token.objects.create(user=user).key
        response = requests.post(
            f"{base}/api/jobs/",
            json={"type": "sleep", "params": {"seconds": 0.1, "steps": 1}},
            headers={"Authorization": f"Token {token}"},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        job = wait_for(
            lambda: (j := Job.objects.get(pk=response.json()["id"])).is_terminal and j,
            timeout=60,
            what="the job",
        )
        assert job.status == JobStatus.SUCCEEDED
    finally:
        honcho.send_signal(signal.SIGTERM)  # honcho passes it to every process
        try:
            stopped = honcho.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            stopped = None
        log.close()
    assert stopped is not None, "honcho did not stop within 60 s of SIGTERM"
    output = (tmp_path / "honcho.log").read_text()
    for name in ("web", "worker", "maintenance", "webhooks", "beat"):
        assert f"{name}." in output, output[-3000:]


# --- the example systemd units (deploy/systemd/) -------------------------------------------------

SYSTEMD = Path(settings.BASE_DIR) / "deploy" / "systemd"
UNITS = {
    "web": "longrun-web@.service",
    "worker": "longrun-worker.service",
    "maintenance": "longrun-maintenance.service",
    "webhooks": "longrun-webhooks.service",
    "beat": "longrun-beat.service",
}


def procfile() -> dict[str, list[str]]:
    lines = (Path(settings.BASE_DIR) / "Procfile").read_text().splitlines()
    return {
        name: command.split()
        for name, _, command in (line.partition(": ") for line in lines if line and not line.startswith("#"))
    }


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read(SYSTEMD / name)
    return parser


def normalized(argv: list[str]) -> list[str]:
    """The command from its program on, without paths, env prefixes or placeholders."""
    argv = [arg for arg in argv if arg != "env" and "=" not in arg or arg.startswith("--")]
    start = next(i for i, arg in enumerate(argv) if arg.endswith(("celery", "daphne")))
    words = [Path(argv[start]).name, *argv[start + 1 :]]
    return [
        "PORT" if word in ("%i", "${PORT:-8000}") else word.replace("%%H", "%h")
        for word in words
        if not word.startswith(("/var/lib/", "${LONGRUN_BEAT_SCHEDULE"))
    ]


def test_every_process_of_the_procfile_has_a_systemd_unit_running_the_same_command():
    for process, command in procfile().items():
        service = unit(UNITS[process])["Service"]
        assert normalized(service["ExecStart"].split()) == normalized(command), process
        assert service["EnvironmentFile"] == "/etc/longrun/longrun.env"
        assert service["Restart"] == "always"


def test_worker_units_give_running_jobs_their_grace_before_systemd_kills():
    grace = 30  # CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT's default (README, "Settings")
    for process in ("worker", "maintenance", "webhooks"):
        service = unit(UNITS[process])["Service"]
        assert service["Environment"] == "REMAP_SIGTERM=SIGQUIT", process
        assert int(service["TimeoutStopSec"]) > grace, process
        assert service["KillMode"] == "mixed", process  # SIGTERM to the main process only


def test_the_environment_file_names_the_settings_that_matter():
    names = {
        line.split("=", 1)[0].lstrip("# ")
        for line in (SYSTEMD / "longrun.env").read_text().splitlines()
        if "=" in line
    }
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "ALLOWED_HOSTS", "LONGRUN_METRICS_TOKEN"} <= names
