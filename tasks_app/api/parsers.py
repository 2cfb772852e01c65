"""Request body parsing: JSON, refusing what no database could store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.parsers import JSONParser

from ..services.common import SURROGATE_MESSAGE, surrogate_path


class SafeJSONParser(JSONParser):
    """JSON parser for which deeply nested input is a 400, not a RecursionError (a 500), and a
    string with a lone UTF-16 surrogate ("\\ud800", valid JSON, not valid Unicode: neither
    PostgreSQL nor SQLite can store it) is a 400 naming where it is."""

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
        path = surrogate_path(data)
        if path is not None:
            raise ValidationError({path or "body": [SURROGATE_MESSAGE]})
        return data
