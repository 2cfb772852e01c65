"""Cursor pagination of the job list: stable under inserts, with clear 400s for bad input."""

from __future__ import annotations

from typing import Any, cast

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Field
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination, PageNumberPagination
from rest_framework.request import Request

from ..models import Job


class StrictPageSizeMixin:
    """`?page_size=` from 1 to max_page_size, or a 400 saying so."""

    # Set by the paginator classes (their types are DRF's).
    page_size: Any
    page_size_query_param: Any
    max_page_size: Any

    def get_page_size(self, request: Request) -> int:
        # DRF silently ignores a bad page_size; a client deserves to know.
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size: int = serializers.IntegerField(min_value=1, max_value=self.max_page_size).run_validation(
                raw
            )
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({self.page_size_query_param: exc.detail}) from None
        return size

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super().get_schema_operation_parameters(view)  # type: ignore[misc]
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
        return parameters


class JobCursorPagination(StrictPageSizeMixin, CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def decode_cursor(self, request: Request) -> Cursor | None:
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise serializers.ValidationError({self.cursor_query_param: ["Invalid cursor."]}) from None
        if cursor is not None and cursor.position is not None and not self._fits_ordering(cursor.position):
            # A forged position ("p=abc" for an ordering by priority) would reach the database.
            raise serializers.ValidationError({self.cursor_query_param: ["Invalid cursor."]})
        return cursor

    def _fits_ordering(self, position: Any) -> bool:
        """Whether the position is a value of the field the list is ordered by (its type, and
        the column's range: an out-of-range integer is a database error too)."""
        field = cast(Field, Job._meta.get_field(self.ordering[0].lstrip("-")))
        try:
            field.run_validators(field.to_python(position))
        except (DjangoValidationError, ValueError, TypeError, OverflowError):
            return False
        return "\x00" not in str(position)


class SchedulePagination(StrictPageSizeMixin, PageNumberPagination):
    """Schedules by name, a page at a time (`?page=`); a page that is not one is a 400."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> list[Any] | None:
        try:
            return super().paginate_queryset(queryset, request, view)
        except NotFound as exc:
            raise serializers.ValidationError({self.page_query_param: [str(exc.detail)]}) from None
