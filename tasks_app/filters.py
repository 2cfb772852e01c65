"""Query-string filters for the job list (django-filter)."""

from __future__ import annotations

import django_filters
import django_filters.fields
from django import forms
from django.db import connection
from django.db.models import QuerySet, TextField
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast

from .models import Job, JobStatus
from .services import METADATA_KEY_PATTERN


class PresentIsoDateTimeField(django_filters.fields.IsoDateTimeField):
    """Absent means no filter; present but empty is a mistake worth a 400."""

    def clean(self, value):
        if value == "":
            raise forms.ValidationError("Give an ISO 8601 date and time, or leave the parameter out.")
        return super().clean(value)


class IsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = PresentIsoDateTimeField


class MetadataFilterField(forms.CharField):
    def clean(self, value):
        value = super().clean(value)
        if value in (None, ""):
            return None
        key, sep, wanted = value.partition(":")
        if not sep or not METADATA_KEY_PATTERN.match(key):
            raise forms.ValidationError("Use key:value, for example customer:acme.")
        return key, wanted


class MetadataFilter(django_filters.Filter):
    field_class = MetadataFilterField

    def filter(self, qs: QuerySet, value):
        if not value:
            return qs
        key, wanted = value
        return metadata_matches(qs, key, wanted)


def metadata_matches(qs: QuerySet, key: str, wanted: str) -> QuerySet:
    """Jobs whose metadata has `key` with the string `wanted`. On PostgreSQL a containment test
    the GIN index answers; elsewhere, the key read literally ("a__b" is one key, not a path)."""
    if connection.vendor == "postgresql":
        return qs.filter(metadata__contains={key: wanted})
    value = Cast(KeyTextTransform(key, "metadata"), output_field=TextField())
    return qs.annotate(_metadata_value=value).filter(_metadata_value=wanted)


class JobFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(
        choices=JobStatus.choices, help_text="One or more statuses: ?status=queued&status=running"
    )
    type = django_filters.CharFilter(help_text="A job type name.")
    created_after = IsoDateTimeFilter(field_name="created_at", lookup_expr="gte", help_text="ISO 8601.")
    created_before = IsoDateTimeFilter(field_name="created_at", lookup_expr="lt", help_text="ISO 8601.")
    owner = django_filters.CharFilter(field_name="owner__username", help_text="A username (staff only).")
    metadata = MetadataFilter(help_text="key:value; jobs whose metadata has that key with that value.")

    class Meta:
        model = Job
        fields = ["status", "type", "created_after", "created_before", "owner", "metadata"]
