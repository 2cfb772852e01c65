"""Request rate limits and failed sign-ins, shared by the REST API, the live HTTP endpoints and
the login pages (site and admin).

Counts live in the shared cache (Redis), so every web process sees the same numbers. A client is
known by its address: the peer's, or, when LONGRUN_TRUSTED_PROXIES says that many reverse proxies
stand in front, the address the nearest trusted proxy saw in X-Forwarded-For (a client cannot
forge its way past the throttles with a header of its own). The rates are read at use, so they
can change without a reload.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from typing import Any

from django.core.cache import cache
from django.http import HttpRequest
from rest_framework.throttling import AnonRateThrottle, BaseThrottle, UserRateThrottle

from .conf import app_settings


def client_address(request: Any) -> str:
    """The client's address, believing X-Forwarded-For only as far as the trusted proxies go."""
    remote = str(request.META.get("REMOTE_ADDR") or "")
    proxies = app_settings.TRUSTED_PROXIES
    if proxies <= 0:
        return remote
    forwarded = [
        hop.strip() for hop in str(request.META.get("HTTP_X_FORWARDED_FOR") or "").split(",") if hop.strip()
    ]
    if not forwarded:
        return remote
    return forwarded[-min(proxies, len(forwarded))]


class UserThrottle(UserRateThrottle):
    """Per-user rate limit (`LONGRUN_THROTTLE_USER`)."""

    def get_rate(self) -> str | None:
        return app_settings.THROTTLE_USER

    def get_ident(self, request: Any) -> str:
        return client_address(request)


class AnonThrottle(AnonRateThrottle):
    """Per-address rate limit for requests without valid credentials (`LONGRUN_THROTTLE_ANON`)."""

    def get_rate(self) -> str | None:
        return app_settings.THROTTLE_ANON

    def get_ident(self, request: Any) -> str:
        return client_address(request)


API_THROTTLES: Sequence[type[BaseThrottle]] = (UserThrottle, AnonThrottle)


def parse_rate(rate: str) -> tuple[int, int]:
    """ "10/minute" -> (10, 60), as DRF reads its rates."""
    count, _, period = rate.partition("/")
    return int(count), {"s": 1, "m": 60, "h": 3600, "d": 86400}[period[:1]]


class LoginThrottle:
    """Failed sign-ins, counted per address and, separately, per username (an attacker spreading
    guesses over many addresses still meets the username's limit): after LONGRUN_THROTTLE_LOGIN
    failures within one period (fixed windows: "10/minute" counts each clock minute), the page
    answers 429 with Retry-After until the window ends. Counted with the cache's atomic
    increment, so failures sent in parallel all count. Successful sign-ins do not count."""

    def __init__(self, request: HttpRequest, username: str | None) -> None:
        self.limit, self.period = parse_rate(app_settings.THROTTLE_LOGIN)
        now = time.time()
        window = int(now // self.period)
        self.seconds_left = (window + 1) * self.period - now
        self.keys = [f"login-failures:address:{client_address(request)}:{window}"]
        if username:
            digest = hashlib.sha256(username.strip().lower().encode("utf-8", "replace")).hexdigest()[:32]
            self.keys.append(f"login-failures:username:{digest}:{window}")

    def retry_after(self) -> int | None:
        """Seconds until another attempt may be made, or None if one may be made now."""
        counts = cache.get_many(self.keys)
        if any(count >= self.limit for count in counts.values()):
            return max(1, math.ceil(self.seconds_left))
        return None

    def failed(self) -> None:
        for key in self.keys:
            cache.add(key, 0, self.period + 1)
            try:
                cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.set(key, 1, self.period + 1)
