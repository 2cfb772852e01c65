"""The OpenAPI schema and its Swagger UI: behind a login like the rest of the API, unless
LONGRUN_PUBLIC_API_DOCS makes them public (read at each request)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.views import redirect_to_login
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from ..conf import app_settings


def _docs_permissions() -> list[BasePermission]:
    return [AllowAny()] if app_settings.PUBLIC_API_DOCS else [IsAuthenticated()]


class SchemaView(SpectacularAPIView):
    """`GET /api/schema/`: 401 without credentials, unless public."""

    def get_permissions(self) -> list[BasePermission]:
        return _docs_permissions()

    def handle_exception(self, exc: Exception) -> Response:
        # Errors are problem details in JSON like everywhere in the API, not YAML.
        return _as_json(self.request, super().handle_exception(exc))


def _as_json(request: Request, response: Response) -> Response:
    request.accepted_renderer = JSONRenderer()
    request.accepted_media_type = JSONRenderer.media_type
    return response


class DocsView(SpectacularSwaggerView):
    """`GET /api/docs/`: a page for people, so without a login it sends them to sign in."""

    def get_permissions(self) -> list[BasePermission]:
        return [AllowAny()]

    @extend_schema(exclude=True)  # as upstream's get(): a page, not part of the API
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        if not app_settings.PUBLIC_API_DOCS and not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        response: Response = super().get(request, *args, **kwargs)
        return response

    def get_renderers(self) -> list[BaseRenderer]:
        # OPTIONS answers in JSON: upstream renders it with the page's template, which fails (500).
        request = getattr(self, "request", None)
        if request is not None and request.method == "OPTIONS":
            return [JSONRenderer()]
        return super().get_renderers()
