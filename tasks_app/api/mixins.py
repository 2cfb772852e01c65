"""Behaviour shared by the API's views."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import AnonymousUser
from rest_framework.exceptions import AuthenticationFailed, NotAuthenticated
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from ..throttling import API_THROTTLES

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def request_user(request: Request) -> User:
    """The signed-in user of a request that passed IsAuthenticated (401 otherwise)."""
    user = request.user
    if isinstance(user, AnonymousUser):
        raise NotAuthenticated()
    return user


class ThrottleBeforePermissionsMixin:
    """DRF checks permissions before throttles, so anonymous callers (answered 401) and callers
    guessing tokens would never be rate limited. Here throttles come right after authentication,
    and a failed authentication counts as an anonymous request."""

    throttle_classes: Sequence[type[BaseThrottle]] = API_THROTTLES

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        view: Any = self
        view.format_kwarg = view.get_format_suffix(**kwargs)
        request.accepted_renderer, request.accepted_media_type = view.perform_content_negotiation(request)
        request.version, request.versioning_scheme = view.determine_version(request, *args, **kwargs)
        try:
            view.perform_authentication(request)
        except AuthenticationFailed:
            view.check_throttles(request)
            raise
        view.check_throttles(request)
        view.check_permissions(request)
