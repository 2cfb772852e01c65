"""`Idempotency-Key` on POST /api/jobs/, with Stripe's semantics.

The same key with the same body replays the first answer (same job, same 202, header
`Idempotent-Replayed: true`) and creates and dispatches nothing; the same key with another body is
422; keys are scoped per user; malformed keys are 400; an invalid body stores no key; old keys are
purged. The last test fires 50 identical requests at once and expects exactly one job.

No broker is needed: the Celery publish and the live-update publish are mocks (also in the
threaded test, where on-commit callbacks really run)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from unittest import mock

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from tasks_app.api.idempotency import request_fingerprint
from tasks_app.models import IdempotencyKey, Job, JobEvent
from tasks_app.services import control, maintenance, submission
from tests.helpers import post_job, problem_asserts, token_client

pytestmark = pytest.mark.usefixtures("broker")

BODY = {"type": "sleep", "params": {"seconds": 1, "steps": 2}, "priority": 6}


# --- helpers --------------------------------------------------------------------------------


assert_problem, assert_invalid = problem_asserts(filled=("detail",))


def counts() -> tuple[int, int, int]:
    return Job.objects.count(), JobEvent.objects.count(), IdempotencyKey.objects.count()


# --- replay ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_same_key_and_body_replays_the_first_job(api, user, broker, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = post_job(api, BODY, key="order-42")
    assert first.status_code == 202, first.content
    assert first["Idempotency-Key"] == "order-42"
    assert "Idempotent-Replayed" not in first
    job_id = first.json()["id"]
    assert counts() == (1, 1, 1)
    assert broker.apply_async.call_count == 1

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        again = post_job(api, BODY, key="order-42")
    assert again.status_code == 202, again.content
    assert again["Idempotent-Replayed"] == "true"
    assert again["Idempotency-Key"] == "order-42"
    assert again.json()["id"] == job_id
    assert again.json() == first.json()
    assert again["Location"] == first["Location"]
    # Nothing new: no job, no event, no key, no dispatch, no live update.
    assert counts() == (1, 1, 1)
    assert callbacks == []
    assert broker.apply_async.call_count == 1
    assert broker.publish.call_count == 1
    key = IdempotencyKey.objects.get()
    assert (key.owner, key.key, str(key.job_id)) == (user, "order-42", job_id)
    assert key.fingerprint == request_fingerprint(BODY)


@pytest.mark.django_db
def test_replay_returns_the_jobs_current_state(api, user):
    first = post_job(api, BODY, key="k1")
    assert first.status_code == 202, first.content
    control.job_cancel(job_id=first.json()["id"], actor=user)
    again = post_job(api, BODY, key="k1")
    assert again.status_code == 202, again.content
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["status"] == "cancelled"
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_different_keys_create_different_jobs(api):
    a = post_job(api, BODY, key="a")
    b = post_job(api, BODY, key="b")
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]
    assert "Idempotent-Replayed" not in b
    assert counts() == (2, 2, 2)


@pytest.mark.django_db
def test_requests_without_a_key_are_not_deduplicated(api):
    assert post_job(api, BODY).status_code == 202
    assert post_job(api, BODY).status_code == 202
    assert counts() == (2, 2, 0)


@pytest.mark.django_db
def test_body_key_order_and_spacing_do_not_matter(api):
    first = post_job(api, b'{"type": "sleep", "priority": 6, "params": {"seconds": 1, "steps": 2}}', key="k")
    assert first.status_code == 202, first.content
    again = post_job(api, b'{"params":{"steps":2,"seconds":1},"priority":6,"type":"sleep"}', key="k")
    assert again.status_code == 202, again.content
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert counts() == (1, 1, 1)


def test_fingerprint_is_canonical_and_tells_bodies_apart():
    a = request_fingerprint({"type": "sleep", "params": {"seconds": 1, "steps": 2}})
    b = request_fingerprint({"params": {"steps": 2, "seconds": 1}, "type": "sleep"})
    assert a == b
    assert len(a) == 64 and int(a, 16) >= 0
    assert a != request_fingerprint({"type": "sleep", "params": {"seconds": 2, "steps": 2}})
    assert a != request_fingerprint({"type": "sleep", "params": {"seconds": 1, "steps": 2}, "priority": 5})


# --- conflicts ------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "other_body",
    [
        {**BODY, "priority": 7},
        {**BODY, "params": {"seconds": 2, "steps": 2}},
        {"type": "primes", "params": {"n": 100}},
    ],
    ids=["priority", "params", "type"],
)
def test_same_key_with_another_body_is_422_and_writes_nothing(
    api, broker, other_body, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = post_job(api, BODY, key="reused")
    assert first.status_code == 202, first.content
    before = counts()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post_job(api, other_body, key="reused")
    body = assert_problem(response, 422, "idempotency_key_reused")
    assert "Idempotent-Replayed" not in response
    assert counts() == before == (1, 1, 1)
    assert callbacks == []
    assert broker.apply_async.call_count == 1
    # The stored key still points at the first job with the first fingerprint.
    key = IdempotencyKey.objects.get()
    assert str(key.job_id) == first.json()["id"]
    assert key.fingerprint == request_fingerprint(BODY)
    assert body["detail"]
    # And the original body still replays.
    again = post_job(api, BODY, key="reused")
    assert again.status_code == 202 and again["Idempotent-Replayed"] == "true"


@pytest.mark.django_db
def test_keys_are_scoped_per_user(api, other_api, user, other_user):
    mine = post_job(api, BODY, key="shared-key")
    theirs = post_job(other_api, BODY, key="shared-key")
    assert mine.status_code == theirs.status_code == 202
    assert "Idempotent-Replayed" not in theirs
    assert mine.json()["id"] != theirs.json()["id"]
    assert Job.objects.get(pk=mine.json()["id"]).owner == user
    assert Job.objects.get(pk=theirs.json()["id"]).owner == other_user
    assert counts() == (2, 2, 2)
    # Another user's key with a different body is not a conflict for me either.
    bob_other = post_job(other_api, {"type": "primes"}, key="alice-only")
    alice_other = post_job(api, BODY, key="alice-only")
    assert bob_other.status_code == alice_other.status_code == 202
    assert "Idempotent-Replayed" not in alice_other
    # Each replays their own.
    assert post_job(api, BODY, key="shared-key").json()["id"] == mine.json()["id"]
    assert post_job(other_api, BODY, key="shared-key").json()["id"] == theirs.json()["id"]


# --- malformed keys -------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "key",
    ["", "a" * 256, "two words", " leading", "tab\tkey", "clé", "ключ", "emoji-\U0001f600"],
    ids=["empty", "too-long", "space", "leading-space", "tab", "latin1", "cyrillic", "emoji"],
)
def test_malformed_key_is_400_naming_the_header(api, key, broker, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post_job(api, BODY, key=key)
    errors = assert_invalid(response, "Idempotency-Key")
    assert "255" in errors[0]["message"]
    assert counts() == (0, 0, 0)
    assert callbacks == []
    broker.apply_async.assert_not_called()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "key",
    ["a" * 255, "x", "!~#$%&'*+-.^_`|", "9f1c2d3e-0b4a-4c5d-8e6f-7a8b9c0d1e2f"],
    ids=["255-chars", "one-char", "punctuation", "uuid"],
)
def test_well_formed_keys_are_accepted(api, key):
    response = post_job(api, BODY, key=key)
    assert response.status_code == 202, response.content
    assert IdempotencyKey.objects.get().key == key
    assert post_job(api, BODY, key=key)["Idempotent-Replayed"] == "true"
    assert Job.objects.count() == 1


# --- invalid bodies -------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("bad_body", "field"),
    [
        ({"type": "sleep", "priority": 10}, "priority"),  # refused by the serializer
        ({"type": "sleep", "params": {"seconds": -1}}, "params.seconds"),  # refused by the services
        ({"type": "nope"}, "type"),
    ],
    ids=["serializer", "params-schema", "unknown-type"],
)
def test_invalid_body_stores_no_key_so_a_corrected_retry_succeeds(api, broker, bad_body, field):
    response = post_job(api, bad_body, key="fix-and-retry")
    assert_invalid(response, field)
    assert counts() == (0, 0, 0)
    # The same key with the corrected body is a first request, not a 422.
    fixed = post_job(api, BODY, key="fix-and-retry")
    assert fixed.status_code == 202, fixed.content
    assert "Idempotent-Replayed" not in fixed
    assert counts() == (1, 1, 1)
    assert post_job(api, BODY, key="fix-and-retry")["Idempotent-Replayed"] == "true"
    # Repeating the invalid body now creates nothing either (400, or 422 for the reused key).
    assert post_job(api, bad_body, key="fix-and-retry").status_code in (400, 422)
    assert counts() == (1, 1, 1)


# --- purge ----------------------------------------------------------------------------------


def _age(key_obj: IdempotencyKey, seconds: float) -> None:
    IdempotencyKey.objects.filter(pk=key_obj.pk).update(
        created_at=timezone.now() - timedelta(seconds=seconds)
    )


@pytest.mark.django_db
def test_purge_deletes_keys_older_than_the_ttl_and_keeps_younger_ones(api, user):
    ttl = settings.LONGRUN["IDEMPOTENCY_TTL"]
    for name in ("old", "older", "young", "fresh"):
        assert post_job(api, BODY, key=name).status_code == 202
    keys = {k.key: k for k in IdempotencyKey.objects.all()}
    _age(keys["old"], ttl + 60)
    _age(keys["older"], ttl * 3)
    _age(keys["young"], ttl - 60)

    assert maintenance.idempotency_keys_purge() == 2
    assert set(IdempotencyKey.objects.values_list("key", flat=True)) == {"young", "fresh"}
    # Only keys are forgotten, never jobs.
    assert Job.objects.count() == 4
    # A purged key is free again: the same key (even with another body) makes a new job...
    reused = post_job(api, {"type": "primes"}, key="old")
    assert reused.status_code == 202, reused.content
    assert "Idempotent-Replayed" not in reused
    assert Job.objects.count() == 5
    # ...while a kept one still replays.
    assert post_job(api, BODY, key="young")["Idempotent-Replayed"] == "true"
    assert maintenance.idempotency_keys_purge() == 0


@pytest.mark.django_db
def test_purge_reads_the_ttl_from_settings(api, settings):
    settings.LONGRUN = {**settings.LONGRUN, "IDEMPOTENCY_TTL": 600}
    assert post_job(api, BODY, key="ten-minutes").status_code == 202
    assert post_job(api, BODY, key="five-minutes").status_code == 202
    _age(IdempotencyKey.objects.get(key="ten-minutes"), 601)
    _age(IdempotencyKey.objects.get(key="five-minutes"), 300)
    assert maintenance.idempotency_keys_purge() == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["five-minutes"]


@pytest.mark.django_db
def test_sweep_purges_expired_keys(api):
    assert post_job(api, BODY, key="expired").status_code == 202
    _age(IdempotencyKey.objects.get(), settings.LONGRUN["IDEMPOTENCY_TTL"] + 1)
    assert maintenance.sweep()["idempotency_keys_purged"] == 1
    assert IdempotencyKey.objects.count() == 0


# --- concurrency ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("race_window", [0.0, 3.0], ids=["as-is", "forced-race"])
def test_fifty_concurrent_identical_requests_create_exactly_one_job(user, broker, settings, race_window):
    """The unique (owner, key) constraint decides: one request creates the job, the others
    either find its key or fail their INSERT once it commits, and replay it. Must hold on
    PostgreSQL and SQLite.

    "forced-race" holds the first request inside job creation for a second, so that others
    pass the "is this key known?" read before it commits and the constraint, not the read, has
    to stop them."""
    settings.LONGRUN = {**settings.LONGRUN, "THROTTLE_USER": None}  # 50 at once is not abuse here
    cache.clear()
    n = 50
    clients = [token_client(user) for _ in range(n)]
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n
    entered: list[int] = []
    real_job_create = submission.job_create

    def slow_job_create(**kwargs):
        entered.append(threading.get_ident())
        if len(entered) == 1:
            time.sleep(race_window)
        return real_job_create(**kwargs)

    def fire(index: int) -> None:
        try:
            connection.ensure_connection()  # connect before the start line, not after it
            barrier.wait(timeout=30)
            response = post_job(clients[index], BODY, key="one-and-only")
            results[index] = (
                response.status_code,
                response.json(),
                response.headers.get("Idempotent-Replayed"),
            )
        except BaseException as exc:  # report it in the main thread
            results[index] = exc
        finally:
            connection.close()

    with mock.patch.object(submission, "job_create", side_effect=slow_job_create):
        threads = [threading.Thread(target=fire, args=(i,), daemon=True) for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a request hung"

    failures = [r for r in results if not isinstance(r, tuple)]
    assert failures == [], failures[:3]
    statuses = [status for status, _, _ in results]
    assert statuses == [202] * n, [(s, b) for s, b, _ in results if s != 202][:3]
    ids = {body["id"] for _, body, _ in results}
    assert len(ids) == 1, ids
    replayed = [flag for _, _, flag in results]
    assert replayed.count("true") == n - 1, replayed
    assert replayed.count(None) == 1, replayed

    assert Job.objects.count() == 1
    assert IdempotencyKey.objects.count() == 1
    job = Job.objects.get()
    assert str(job.pk) == ids.pop()
    assert IdempotencyKey.objects.get().job_id == job.pk
    assert JobEvent.objects.filter(job=job).count() == 1
    # The on-commit dispatch ran once, for the one job, and marked it.
    broker.apply_async.assert_called_once()
    assert broker.apply_async.call_args.kwargs["args"] == [str(job.pk)]
    job.refresh_from_db()
    assert job.dispatched_at is not None
    # The live "created" update went out once: the losers' rolled-back jobs announced nothing.
    broker.publish.assert_called_once()
    if race_window:
        # The race really happened: several requests got past the read and lost on the constraint.
        assert len(entered) >= 2, entered
