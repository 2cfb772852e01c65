"""Form fields shared by the API's filters and the admin's search."""

from __future__ import annotations

from typing import Any

from django import forms

from .conf import METADATA_KEY_PATTERN


class MetadataFilterField(forms.CharField):
    """`key:value`, cleaned to the pair (None when empty)."""

    def clean(self, value: Any) -> tuple[str, str] | None:
        value = super().clean(value)
        if value in (None, ""):
            return None
        key, sep, wanted = value.partition(":")
        if not sep or not METADATA_KEY_PATTERN.match(key):
            raise forms.ValidationError("Use key:value, for example customer:acme.")
        return key, wanted
