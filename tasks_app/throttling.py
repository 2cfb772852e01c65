"""Request rate limits, shared by the REST API and the live HTTP endpoints.

The rates are read from the settings at use, so they can change without a reload. A throttled
request is answered 429 with Retry-After (by the REST API's exception handler)."""

from __future__ import annotations

from collections.abc import Sequence

from rest_framework.throttling import AnonRateThrottle, BaseThrottle, UserRateThrottle

from .conf import app_settings


class UserThrottle(UserRateThrottle):
    """Per-user rate limit (`LONGRUN_THROTTLE_USER`)."""

    def get_rate(self) -> str | None:
        return app_settings.THROTTLE_USER


class AnonThrottle(AnonRateThrottle):
    """Per-address rate limit for requests without valid credentials (`LONGRUN_THROTTLE_ANON`)."""

    def get_rate(self) -> str | None:
        return app_settings.THROTTLE_ANON


API_THROTTLES: Sequence[type[BaseThrottle]] = (UserThrottle, AnonThrottle)
