"""tasks_app/web/middleware.py: NUL characters refused before anything reads them, and failed
sign-ins throttled on the site's login page and the admin's."""

from __future__ import annotations

import logging
import re

import pytest
from django.test import Client

from tasks_app.models import Job, WebhookDelivery
from tests.helpers import make_job, session_client, with_longrun

pytestmark = pytest.mark.django_db


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "root-password-123")


# --- NUL --------------------------------------------------------------------------------------

# Each of these was a 500 (PostgreSQL refuses NUL in a query parameter).
NUL_PAGES = [
    ("/?type=%00", "type"),
    ("/?status=queued%00", "status"),
    ("/?q=%00", "q"),
    ("/admin/tasks_app/job/?type=%00", "type"),
    ("/admin/tasks_app/job/?status__exact=%00", "status__exact"),
    ("/admin/tasks_app/webhookdelivery/?status__exact=%00", "status__exact"),
    ("/admin/tasks_app/webhookdelivery/?event_type__exact=%00", "event_type__exact"),
    ("/admin/tasks_app/job/?o=%00", "o"),
]


@pytest.mark.parametrize(("url", "field"), NUL_PAGES)
def test_nul_in_a_page_query_is_a_400_naming_the_parameter(root, url, field):
    response = session_client(root).get(url)
    assert response.status_code == 400
    assert f"<code>{field}</code>: Must not contain NUL" in response.content.decode()


def test_nul_in_the_path_or_a_header_is_a_400():
    client = Client()
    assert client.get("/jobs/%00/").status_code == 400
    assert client.get("/accounts/login/", HTTP_USER_AGENT="a\x00b").status_code == 400
    # A session cookie with NUL would reach the session table.
    assert client.get("/accounts/login/", HTTP_COOKIE="sessionid=abcdefgh\x00ijkl").status_code == 400


def test_nul_in_a_form_field_is_a_400():
    response = Client().post("/accounts/login/", {"username": "ali\x00ce", "password": "x"})
    assert response.status_code == 400
    assert "<code>username</code>" in response.content.decode()


def test_nul_in_an_api_query_is_a_problem_naming_the_parameter(api):
    response = api.get("/api/jobs/?type=%00")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["errors"] == [
        {"field": "type", "message": "Must not contain NUL (\\u0000) characters.", "code": "invalid"}
    ]


def test_an_api_body_is_left_to_the_api(api):
    """The guard reads no API body (that would consume it): NUL in JSON is the serializer's."""
    response = api.post("/api/jobs/", {"type": "fail", "params": {"message": "a\x00b"}}, format="json")
    assert response.status_code == 400
    assert [error["field"] for error in response.json()["errors"]] == ["params"]
    assert not Job.objects.exists()


def test_clean_requests_pass(root):
    client = session_client(root)
    make_job(root)
    for url in ("/", "/?type=sleep", "/admin/tasks_app/job/?status__exact=queued"):
        assert client.get(url).status_code == 200, url
    assert WebhookDelivery.objects.count() == 0


# --- failed sign-ins --------------------------------------------------------------------------

LOGIN_PAGES = ["/accounts/login/", "/admin/login/"]


def sign_in(url: str, username: str, password: str, address: str = "10.0.0.1", **extra):
    return Client().post(url, {"username": username, "password": password}, REMOTE_ADDR=address, **extra)


def signed_in(response) -> bool:
    return response.status_code == 302 and "/login/" not in response["Location"]


@pytest.mark.parametrize("url", LOGIN_PAGES)
def test_failed_sign_ins_are_throttled_with_retry_after_even_for_the_right_password(
    settings, url, staff_user, caplog
):
    with_longrun(settings, THROTTLE_LOGIN="3/hour")
    for _ in range(3):
        response = sign_in(url, "carol", "wrong")
        assert response.status_code == 200 and not signed_in(response)
    with caplog.at_level(logging.WARNING, logger="tasks_app.web.middleware"):
        refused = sign_in(url, "carol", "carol-password-123")
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 3600
    body = refused.content.decode()
    assert 'data-testid="login-throttled"' in body
    assert re.search(r"Try again in \d+ seconds", body)
    assert any("sign-in refused" in record.getMessage() for record in caplog.records)


def test_the_limit_is_per_address_and_per_username(settings, user, staff_user):
    with_longrun(settings, THROTTLE_LOGIN="2/hour")
    for address in ("10.0.0.1", "10.0.0.2"):
        assert not signed_in(sign_in("/accounts/login/", "carol", "wrong", address))
    # carol is locked from anywhere; another address tried only once, so alice may sign in there.
    assert sign_in("/accounts/login/", "carol", "carol-password-123", "10.0.0.3").status_code == 429
    assert signed_in(sign_in("/accounts/login/", "alice", "alice-password-123", "10.0.0.2"))
    # One address spraying usernames meets the address limit.
    for name in ("nobody-1", "nobody-2"):
        assert not signed_in(sign_in("/accounts/login/", name, "wrong", "10.0.0.9"))
    assert sign_in("/accounts/login/", "alice", "alice-password-123", "10.0.0.9").status_code == 429
    # The site's page and the admin's share the count.
    assert sign_in("/admin/login/", "alice", "alice-password-123", "10.0.0.9").status_code == 429


def test_a_forged_forwarded_for_does_not_reset_the_address_count(settings, user):
    with_longrun(settings, THROTTLE_LOGIN="2/hour")
    for n in range(2):
        sign_in("/accounts/login/", f"guess-{n}", "wrong", HTTP_X_FORWARDED_FOR=f"198.51.100.{n}")
    response = sign_in(
        "/accounts/login/", "alice", "alice-password-123", HTTP_X_FORWARDED_FOR="198.51.100.99"
    )
    assert response.status_code == 429


def test_successful_sign_ins_are_not_counted(settings, user):
    with_longrun(settings, THROTTLE_LOGIN="2/hour")
    for _ in range(4):
        assert signed_in(sign_in("/accounts/login/", "alice", "alice-password-123"))
