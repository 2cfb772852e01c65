"""A fuzz pass beyond schema-valid data (tests/api/test_schema.py covers what the schema allows).

Hypothesis sends every endpoint arbitrary JSON, hostile unicode (lone surrogates, NUL, RTL marks,
very long strings), numbers at and past every limit and values of the wrong type, in bodies,
query strings and the headers clients set (Idempotency-Key, If-None-Match, Last-Event-ID), and
every WebSocket action. The invariants, checked on each example:

- no 5xx and no traceback (an unhandled error raises in the test client; anything logged at
  ERROR or with a traceback fails the example);
- a refused request (4xx) writes no row to any table;
- nobody receives anything about a job they may not see (another user's job is a 404, the same as
  one that does not exist, and never appears on their socket).

LONGRUN_FUZZ_EXAMPLES raises the number of examples per test (CI runs the default).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from channels.routing import URLRouter
from channels.testing import HttpCommunicator, WebsocketCommunicator
from django.apps import apps
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token

from tasks_app.conf import (
    BULK_LIMIT,
    MAX_ATTEMPTS_LIMIT,
    MAX_WAIT_SECONDS,
    METADATA_KEY_MAX,
    METADATA_MAX_KEYS,
    METADATA_VALUE_MAX,
    PRIORITY_MAX,
    PRIORITY_MIN,
    SNAPSHOT_LIMIT,
    app_settings,
)
from tasks_app.realtime import messages
from tasks_app.realtime.auth import WebSocketAuthMiddleware
from tasks_app.realtime.consumers import JobsConsumer
from tasks_app.realtime.publish import publish_job_message
from tasks_app.realtime.routing import websocket_urlpatterns
from tests.helpers import failed_job, make_job, session_client, succeeded_job

# Each example is a request or a socket frame: together a slow test (`make test` leaves it out).
pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("LONGRUN_FUZZ_EXAMPLES", "60"))
fuzz_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)

# --- strategies -------------------------------------------------------------------------------

HOSTILE_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\udbff\udc00",  # a valid pair, written as two escapes
    "\u202eevil\u202c",  # right-to-left override
    "\u200f\u200e",
    "\ufeff",
    "\ufffd",
    "😀" * 20,
    "x" * 100_001,
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "../../etc/passwd",
    "%00",
    "\\u0000",
    "null",
    "true",
    "NaN",
    "-0",
    "1e309",
    "00000000-0000-0000-0000-000000000000",
]
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(HOSTILE_TEXT),
    st.text(
        alphabet=st.sampled_from(["\x00", "\ud800", "\udc00", "\u202e", "é", "\n", "a", '"']), max_size=12
    ),
)

LIMITS = [
    0,
    PRIORITY_MIN,
    PRIORITY_MAX,
    MAX_ATTEMPTS_LIMIT,
    BULK_LIMIT,
    METADATA_MAX_KEYS,
    METADATA_KEY_MAX,
    METADATA_VALUE_MAX,
    MAX_WAIT_SECONDS,
    SNAPSHOT_LIMIT,
    200,  # page size
    app_settings.MAX_TIMEOUT,
    2**31 - 1,
    2**63 - 1,
    2**64,
]
numbers = st.one_of(
    st.sampled_from([sign * (limit + delta) for limit in LIMITS for delta in (-1, 0, 1) for sign in (1, -1)]),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, -0.0, 1e308, 10**400]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)

job_types = st.sampled_from(["sleep", "fail", "primes", "progress", "no-such-type", "SLEEP"])
datetimes = st.sampled_from(
    [
        "2030-01-01T00:00:00Z",
        "2030-01-01T00:00:00",  # no offset
        "2000-01-01T00:00:00+00:00",
        "9999-12-31T23:59:59Z",
        "0001-01-01T00:00:00Z",
        "2030-02-30T00:00:00Z",
        "yesterday",
        "2030-01-01T00:00:00+25:00",
    ]
)
callback_urls = st.sampled_from(
    [
        "http://1.1.1.1/hook",
        "https://1.1.1.1:8443/hook",
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0x7f.1/",
        "http://2130706433/",
        "http://10.0.0.1/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/",
        "http://user:pass@1.1.1.1/",
        "http://1.1.1.1:99999/",
        "ftp://1.1.1.1/",
        "javascript:alert(1)",
        "file:///etc/passwd",
    ]
)


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """A field's own kind of value, or any JSON value at all (the wrong type)."""
    return st.one_of(strategy, json_values)


job_bodies = st.one_of(
    st.fixed_dictionaries(
        {"type": maybe(job_types)},
        optional={
            "params": maybe(
                st.fixed_dictionaries(
                    {}, optional={"seconds": maybe(numbers), "message": maybe(texts), "n": maybe(numbers)}
                )
            ),
            "priority": maybe(numbers),
            "max_attempts": maybe(numbers),
            "timeout": maybe(numbers),
            "run_at": maybe(datetimes),
            "callback_url": maybe(callback_urls),
            "webhook_events": maybe(st.lists(st.sampled_from(["job.progress", "job.started", "job.done"]))),
            "metadata": maybe(st.dictionaries(texts, texts, max_size=4)),
            "surprise": json_values,
        },
    ),
    json_values,
)
# Bytes no JSON encoder writes: non-standard constants, broken UTF-8, truncation, deep nesting.
RAW_BODIES = [
    b"",
    b"{",
    b'{"type": "sleep", "params": {"seconds": NaN}}',
    b'{"type": "sleep", "priority": Infinity}',
    b'{"type": "sl\xffeep"}',
    b'{"type": "sleep"}{"type": "sleep"}',
    b'{"type": "sleep", "type": "fail"}',
    b"[" * 50_000 + b"]" * 50_000,
    b'{"type": "\\ud800"}',
    b"\xef\xbb\xbf" + b'{"type": "sleep"}',
]
bodies = st.one_of(job_bodies.map(lambda body: json.dumps(body).encode()), st.sampled_from(RAW_BODIES))
bulk_bodies = st.one_of(
    st.fixed_dictionaries({"jobs": maybe(st.lists(job_bodies, max_size=4))}, optional={"extra": json_values}),
    json_values,
).map(lambda body: json.dumps(body).encode())
cancel_bodies = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "ids": maybe(st.lists(st.one_of(st.uuids().map(str), texts), max_size=4)),
            "status": maybe(st.lists(st.sampled_from(["queued", "running", "scheduled", "succeeded", "x"]))),
            "type": maybe(job_types),
            "extra": json_values,
        },
    ),
    json_values,
).map(lambda body: json.dumps(body).encode())


def as_header(text: str) -> str:
    """What a WSGI server hands Django for a header: its bytes read as latin-1 (PEP 3333)."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


etags = st.one_of(
    st.sampled_from(['"1"', 'W/"1"', "*", '"1", "2"', '""', "1", '"-1"', '"99999999999999999999"', 'W/""']),
    texts.map(as_header),
)
event_ids = st.one_of(
    st.sampled_from(["0", "1", "-1", "1.5", "99999999999999999999", " 2 "]), texts.map(as_header)
)

LIST_PARAMS = [
    "status",
    "type",
    "created_after",
    "created_before",
    "owner",
    "metadata",
    "ordering",
    "cursor",
    "page_size",
    "wait",
    "after",
    "q",
]
query_values = st.one_of(
    texts, numbers.map(str), datetimes, st.sampled_from(["priority", "-started", "cD1hYmM=", "k:v", ":"])
)
query_strings = st.lists(
    st.tuples(st.one_of(st.sampled_from(LIST_PARAMS), texts), query_values), max_size=4
).map(
    lambda pairs: "&".join(
        f"{quote(name, safe='', errors='surrogatepass')}={quote(value, safe='', errors='surrogatepass')}"
        for name, value in pairs
    )
)


# --- invariants -------------------------------------------------------------------------------


class ErrorLog(logging.Handler):
    """Every record logged at ERROR or above, or with a traceback, anywhere."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@pytest.fixture
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


TABLES = [model for model in apps.get_app_config("tasks_app").get_models()]


def row_counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in TABLES}


def check(response, before: dict[str, int], error_log: ErrorLog) -> None:
    status = response.status_code
    assert status < 500, (status, getattr(response, "content", b"")[:500])
    assert not error_log.records, [record.getMessage() for record in error_log.records]
    if status >= 400:
        assert row_counts() == before, f"a refused request ({status}) wrote rows"


def send(client, method: str, url: str, body: bytes | None = None, **headers):
    before = row_counts()
    if body is None:
        response = getattr(client, method)(url, **headers)
    else:
        response = getattr(client, method)(url, data=body, content_type="application/json", **headers)
    return response, before


# --- the REST API -----------------------------------------------------------------------------


@pytest.fixture
def jobs(user, other_user):
    """alice's jobs in several states, and bob's."""
    return {
        "mine": make_job(user),
        "mine_failed": failed_job(user),
        "mine_done": succeeded_job(user),
        "theirs": make_job(other_user),
        "theirs_failed": failed_job(other_user),
    }


@pytest.mark.django_db
@pytest.mark.usefixtures("broker")
@fuzz_settings
@given(body=bodies, key=st.one_of(st.none(), texts.map(as_header)))
def test_submission(api, error_log, body, key):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    response, before = send(api, "post", "/api/jobs/", body, **headers)
    check(response, before, error_log)
    if response.status_code == 202:
        assert response.json()["owner"] == "alice"


@pytest.mark.django_db
@pytest.mark.usefixtures("broker")
@fuzz_settings
@given(body=bulk_bodies)
def test_bulk_submission(api, error_log, body):
    response, before = send(api, "post", "/api/jobs/bulk/", body)
    check(response, before, error_log)


@pytest.mark.django_db
@pytest.mark.usefixtures("broker")
@fuzz_settings
@given(body=cancel_bodies)
def test_bulk_cancel_reaches_only_the_callers_jobs(api, jobs, error_log, body):
    theirs = {jobs["theirs"].pk: jobs["theirs"].version}
    response, before = send(api, "post", "/api/jobs/cancel/", body)
    check(response, before, error_log)
    jobs["theirs"].refresh_from_db()
    assert {jobs["theirs"].pk: jobs["theirs"].version} == theirs


@pytest.mark.django_db
@pytest.mark.usefixtures("broker")
@fuzz_settings
@given(
    path=st.sampled_from(
        ["/api/jobs/", "/api/stats/", "/api/job-types/", "/api/jobs/stream/", "/api/webhook-secret/"]
    ),
    query=query_strings,
)
def test_list_and_read_queries(api, jobs, error_log, path, query):
    response, before = send(api, "get", f"{path}?{query}")
    check(response, before, error_log)
    assert str(jobs["theirs"].pk) not in response.content.decode("utf-8", "replace")


@pytest.mark.django_db
@pytest.mark.usefixtures("broker")
@fuzz_settings
@given(
    which=st.sampled_from(["mine", "mine_failed", "mine_done", "theirs", "theirs_failed"]),
    route=st.sampled_from(
        [
            ("get", ""),
            ("get", "events/"),
            ("get", "stream/"),
            ("get", "deliveries/"),
            ("post", "cancel/"),
            ("post", "retry/"),
            ("post", "deliveries/1/redeliver/"),
        ]
    ),
    query=query_strings,
    body=st.one_of(st.none(), bodies),
    if_none_match=st.one_of(st.none(), etags),
    last_event_id=st.one_of(st.none(), event_ids),
)
def test_job_routes(api, jobs, error_log, which, route, query, body, if_none_match, last_event_id):
    method, tail = route
    job = jobs[which]
    headers = {}
    if if_none_match is not None:
        headers["HTTP_IF_NONE_MATCH"] = if_none_match
    if last_event_id is not None:
        headers["HTTP_LAST_EVENT_ID"] = last_event_id
    url = f"/api/jobs/{job.pk}/{tail}?{query}"
    response, before = send(api, method, url, body if method == "post" else None, **headers)
    check(response, before, error_log)
    if which.startswith("theirs"):
        # Another user's job is exactly as absent as one that does not exist.
        assert response.status_code in (400, 404, 415, 429), response.status_code
        assert str(job.pk) not in response.content.decode("utf-8", "replace")


@pytest.mark.django_db
@pytest.mark.usefixtures("broker")
@fuzz_settings
@given(
    path=st.sampled_from(["/api/jobs/{id}/", "/api/jobs/{id}/events/", "/api/jobs/{id}/cancel/"]),
    job_id=st.one_of(texts, st.uuids().map(str), st.sampled_from(["0" * 32, "-" * 36, "%00", "..", "{}"])),
)
def test_job_ids_in_the_path(api, error_log, path, job_id):
    url = path.format(id=quote(job_id, safe="", errors="surrogatepass"))
    method = "post" if url.endswith("cancel/") else "get"
    response, before = send(api, method, url)
    check(response, before, error_log)


@pytest.mark.django_db
@pytest.mark.usefixtures("broker")
@fuzz_settings
@given(body=st.one_of(st.none(), bodies))
def test_webhook_secret_rotation(api, error_log, body):
    response, before = send(api, "post", "/api/webhook-secret/rotate/", body)
    assert response.status_code < 500
    assert not error_log.records


# --- the pages and the admin ------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.usefixtures("broker")
@fuzz_settings
@given(
    path=st.sampled_from(
        [
            "/",
            "/jobs/{mine}/",
            "/jobs/{theirs}/",
            "/accounts/login/",
            "/admin/tasks_app/job/",
            "/admin/tasks_app/webhookdelivery/",
            "/admin/tasks_app/job/{mine}/change/",
        ]
    ),
    query=query_strings,
)
def test_pages(django_user_model, jobs, error_log, path, query):
    root = django_user_model.objects.get_or_create(
        username="root", defaults={"is_staff": True, "is_superuser": True}
    )[0]
    alice = jobs["mine"].owner
    viewer = root if path.startswith("/admin/") else alice
    url = path.format(mine=jobs["mine"].pk, theirs=jobs["theirs"].pk)
    response, before = send(session_client(viewer), "get", f"{url}?{query}")
    check(response, before, error_log)
    if "{theirs}" in path:
        assert response.status_code in (400, 404)


@pytest.mark.django_db
@fuzz_settings
@given(username=texts, password=texts, next_url=st.one_of(st.none(), texts))
def test_sign_in_forms(client, settings, user, error_log, username, password, next_url):
    # Failures from earlier examples must not turn every later one into a 429.
    settings.LONGRUN = {**settings.LONGRUN, "THROTTLE_LOGIN": "1000000/minute"}
    fields = [("username", username), ("password", password)]
    if next_url is not None:
        fields.append(("next", next_url))
    # Encoded by hand: a browser sends bytes, which may be anything (the test client would
    # refuse to encode a lone surrogate).
    body = "&".join(f"{name}={quote(value, safe='', errors='surrogatepass')}" for name, value in fields)
    for url in ("/accounts/login/", "/admin/login/"):
        response = client.post(url, body, content_type="application/x-www-form-urlencoded")
        assert response.status_code < 500
        assert not error_log.records


# --- live updates (ASGI: long-polling, Server-Sent Events, WebSocket) ------------------------


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture
def auth_headers(user) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Token {Token.objects.get_or_create(user=user)[0].key}".encode())]


@pytest.mark.django_db(transaction=True)
@fuzz_settings
@given(
    which=st.sampled_from(["mine_done", "mine_failed", "theirs_failed"]),
    tail=st.sampled_from(["", "stream/"]),
    wait=st.one_of(st.none(), numbers.map(str), texts),
    if_none_match=st.one_of(st.none(), etags),
    last_event_id=st.one_of(st.none(), event_ids),
)
def test_long_poll_and_stream(jobs, auth_headers, error_log, which, tail, wait, if_none_match, last_event_id):
    from project.asgi import application

    job = jobs[which]
    headers = list(auth_headers)
    if if_none_match is not None:
        headers.append((b"if-none-match", if_none_match.encode("latin-1")))
    if last_event_id is not None:
        headers.append((b"last-event-id", last_event_id.encode("latin-1")))
    query = "" if wait is None else f"?wait={quote(wait, safe='', errors='surrogatepass')}"
    path = f"/api/jobs/{job.pk}/{tail}"
    before = row_counts()

    async def request():
        communicator = HttpCommunicator(application, "GET", path + query, headers=headers)
        return await communicator.get_response(timeout=10)

    response = run(request())
    assert response["status"] < 500, response
    assert not error_log.records, [record.getMessage() for record in error_log.records]
    if response["status"] >= 400:
        assert row_counts() == before
    if which.startswith("theirs"):
        assert response["status"] in (400, 404)
        assert str(job.pk).encode() not in response["body"]


SENTINEL_JOB = "ffffffff-ffff-ffff-ffff-ffffffffffff"
SENTINEL_ANSWER = {"type": "error", "code": "not_found", "message": "No such job, or not yours."}
ws_frames = st.one_of(
    st.fixed_dictionaries(
        {"action": maybe(st.sampled_from(["subscribe", "unsubscribe"]))},
        optional={
            "job": maybe(st.sampled_from(["{mine}", "{theirs}", "00000000-0000-0000-0000-000000000000"])),
            "scope": maybe(st.sampled_from(["mine", "all", "everyone"])),
            "extra": json_values,
        },
    ).map(json.dumps),
    json_values.map(json.dumps),
    st.sampled_from(["", " ", "{", "[" * 100_000, '{"action": "subscribe", "job": "\\ud800"}', "null"]),
    texts,
    st.binary(max_size=64),
)


@pytest.mark.django_db(transaction=True)
@fuzz_settings
@given(frames=st.lists(ws_frames, min_size=1, max_size=6))
def test_websocket_actions(jobs, auth_headers, user, other_user, error_log, frames):
    application = WebSocketAuthMiddleware(URLRouter(websocket_urlpatterns))
    theirs = jobs["theirs"]
    their_change = messages.job_changed(theirs, "progress")
    ids = {"{mine}": str(jobs["mine"].pk), "{theirs}": str(theirs.pk)}

    async def scenario():
        communicator = WebsocketCommunicator(application, "/ws/jobs/", headers=auth_headers)
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        for frame in frames:
            if isinstance(frame, bytes):
                await communicator.send_to(bytes_data=frame or b"\x00")
            else:
                for placeholder, job_id in ids.items():
                    frame = frame.replace(placeholder, job_id)
                await communicator.send_to(text_data=frame or " ")
        # bob's job changes; alice's socket, whatever she subscribed to, must hear nothing of it.
        await asyncio.to_thread(publish_job_message, other_user.pk, their_change)
        # A request with a known answer marks the end; the socket must still be open for it.
        await communicator.send_json_to({"action": "subscribe", "job": SENTINEL_JOB})
        received = []
        while True:
            output = await communicator.receive_output(timeout=5)
            assert output["type"] == "websocket.send", output  # never closed
            received.append(output["text"])
            if json.loads(output["text"]) == SENTINEL_ANSWER:
                break
        while not await communicator.receive_nothing(timeout=0.1):
            received.append((await communicator.receive_output(timeout=1))["text"])
        await communicator.disconnect()
        return received

    assert len(frames) <= JobsConsumer.MAX_BAD_REQUESTS
    received = run(scenario())
    assert not error_log.records, [record.getMessage() for record in error_log.records]
    for text in received:
        message = json.loads(text)
        assert message["type"] in ("error", "snapshot", "job"), message
        assert str(theirs.pk) not in text, message
