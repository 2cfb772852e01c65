"""One error format for every 4xx: RFC 9457 problem details.

    {"type": "about:blank", "title": "Bad Request", "status": 400, "code": "invalid",
     "detail": "Invalid input.", "errors": [{"field": "params.seconds", "message": "...", "code": "..."}]}

`errors` is present for validation failures only; `field` is a dotted path into the request body
(or a query parameter name), empty for an error about the request as a whole.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler

from ..exceptions import IdempotencyConflict, JobStateError, JobValidationError
from .serializers import ProblemSerializer

PROBLEM_CONTENT_TYPE = "application/problem+json"


class Conflict(exceptions.APIException):
    status_code: int = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the resource."
    default_code = "conflict"


class UnprocessableIdempotencyKey(Conflict):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "idempotency_key_reused"


class PayloadTooLarge(exceptions.APIException):
    status_code: int = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


def _flatten(detail: Any, prefix: str = "") -> list[dict[str, str]]:
    """Turn DRF's nested error detail into a flat list of {field, message, code}."""
    if isinstance(detail, dict):
        items: list[dict[str, str]] = []
        for key, value in detail.items():
            key = "" if key in ("non_field_errors", "__all__") else str(key)
            items.extend(_flatten(value, f"{prefix}.{key}" if prefix and key else prefix or key))
        return items
    if isinstance(detail, list):
        items = []
        for index, value in enumerate(detail):
            # A list of messages belongs to the field itself; a list of objects has positions.
            sub = f"{prefix}.{index}" if isinstance(value, (dict, list)) else prefix
            items.extend(_flatten(value, sub))
        return items
    return [{"field": prefix, "message": str(detail), "code": getattr(detail, "code", None) or "invalid"}]


def problems(*codes: int) -> dict[int, OpenApiResponse]:
    """Schema entries for error answers, all problem details."""
    return {
        code: OpenApiResponse(ProblemSerializer, description="Problem details (RFC 9457).") for code in codes
    }


def problem(
    status_code: int, *, code: str, detail: str, errors: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status_code).phrase,
        "status": status_code,
        "code": code,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return body


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, JobValidationError):
        exc = exceptions.ValidationError(exc.errors)
    elif isinstance(exc, JobStateError):
        exc = Conflict(exc.message, code=exc.code)
    elif isinstance(exc, IdempotencyConflict):
        exc = (
            UnprocessableIdempotencyKey(exc.message)
            if exc.status == 422
            else Conflict(exc.message, code=exc.code)
        )
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge(
            f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
        )
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(as_serializer_error(exc))

    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return None  # a real server error: let Django log it and answer 500
    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        body = problem(response.status_code, code="invalid", detail="Invalid input.", errors=errors)
    else:
        codes = exc.get_codes()
        body = problem(
            response.status_code,
            code=codes if isinstance(codes, str) else str(exc.default_code),
            detail=str(exc.detail) if not isinstance(exc.detail, (dict, list)) else str(exc.default_detail),
        )
    response.data = body
    response.content_type = PROBLEM_CONTENT_TYPE
    return response


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 404 handler: problem details under /api/ (for URLs no route matches), the
    usual page elsewhere."""
    if request.path.startswith("/api/"):
        body = problem(404, code="not_found", detail="No such resource.")
        return JsonResponse(body, status=404, content_type=PROBLEM_CONTENT_TYPE)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        body = problem(
            500, code="server_error", detail="Something went wrong on our side; it has been logged."
        )
        return JsonResponse(body, status=500, content_type=PROBLEM_CONTENT_TYPE)
    return defaults.server_error(request)
