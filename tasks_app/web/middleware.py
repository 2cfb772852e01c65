"""What belongs to no single view: the request id, and guards against NUL characters and
failed sign-ins."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse

from .. import logs
from ..api.errors import PROBLEM_CONTENT_TYPE, problem
from ..services.common import NUL_MESSAGE
from ..throttling import LoginThrottle, client_address

logger = logging.getLogger(__name__)


# A caller's X-Request-ID is kept when it is this tame (it ends up in logs); else one is made.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


class RequestIdMiddleware:
    """Every request gets an id: the caller's `X-Request-ID` (a load balancer's or a client's)
    or a new one. It is on every log line the request writes and in the response's header."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.headers.get("X-Request-ID", "")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        logs.bind_until_unbound(request_id=request_id)  # until the request has finished
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


def forget_request_id(**kwargs: Any) -> None:
    """`request_finished`: the thread's next lines belong to no request."""
    logs.unbind("request_id")


def _nul_field(request: HttpRequest) -> str | None:
    """Where a NUL character is in the request (the path, a query or form field, a header)."""
    if "\x00" in request.path:
        return "path"
    # The API's bodies are JSON, checked by its parser; reading request.POST here would consume
    # them. HTML forms (sign-in, admin) are read here, as CSRF protection reads them anyway.
    forms = [request.GET] if request.path.startswith("/api/") else [request.GET, request.POST]
    for data in forms:
        for name, values in data.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                return name.replace("\x00", "\\u0000")
    for name, value in request.META.items():
        if name.startswith("HTTP_") and isinstance(value, str) and "\x00" in value:
            return name[5:].replace("_", "-").title()
    return None


class RejectNulMiddleware:
    """NUL cannot be stored or even looked up in PostgreSQL, so a query string, form field or
    header that carries one would end in a database error: it is a 400 here instead, naming it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        field = _nul_field(request)
        if field is None:
            return self.get_response(request)
        if request.path.startswith("/api/"):
            body = problem(400, code="invalid", detail="Invalid input.", errors=[
                {"field": field, "message": NUL_MESSAGE, "code": "invalid"}
            ])  # fmt: skip
            return JsonResponse(body, status=400, content_type=PROBLEM_CONTENT_TYPE)
        return render(request, "400.html", {"field": field, "message": NUL_MESSAGE}, status=400)


class LoginThrottleMiddleware:
    """Sign-in attempts (the site's login page and the admin's) from an address, or for a
    username, that has failed too often lately are answered 429 with Retry-After, before the
    password is even checked. Failures are counted by `record_failed_login`."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self._paths: set[str] | None = None

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method == "POST" and request.path in self.login_paths():
            username = request.POST.get("username", "")
            wait = LoginThrottle(request, username).retry_after()
            if wait is not None:
                logger.warning(
                    "sign-in refused for %ss: too many failures (address %s, username %r)",
                    wait, client_address(request), username[:150],
                )  # fmt: skip
                response = render(request, "registration/throttled.html", {"retry_after": wait}, status=429)
                response["Retry-After"] = str(wait)
                return response
        return self.get_response(request)

    def login_paths(self) -> set[str]:
        if self._paths is None:
            self._paths = {reverse("login"), reverse("admin:login")}
        return self._paths


def record_failed_login(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    """`user_login_failed` receiver: one more failure for the address and the username."""
    if request is not None:
        LoginThrottle(request, str(credentials.get("username") or "")).failed()
