"""Webhooks (issue 7): Standard Webhooks signing checked against the reference library, the SSRF
guard (at submission and again at send time, with the connection pinned to the checked address),
real deliveries through a cluster of real processes to a real HTTP receiver (retries, 410 Gone,
a slow receiver cut off at the deadline, redelivery, secret rotation), and the admin.

No test here reaches the network: host names are answered by a mocked `getaddrinfo`, and every
receiver listens on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.contrib.messages import get_messages
from django.core.cache import cache
from django.db import transaction
from django.test import Client
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tasks_app import webhooks
from tasks_app.models import DeliveryStatus, Job, WebhookAttempt, WebhookDelivery
from tasks_app.services import control, dispatch, execution, submission
from tasks_app.services.webhooks import webhooks_dispatch_due
from tasks_app.stack import JOB_QUEUE, MAINTENANCE_QUEUE, WEBHOOK_QUEUE
from tasks_app.worker import webhook_sender
from tests.helpers import ProcessStack, make_job, wait_for, with_longrun

HANG = "hang"  # a receiver script step: hold the request (up to 60 s) without answering


# --- helpers --------------------------------------------------------------------------------


class Receiver:
    """A real HTTP server on 127.0.0.1 (a free port, its own thread) that records every request
    (method, path, headers, body) and answers each path from a script: status codes in order,
    or HANG; 200 once the script is used up."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        self._scripts: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            do_GET = do_PUT = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def script(self, path: str, *steps: Any) -> None:
        with self._lock:
            self._scripts[path] = list(steps)

    def url(self, path: str, host: str = "localhost") -> str:
        return f"http://{host}:{self.port}{path}"

    def to(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if urlsplit(r["path"]).path == path]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append(
                {
                    "method": handler.command,
                    "path": handler.path,
                    "body": body,
                    "at": time.time(),
                    "headers": {k.lower(): v for k, v in handler.headers.items()},
                }
            )
            script = self._scripts.get(urlsplit(handler.path).path)
            step = script.pop(0) if script else 200
        if step == HANG:
            self.release.wait(60)
            step = 200
        try:
            answer = b"ok"
            handler.send_response(step)
            if 300 <= step < 400:
                handler.send_header("Location", f"http://127.0.0.1:{self.port}/elsewhere")
            handler.send_header("Content-Length", str(len(answer)))
            handler.end_headers()
            handler.wfile.write(answer)
        except OSError:
            pass  # the sender gave up (deadline) before the answer

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _answer(ip: str, port: int) -> tuple:
    if ":" in ip:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))


class FakeDNS:
    """`socket.getaddrinfo` answering the given host names (each call takes the next answer, the
    last one repeats); every other name, and numeric addresses, resolve for real (no network)."""

    def __init__(self, **answers: list[list[str]]) -> None:
        self.answers = {host.replace("_", "."): list(seq) for host, seq in answers.items()}
        self.lookups: list[str] = []
        self._real = socket.getaddrinfo

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> list[tuple]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name in self.answers:
            self.lookups.append(name)
            seq = self.answers[name]
            ips = seq.pop(0) if len(seq) > 1 else seq[0]
            return [_answer(ip, int(port or 0)) for ip in ips]
        return self._real(host, port, *args, **kwargs)

    def patch(self):
        # tasks_app.webhooks uses the socket module, so this is socket.getaddrinfo itself.
        return mock.patch("tasks_app.webhooks.socket.getaddrinfo", side_effect=self)


@pytest.fixture
def no_network(monkeypatch) -> list[Any]:
    """Any outgoing connection attempt fails the test."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise AssertionError(f"a network connection was attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert attempts == []


def allow_private(settings, *hosts: str) -> None:
    settings.LONGRUN = {**settings.LONGRUN, "WEBHOOK_ALLOWED_PRIVATE_HOSTS": list(hosts)}


def verify(secret: str, request: dict[str, Any]) -> Any:
    return Webhook(secret).verify(request["body"], request["headers"])


# --- 1. signing ------------------------------------------------------------------------------

BODY = json.dumps(
    {
        "type": "job.succeeded",
        "timestamp": "2030-01-01T00:00:00Z",
        "data": {"id": "x", "name": "caf\u00e9 \u2713"},
    },
    separators=(",", ":"),
).encode()


def test_new_secrets_are_whsec_base64_of_32_random_bytes():
    import base64

    a, b = webhooks.new_secret(), webhooks.new_secret()
    assert a.startswith("whsec_") and a != b
    assert len(base64.b64decode(a.removeprefix("whsec_"))) == 32


def test_our_signature_is_the_reference_librarys():
    secret, msg_id, ts = webhooks.new_secret(), "msg_2b8c0b3d", int(time.time())
    ours = webhooks.sign(secret, msg_id, ts, BODY)
    reference = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=dt_timezone.utc), BODY.decode())
    assert ours == reference
    headers = webhooks.signature_headers([secret], msg_id, ts, BODY)
    assert headers == {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": ours}
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_a_tampered_body_id_or_other_secret_fails_verification():
    secret, ts = webhooks.new_secret(), int(time.time())
    headers = webhooks.signature_headers([secret], "msg_1", ts, BODY)
    tampered = BODY.replace(b"job.succeeded", b"job.failed")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "msg_2"})
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.new_secret()).verify(BODY, headers)


@pytest.mark.parametrize(
    "offset, ok", [(-290, True), (290, True), (-301, False), (301, False), (-3600, False)]
)
def test_a_timestamp_more_than_five_minutes_off_fails(offset, ok):
    secret, ts = webhooks.new_secret(), int(time.time()) + offset
    headers = webhooks.signature_headers([secret], "msg_1", ts, BODY)
    if ok:
        Webhook(secret).verify(BODY, headers)
    else:
        with pytest.raises(WebhookVerificationError, match="too (old|new)"):
            Webhook(secret).verify(BODY, headers)


def test_during_rotation_a_receiver_with_either_secret_verifies_the_same_delivery():
    old, new, ts = webhooks.new_secret(), webhooks.new_secret(), int(time.time())
    headers = webhooks.signature_headers([new, old], "msg_rot", ts, BODY)
    signatures = headers["webhook-signature"].split(" ")
    assert signatures == [webhooks.sign(new, "msg_rot", ts, BODY), webhooks.sign(old, "msg_rot", ts, BODY)]
    assert Webhook(old).verify(BODY, headers) == json.loads(BODY)
    assert Webhook(new).verify(BODY, headers) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.new_secret()).verify(BODY, headers)


# --- 2. SSRF guard ---------------------------------------------------------------------------

UNSAFE_URLS = [
    "ftp://example.com/hook",
    "file:///etc/passwd",
    "http://127.0.0.1/",
    "http://localhost/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/",
    "http://[fd00::1]/",
    "http://[fe80::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://224.0.0.1/",
    "http://0.0.0.0/",
    "http://2130706433/",  # 127.0.0.1 as one decimal number
    "http://0x7f000001/",  # hexadecimal
    "http://0177.0.0.1/",  # octal
    "http://127.1/",
    "http://internal.example.com/hook",  # its DNS answer is private (FakeDNS below)
]

PRIVATE_DNS = dict(internal_example_com=[["10.1.2.3"]])


@pytest.mark.parametrize("url", UNSAFE_URLS)
def test_check_url_refuses(url, settings, no_network):
    allow_private(settings)
    with FakeDNS(**PRIVATE_DNS).patch():
        with pytest.raises(webhooks.UnsafeURL) as refused:
            webhooks.check_url(url)
    # Not "does not resolve": that one is let through at submission.
    assert type(refused.value) is webhooks.UnsafeURL, refused.value


@pytest.mark.django_db
@pytest.mark.parametrize("url", UNSAFE_URLS)
def test_submission_refuses_callback_url(url, api, settings, no_network):
    allow_private(settings)
    with FakeDNS(**PRIVATE_DNS).patch():
        response = api.post("/api/jobs/", {"type": "sleep", "callback_url": url}, format="json")
    assert response.status_code == 400, response.content
    assert {e["field"] for e in response.json()["errors"]} == {"callback_url"}
    assert not Job.objects.exists()


def test_check_url_refuses_a_name_with_any_private_answer(settings, no_network):
    allow_private(settings)
    with FakeDNS(mixed_example_com=[["93.184.216.34", "10.1.2.3"]]).patch():
        with pytest.raises(webhooks.UnsafeURL, match="10.1.2.3"):
            webhooks.check_url("https://mixed.example.com/hook")


def test_check_url_accepts_a_public_address_and_returns_it(settings, no_network):
    allow_private(settings)
    dns = FakeDNS(hooks_example_com=[["93.184.216.34"]])
    with dns.patch():
        target = webhooks.check_url("https://hooks.example.com:8443/in?x=1")
    assert target == webhooks.Target("https", "hooks.example.com", 8443, "/in?x=1", "93.184.216.34")
    assert dns.lookups == ["hooks.example.com"]


@pytest.mark.django_db
def test_submission_accepts_a_public_callback_url(api, settings, no_network):
    allow_private(settings)
    url = "https://hooks.example.com/in"
    with FakeDNS(hooks_example_com=[["93.184.216.34"]]).patch():
        response = api.post("/api/jobs/", {"type": "sleep", "callback_url": url}, format="json")
    assert response.status_code == 202, response.content
    assert Job.objects.get().callback_url == url


@pytest.mark.django_db
def test_allowed_private_hosts_allow_that_name_and_nothing_else(api, settings, no_network):
    allow_private(settings, "localhost")
    assert webhooks.check_url("http://localhost:8000/hook").address == "127.0.0.1"
    for url in (
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://10.0.0.1/",
        "http://127.1/",
        "http://internal.example.com/",
    ):
        with FakeDNS(**PRIVATE_DNS).patch(), pytest.raises(webhooks.UnsafeURL):
            webhooks.check_url(url)
    response = api.post(
        "/api/jobs/", {"type": "sleep", "callback_url": "http://localhost:8000/hook"}, format="json"
    )
    assert response.status_code == 202, response.content
    response = api.post(
        "/api/jobs/", {"type": "sleep", "callback_url": "http://127.0.0.1:8000/hook"}, format="json"
    )
    assert response.status_code == 400
    assert Job.objects.count() == 1


# --- 3. DNS rebinding and the pinned connection ----------------------------------------------


@pytest.mark.django_db
def test_a_host_that_rebinds_to_loopback_after_submission_is_never_connected_to(user, receiver, settings):
    allow_private(settings)
    url = receiver.url("/hook", host="rebind.example.com")
    with FakeDNS(rebind_example_com=[["93.184.216.34"]]).patch():
        job = submission.job_create(owner=user, type="sleep", params={"seconds": 0}, callback_url=url)
    control.job_cancel(
        job_id=job.pk, actor=user
    )  # ends it: the delivery is written (and not sent: no commit)
    delivery = WebhookDelivery.objects.get(job=job)
    assert delivery.status == DeliveryStatus.PENDING and delivery.event_type == "job.cancelled"

    dns = FakeDNS(rebind_example_com=[["127.0.0.1"]])
    with dns.patch(), mock.patch("socket.create_connection", wraps=socket.create_connection) as connect:
        outcome = webhook_sender.send(delivery.pk)
    assert dns.lookups == ["rebind.example.com"]
    connect.assert_not_called()
    time.sleep(0.2)
    assert receiver.requests == []
    assert outcome == DeliveryStatus.PENDING  # retried later, when it may resolve to a public address again
    attempt = WebhookAttempt.objects.get(delivery=delivery)
    assert attempt.status_code is None
    assert attempt.error.startswith("Refused") and "127.0.0.1" in attempt.error
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and delivery.last_error == attempt.error


def test_post_connects_to_the_checked_address_not_a_second_lookup(receiver, settings):
    allow_private(settings, "pinned.example.com")
    # First answer: the receiver. Any later lookup of the name would point at 127.0.0.2, where
    # nothing listens.
    dns = FakeDNS(pinned_example_com=[["127.0.0.1"], ["127.0.0.2"]])
    with dns.patch():
        target = webhooks.check_url(receiver.url("/hook?a=1", host="pinned.example.com"))
        outcome = webhooks.post(target, b'{"x":1}', {"webhook-id": "msg_pin"}, timeout=5)
    assert outcome.status_code == 200 and outcome.error == "" and outcome.body == "ok"
    assert dns.lookups == ["pinned.example.com"]
    [request] = receiver.requests
    assert request["path"] == "/hook?a=1" and request["body"] == b'{"x":1}'
    assert request["headers"]["host"] == f"pinned.example.com:{receiver.port}"
    assert request["headers"]["webhook-id"] == "msg_pin"
    assert request["headers"]["content-type"] == "application/json"


def test_post_does_not_follow_redirects(receiver):
    receiver.script("/moved", 302)
    target = webhooks.Target("http", "127.0.0.1", receiver.port, "/moved", "127.0.0.1")
    outcome = webhooks.post(target, b"{}", {}, timeout=5)
    assert outcome.status_code == 302
    assert [r["path"] for r in receiver.requests] == ["/moved"]


def test_post_has_one_deadline_even_if_the_receiver_trickles_its_answer():
    """A receiver that sends its status line and headers one byte at a time must still be cut
    off at the deadline: otherwise one hostile receiver holds a sender thread indefinitely."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.wait(0.2):
                    conn.sendall(b"X")
            except OSError:
                pass

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        target = webhooks.Target("http", "127.0.0.1", port, "/", "127.0.0.1")
        stopper = threading.Timer(5, stop.set)  # the receiver gives up after 5 s at the latest
        stopper.start()
        started = time.monotonic()
        outcome = webhooks.post(target, b"{}", {}, timeout=1.0)
        elapsed = time.monotonic() - started
        stopper.cancel()
    finally:
        stop.set()
        server.close()
        thread.join(5)
    assert elapsed < 2.5, f"a 1 s deadline took {elapsed:.1f} s ({outcome})"
    assert outcome.status_code is None and "timed out" in outcome.error


# --- 4. end to end: real processes, a real receiver ------------------------------------------

HOOK_ENV = {
    "LONGRUN_WEBHOOK_ALLOWED_PRIVATE_HOSTS": "localhost",
    "LONGRUN_WEBHOOK_RETRY_SCHEDULE": "1,1,1,1",
    "LONGRUN_WEBHOOK_TIMEOUT": "2",
    "LONGRUN_SWEEP_INTERVAL": "1",
    # An idle worker otherwise waits out the whole soft-shutdown grace when stopped.
    "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": "1",
}
TERMINAL = {"succeeded", "failed", "cancelled"}
SETTLED = {"succeeded", "failed", "gone"}


@pytest.fixture(scope="module")
def hook_cluster(process_env, purge_queues, tmp_path_factory) -> Iterator[ProcessStack]:
    """A job worker, the maintenance worker, beat and the webhook worker (threads), shared by the
    end-to-end tests of this module (each waits for its own deliveries to settle)."""
    log_dir = tmp_path_factory.mktemp("webhook-cluster")
    cluster = ProcessStack(
        env={**process_env, **HOOK_ENV}, cwd=Path(django_settings.BASE_DIR), log_dir=log_dir
    )
    try:
        workers = [
            (
                "webhooks",
                cluster.start_worker("webhooks", queues=[WEBHOOK_QUEUE], pool="threads", concurrency=4),
            ),
            ("worker", cluster.start_worker("worker", queues=[JOB_QUEUE], concurrency=2)),
            ("maintenance", cluster.start_worker("maintenance", queues=[MAINTENANCE_QUEUE], pool="solo")),
        ]
        cluster.start_beat(log_dir / "beat-schedule")
        for name, child in workers:
            log = log_dir / f"{name}.log"
            wait_for(
                lambda: child.process.poll() is not None or (log.exists() and b" ready." in log.read_bytes()),
                timeout=60,
                what=f"worker {name} to be ready",
            )
            assert child.process.poll() is None, cluster.log_tail(name)
        yield cluster
    finally:
        cluster.kill_all()


@pytest.fixture
def hooks(hook_cluster, settings):
    """The cluster, with this process allowing `localhost` callbacks too (submission check)."""
    allow_private(settings, "localhost")
    return hook_cluster


def submit(api, callback_url: str | None, type: str = "sleep", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type, **fields}
    if type == "sleep":
        body.setdefault("params", {"seconds": 0, "steps": 1})
    if callback_url:
        body["callback_url"] = callback_url
    response = api.post("/api/jobs/", body, format="json")
    assert response.status_code == 202, response.content
    return response.json()


def ended(api, job_id: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(
        lambda: (job := api.get(f"/api/jobs/{job_id}/").json())["status"] in TERMINAL and job,
        timeout=timeout,
        what=f"job {job_id} to end",
    )


def deliveries(api, job_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/api/jobs/{job_id}/deliveries/")
    assert response.status_code == 200, response.content
    return response.json()


def settled(api, job_id: str, *, attempts: int = 1, timeout: float = 30) -> dict[str, Any]:
    """The job's only delivery, once it has settled after at least `attempts` attempts."""

    def check() -> dict[str, Any] | None:
        found = deliveries(api, job_id)
        if len(found) == 1 and found[0]["status"] in SETTLED and found[0]["attempts"] >= attempts:
            return found[0]
        return None

    return wait_for(check, timeout=timeout, what=f"the delivery of job {job_id} to settle")


def secret_of(api) -> str:
    [secret] = api.get("/api/webhook-secret/").json()["secrets"]
    return secret["secret"]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_succeeded_job_is_delivered_once_signed_with_its_rest_representation(hooks, api, receiver):
    secret = secret_of(api)
    job = submit(api, receiver.url("/ok"))
    done = ended(api, job["id"])
    assert done["status"] == "succeeded"
    delivery = settled(api, job["id"])
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 1, delivery
    assert delivery["event_type"] == "job.succeeded" and delivery["url"] == receiver.url("/ok")
    time.sleep(1.5)  # a sweep or two later: still exactly one request
    [request] = receiver.to("/ok")
    assert request["method"] == "POST"
    assert request["headers"]["webhook-id"] == delivery["webhook_id"]
    assert request["headers"]["content-type"] == "application/json"
    body = verify(secret, request)
    assert set(body) == {"type", "timestamp", "data"}
    assert body["type"] == "job.succeeded"
    assert abs(parse_datetime(body["timestamp"]) - timezone.now()) < timedelta(minutes=1)
    assert body["data"] == api.get(f"/api/jobs/{job['id']}/").json()
    assert body["data"]["status"] == "succeeded" and body["data"]["id"] == job["id"]
    assert abs(int(request["headers"]["webhook-timestamp"]) - time.time()) < 60


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_failed_and_cancelled_jobs_are_delivered_as_such(hooks, api, user, receiver):
    secret = secret_of(api)
    failing = submit(api, receiver.url("/failed"), type="fail", max_attempts=1)
    with transaction.atomic():  # cancelled while still queued: it never reaches a worker
        cancelled = submission.job_create(
            owner=user, type="sleep", params={"seconds": 5}, callback_url=receiver.url("/cancelled")
        )
        control.job_cancel(job_id=cancelled.pk, actor=user)
    for job_id, path, status in (
        (failing["id"], "/failed", "failed"),
        (str(cancelled.pk), "/cancelled", "cancelled"),
    ):
        assert ended(api, job_id)["status"] == status
        delivery = settled(api, job_id)
        assert delivery["status"] == "succeeded" and delivery["event_type"] == f"job.{status}"
        [request] = receiver.to(path)
        body = verify(secret, request)
        assert body["type"] == f"job.{status}"
        assert body["data"] == api.get(f"/api/jobs/{job_id}/").json()
        assert body["data"]["status"] == status


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_server_errors_are_retried_with_the_same_webhook_id(hooks, api, receiver):
    secret = secret_of(api)
    receiver.script("/flaky", 500, 500, 200)
    job = submit(api, receiver.url("/flaky"))
    delivery = settled(api, job["id"], attempts=3)
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 3, delivery
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 500, 200]
    assert delivery["last_status_code"] == 200 and delivery["delivered_at"] is not None
    requests = receiver.to("/flaky")
    assert len(requests) == 3
    assert {r["headers"]["webhook-id"] for r in requests} == {delivery["webhook_id"]}
    assert len({r["body"] for r in requests}) == 1  # the same event each time
    for request in requests:  # each attempt signed afresh, each valid
        verify(secret, request)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_410_gone_stops_deliveries_to_that_url(hooks, api, receiver):
    receiver.script("/gone", 410)
    first = submit(api, receiver.url("/gone"))
    delivery = settled(api, first["id"])
    assert delivery["status"] == "gone" and delivery["attempts"] == 1, delivery
    later = submit(api, receiver.url("/gone"))
    assert ended(api, later["id"])["status"] == "succeeded"
    time.sleep(2)  # two sweeps
    assert len(receiver.to("/gone")) == 1
    assert deliveries(api, later["id"]) == []


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_slow_receiver_is_cut_off_at_the_timeout_and_retried_without_holding_a_job_worker(
    hooks, api, receiver
):
    paths = ["/slow1", "/slow2", "/slow3"]  # more hanging deliveries than the job worker has processes
    for path in paths:
        receiver.script(path, HANG, 200)
    jobs = [submit(api, receiver.url(path)) for path in paths]
    wait_for(lambda: all(receiver.to(path) for path in paths), timeout=30, what="the slow requests")
    quick = submit(api, None)  # submitted while every delivery hangs
    quick_done = ended(api, quick["id"], timeout=15)
    assert quick_done["status"] == "succeeded"

    cut_off = []
    for job, path in zip(jobs, paths):
        delivery = settled(api, job["id"], attempts=2)
        assert delivery["status"] == "succeeded" and delivery["attempts"] == 2, delivery
        first, second = delivery["attempt_log"]
        assert first["status_code"] is None and "timed out" in first["error"], first
        assert 1800 <= first["duration_ms"] <= 3500, first
        assert second["status_code"] == 200
        cut_off.append(parse_datetime(first["started_at"]) + timedelta(milliseconds=first["duration_ms"]))
        assert (
            len({r["headers"]["webhook-id"] for r in receiver.to(path)}) == 1 and len(receiver.to(path)) == 2
        )
    # The quick job ran while all the deliveries were still waiting on their receiver.
    assert parse_datetime(quick_done["finished_at"]) < min(cut_off), (quick_done["finished_at"], cut_off)
    assert "longrun.deliver_webhook[" not in hooks.log_tail("worker", 10**7)
    assert "longrun.deliver_webhook[" in hooks.log_tail("webhooks", 10**7)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_redeliver_sends_the_same_webhook_id_again(hooks, api, receiver):
    secret = secret_of(api)
    job = submit(api, receiver.url("/again"))
    delivery = settled(api, job["id"])
    assert delivery["status"] == "succeeded"
    response = api.post(f"/api/jobs/{job['id']}/deliveries/1/redeliver/")
    assert response.status_code == 202, response.content
    assert response.json()["webhook_id"] == delivery["webhook_id"]
    assert response.json()["status"] in {"pending", "sending", "succeeded"}
    wait_for(lambda: len(receiver.to("/again")) == 2, timeout=20, what="the redelivery")
    again = settled(api, job["id"], attempts=2)
    assert again["status"] == "succeeded" and again["attempts"] == 2
    first, second = receiver.to("/again")
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"] == delivery["webhook_id"]
    assert verify(secret, second) == verify(secret, first)
    assert api.post(f"/api/jobs/{job['id']}/deliveries/2/redeliver/").status_code == 404


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_after_rotation_deliveries_carry_two_signatures_each_valid(hooks, api, receiver):
    old = secret_of(api)
    response = api.post("/api/webhook-secret/rotate/")
    assert response.status_code == 200, response.content
    secrets_ = response.json()["secrets"]
    assert len(secrets_) == 2
    new = secrets_[0]["secret"]
    assert secrets_[1]["secret"] == old and new != old and new.startswith("whsec_")
    assert secrets_[0]["expires_at"] is None
    grace = parse_datetime(secrets_[1]["expires_at"]) - timezone.now()
    assert timedelta(hours=23) < grace <= timedelta(hours=24)
    assert [s["secret"] for s in api.get("/api/webhook-secret/").json()["secrets"]] == [new, old]

    job = submit(api, receiver.url("/rotated"))
    settled(api, job["id"])
    [request] = receiver.to("/rotated")
    signatures = request["headers"]["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert verify(old, request)["data"]["id"] == job["id"]
    assert verify(new, request)["data"]["id"] == job["id"]
    with pytest.raises(WebhookVerificationError):
        verify(webhooks.new_secret(), request)


# --- 5. admin --------------------------------------------------------------------------------

DELIVERIES_ADMIN = "/admin/tasks_app/webhookdelivery/"


@pytest.fixture
def admin_client_root(django_user_model, settings) -> Client:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-password-123")
    client = Client()
    client.force_login(root)
    return client


@pytest.fixture
def some_deliveries(user) -> dict[str, WebhookDelivery]:
    job = Job.objects.create(
        owner=user, type="sleep", status="succeeded", callback_url="https://example.com/h"
    )
    states = {
        "msg_delivered": (DeliveryStatus.SUCCEEDED, 1),
        "msg_fresh": (DeliveryStatus.PENDING, 0),
        "msg_retrying": (DeliveryStatus.PENDING, 2),
        "msg_failedout": (DeliveryStatus.FAILED, 11),
        "msg_goneaway": (DeliveryStatus.GONE, 1),
        "msg_inflight": (DeliveryStatus.SENDING, 1),
    }
    return {
        webhook_id: WebhookDelivery.objects.create(
            job=job,
            n=n,
            event_type="job.succeeded",
            webhook_id=webhook_id,
            url=job.callback_url,
            payload={"type": "job.succeeded"},
            status=status,
            attempts=attempts,
        )
        for n, (webhook_id, (status, attempts)) in enumerate(states.items(), start=1)
    }


@pytest.mark.django_db
def test_admin_delivery_changelist_renders_every_delivery(admin_client_root, some_deliveries):
    response = admin_client_root.get(DELIVERIES_ADMIN)
    assert response.status_code == 200
    page = response.content.decode()
    for webhook_id in some_deliveries:
        assert webhook_id in page
    assert "redeliver_selected" in page


@pytest.mark.django_db
def test_admin_failing_filter_lists_only_failing_deliveries(admin_client_root, some_deliveries):
    response = admin_client_root.get(DELIVERIES_ADMIN, {"failing": "yes"})
    assert response.status_code == 200
    page = response.content.decode()
    shown = {webhook_id for webhook_id in some_deliveries if webhook_id in page}
    assert shown == {"msg_retrying", "msg_failedout", "msg_goneaway", "msg_inflight"}


@pytest.mark.django_db
def test_admin_redeliver_action_queues_the_delivery(
    admin_client_root, some_deliveries, django_capture_on_commit_callbacks
):
    failed, busy = some_deliveries["msg_failedout"], some_deliveries["msg_inflight"]
    with (
        mock.patch.object(dispatch.deliver_webhook, "apply_async") as apply_async,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = admin_client_root.post(
            DELIVERIES_ADMIN,
            {"action": "redeliver_selected", "_selected_action": [failed.pk, busy.pk]},
            follow=True,
        )
    assert response.status_code == 200
    apply_async.assert_called_once_with(args=[failed.pk], queue=WEBHOOK_QUEUE, retry=False)
    failed.refresh_from_db()
    assert failed.status == DeliveryStatus.PENDING and failed.webhook_id == "msg_failedout"
    assert failed.next_attempt_at <= timezone.now() and failed.locked_until > timezone.now()
    busy.refresh_from_db()
    assert busy.status == DeliveryStatus.SENDING
    notes = [str(m) for m in get_messages(response.wsgi_request)]
    assert any("Queued 1" in n for n in notes) and any("being sent right now" in n for n in notes), notes


@pytest.mark.django_db
def test_the_sweep_sends_a_handed_over_delivery_again_only_once_its_message_is_lost(
    user, settings, monkeypatch
):
    """Deliveries waiting behind a busy sender are not sent twice; one whose message the broker
    lost is, once the webhook queue has been seen empty for LONGRUN_REDISPATCH_AFTER."""
    with_longrun(settings, REDISPATCH_AFTER=60)
    sent: list[int] = []
    monkeypatch.setattr(
        dispatch, "webhooks_dispatch", lambda delivery_ids: sent.extend(delivery_ids) or len(delivery_ids)
    )
    depth = mock.Mock(return_value=5)
    monkeypatch.setattr(dispatch, "queue_waiting", depth)
    job = make_job(user)
    now = timezone.now()

    def delivery(n: int, locked_until: datetime | None) -> WebhookDelivery:
        return WebhookDelivery.objects.create(
            job=job, n=n, event_type="job.succeeded", webhook_id=f"msg_{n}", url="http://localhost:9/h",
            payload={}, next_attempt_at=now - timedelta(minutes=10), locked_until=locked_until,
        )  # fmt: skip

    lost = delivery(1, now - timedelta(minutes=5))  # handed over six minutes ago, never taken
    due = delivery(2, None)  # never handed over: a retry whose time has come
    recent = delivery(3, now + timedelta(seconds=50))  # handed over ten seconds ago

    # The queue holds messages: only the delivery never handed over goes.
    assert webhooks_dispatch_due() == 1 and sent == [due.pk]
    sent.clear()
    depth.return_value = 0
    assert webhooks_dispatch_due() == 0  # the first empty reading
    cache.set(f"longrun:queue-empty-since:{WEBHOOK_QUEUE}", (now - timedelta(seconds=120)).timestamp())
    assert webhooks_dispatch_due() == 1 and sent == [lost.pk]
    recent.refresh_from_db()
    assert recent.locked_until == now + timedelta(seconds=50)


# --- optional events: job.started and job.progress, when a job asks for them ------------------


@pytest.mark.django_db
@pytest.mark.usefixtures("broker")
def test_started_and_throttled_progress_deliveries_only_when_asked(user, settings, monkeypatch):
    settings.LONGRUN = {**settings.LONGRUN, "WEBHOOK_ALLOWED_PRIVATE_HOSTS": ["localhost"]}
    monkeypatch.setattr(dispatch, "webhooks_dispatch", lambda delivery_ids: len(delivery_ids))
    url = "http://localhost:9/hook"
    asked = submission.job_create(
        owner=user, type="sleep", callback_url=url, webhook_events=["job.started", "job.progress"]
    )
    plain = submission.job_create(owner=user, type="sleep", callback_url=url)
    for job in (asked, plain):
        execution.job_claim(job_id=job.pk, worker="w1")
        for percent in (10, 20, 30):
            execution.job_progress(job_id=job.pk, worker="w1", percent=percent)
        execution.job_succeed(job_id=job.pk, worker="w1", result={})

    def types(job):
        return list(
            WebhookDelivery.objects.filter(job=job).order_by("n").values_list("event_type", flat=True)
        )

    # One progress delivery: the rest fell within the throttle interval.
    assert types(asked) == ["job.started", "job.progress", "job.succeeded"]
    assert types(plain) == ["job.succeeded"]
    started = WebhookDelivery.objects.get(job=asked, event_type="job.started")
    assert started.payload["data"]["status"] == "running"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"webhook_events": ["job.started"]}, "callback_url"),
        ({"webhook_events": ["job.finished"], "callback_url": "https://hooks.example.com/x"}, None),
    ],
)
def test_optional_events_are_validated(api, body, reason):
    response = api.post("/api/jobs/", {"type": "sleep", **body}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"].startswith("webhook_events")
    if reason:
        assert reason in response.json()["errors"][0]["message"]
