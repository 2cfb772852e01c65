"""The job list's query string: filters (django-filter) and `?ordering=`."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import django_filters
import django_filters.fields
from django import forms
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.filters import OrderingFilter
from rest_framework.request import Request

from .. import selectors
from ..forms import MetadataFilterField
from ..models import Job, JobStatus


class PresentIsoDateTimeField(django_filters.fields.IsoDateTimeField):
    """Absent means no filter; present but empty is a mistake worth a 400. Values are compared
    in UTC: ISO 8601 allows offsets PostgreSQL does not (beyond 15:59)."""

    def clean(self, value: Any) -> Any:
        if value == "":
            raise forms.ValidationError("Give an ISO 8601 date and time, or leave the parameter out.")
        cleaned = super().clean(value)
        if cleaned is None:
            return None
        try:
            return cleaned.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError("That date and time is out of range.") from None


class IsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = PresentIsoDateTimeField


class PresentUUIDField(forms.UUIDField):
    """Absent means no filter; present but empty is a 400, like the dates."""

    def clean(self, value: Any) -> Any:
        if value == "":
            raise forms.ValidationError("Give an id (a UUID), or leave the parameter out.")
        return super().clean(value)


class UUIDFilter(django_filters.UUIDFilter):
    field_class = PresentUUIDField


class MetadataFilter(django_filters.Filter):
    field_class = MetadataFilterField

    def filter(self, qs: QuerySet[Job], value: tuple[str, str] | None) -> QuerySet[Job]:
        if not value:
            return qs
        key, wanted = value
        return selectors.jobs_with_metadata(qs, key, wanted)


class JobFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(
        choices=JobStatus.choices, help_text="One or more statuses: ?status=queued&status=running"
    )
    type = django_filters.CharFilter(help_text="A job type name.")
    created_after = IsoDateTimeFilter(field_name="created_at", lookup_expr="gte", help_text="ISO 8601.")
    created_before = IsoDateTimeFilter(field_name="created_at", lookup_expr="lt", help_text="ISO 8601.")
    owner = django_filters.CharFilter(field_name="owner__username", help_text="A username (staff only).")
    metadata = MetadataFilter(help_text="key:value; jobs whose metadata has that key with that value.")
    schedule = UUIDFilter(field_name="schedule_id", help_text="A schedule's id: the jobs it created.")

    class Meta:
        model = Job
        fields = ["status", "type", "created_after", "created_before", "owner", "metadata", "schedule"]


class JobOrderingFilter(OrderingFilter):
    """`?ordering=` on created, priority, started or finished (prefix `-` for descending).
    Ordering by started or finished lists only the jobs that have started or finished: a cursor
    cannot point between NULLs."""

    # Model field -> the name clients use.
    names = {
        "created_at": "created",
        "priority": "priority",
        "started_at": "started",
        "finished_at": "finished",
    }
    ordering_fields = list(names)

    def get_ordering(self, request: Request, queryset: QuerySet[Any], view: Any) -> tuple[str, ...]:
        params = request.query_params.get(self.ordering_param)
        if params is None:
            return ("-created_at", "-id")
        by_name = {name: field for field, name in self.names.items()}
        ordering = []
        for term in (t.strip() for t in params.split(",")):
            name = term.lstrip("-")
            if name not in by_name:
                raise serializers.ValidationError(
                    {self.ordering_param: [f"Unknown ordering {name!r}; use one of {', '.join(by_name)}."]}
                )
            ordering.append(("-" if term.startswith("-") else "") + by_name[name])
        # A unique tie-breaker keeps cursors stable when values repeat.
        if ordering[-1].lstrip("-") != "created_at":
            return (*ordering, "-created_at", "-id")
        return (*ordering, "-id")

    def filter_queryset(self, request: Request, queryset: QuerySet[Any], view: Any) -> QuerySet[Any]:
        ordering = self.get_ordering(request, queryset, view)
        for field in ("started_at", "finished_at"):
            if any(term.lstrip("-") == field for term in ordering):
                queryset = queryset.filter(**{f"{field}__isnull": False})
        return queryset.order_by(*ordering) if ordering else queryset

    @classmethod
    def schema_parameter(cls) -> OpenApiParameter:
        return OpenApiParameter(
            "ordering",
            {"type": "string", "enum": [p + n for n in cls.names.values() for p in ("", "-")]},
            description="created, priority, started or finished; prefix - for descending. Default: -created.",
        )
