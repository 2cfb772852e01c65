"""tasks_app/throttling.py: who a client is (X-Forwarded-For believed only through the trusted
proxies), the API's throttles keyed by it, and the failed sign-in counter."""

from __future__ import annotations

import pytest
from django.test import RequestFactory
from rest_framework.test import APIClient

from tasks_app.throttling import LoginThrottle, client_address, parse_rate
from tests.helpers import with_longrun

pytestmark = pytest.mark.django_db


def request_from(remote: str, forwarded: str | None = None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        (0, None, "10.0.0.9"),
        (0, "203.0.113.7", "10.0.0.9"),  # no proxy configured: the header is anyone's to write
        (1, None, "10.0.0.9"),
        (1, "203.0.113.7", "203.0.113.7"),
        # The client wrote its own header; the proxy appended what it saw.
        (1, "1.2.3.4, 203.0.113.7", "203.0.113.7"),
        (2, "1.2.3.4, 203.0.113.7, 10.0.0.2", "203.0.113.7"),
        # Fewer hops than proxies: the farthest hop there is.
        (3, "203.0.113.7, 10.0.0.2", "203.0.113.7"),
        (1, " , ", "10.0.0.9"),
    ],
)
def test_client_address_believes_forwarded_for_only_through_trusted_proxies(
    settings, proxies, forwarded, expected
):
    with_longrun(settings, TRUSTED_PROXIES=proxies)
    assert client_address(request_from("10.0.0.9", forwarded)) == expected


def test_anonymous_throttle_is_not_fooled_by_a_forged_forwarded_for(settings):
    with_longrun(settings, THROTTLE_ANON="3/minute")
    client = APIClient()
    statuses = [
        client.get("/api/jobs/", HTTP_X_FORWARDED_FOR=f"198.51.100.{n}").status_code for n in range(5)
    ]
    assert statuses == [401, 401, 401, 429, 429]


def test_behind_a_trusted_proxy_each_client_has_its_own_anonymous_budget(settings):
    with_longrun(settings, THROTTLE_ANON="2/minute", TRUSTED_PROXIES=1)
    client = APIClient()

    def status(forwarded: str) -> int:
        return client.get("/api/jobs/", HTTP_X_FORWARDED_FOR=forwarded).status_code

    assert [status("203.0.113.1") for _ in range(3)] == [401, 401, 429]
    assert status("203.0.113.2") == 401  # another client behind the same proxy
    # A forged first hop does not make a new client: the proxy's entry is last.
    assert status("1.1.1.1, 203.0.113.1") == 429


@pytest.mark.parametrize(
    ("rate", "parsed"),
    [("10/minute", (10, 60)), ("5/s", (5, 1)), ("100/hour", (100, 3600)), ("1/day", (1, 86400))],
)
def test_parse_rate(rate, parsed):
    assert parse_rate(rate) == parsed


def test_login_throttle_counts_failures_per_address_and_per_username(settings):
    with_longrun(settings, THROTTLE_LOGIN="2/hour")
    here = request_from("10.0.0.1")
    elsewhere = request_from("10.0.0.2")
    assert LoginThrottle(here, "alice").retry_after() is None
    LoginThrottle(here, "alice").failed()
    assert LoginThrottle(here, "alice").retry_after() is None
    LoginThrottle(here, "alice").failed()
    wait = LoginThrottle(here, "alice").retry_after()
    assert wait is not None and 1 <= wait <= 3600
    # This address, any username; this username (any case), any address.
    assert LoginThrottle(here, "bob").retry_after() is not None
    assert LoginThrottle(elsewhere, " ALICE ").retry_after() is not None
    assert LoginThrottle(elsewhere, "bob").retry_after() is None
    assert LoginThrottle(elsewhere, None).retry_after() is None
