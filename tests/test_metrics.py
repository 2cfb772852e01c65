"""Prometheus metrics (`tasks_app.metrics`, `GET /metrics`): who may read them, and that every
family counts what happened, whichever process recorded it. The event counters live in this test
session's Redis under its own channel prefix, so each test reads them before and after."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from unittest import mock

import pytest
import redis
import requests
import websockets
from django.conf import settings
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.authtoken.models import Token

from tasks_app import metrics, webhooks
from tasks_app.conf import JOB_QUEUE
from tasks_app.models import DeliveryStatus, Job, WebhookDelivery
from tasks_app.realtime import publish
from tasks_app.services import dispatch, execution, submission, workers
from tasks_app.services import webhooks as webhook_service
from tests.helpers import wait_for, with_longrun

pytestmark = pytest.mark.django_db

TOKEN = "s3cret-scrape-token"


def scrape(client: Client | None = None, **headers) -> dict[tuple[str, tuple], float]:
    """GET /metrics as the scraper (bearer token) and parse it: {(sample name, labels): value}."""
    publish.publisher.flush()  # the counters' writes are not waited for: read their replies first
    response = (client or Client()).get("/metrics", headers=headers or {"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.content
    return parse(response.content.decode())


def parse(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def changed(before: dict, after: dict) -> dict:
    return {key: value - before.get(key, 0) for key, value in after.items() if value != before.get(key, 0)}


@pytest.fixture
def no_celery():
    """Celery's publish faked, the live updates (which carry the counters) real."""
    with mock.patch.object(dispatch.run_job, "apply_async"):
        yield


@pytest.fixture(autouse=True)
def metrics_token(settings):
    with_longrun(settings, METRICS_TOKEN=TOKEN)


# --- who may read them ------------------------------------------------------------------------


def test_metrics_need_the_bearer_token_or_a_staff_session(settings, user, staff_user):
    anonymous = Client().get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"LONGRUN_METRICS_TOKEN" in anonymous.content
    assert Client().get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert Client().get("/metrics", headers={"Authorization": f"Token {TOKEN}"}).status_code == 401
    ok = Client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok["Content-Type"].startswith("text/plain; version=")
    assert "no-cache" in ok["Cache-Control"]

    signed_in = Client()
    signed_in.force_login(user)
    assert signed_in.get("/metrics").status_code == 401  # a user, not staff
    signed_in.force_login(staff_user)
    assert signed_in.get("/metrics").status_code == 200

    with_longrun(settings, METRICS_TOKEN="")  # no token set: no bearer gets in, even an empty one
    assert Client().get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401
    assert Client().post("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code in (401, 405)


# --- what they count --------------------------------------------------------------------------


def test_a_job_is_counted_when_submitted_started_and_finished(user, no_celery, commit):
    before = scrape()
    with commit():
        job = submission.job_create(owner=user, type="sleep", params={"seconds": 0})
    Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(seconds=2))
    with commit():
        execution.job_claim(job_id=job.pk, worker="w@h:1")
    with commit():
        execution.job_succeed(job_id=job.pk, worker="w@h:1", result={})
    delta = changed(before, scrape())

    assert delta[("longrun_jobs_submitted_total", (("type", "sleep"),))] == 1
    assert delta[("longrun_jobs_finished_total", (("status", "succeeded"), ("type", "sleep")))] == 1
    # It waited about 2 s: counted in the buckets from 5 s up, not in those up to 1 s.
    wait = "longrun_job_queue_wait_seconds"
    assert delta[(f"{wait}_count", (("type", "sleep"),))] == 1
    assert delta[(f"{wait}_bucket", (("le", "5.0"), ("type", "sleep")))] == 1
    assert (f"{wait}_bucket", (("le", "1.0"), ("type", "sleep"))) not in delta
    assert 1.5 < delta[(f"{wait}_sum", (("type", "sleep"),))] < 10
    assert delta[("longrun_job_run_seconds_count", (("type", "sleep"),))] == 1


def test_a_bulk_submission_and_failures_are_counted_by_type_and_status(user, no_celery, commit):
    before = scrape()
    with commit():
        jobs = submission.jobs_create_bulk(
            owner=user,
            submissions=[{"type": "sleep", "params": {}}] * 3 + [{"type": "primes", "params": {"n": 10}}],
        )
    with commit():
        execution.job_claim(job_id=jobs[0].pk, worker="w@h:1")
    with commit():
        execution.job_fail(
            job_id=jobs[0].pk, worker="w@h:1", error={"type": "ValueError", "message": "no"}, traceback=""
        )
    delta = changed(before, scrape())
    assert delta[("longrun_jobs_submitted_total", (("type", "sleep"),))] == 3
    assert delta[("longrun_jobs_submitted_total", (("type", "primes"),))] == 1
    assert delta[("longrun_jobs_finished_total", (("status", "failed"), ("type", "sleep")))] == 1


def test_current_state_is_read_from_the_database(user, no_celery, settings):
    with_longrun(settings, WORKER_LOST_AFTER=30)
    submission.job_create(owner=user, type="sleep", params={})
    submission.job_create(owner=user, type="sleep", params={})
    workers.worker_register(name="jobs@a", host="a", pid=1, queues=[JOB_QUEUE], concurrency=2)
    lost = workers.worker_register(name="jobs@b", host="b", pid=2, queues=[JOB_QUEUE], concurrency=2)
    lost_at = timezone.now() - timedelta(seconds=120)
    type(lost).objects.filter(pk=lost.pk).update(last_seen_at=lost_at)
    samples = scrape()
    assert samples[("longrun_jobs", (("status", "queued"),))] == 2
    assert samples[("longrun_jobs", (("status", "running"),))] == 0
    assert samples[("longrun_workers", (("state", "online"),))] == 1
    assert samples[("longrun_workers", (("state", "lost"),))] == 1
    assert samples[("longrun_queue_jobs", (("queue", JOB_QUEUE), ("status", "queued")))] == 2
    assert samples[("longrun_queue_consumers", (("queue", JOB_QUEUE),))] == 1
    assert samples[("longrun_queue_consumers", (("queue", "longrun.maintenance"),))] == 0
    assert samples[("longrun_metrics_store_up", ())] == 1


def test_webhook_attempts_are_counted_by_result(user, no_celery, commit):
    job = Job.objects.create(type="sleep", owner=user, callback_url="https://hooks.example.com/x")
    deliveries = [
        WebhookDelivery.objects.create(
            job=job, n=n, event_type="job.succeeded", webhook_id=f"msg_{n}", url=job.callback_url, payload={}
        )
        for n in (1, 2)
    ]
    WebhookDelivery.objects.update(status=DeliveryStatus.SENDING)
    before = scrape()
    for delivery, code in zip(deliveries, (204, 500), strict=True):
        delivery.refresh_from_db()
        with commit():
            webhook_service.webhook_record_attempt(
                delivery=delivery,
                outcome=webhooks.Outcome(status_code=code, duration_ms=3),
                started_at=timezone.now(),
            )
    delta = changed(before, scrape())
    assert delta[("longrun_webhook_attempts_total", (("result", "delivered"),))] == 1
    assert delta[("longrun_webhook_attempts_total", (("result", "retrying"),))] == 1


def test_with_redis_down_the_database_state_is_still_served(user, no_celery, settings):
    submission.job_create(owner=user, type="sleep", params={})
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }
    samples = scrape()
    assert samples[("longrun_metrics_store_up", ())] == 0
    assert samples[("longrun_jobs", (("status", "queued"),))] == 1
    assert not any(name.startswith("longrun_jobs_submitted") for name, _ in samples)


def test_a_process_counts_its_connections_in_a_key_that_ends_with_them():
    counter = metrics.ConnectionCounter()
    client = redis.Redis.from_url(settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0])
    pattern = metrics._key("connections:*")

    def stored() -> list[dict]:
        return [
            {k.decode(): int(v) for k, v in client.hgetall(key).items()} for key in client.scan_iter(pattern)
        ]

    async def scenario() -> None:
        baseline = stored()
        counter.opened("websocket")
        counter.opened("websocket")
        with counter.open("sse"):
            await asyncio.sleep(0.3)
            assert {"websocket": 2, "sse": 1} in stored()
            ttl = max(client.ttl(key) for key in client.scan_iter(pattern))
            assert 0 < ttl <= 45
        counter.closed("websocket")
        counter.closed("websocket")
        await asyncio.wait_for(counter._reporter, 5)  # type: ignore[arg-type]
        assert stored() == baseline  # at zero the key is gone, and the reporter with it

    asyncio.run(scenario())


# --- the real thing: prefork workers and Daphne -----------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_jobs_run_by_prefork_workers_and_live_connections_show_in_daphnes_metrics(stack, user, free_tcp_port):
    stack.env["LONGRUN_METRICS_TOKEN"] = TOKEN
    stack.start_ready_worker("metered", queues=[JOB_QUEUE], concurrency=2)
    stack.start_daphne(free_tcp_port)
    base = f"http://127.0.0.1:{free_tcp_port}"
    token = Token.objects.create(user=user).key
    auth = {"Authorization": f"Token {token}"}

    def read() -> dict:
        response = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert response.status_code == 200
        return parse(response.text)

    before = read()
    response = requests.post(
        f"{base}/api/jobs/bulk/",
        json={"jobs": [{"type": "sleep", "params": {"seconds": 0}}] * 6},
        headers=auth,
        timeout=10,
    )
    ids = [job["id"] for job in response.json()["jobs"]]
    wait_for(lambda: Job.objects.filter(pk__in=ids, status="succeeded").count() == 6, what="six jobs")
    finished = ("longrun_jobs_finished_total", (("status", "succeeded"), ("type", "sleep")))
    wait_for(lambda: read().get(finished, 0) - before.get(finished, 0) == 6, timeout=10, what="six counted")
    delta = changed(before, read())
    assert delta[("longrun_jobs_submitted_total", (("type", "sleep"),))] == 6
    assert delta[("longrun_job_run_seconds_count", (("type", "sleep"),))] == 6
    assert delta[("longrun_job_queue_wait_seconds_count", (("type", "sleep"),))] == 6

    async def connected() -> tuple[dict, dict]:
        async with websockets.connect(
            f"ws://127.0.0.1:{free_tcp_port}/ws/jobs/", additional_headers=auth
        ) as sock:
            await sock.send(json.dumps({"action": "subscribe", "scope": "mine"}))
            await sock.recv()
            stream = await asyncio.to_thread(
                requests.get, f"{base}/api/jobs/stream/", headers=auth, stream=True, timeout=10
            )
            try:
                deadline = time.monotonic() + 10
                while True:
                    during = await asyncio.to_thread(read)
                    kinds = {
                        kind: during.get(("longrun_connections", (("kind", kind),)), 0)
                        for kind in ("websocket", "sse")
                    }
                    if kinds == {"websocket": 1, "sse": 1} or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
            finally:
                stream.close()
        await asyncio.sleep(0.5)
        return kinds, await asyncio.to_thread(read)

    during, after = asyncio.run(connected())
    assert during == {"websocket": 1, "sse": 1}
    wait_for(
        lambda: read().get(("longrun_connections", (("kind", "websocket"),)), 0) == 0,
        timeout=10,
        what="closed",
    )
