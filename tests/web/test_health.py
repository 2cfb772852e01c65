"""`GET /healthz` and `GET /readyz` (`tasks_app.health`): what a load balancer sees."""

from __future__ import annotations

from unittest import mock

import pytest
from django.test import Client

from tasks_app.conf import JOB_QUEUE, LONGRUN_QUEUES, MAINTENANCE_QUEUE, WEBHOOK_QUEUE
from tasks_app.services import workers

pytestmark = pytest.mark.django_db


def serve(*queues: str) -> None:
    for n, queue in enumerate(queues):
        workers.worker_register(name=f"w-{queue}@h", host="h", pid=100 + n, queues=[queue], concurrency=1)


def test_healthz_is_200_without_a_login_and_checks_nothing_else():
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_readyz_is_ok_when_everything_answers_and_every_queue_has_a_live_worker():
    serve(*LONGRUN_QUEUES)
    response = Client().get("/readyz")
    assert response.status_code == 200, response.json()
    report = response.json()
    assert report["status"] == "ok"
    assert set(report["checks"]) == {
        "database",
        "broker",
        "channel_layer",
        *(f"queue:{q}" for q in LONGRUN_QUEUES),
    }
    for check in report["checks"].values():
        assert check["ok"] is True and isinstance(check["ms"], float) and check["detail"]


def test_a_queue_nobody_reads_fails_readiness_and_says_which():
    serve(JOB_QUEUE, WEBHOOK_QUEUE)
    response = Client().get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks[f"queue:{MAINTENANCE_QUEUE}"] == {
        "ok": False,
        "ms": checks[f"queue:{MAINTENANCE_QUEUE}"]["ms"],
        "detail": "no live worker reads this queue",
    }
    assert checks[f"queue:{JOB_QUEUE}"]["ok"] is True


def test_a_queue_a_job_type_names_is_checked_too(routed_job_types):
    serve(*LONGRUN_QUEUES)
    routed = f"queue:{routed_job_types.ROUTED_QUEUE}"
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"][routed]["ok"] is False
    serve(routed_job_types.ROUTED_QUEUE)
    assert Client().get("/readyz").json()["checks"][routed]["ok"] is True


def test_a_dead_broker_fails_readiness_without_naming_the_host():
    serve(*LONGRUN_QUEUES)
    from project.celery import app

    with mock.patch.object(
        app, "connection_for_read", side_effect=ConnectionRefusedError("redis://secret@10.0.0.9")
    ):
        response = Client().get("/readyz")
    assert response.status_code == 503
    broker = response.json()["checks"]["broker"]
    assert broker["ok"] is False
    assert broker["detail"] == "unreachable (ConnectionRefusedError)"
    assert "10.0.0.9" not in response.content.decode()


def test_an_unreachable_channel_layer_fails_readiness(settings):
    serve(*LONGRUN_QUEUES)
    settings.CHANNEL_LAYERS = {"default": {"CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]}}}
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["channel_layer"]["ok"] is False


def test_probes_answer_only_reads():
    assert Client().post("/readyz").status_code == 405
    assert Client().post("/healthz").status_code == 405
